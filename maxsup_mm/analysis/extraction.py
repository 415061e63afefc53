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
from typing import Dict, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from maxsup_mm.checkpoint import (CheckpointError, check_finite,
                                  load_checkpoint, load_state_dict_checked)
from maxsup_mm.fileio import atomic_write

__all__ = ['extract_features', 'load_analysis_config', 'build_classifier',
           'load_weights', 'build_split_dataset', 'find_classifier_layer',
           'unpack_batch_images', 'CACHE_VERSION']

#: bump when the content of the cache files changes
CACHE_VERSION = 2
SPLITS = ('train', 'val', 'test')


def load_analysis_config(cfg, cfg_options: Optional[dict] = None):
    """A config path or :class:`mmengine.config.Config`, ready to build.

    Registers ``maxsup_mm`` and the upstream modules of the config's scope.
    """
    from mmengine.config import Config

    from maxsup_mm.utils import register_all
    if isinstance(cfg, (str, os.PathLike)):
        cfg = Config.fromfile(str(cfg))
    elif not isinstance(cfg, Config):
        raise TypeError(f'cfg must be a path or an mmengine Config, got '
                        f'{type(cfg).__name__}')
    else:
        cfg = copy.deepcopy(cfg)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    register_all(cfg)
    return cfg


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


def build_classifier(cfg, checkpoint: Optional[str] = None,
                     device: Optional[str] = None) -> nn.Module:
    """Build ``cfg.model`` (mmpretrain), load the checkpoint, eval mode.

    Like mmengine's Runner (and ``mmpretrain.get_model``), a top-level
    ``data_preprocessor`` of the config (mean / std, BGR -> RGB) is merged
    into the model config unless the model defines its own.
    """
    from mmpretrain.registry import MODELS
    cfg = load_analysis_config(cfg)
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor', None) is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = MODELS.build(model_cfg)
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


def _set_pipeline(ds_cfg, pipeline):
    """Replace the pipeline of a dataset config (through dataset wrappers)."""
    if 'pipeline' in ds_cfg:
        ds_cfg['pipeline'] = copy.deepcopy(pipeline)
    elif 'dataset' in ds_cfg:
        _set_pipeline(ds_cfg['dataset'], pipeline)
    elif 'datasets' in ds_cfg:
        for sub in ds_cfg['datasets']:
            _set_pipeline(sub, pipeline)
    else:
        raise ValueError('cannot find the pipeline of the dataset config')


def _find_pipeline(ds_cfg):
    if 'pipeline' in ds_cfg:
        return ds_cfg['pipeline']
    if 'dataset' in ds_cfg:
        return _find_pipeline(ds_cfg['dataset'])
    if 'datasets' in ds_cfg:
        return _find_pipeline(ds_cfg['datasets'][0])
    raise ValueError('cannot find the pipeline of the dataset config')


def build_split_dataset(cfg, split: str = 'val'):
    """The dataset of a config split, with the deterministic test pipeline.

    ``'val'`` / ``'test'`` use ``val_dataloader`` / ``test_dataloader`` as
    they are; ``'train'`` uses ``train_dataloader``'s dataset with the
    *test* pipeline (no augmentation), as feature statistics on the train
    split (Table 9) require.
    """
    from mmpretrain.registry import DATASETS
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    cfg = load_analysis_config(cfg)
    loader = cfg.get(f'{split}_dataloader', None)
    if not loader:
        raise ValueError(f'the config has no {split}_dataloader')
    ds_cfg = copy.deepcopy(loader['dataset'])
    if split == 'train':
        ref = cfg.get('test_dataloader', None) or cfg.get('val_dataloader')
        if not ref:
            raise ValueError('a train split needs the test pipeline of '
                             'test_dataloader / val_dataloader')
        _set_pipeline(ds_cfg, _find_pipeline(ref['dataset']))
    return DATASETS.build(ds_cfg)


def unpack_batch_images(inputs, to_rgb: bool) -> np.ndarray:
    """Pipeline outputs (uint8 ``C, H, W`` tensors) -> ``(N, H, W, 3)`` RGB."""
    imgs = []
    for x in inputs:
        img = x.detach().cpu().numpy().transpose(1, 2, 0)
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        elif to_rgb:
            img = img[..., ::-1]
        imgs.append(np.ascontiguousarray(img).astype(np.uint8))
    return np.stack(imgs)


def _file_id(path: str) -> dict:
    st = os.stat(path)
    return dict(path=osp.abspath(path), size=st.st_size,
                mtime_ns=st.st_mtime_ns)


def _cfg_text(cfg) -> str:
    try:
        return json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    except Exception:  # pragma: no cover - exotic configs
        return cfg.pretty_text


def _cache_key(cfg, checkpoint, split, max_samples, seed, data_cfg=None
               ) -> str:
    text = _cfg_text(cfg)
    if data_cfg is not None:
        text += _cfg_text(data_cfg)
    blob = json.dumps(dict(cfg=text, ckpt=_file_id(checkpoint), split=split,
                           max_samples=max_samples, seed=seed,
                           version=CACHE_VERSION), sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


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
            key hashes the config, the checkpoint file (path, size, mtime),
            the split and the sampling; a string is an explicit ``.npz``
            path.  Either file stores the key (``cache_key``) and is reused
            only when it matches; otherwise it is recomputed and
            overwritten (atomically).  ``False`` disables caching.
        cache_dir (str, optional): default ``<checkpoint dir>/analysis_cache``.
        max_samples (int, optional): analyse a random subset of this size
            (drawn with ``seed``; e.g. the ImageNet train split).
        seed (int): seed of the subset.
        cfg_options (dict, optional): config overrides (of ``cfg``).
        data_cfg (str | Config, optional): take the data split from this
            config instead of ``cfg`` (a downstream dataset for the linear
            probe: only the penultimate features are meaningful then).
        progress (bool): show a progress bar.

    Returns:
        dict: ``features`` ``(N, D)`` float32, ``logits`` ``(N, K)``
        float32, ``labels`` ``(N,)`` int64, ``indices`` ``(N,)`` (dataset
        indices), ``weight`` ``(K, D)`` and ``bias`` ``(K,)`` of the final
        linear layer, ``classes`` (class names) and ``cache_path``.
    """
    from mmengine.dataset import pseudo_collate
    cfg = load_analysis_config(cfg, cfg_options)
    dcfg = cfg if data_cfg is None else load_analysis_config(data_cfg)
    if max_samples is not None and max_samples < 1:
        raise ValueError(f'max_samples must be >= 1, got {max_samples}')

    cache_path = key = None
    if cache:
        key = _cache_key(cfg, checkpoint, split, max_samples, seed,
                         None if data_cfg is None else dcfg)
        if isinstance(cache, str):
            cache_path = cache
        else:
            folder = cache_dir or osp.join(
                osp.dirname(osp.abspath(checkpoint)), 'analysis_cache')
            stem = osp.splitext(osp.basename(checkpoint))[0]
            cache_path = osp.join(folder, f'{stem}_{split}_{key}.npz')
        cached = _read_cache(cache_path, key)
        if cached is not None:
            return cached

    model = build_classifier(cfg, checkpoint, device)
    dev = next(model.parameters()).device
    dataset = build_split_dataset(dcfg, split)
    indices = np.arange(len(dataset))
    if max_samples is not None and max_samples < len(dataset):
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(dataset), max_samples,
                                     replace=False))
        dataset = torch.utils.data.Subset(dataset, indices.tolist())
    bs = batch_size or dcfg[f'{split}_dataloader'].get('batch_size', 32)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=bs, shuffle=False, num_workers=num_workers,
        collate_fn=pseudo_collate)

    fc = find_classifier_layer(model)
    captured = {}

    def hook(module, inputs, output):
        captured['features'] = inputs[0].detach()
        captured['logits'] = output.detach()

    handle = fc.register_forward_hook(hook)
    feats, logits, labels = [], [], []
    bar = _progress(len(indices), progress)
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

    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) \
        else dataset
    classes = list(getattr(base, 'metainfo', {}).get('classes', None) or [])
    num_classes = fc.out_features
    classes = [str(c) for c in classes[:num_classes]]
    if len(classes) < num_classes:
        classes = [str(i) for i in range(num_classes)]
    out = dict(features=torch.cat(feats).numpy(),
               logits=torch.cat(logits).numpy(),
               labels=np.asarray(labels, dtype=np.int64),
               indices=indices.astype(np.int64),
               weight=fc.weight.detach().float().cpu().numpy(),
               bias=(fc.bias.detach().float().cpu().numpy()
                     if fc.bias is not None else
                     np.zeros(num_classes, np.float32)),
               classes=classes)
    if cache_path:
        with atomic_write(cache_path, 'wb') as f:
            np.savez_compressed(f, cache_key=np.asarray(key), **{
                k: (np.asarray(v, dtype=str) if k == 'classes' else v)
                for k, v in out.items()})
    out['cache_path'] = cache_path
    return out
