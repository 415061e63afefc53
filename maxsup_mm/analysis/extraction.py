"""One pass over a data split: penultimate features, logits and labels.

Every analysis of a checkpoint needs the same three arrays, so they are
extracted once per (config, checkpoint, split) and cached in an ``.npz``
file that the other analyses reuse.  The *penultimate features* are the
input of the classifier's final ``nn.Linear`` layer (``fc`` of
``LinearClsHead``, ``layers.head`` of ViT / DeiT heads), captured with a
forward hook; the logits are that layer's output.  The same layer's weight
rows are the class templates of the Müller et al. projection, so they are
stored too.
"""
import copy
import hashlib
import json
import os
import os.path as osp
import sys
import zipfile
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from maxsup_mm.checkpoint import (CheckpointError, check_finite,
                                  load_checkpoint, load_state_dict_checked)
from maxsup_mm.fileio import atomic_write

from .data import (build_split_dataset, input_size, load_analysis_config,
                   match_channel_order, unpack_batch_images)

__all__ = ['extract_features', 'load_analysis_config', 'build_classifier',
           'load_weights', 'build_split_dataset', 'find_classifier_layer',
           'unpack_batch_images', 'file_digest', 'CACHE_VERSION']

#: bump when the content of the cache files changes
CACHE_VERSION = 2


def load_weights(model: nn.Module, checkpoint: str) -> dict:
    """Load a checkpoint's ``state_dict`` into ``model``, strictly.

    Uses :func:`maxsup_mm.checkpoint.load_checkpoint` (``weights_only``
    with an allowlist of benign types) and refuses, with one
    :class:`~maxsup_mm.checkpoint.CheckpointError` line, NaN / Inf tensors
    and a checkpoint that does not fit the model (missing or unexpected
    keys, other shapes: :func:`~maxsup_mm.checkpoint.load_state_dict_checked`),
    so a wrong checkpoint cannot silently give a random model.

    Returns:
        dict: the loaded checkpoint.
    """
    ckpt = load_checkpoint(checkpoint)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f'{checkpoint}: no state_dict (got '
                              f'{type(ckpt).__name__})')
    check_finite(state, checkpoint)
    load_state_dict_checked(model, state, checkpoint, strict=True)
    return ckpt


def _inference_model_cfg(cfg):
    """``cfg.model`` for inference: the config's top-level
    ``data_preprocessor`` merged in (as mmengine's Runner and
    ``mmpretrain.get_model`` do) unless the model has its own, and no batch
    augments (Mixup / CutMix would make the preprocessor one-hot the labels
    in the model's classes)."""
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor', None) is not None:
        model_cfg.setdefault('data_preprocessor',
                             copy.deepcopy(cfg.data_preprocessor))
    model_cfg.pop('train_cfg', None)   # ImageClassifier's batch augments
    pre = model_cfg.get('data_preprocessor', None)
    if pre is not None:
        pre.pop('batch_augments', None)
        if 'to_onehot' in pre:
            pre['to_onehot'] = False
    return model_cfg


def build_classifier(cfg, checkpoint: Optional[str] = None,
                     device: Optional[str] = None) -> nn.Module:
    """Build ``cfg.model`` (mmpretrain) for inference, load the checkpoint,
    eval mode.

    Like mmengine's Runner (and ``mmpretrain.get_model``), a top-level
    ``data_preprocessor`` of the config (mean / std, BGR -> RGB) is merged
    into the model config unless the model defines its own; the training
    batch augments are left out.
    """
    from mmpretrain.registry import MODELS
    cfg = load_analysis_config(cfg)
    model = MODELS.build(_inference_model_cfg(cfg))
    if checkpoint is not None:
        load_weights(model, checkpoint)
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    return model.to(device).eval()


def find_classifier_layer(model: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` of the model's head (penultimate -> logits)."""
    head = getattr(model, 'head', model)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f'no nn.Linear layer in {type(head).__name__}: '
                         'cannot locate the penultimate features')
    return linears[-1]


#: file_digest's memo: (real path, device, inode, size, mtime, ctime) ->
#: sha256; the ctime changes whenever the file is written or its times are
#: set (``os.utime``, ``touch -r``, ``cp -p``), so a replaced file is hashed
#: again even when its size and mtime are the old ones
_DIGESTS: Dict[tuple, str] = {}


def file_digest(path: str) -> str:
    """The sha256 (hex) of a file's content, streamed.

    Computed once per file (and version of it) per process: the result is
    memoised under the file's identity and status times, which any write
    changes.  What caches of checkpoints are keyed by (the features here,
    converted checkpoints in the tools): the content, never the path, size
    or modification time, which a replaced file can keep.

    Args:
        path (str): the file.

    Returns:
        str: 64 hex digits.
    """
    st = os.stat(path)
    key = (osp.realpath(path), st.st_dev, st.st_ino, st.st_size,
           st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                sha.update(chunk)
        _DIGESTS[key] = sha.hexdigest()
    return _DIGESTS[key]


def _cfg_text(cfg) -> str:
    try:
        return json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    except Exception:  # pragma: no cover - exotic configs
        return cfg.pretty_text


def _cache_key(cfg, checkpoint, split, max_samples, seed, data_cfg=None,
               size=None) -> str:
    text = _cfg_text(cfg)
    if data_cfg is not None:
        text += _cfg_text(data_cfg) + json.dumps(dict(size=size))
    blob = json.dumps(dict(cfg=text, ckpt=file_digest(checkpoint),
                           split=split, max_samples=max_samples, seed=seed,
                           version=CACHE_VERSION), sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _cache_path(cache, cache_dir, checkpoint, split, key) -> str:
    if isinstance(cache, str):
        return cache
    folder = cache_dir or osp.join(osp.dirname(osp.abspath(checkpoint)),
                                   'analysis_cache')
    stem = osp.splitext(osp.basename(checkpoint))[0]
    return osp.join(folder, f'{stem}_{split}_{key}.npz')


def _write_cache(path: str, key: str, arrays: dict) -> None:
    with atomic_write(path, 'wb') as f:
        np.savez_compressed(f, cache_key=np.asarray(key), **{
            k: (np.asarray(v, dtype=str) if k == 'classes' else v)
            for k, v in arrays.items()})


def _read_cache(path: str, key: str) -> Optional[dict]:
    """The arrays of ``path`` if it was written for ``key``, else None.

    A file written for another checkpoint, config, split or sampling (or by
    an older version) is not used: it is recomputed and overwritten.
    """
    if not osp.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        stored, reason = None, f'unreadable ({type(err).__name__})'
    else:
        stored = str(out.pop('cache_key', ''))
        reason = 'written for another checkpoint, config, split or ' \
            'sampling' if stored else 'written without a cache key'
    if stored != key:
        print(f'[analysis] {path}: {reason}; extracting again and '
              'overwriting it', file=sys.stderr, flush=True)
        return None
    out['classes'] = [str(c) for c in out['classes']]
    out['cache_path'] = path
    return out


def _progress(total: int, enabled: bool):
    class _Null:
        def update(self, n=1):
            pass

    if not enabled:
        return _Null()
    from mmengine.utils import ProgressBar
    return ProgressBar(total, file=sys.stderr)


def _subset(dataset, max_samples: Optional[int], seed: int):
    """The dataset (or a random subset of ``max_samples``) and its indices."""
    indices = np.arange(len(dataset))
    if max_samples is not None and max_samples < len(dataset):
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(dataset), max_samples,
                                     replace=False))
        dataset = torch.utils.data.Subset(dataset, indices.tolist())
    return dataset, indices


def _forward_pass(model, fc, dataset, batch_size, num_workers, progress
                  ) -> Dict[str, np.ndarray]:
    """Inputs and outputs of ``fc`` and the labels, over the dataset."""
    from mmengine.dataset import pseudo_collate
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=pseudo_collate)
    dev = next(model.parameters()).device
    captured = {}

    def hook(module, inputs, output):
        captured['features'] = inputs[0].detach()
        captured['logits'] = output.detach()

    handle = fc.register_forward_hook(hook)
    feats, logits, labels = [], [], []
    bar = _progress(len(dataset), progress)
    try:
        with torch.no_grad():
            for batch in loader:
                data = model.data_preprocessor(batch, False)
                model(data['inputs'].to(dev), mode='tensor')
                feats.append(captured['features'].flatten(1).float().cpu())
                logits.append(captured['logits'].float().cpu())
                labels.extend(int(s.gt_label.reshape(-1)[0])
                              for s in data['data_samples'])
                bar.update(len(data['data_samples']))
    finally:
        handle.remove()
    if progress:
        sys.stderr.write('\n')
    return dict(features=torch.cat(feats).numpy(),
                logits=torch.cat(logits).numpy(),
                labels=np.asarray(labels, dtype=np.int64))


def _layer_arrays(fc: nn.Linear, dataset) -> dict:
    """Class templates (weight rows), bias and class names of ``fc``."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) \
        else dataset
    classes = list(getattr(base, 'metainfo', {}).get('classes', None) or [])
    num_classes = fc.out_features
    classes = [str(c) for c in classes[:num_classes]]
    if len(classes) < num_classes:
        classes = [str(i) for i in range(num_classes)]
    bias = fc.bias.detach().float().cpu().numpy() if fc.bias is not None \
        else np.zeros(num_classes, np.float32)
    return dict(weight=fc.weight.detach().float().cpu().numpy(), bias=bias,
                classes=classes)


def _configs(cfg, cfg_options, data_cfg, data_size):
    """``(model config, data config, size of the data's images)``: a
    downstream ``data_cfg`` gets the model's channel order and input size
    (see :mod:`maxsup_mm.analysis.data`)."""
    cfg = load_analysis_config(cfg, cfg_options)
    if data_cfg is None:
        return cfg, cfg, None
    dcfg = load_analysis_config(data_cfg)
    size = tuple(data_size) if data_size else input_size(cfg)
    return match_channel_order(cfg, dcfg), dcfg, size


def extract_features(cfg,
                     checkpoint: str,
                     split: str = 'val',
                     batch_size: Optional[int] = None,
                     num_workers: int = 0,
                     device: Optional[str] = None,
                     cache: Union[bool, str] = True,
                     cache_dir: Optional[str] = None,
                     max_samples: Optional[int] = None,
                     seed: int = 0,
                     cfg_options: Optional[dict] = None,
                     data_cfg=None,
                     data_size: Optional[Sequence[int]] = None,
                     progress: bool = True) -> Dict[str, np.ndarray]:
    """Penultimate features, logits and labels of a checkpoint on a split.

    Args:
        cfg (str | Config): an mmpretrain config (path or object).
        checkpoint (str): checkpoint file.
        split (str): ``'train'``, ``'val'`` or ``'test'``; the data come from
            the config's dataloader of that split (``'train'`` with the test
            pipeline, see :func:`build_split_dataset`).
        batch_size (int, optional): default: the split's dataloader's.
        num_workers (int): dataloader workers.
        device (str, optional): default ``'cuda'`` when available.
        cache (bool | str): ``True``: reuse / write
            ``<cache_dir>/<checkpoint name>_<split>_<key>.npz`` where the
            key hashes the config, the checkpoint's content (sha256,
            :func:`file_digest`), the split and the sampling; a string is
            an explicit ``.npz`` path.  Either file stores the key
            (``cache_key``) and is reused only when it matches; otherwise
            it is recomputed and overwritten (atomically).  ``False``
            disables caching.
        cache_dir (str, optional): default ``<checkpoint dir>/analysis_cache``.
        max_samples (int, optional): analyse a random subset of this size
            (drawn with ``seed``; e.g. the ImageNet train split).
        seed (int): seed of the subset.
        cfg_options (dict, optional): config overrides (of ``cfg``).
        data_cfg (str | Config, optional): take the data split from this
            config instead of ``cfg`` (a downstream dataset for the linear
            probe: only the penultimate features are meaningful then).  Its
            images reach the network in the channel order of the model's
            own data and at the model's input size (see
            :mod:`maxsup_mm.analysis.data`).
        data_size (Sequence[int], optional): ``(w, h)`` the ``data_cfg``
            images are resized to; default :func:`input_size` of ``cfg``
            (no resize when unknown).
        progress (bool): show a progress bar.

    Returns:
        dict: ``features`` ``(N, D)`` float32, ``logits`` ``(N, K)``
        float32, ``labels`` ``(N,)`` int64, ``indices`` ``(N,)`` (dataset
        indices), ``weight`` ``(K, D)`` and ``bias`` ``(K,)`` of the final
        linear layer, ``classes`` (class names) and ``cache_path``.
    """
    cfg, dcfg, size = _configs(cfg, cfg_options, data_cfg, data_size)
    if max_samples is not None and max_samples < 1:
        raise ValueError(f'max_samples must be >= 1, got {max_samples}')
    cache_path = key = None
    if cache:
        key = _cache_key(cfg, checkpoint, split, max_samples, seed,
                         None if data_cfg is None else dcfg, size)
        cache_path = _cache_path(cache, cache_dir, checkpoint, split, key)
        cached = _read_cache(cache_path, key)
        if cached is not None:
            return cached

    model = build_classifier(cfg, checkpoint, device)
    dataset, indices = _subset(build_split_dataset(dcfg, split, size),
                               max_samples, seed)
    bs = batch_size or dcfg[f'{split}_dataloader'].get('batch_size', 32)
    fc = find_classifier_layer(model)
    out = _forward_pass(model, fc, dataset, bs, num_workers, progress)
    out.update(indices=indices.astype(np.int64), **_layer_arrays(fc, dataset))
    if cache_path:
        _write_cache(cache_path, key, out)
    out['cache_path'] = cache_path
    return out
