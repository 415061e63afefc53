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
import zipfile
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch

__all__ = [
    'CheckpointError', 'load_checkpoint', 'register_safe_globals',
    'install_mmengine_loader', 'safe_global_names', 'non_finite_tensors',
    'check_finite'
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


def load_checkpoint(path: str, map_location: Any = 'cpu') -> Any:
    """Load a checkpoint without executing code from it.

    Args:
        path (str): a ``torch.save`` file (zip or legacy format).
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
    register_safe_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
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
