"""Checkpoints that load with ``torch.load(..., weights_only=True)``.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``: only tensors,
primitive containers and a few torch types are allowed.  mmengine's
checkpoints also carry ``mmengine.logging.HistoryBuffer`` objects and numpy
arrays/scalars (in the message hub), so resuming them fails.  Instead of
turning the safety off or allow-listing callables, this hook *encodes* those
objects as plain tensors and dicts before saving and decodes them after
loading.
"""
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS

_TAG = '__maxsup_mm_type__'


def encode_safe(obj: Any) -> Any:
    """Recursively replace objects ``weights_only`` cannot load.

    ``HistoryBuffer`` -> tagged dict of tensors; ``np.ndarray`` -> tagged
    tensor (object arrays -> tagged list); numpy scalars -> Python numbers.
    """
    if isinstance(obj, HistoryBuffer):
        log_history, count_history = obj.data
        return {_TAG: 'HistoryBuffer',
                'log_history': torch.from_numpy(np.array(log_history)),
                'count_history': torch.from_numpy(np.array(count_history)),
                'max_length': int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return {_TAG: 'ndarray_list', 'data': encode_safe(obj.tolist())}
        return {_TAG: 'ndarray', 'data': torch.from_numpy(obj.copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, encode_safe(v)) for k, v in obj.items()) \
            if type(obj) is not dict else {k: encode_safe(v)
                                           for k, v in obj.items()}
    if isinstance(obj, list):
        return [encode_safe(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, '_fields'):
        return tuple(encode_safe(v) for v in obj)
    return obj


def decode_safe(obj: Any) -> Any:
    """Inverse of :func:`encode_safe`."""
    if isinstance(obj, dict):
        kind = obj.get(_TAG)
        if kind == 'HistoryBuffer':
            return HistoryBuffer(obj['log_history'].numpy(),
                                 obj['count_history'].numpy(),
                                 max_length=obj['max_length'])
        if kind == 'ndarray':
            return obj['data'].numpy()
        if kind == 'ndarray_list':
            return np.array(decode_safe(obj['data']), dtype=object)
        return {k: decode_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode_safe(v) for v in obj)
    return obj


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Make every checkpoint the runner writes ``weights_only``-loadable.

    Encodes the message hub and meta before saving (:func:`encode_safe`) and
    decodes them after loading, so ``--resume`` works under torch >= 2.6 with
    its default safe loading.  Model weights, optimizer and scheduler states
    are tensors and primitives already and are left untouched.
    """
    priority = 'VERY_HIGH'
    _KEYS = ('meta', 'message_hub', 'optimizer', 'param_schedulers')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in self._KEYS:
            if key in checkpoint:
                checkpoint[key] = encode_safe(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in self._KEYS:
            if key in checkpoint:
                checkpoint[key] = decode_safe(checkpoint[key])
