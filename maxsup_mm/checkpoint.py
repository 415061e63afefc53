"""The one safe checkpoint loader of maxsup_mm.

Every tool that reads a checkpoint (``tools/test.py``, ``--resume``, the
converters, the analysis tools, the quickstart, ``tools/reproduce.py``) goes
through :func:`load_checkpoint`: ``torch.load(weights_only=True)`` passed
explicitly (so no environment variable such as
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` can turn it off) plus an explicit
allowlist of the benign types real checkpoints contain:

* mmengine's ``HistoryBuffer`` (the message hub of every Runner checkpoint)
  and the numpy arrays, dtypes and scalars inside it.  ``HistoryBuffer``
  pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')``;
  ``builtins.getattr`` is therefore admitted only as :func:`_restricted_getattr`,
  which resolves exactly those named attributes and refuses everything else;
* ``argparse.Namespace`` and path objects (the ``args`` of DeiT checkpoints);
* Lightning's ``AttributeDict`` (``hyper_parameters``), loaded as a plain
  ``dict`` without importing Lightning.

No generic callable (``eval``, ``exec``, ``__import__``, ``os.*``, an
unrestricted ``getattr``) is ever admitted.  Anything else is refused with one
:class:`CheckpointError` line naming the file and the global.

A ``safetensors`` file (timm's Hugging Face hub weights, ``model.safetensors``),
recognised from its header whatever its name, is read with
``safetensors.torch.load_file``: a flat dict of tensors, no pickle at all.

``import maxsup_mm`` calls :func:`register_safe_globals` and
:func:`install_mmengine_loader`, so upstream mmengine / mmpretrain / mmseg
tools started with ``custom_imports=dict(imports=['maxsup_mm'])`` load such
checkpoints the same safe way (mmengine's local-file loader is replaced by
one that calls :func:`load_checkpoint`).
"""
import argparse
import os
import os.path as osp
import pathlib
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch

__all__ = [
    'CheckpointError', 'load_checkpoint', 'is_safetensors_file',
    'register_safe_globals',
    'install_mmengine_loader', 'safe_global_names', 'non_finite_tensors',
    'check_finite', 'load_state_dict_checked', 'unwrap_model'
]


class CheckpointError(ValueError):
    """A checkpoint that cannot (or must not) be loaded; one-line message."""


def _history_buffer_methods() -> Dict[Any, frozenset]:
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:  # pragma: no cover - mmengine is a dependency
        return {}
    return {HistoryBuffer: frozenset(('min', 'max', 'current', 'mean'))}


def _restricted_getattr(obj, name):
    """``getattr`` limited to the attributes benign checkpoints reach.

    mmengine's ``HistoryBuffer.__getstate__`` stores its statistics methods,
    which protocol-2 pickles write as ``getattr(HistoryBuffer, 'mean')``.
    """
    allowed = _history_buffer_methods().get(obj, ())
    if isinstance(name, str) and name in allowed:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'maxsup_mm refuses getattr({getattr(obj, "__name__", repr(obj))}, '
        f'{name!r}): only {sorted(allowed) or "no attributes"} may be looked '
        'up')


def _numpy_globals() -> List:
    """numpy's array/dtype/scalar reconstructors, under numpy 1.x and 2.x
    module names (a file written under either loads under both)."""
    core = getattr(np, '_core', None) or np.core
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    entries: List = [np.ndarray, np.dtype]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries += [(reconstruct, f'{module}._reconstruct'),
                    (scalar, f'{module}.scalar')]
    # numpy >= 1.25 pickles some dtypes through their class
    for code in '?bBhHiIlLqQefdgFDGSUV':
        dtype_cls = type(np.dtype(code))
        if dtype_cls is not np.dtype:
            entries.append(dtype_cls)
    return entries


def _path_globals() -> List:
    entries: List = [pathlib.PosixPath, pathlib.PurePosixPath,
                     pathlib.PureWindowsPath,
                     (pathlib.PureWindowsPath, 'pathlib.WindowsPath')]
    # Python 3.13 moved the classes to pathlib._local
    for cls in ('PosixPath', 'PurePosixPath', 'PureWindowsPath'):
        entries.append((getattr(pathlib, cls), f'pathlib._local.{cls}'))
    entries.append((pathlib.PureWindowsPath, 'pathlib._local.WindowsPath'))
    return entries


def _lightning_globals() -> List:
    # torch's unpickler fills only exact dicts, so it loads as a plain dict
    return [(dict, f'{module}.AttributeDict')
            for module in ('lightning_fabric.utilities.data',
                           'lightning.fabric.utilities.data',
                           'pytorch_lightning.utilities.parsing',
                           'lightning.pytorch.utilities.parsing')]


def _safe_globals() -> List:
    entries = list(_history_buffer_methods()) + _numpy_globals() \
        + _path_globals() + _lightning_globals()
    entries += [argparse.Namespace,
                (_restricted_getattr, 'builtins.getattr')]
    return entries


def _name(entry) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f'{entry.__module__}.{entry.__qualname__}'


def safe_global_names() -> List[str]:
    """The pickle globals maxsup_mm admits beyond torch's own allowlist."""
    return sorted({_name(e) for e in _safe_globals()})


_REGISTERED = [False]


def register_safe_globals() -> None:
    """Add the allowlist to torch's ``weights_only`` unpickler (idempotent).

    Only affects loads with ``weights_only=True``; it never turns safe
    loading off.
    """
    if not _REGISTERED[0]:
        torch.serialization.add_safe_globals(_safe_globals())
        _REGISTERED[0] = True


_GLOBAL_RE = re.compile(r'GLOBAL ([\w.]+)')
_ANSI_RE = re.compile(r'\x1b\[[0-9;]*m')


def _refusal(path: str, err: Exception) -> CheckpointError:
    """One line that says why ``weights_only`` loading refused ``path``."""
    message = _ANSI_RE.sub('', str(err))
    ours = re.search(r'maxsup_mm refuses ([^\n]*)', message)
    if ours:
        return CheckpointError(f'{path}: refused: {ours.group(1)}')
    names: Iterable[str] = ()
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(
            path))
    except Exception:  # noqa: BLE001 - only for the message
        pass
    names = list(names) or sorted(set(_GLOBAL_RE.findall(message)))
    if names:
        return CheckpointError(
            f'{path}: refused: it needs {", ".join(names)}, which is not a '
            'tensor, a plain container or one of the benign types maxsup_mm '
            'allows (unpickling it could run code from the file); re-save '
            'the weights alone (torch.save({"state_dict": sd}, path)) if '
            'you trust the file')
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = lines[-1] if lines else type(err).__name__
    for i, line in enumerate(lines):
        if 'WeightsUnpickler error:' in line:
            tail = line.split('WeightsUnpickler error:', 1)[1].strip()
            reason = tail or (lines[i + 1] if i + 1 < len(lines) else reason)
            break
    return CheckpointError(f'{path}: refused by safe (weights_only) '
                           f'loading: {reason[:300]}')


def is_safetensors_file(path: str) -> bool:
    """Whether ``path`` has the safetensors layout: an 8-byte little-endian
    header length ``N``, then ``N`` bytes of JSON (``{...}``) within the
    file.  (A ``torch.save`` zip starts with ``PK``, a legacy one with a
    pickle opcode; neither fits.)"""
    with open(path, 'rb') as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b'{':
        return False
    return 2 <= int.from_bytes(head[:8], 'little') <= osp.getsize(path) - 8


def _load_safetensors(path: str, map_location: Any) -> Dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f'{path}: a safetensors file, and the '
                              'safetensors package is not installed '
                              '(pip install safetensors)') from None
    device = str(map_location) if isinstance(
        map_location, (str, torch.device)) else 'cpu'
    try:
        return load_file(path, device=device)
    except Exception as err:  # noqa: BLE001 - safetensors' own error types
        text = _ANSI_RE.sub('', str(err)).strip().splitlines()
        raise CheckpointError(
            f'{path}: cannot be read as a safetensors file (truncated or '
            f'corrupt file?): {type(err).__name__}'
            + (f': {text[0][:200]}' if text else '')) from None


def load_checkpoint(path: str, map_location: Any = 'cpu') -> Any:
    """Load a checkpoint without executing code from it.

    Args:
        path (str): a ``torch.save`` file (zip or legacy format) or a
            ``safetensors`` file (recognised from its contents).
        map_location: as :func:`torch.load`. Defaults to ``'cpu'``.

    Returns:
        The unpickled object (usually a dict).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated / corrupt, or it references
            a global outside the allowlist (the message names it).
    """
    path = os.fspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if is_safetensors_file(path):
        return _load_safetensors(path, map_location)
    register_safe_globals()
    try:
        # an open file, not the path: torch.load would hand any file named
        # *.safetensors to safetensors, whatever it holds
        with open(path, 'rb') as f:
            return torch.load(f, map_location=map_location,
                              weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            OSError, KeyError) as err:
        text = _ANSI_RE.sub('', str(err)).strip().splitlines()
        raise CheckpointError(
            f'{path}: cannot be read as a torch checkpoint (truncated or '
            f'corrupt file?): {type(err).__name__}'
            + (f': {text[0][:200]}' if text else '')) from None


def non_finite_tensors(state_dict: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors holding NaN or infinity."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


def check_finite(state_dict: Dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` naming the non-finite tensors."""
    bad = non_finite_tensors(state_dict)
    if bad:
        shown = ', '.join(bad[:8]) + (f' and {len(bad) - 8} more'
                                      if len(bad) > 8 else '')
        raise CheckpointError(
            f'{source}: {len(bad)} tensor(s) hold NaN or infinity '
            f'(a diverged or corrupt checkpoint): {shown}')


def _mmengine_local_loader(filename: str,
                           map_location: Optional[Any] = None) -> Any:
    """mmengine's local-file scheme, through :func:`load_checkpoint`."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_checkpoint(filename, map_location)


_INSTALLED = [False]


def install_mmengine_loader() -> None:
    """Route mmengine's loading of local files through :func:`load_checkpoint`.

    ``Runner.load_checkpoint`` / ``resume``, ``load_from`` and
    ``init_cfg=dict(type='Pretrained', checkpoint=<file>)`` all read local
    files through mmengine's ``CheckpointLoader`` scheme ``''``; this
    replaces it (idempotent).
    """
    if _INSTALLED[0]:
        return
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', force=True)(
        _mmengine_local_loader)
    _INSTALLED[0] = True


# ---------------------------------------------------------------------------
# strict loading for evaluation and analysis
# ---------------------------------------------------------------------------
def unwrap_model(model):
    """The network inside DDP-style wrappers and test-time-augmentation
    models (what mmengine loads a checkpoint into)."""
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def _not_weights(key: str) -> bool:
    """Entries a checkpoint need not share with the model it is tested in:
    the data preprocessor (normalisation comes from the config) and the
    state of loss modules (e.g. OLS statistics), which no prediction uses."""
    parts = key.split('.')
    return parts[0] == 'data_preprocessor' or any(
        p.startswith('loss') for p in parts[:-1])


_SIZE_RE = re.compile(r'size mismatch for (\S+): copying a param with shape '
                      r'torch\.Size\((\[[^\]]*\])\) from checkpoint, the '
                      r'shape in current model is torch\.Size\((\[[^\]]*\])\)')


def _shown(keys: List[str], limit: int = 4) -> str:
    return ', '.join(keys[:limit]) + (f' and {len(keys) - limit} more'
                                      if len(keys) > limit else '')


def load_state_dict_checked(model, state_dict: Dict[str, Any], source: str,
                            strict: bool = True) -> Dict[str, List[str]]:
    """Load ``state_dict`` into ``model``; refuse one that does not fit.

    The loading is :meth:`torch.nn.Module.load_state_dict`'s recursion
    (each module's ``_load_from_state_dict``, so the model's own load hooks
    run, e.g. mmpretrain's ViT resizing ``pos_embed``) with its missing,
    unexpected and size-mismatch reports collected instead of raised, after
    mmengine's key revision (a leading ``module.`` is dropped) and into the
    network inside wrappers (:func:`unwrap_model`).  Not required to
    match: BatchNorm's ``num_batches_tracked`` (as mmengine), the data
    preprocessor and loss modules (see :func:`_not_weights`).

    Args:
        model (nn.Module): the model (wrappers and TTA models allowed).
        state_dict (dict): the checkpoint's ``state_dict``.
        source (str): how to name the checkpoint in messages.
        strict (bool): raise on missing / unexpected keys and shape
            mismatches; ``False`` loads what fits and warns (one line).

    Returns:
        dict: ``missing``, ``unexpected`` and ``mismatched`` (descriptions).

    Raises:
        CheckpointError: ``strict`` and the checkpoint does not fit.
    """
    model = unwrap_model(model)
    metadata = getattr(state_dict, '_metadata', None)
    state = OrderedDict((re.sub(r'^module\.', '', k), v)
                        for k, v in state_dict.items())
    if metadata is not None:
        state._metadata = metadata
    missing: List[str] = []
    unexpected: List[str] = []
    errors: List[str] = []

    def load(module, local, prefix=''):  # torch's own recursion
        meta = {} if metadata is None else metadata.get(prefix[:-1], {})
        module._load_from_state_dict(local, prefix, meta, True, missing,
                                     unexpected, errors)
        for name, child in module._modules.items():
            if child is not None:
                sub = prefix + name + '.'
                load(child, {k: v for k, v in local.items()
                             if k.startswith(sub)}, sub)
        keys = torch.nn.modules.module._IncompatibleKeys(missing, unexpected)
        for hook in module._load_state_dict_post_hooks.values():
            hook(module, keys)

    load(model, state)
    missing = [k for k in missing if not k.endswith('num_batches_tracked')
               and not _not_weights(k)]
    unexpected = [k for k in unexpected if not _not_weights(k)]
    mismatched = []
    for msg in errors:
        m = _SIZE_RE.search(msg)
        if m:
            if not _not_weights(m.group(1)):
                mismatched.append(
                    f'{m.group(1)} {tuple(_shape(m.group(2)))} in the '
                    f'checkpoint vs {tuple(_shape(m.group(3)))} in the '
                    'model')
        else:
            mismatched.append(' '.join(msg.split())[:200])
    report = dict(missing=missing, unexpected=unexpected,
                  mismatched=mismatched)
    if missing or unexpected or mismatched:
        parts = [f'{len(v)} {name} ({_shown(v)})' for name, v in (
            ('missing', missing), ('unexpected', unexpected),
            ('with another shape', mismatched)) if v]
        message = (f'{source} does not fit the model of the config: '
                   + '; '.join(parts))
        if strict:
            raise CheckpointError(
                message + '. Use the config the checkpoint was trained '
                'with (tools/test.py --non-strict evaluates what fits)')
        warnings.warn(message + '; loaded what fits (non-strict), the rest '
                      'keeps its initial values')
    return report


def _shape(text: str) -> List[int]:
    """``'[10, 128]'`` -> ``[10, 128]``."""
    return [int(t) for t in re.findall(r'\d+', text)]
