"""Read a config's classification data with the checked classes.

``tools/train.py``, ``tools/test.py`` and the analysis tools call
:func:`use_checked_data` on every config of the ``mmpretrain`` scope, so the
paper's configs and upstream ones (``mmpretrain::...``) end broken data in
one line without a config change: ``ImageNet`` / ``CIFAR10`` / ``CIFAR100``
become :class:`CheckedImageNet` / ``CheckedCIFAR10`` / ``CheckedCIFAR100``
(same arguments, same samples) and ``LoadImageFromFile`` becomes
``CheckedLoadImageFromFile`` in every pipeline, also inside dataset wrappers
(``RepeatDataset``, ``ConcatDataset``, ...).
"""
from typing import Any

__all__ = ['CHECKED_TYPES', 'use_checked_data']

#: upstream type -> its checked subclass (registered in mmpretrain's scope)
CHECKED_TYPES = {
    'ImageNet': 'CheckedImageNet',
    'CIFAR10': 'CheckedCIFAR10',
    'CIFAR100': 'CheckedCIFAR100',
    'LoadImageFromFile': 'CheckedLoadImageFromFile',
}
_LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def _swap(node: Any) -> None:
    if isinstance(node, (list, tuple)):
        for item in node:
            _swap(item)
        return
    if not isinstance(node, dict):
        return
    kind = node.get('type')
    if isinstance(kind, str) and kind.replace('mmpretrain.', '', 1) \
            in CHECKED_TYPES:
        node['type'] = CHECKED_TYPES[kind.replace('mmpretrain.', '', 1)]
    for key in ('dataset', 'datasets', 'pipeline'):
        if key in node:
            _swap(node[key])


def use_checked_data(cfg) -> Any:
    """Swap the upstream data types of ``cfg``'s dataloaders in place
    (mmpretrain scope only; mmseg configs are returned unchanged).

    Args:
        cfg (mmengine.Config): a loaded config.

    Returns:
        The same config.
    """
    if cfg.get('default_scope', 'mmpretrain') != 'mmpretrain':
        return cfg
    for key in _LOADERS:
        loader = cfg.get(key, None)
        if isinstance(loader, dict) and 'dataset' in loader:
            _swap(loader['dataset'])
    return cfg
