"""Configs and data splits of the analyses, and downstream (probe) data.

The analyses read a config's dataloaders with their deterministic test
pipeline.  A *downstream* dataset (the linear probe's ``data_cfg``, e.g.
mmpretrain's CIFAR-10 for an ImageNet model) is fed to the model the way the
model saw its own data:

- **channel order**: ``LoadImageFromFile`` decodes files to BGR (mmpretrain's
  ImageNet configs then set ``to_rgb=True``), while in-memory datasets such
  as ``CIFAR10`` yield RGB arrays; when the two configs' data differ, the
  model's data preprocessor flips the other way (:func:`match_channel_order`),
  so the network sees the channel order it was trained on, normalised with
  its own mean / std;
- **input size**: the images are resized (bicubic, PIL) to the size of the
  model's test pipeline (:func:`input_size`) unless the downstream pipeline
  already yields that size;
- **labels**: the classifier is built for inference
  (:func:`maxsup_mm.analysis.build_classifier`), without its batch augments
  (Mixup / CutMix), which would one-hot the labels in the model's classes.
"""
import copy
import os
from typing import Optional, Tuple

import numpy as np

__all__ = ['SPLITS', 'load_analysis_config', 'split_dataset_cfg',
           'build_split_dataset', 'input_size', 'data_channel_order',
           'match_channel_order', 'unpack_batch_images']

SPLITS = ('train', 'val', 'test')
#: transforms that set the output size: type -> the argument holding it
_SIZE_ARGS = {'CenterCrop': 'crop_size', 'FFCVCenterCrop': 'scale',
              'Resize': 'scale', 'RandomResizedCrop': 'scale'}


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


def _test_pipeline(cfg) -> Optional[list]:
    """The pipeline of ``test_dataloader`` (else ``val_dataloader``)."""
    loader = cfg.get('test_dataloader', None) or cfg.get('val_dataloader',
                                                         None)
    if not loader:
        return None
    try:
        return list(_find_pipeline(loader['dataset']))
    except ValueError:
        return None


def _kind(transform) -> str:
    return str(transform.get('type', '')).split('.')[-1]


def _pipeline_size(pipeline) -> Optional[Tuple[int, int]]:
    """``(w, h)`` set by the last size-setting transform, if any."""
    size = None
    for t in pipeline or []:
        arg = _SIZE_ARGS.get(_kind(t))
        if arg and t.get(arg) is not None:
            size = t[arg]
    if size is None:
        return None
    if isinstance(size, (int, float)):
        return int(size), int(size)
    return int(size[0]), int(size[-1])


def input_size(cfg) -> Optional[Tuple[int, int]]:
    """``(w, h)`` of the images the config's test pipeline feeds the model.

    The last size-setting transform of the test (else val) pipeline wins:
    ``CenterCrop.crop_size``, ``FFCVCenterCrop.scale`` (square), ``Resize``
    / ``RandomResizedCrop.scale``; else the backbone's ``img_size``; else
    ``None`` (unknown).
    """
    size = _pipeline_size(_test_pipeline(cfg))
    if size is not None:
        return size
    img_size = cfg.model.get('backbone', {}).get('img_size', None)
    if img_size is None:
        return None
    if isinstance(img_size, (int, float)):
        return int(img_size), int(img_size)
    return int(img_size[0]), int(img_size[-1])


def data_channel_order(cfg) -> Optional[str]:
    """``'bgr'`` when the test pipeline decodes files (``LoadImageFromFile``
    decodes to BGR), ``'rgb'`` for in-memory datasets (``CIFAR10`` arrays),
    ``None`` without a test pipeline."""
    pipeline = _test_pipeline(cfg)
    if pipeline is None:
        return None
    loads = any(_kind(t).endswith('LoadImageFromFile') for t in pipeline)
    return 'bgr' if loads else 'rgb'


def match_channel_order(cfg, data_cfg):
    """``cfg`` whose data preprocessor feeds ``data_cfg``'s images to the
    network in the channel order of ``cfg``'s own data.

    When the two data differ (BGR files vs RGB arrays, see
    :func:`data_channel_order`), ``to_rgb`` of the model's data preprocessor
    is inverted; mean and std stay the model's.  Otherwise ``cfg`` is
    returned unchanged.
    """
    own, other = data_channel_order(cfg), data_channel_order(data_cfg)
    if own is None or other is None or own == other:
        return cfg
    cfg = copy.deepcopy(cfg)
    pre = cfg.model.get('data_preprocessor', None)
    if pre is None:
        pre = cfg.get('data_preprocessor', None)
        if pre is None:
            cfg.data_preprocessor = dict()
            pre = cfg.data_preprocessor
    pre['to_rgb'] = not pre.get('to_rgb', False)
    return cfg


def split_dataset_cfg(cfg, split: str = 'val'):
    """The dataset config of a split, with the deterministic test pipeline.

    ``'val'`` / ``'test'`` use ``val_dataloader`` / ``test_dataloader`` as
    they are; ``'train'`` uses ``train_dataloader``'s dataset with the
    *test* pipeline (no augmentation), as feature statistics on the train
    split (Table 9) require.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    loader = cfg.get(f'{split}_dataloader', None)
    if not loader:
        raise ValueError(f'the config has no {split}_dataloader')
    ds_cfg = copy.deepcopy(loader['dataset'])
    if split == 'train':
        pipeline = _test_pipeline(cfg)
        if pipeline is None:
            raise ValueError('a train split needs the test pipeline of '
                             'test_dataloader / val_dataloader')
        _set_pipeline(ds_cfg, pipeline)
    return ds_cfg


def _resized(ds_cfg, size: Tuple[int, int]):
    """``ds_cfg`` whose pipeline ends with images of ``size`` (``(w, h)``):
    a bicubic PIL ``Resize`` before ``PackInputs`` unless already so."""
    pipeline = list(_find_pipeline(ds_cfg))
    if _pipeline_size(pipeline) == tuple(size):
        return ds_cfg
    at = next((i for i, t in enumerate(pipeline)
               if _kind(t) == 'PackInputs'), len(pipeline))
    pipeline.insert(at, dict(type='Resize', scale=tuple(size),
                             backend='pillow', interpolation='bicubic'))
    _set_pipeline(ds_cfg, pipeline)
    return ds_cfg


def build_split_dataset(cfg, split: str = 'val',
                        size: Optional[Tuple[int, int]] = None):
    """The dataset of a config split (:func:`split_dataset_cfg`).

    Args:
        cfg (str | Config): the config.
        split (str): ``'train'``, ``'val'`` or ``'test'``.
        size (tuple[int, int], optional): resize the images to this
            ``(w, h)`` (downstream data for a model of that input size).
    """
    from mmpretrain.registry import DATASETS
    ds_cfg = split_dataset_cfg(load_analysis_config(cfg), split)
    if size is not None:
        ds_cfg = _resized(ds_cfg, size)
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
