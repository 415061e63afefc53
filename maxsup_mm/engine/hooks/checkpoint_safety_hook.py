"""Checkpoints that load with ``torch.load(..., weights_only=True)``.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``: only tensors,
primitive containers and a few torch types are allowed.  mmengine's
checkpoints also carry ``mmengine.logging.HistoryBuffer`` objects and numpy
arrays/scalars (in the message hub), so resuming them fails.  Instead of
turning the safety off or allow-listing callables, this hook *encodes* those
objects as plain tensors and dicts before saving and decodes them after
loading.  The round trip is exact for every parameter scheduler of mmengine
and torch: ``Counter`` (MultiStep's ``milestones``), ``OrderedDict`` and
``defaultdict`` keep their types, and mmengine's ``OneCycle`` annealing
function is stored by name.
"""
import copy
from collections import Counter, OrderedDict, defaultdict
from typing import Any, Callable, Dict, Iterable, Tuple

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS

_TAG = '__maxsup_mm_type__'
#: ``defaultdict`` factories a checkpoint can name (and nothing else)
_FACTORIES: Dict[str, Any] = {
    f.__name__: f for f in (int, float, complex, bool, str, bytes, list,
                            tuple, dict, set, frozenset, OrderedDict, Counter)
}


def _safe_functions() -> Dict[str, Callable]:
    """The functions scheduler states hold, by name: mmengine's OneCycle
    annealing functions (``anneal_func``).  Only these are restored."""
    from mmengine.optim.scheduler.param_scheduler import \
        OneCycleParamScheduler as OneCycle
    return {f'{f.__module__}.{f.__qualname__}': f
            for f in (OneCycle._annealing_cos, OneCycle._annealing_linear)}


def _function_name(obj: Any) -> Any:
    """``obj``'s entry in :func:`_safe_functions`, else None."""
    if not callable(obj) or isinstance(obj, type):
        return None
    name = (f'{getattr(obj, "__module__", "")}.'
            f'{getattr(obj, "__qualname__", "")}')
    return name if _safe_functions().get(name) is obj else None


def _rebuild(obj: dict, items: Iterable[Tuple[Any, Any]]) -> dict:
    """A dict of ``obj``'s type (plain, ``OrderedDict``, ``Counter``, ...)
    holding ``items`` (pairs), in their order."""
    if type(obj) is dict:
        return dict(items)
    out = copy.copy(obj)  # the type and e.g. a default_factory
    out.clear()
    out.update(dict(items))  # a mapping: Counter.update(pairs) counts them
    return out


def encode_safe(obj: Any) -> Any:
    """Recursively replace objects ``weights_only`` cannot load.

    ``HistoryBuffer`` -> tagged dict of tensors; ``np.ndarray`` -> tagged
    tensor (object arrays -> tagged list); numpy scalars -> Python numbers;
    ``Counter`` / ``defaultdict`` -> tagged dicts of their items (and
    factory); mmengine's OneCycle annealing function -> tagged name.  Other
    dicts (``OrderedDict`` included) keep their type.

    Raises:
        TypeError: a ``defaultdict`` whose ``default_factory`` is not None or
            a builtin container / number type (it could not be restored).
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
    if isinstance(obj, Counter):
        return {_TAG: 'Counter',
                'data': {k: encode_safe(v) for k, v in obj.items()}}
    if isinstance(obj, defaultdict):
        factory = obj.default_factory
        name = getattr(factory, '__name__', None)
        if factory is not None and _FACTORIES.get(name) is not factory:
            raise TypeError(
                f'cannot store a defaultdict with default_factory='
                f'{factory!r} in a weights_only checkpoint; use a plain dict '
                f'or one of None, {", ".join(sorted(_FACTORIES))}')
        return {_TAG: 'defaultdict', 'factory': name,
                'data': {k: encode_safe(v) for k, v in obj.items()}}
    if isinstance(obj, dict):
        return _rebuild(obj, ((k, encode_safe(v)) for k, v in obj.items()))
    if isinstance(obj, list):
        return [encode_safe(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, '_fields'):
        return tuple(encode_safe(v) for v in obj)
    name = _function_name(obj)
    if name is not None:
        return {_TAG: 'function', 'name': name}
    return obj


def decode_safe(obj: Any) -> Any:
    """Inverse of :func:`encode_safe`.

    Raises:
        ValueError: a tagged function or ``defaultdict`` factory that
            :func:`encode_safe` does not write (a foreign or edited file).
    """
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
        if kind == 'Counter':
            return Counter(decode_safe(obj['data']))
        if kind == 'defaultdict':
            name = obj['factory']
            if name is not None and name not in _FACTORIES:
                raise ValueError(f'checkpoint: unknown defaultdict factory '
                                 f'{name!r}; it was not written by '
                                 'encode_safe')
            return defaultdict(_FACTORIES.get(name),
                               decode_safe(obj['data']))
        if kind == 'function':
            function = _safe_functions().get(obj['name'])
            if function is None:
                raise ValueError(f'checkpoint: unknown function '
                                 f'{obj["name"]!r}; only '
                                 f'{", ".join(sorted(_safe_functions()))} '
                                 'are restored')
            return function
        return _rebuild(obj, ((k, decode_safe(v)) for k, v in obj.items()))
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
    its default safe loading.  Optimizer and scheduler states are encoded
    too (MultiStep's ``milestones`` Counter, OneCycle's annealing function)
    and come back exactly, types included; model weights are tensors and
    are left untouched.
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
