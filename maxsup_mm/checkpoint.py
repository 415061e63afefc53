"""The one safe checkpoint loader of maxsup_mm.

Every tool that reads a checkpoint (``tools/test.py``, ``--resume``, the
converters, the analysis tools, the quickstart, ``tools/reproduce.py``) goes
through :func:`load_checkpoint`: ``torch.load(weights_only=True)`` passed
explicitly (so no environment variable such as
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` can turn it off) plus an explicit
allowlist of the benign types real checkpoints contain, in force only during
our own loads (``torch.serialization.safe_globals``): torch's process-wide
allowlist (``get_safe_globals()``) is never widened, so a plain
``torch.load(weights_only=True)`` elsewhere refuses what it always refused.

* mmengine's ``HistoryBuffer`` (the message hub of every Runner checkpoint)
  and the numpy arrays, dtypes and scalars inside it.  numpy trusts the
  state it unpickles (a forged dtype flag or an object field turns raw bytes
  into object pointers: a segfault), so the numpy names map to stand-ins
  (:class:`_NumpyDtype`, :class:`_NumpyArray`, :func:`_numpy_reconstruct`,
  :func:`_numpy_scalar`) that admit plain numeric data only (bool, integer,
  float, complex; either byte order; no object, structured or subarray
  dtype, no flags, data exactly ``shape x itemsize`` bytes) and build the
  real object with ``np.frombuffer``; they are replaced by it after
  unpickling.  ``HistoryBuffer`` pickles its statistics methods as
  ``getattr(HistoryBuffer, 'mean')``; ``builtins.getattr`` is therefore
  admitted only as :func:`_restricted_getattr`, which resolves exactly those
  named attributes and refuses everything else;
* ``argparse.Namespace`` and path objects (the ``args`` of DeiT checkpoints);
* Lightning's ``AttributeDict`` (``hyper_parameters``), loaded as a plain
  ``dict`` without importing Lightning.

No generic callable (``eval``, ``exec``, ``__import__``, ``os.*``, an
unrestricted ``getattr``) is ever admitted.  Anything else is refused with one
:class:`CheckpointError` line naming the file and the global.  A torch zip
file is first checked against the CRC-32 of each of its members (torch's
reader does not check them: a flipped bit would load).

A ``safetensors`` file (timm's Hugging Face hub weights,
``model.safetensors``), recognised from its header whatever its name, is read
with ``safetensors.torch``: a flat dict of tensors, no pickle at all.

``import maxsup_mm`` calls :func:`install_mmengine_loader`, so upstream
mmengine / mmpretrain / mmseg tools started with
``custom_imports=dict(imports=['maxsup_mm'])`` load checkpoints the same safe
way: every URL scheme of mmengine's ``CheckpointLoader`` (local files,
``http(s)://``, ``torchvision://``, ``open-mmlab://``, ``mmcls://``,
``pavi://``, ``s3://`` ...) ends in :func:`load_checkpoint`.
"""
import argparse
import contextlib
import io
import math
import os
import os.path as osp
import pathlib
import pickle
import re
import reprlib
import sys
import tempfile
import threading
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Union
from urllib.parse import urlparse

import numpy as np
import torch

__all__ = [
    'CheckpointError', 'load_checkpoint', 'is_safetensors_file',
    'install_mmengine_loader', 'safe_global_names', 'non_finite_tensors',
    'check_finite', 'load_state_dict_checked', 'unwrap_model', 'shown_names'
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


# ---------------------------------------------------------------------------
# numpy: plain numeric data only
# ---------------------------------------------------------------------------
#: numpy's pickled dtype spec ('b1', 'i4', 'u8', 'f2', 'c16', ...) -> dtype,
#: for bool, integer, float and complex types (native byte order)
_PLAIN_DTYPES: Dict[str, np.dtype] = {
    spec: np.dtype(spec) for spec in {
        f'{d.kind}{d.itemsize}' for d in map(np.dtype, '?bBhHiIlLqQefdgFDG')}}
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxtuple = 10


def _refuse(what: str) -> pickle.UnpicklingError:
    """The error a stand-in raises; :func:`_refusal` makes it one line."""
    return pickle.UnpicklingError(
        f'maxsup_mm refuses {what}: only plain numeric numpy data (bool, '
        'integer, float, complex arrays, dtypes and scalars) is admitted; '
        're-save the file with tensors instead if you trust it')


class _NumpyDtype:
    """Stands in for ``numpy.dtype`` while a checkpoint is unpickled.

    numpy pickles ``np.dtype('<f8')`` as ``dtype('f8', False, True)`` and a
    BUILD with the state ``(3, '<', None, None, None, -1, -1, 0)``.  Only a
    plain numeric spec and exactly that state (any byte order) are
    accepted; numpy's own ``__setstate__`` never sees the state.
    """
    __slots__ = ('value', )

    def __new__(cls, spec=None, align=False, copy=True):
        if not (type(spec) is str and spec in _PLAIN_DTYPES
                and type(align) is bool and type(copy) is bool):
            raise _refuse(f'numpy dtype({_SHORT.repr(spec)})')
        self = object.__new__(cls)
        self.value = _PLAIN_DTYPES[spec]
        return self

    def __setstate__(self, state) -> None:
        native = _PLAIN_DTYPES[f'{self.value.kind}{self.value.itemsize}']
        orders = '<>=|' if native.itemsize == 1 else '<>='
        if not (type(state) is tuple and len(state) == 8
                and all(type(v) is int for v in state[:1] + state[5:])
                and state[0] == 3 and state[2:5] == (None, None, None)
                and state[5:] == (-1, -1, native.flags)
                and type(state[1]) is str and len(state[1]) == 1
                and state[1] in orders):
            raise _refuse(f'numpy dtype {native} with the state '
                          f'{_SHORT.repr(state)}')
        self.value = native.newbyteorder(state[1]) if state[1] in '<>' \
            else native


class _NumpyArray:
    """Stands in for ``numpy.ndarray`` while a checkpoint is unpickled.

    numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` and a
    BUILD with the state ``(1, shape, dtype, is_fortran, raw_bytes)``; the
    array is built from a validated dtype and exactly ``shape x itemsize``
    bytes (:meth:`__setstate__`), in native byte order as numpy does.
    """
    __slots__ = ('value', )

    def __new__(cls, *args):
        if args:  # ndarray(shape, dtype, buffer, offset, strides)
            raise _refuse(f'numpy.ndarray{_SHORT.repr(args)}')
        self = object.__new__(cls)
        self.value = np.empty((0, ), np.int8)  # what _reconstruct makes
        return self

    def __setstate__(self, state) -> None:
        if type(state) is tuple and len(state) == 5 and type(
                state[0]) is int and state[0] == 1:
            state = state[1:]
        if not (type(state) is tuple and len(state) == 4):
            raise _refuse(f'numpy array state {_SHORT.repr(state)}')
        shape, descr, fortran, data = state
        if not (type(descr) is _NumpyDtype and type(fortran) is bool
                and type(data) in (bytes, bytearray)
                and type(shape) is tuple and len(shape) <= 64
                and all(type(n) is int and n >= 0 for n in shape)):
            raise _refuse(f'numpy array state {_SHORT.repr(state)}')
        dtype = descr.value
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise _refuse(f'numpy array data of {len(data)} bytes for the '
                          f'shape {shape} of {dtype}')
        flat = np.frombuffer(data, dtype) if data else np.empty((0, ), dtype)
        if not dtype.isnative:  # numpy byte-swaps on reading, as here
            flat = flat.byteswap().view(dtype.newbyteorder('='))
        self.value = flat.reshape(shape, order='F' if fortran else 'C').copy(
            order='K')


def _numpy_reconstruct(cls, shape, typecode) -> _NumpyArray:
    """Stands in for ``numpy.core.multiarray._reconstruct``."""
    if not (cls is _NumpyArray and type(shape) is tuple and shape == (0, )
            and typecode in (b'b', 'b')):
        raise _refuse(f'numpy _reconstruct({_SHORT.repr(cls)}, '
                      f'{_SHORT.repr(shape)}, {_SHORT.repr(typecode)})')
    return _NumpyArray()


def _numpy_scalar(descr, data=None) -> np.generic:
    """Stands in for ``numpy.core.multiarray.scalar``: ``(dtype, bytes)``."""
    if not (type(descr) is _NumpyDtype and type(data) is bytes
            and len(data) == descr.value.itemsize):
        raise _refuse(f'numpy scalar({_SHORT.repr(descr)}, '
                      f'{_SHORT.repr(data)})')
    return np.frombuffer(data, descr.value)[0]


def _empty_bytes(*args) -> bytes:
    """Stands in for ``builtins.bytes``: protocol 2 pickles ``b''`` (the
    data of an empty array, e.g. a fresh ``HistoryBuffer``) as ``bytes()``;
    nothing else is admitted (``bytes(10**12)`` would allocate)."""
    if args:
        raise pickle.UnpicklingError(
            f'maxsup_mm refuses bytes{_SHORT.repr(args)}: only bytes() (an '
            'empty bytes object) is admitted')
    return b''


def _numpy_globals() -> List:
    """The stand-ins, under numpy 1.x and 2.x module names (a file written
    under either loads under both)."""
    entries: List = [(_NumpyDtype, 'numpy.dtype'),
                     (_NumpyArray, 'numpy.ndarray'),
                     (_empty_bytes, 'builtins.bytes')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries += [(_numpy_reconstruct, f'{module}._reconstruct'),
                    (_numpy_scalar, f'{module}.scalar')]
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
    """The pickle globals maxsup_mm admits beyond torch's own allowlist
    (during :func:`load_checkpoint` only)."""
    return sorted({_name(e) for e in _safe_globals()})


_ALLOWLIST_LOCK = threading.RLock()


@contextlib.contextmanager
def _allowlist():
    """Our allowlist on top of torch's, for the duration of one load.

    Entries the process already admitted under one of our names (e.g. the
    real ``numpy.dtype``) are set aside meanwhile, so the stand-ins are the
    ones the unpickler finds; ``get_safe_globals()`` is the same afterwards.
    """
    serialization = torch.serialization
    ours = _safe_globals()
    names = {_name(e) for e in ours}
    with _ALLOWLIST_LOCK:
        saved = serialization.get_safe_globals()
        clash = [e for e in saved if _name(e) in names]
        if clash:
            serialization.clear_safe_globals()
            serialization.add_safe_globals(
                [e for e in saved if e not in clash])
        try:
            with serialization.safe_globals(ours):
                yield
        finally:
            if clash:
                serialization.add_safe_globals(clash)


# ---------------------------------------------------------------------------
# after unpickling: real numpy objects, no meta tensors, bounded nesting
# ---------------------------------------------------------------------------
_MAX_DEPTH = 100
_ATOMS = (str, bytes, int, float, bool, complex, type(None))


def _finish(obj: Any, name: str) -> Any:
    """``obj`` with the numpy stand-ins replaced by their numpy objects
    (in containers, dict keys, ``__dict__`` of objects such as
    ``HistoryBuffer``; shared objects stay shared).

    Raises:
        CheckpointError: meta tensors (no data), nesting deeper than
            ``_MAX_DEPTH``, or an array where a hashable value is needed.
    """
    done: Dict[int, Any] = {}
    meta: List[str] = []

    def visit(x, where, depth):
        kind = type(x)
        if kind in _ATOMS:
            return x
        if kind is _NumpyArray or kind is _NumpyDtype:
            return x.value
        if id(x) in done:
            return done[id(x)]
        if depth > _MAX_DEPTH:
            raise CheckpointError(
                f'{name}: objects nested more than {_MAX_DEPTH} levels deep '
                f'(at {where[:120]}): not a checkpoint any tool reads')
        done[id(x)] = x
        if isinstance(x, torch.Tensor) and x.is_meta:
            meta.append(where or 'the top-level object')
        if isinstance(x, dict):
            items = [(visit(k, where, depth + 1),
                      visit(v, f'{where}.{k}'.lstrip('.') if isinstance(
                          k, (str, int)) else where, depth + 1))
                     for k, v in x.items()]
            if any(k is not old for (k, _), old in zip(items, x)):
                x.clear()
            for k, v in items:
                x[k] = v
        elif isinstance(x, list):
            x[:] = [visit(v, f'{where}[{i}]', depth + 1)
                    for i, v in enumerate(x)]
        elif kind is tuple:
            new = tuple(visit(v, f'{where}[{i}]', depth + 1)
                        for i, v in enumerate(x))
            if any(a is not b for a, b in zip(new, x)):
                done[id(x)] = new
                return new
        elif isinstance(x, set):
            new = [visit(v, where, depth + 1) for v in x]
            try:
                x.clear()
                x.update(new)
            except TypeError:
                raise CheckpointError(
                    f'{name}: a set holds a numpy array (unhashable): not '
                    'a checkpoint any tool reads') from None
        state = getattr(x, '__dict__', None)
        if type(state) is dict and kind is not type:
            visit(state, where, depth + 1)
        return x

    result = visit(obj, '', 0)
    if meta:
        raise CheckpointError(
            f'{name}: holds meta tensors (no data): {shown_names(meta)}; '
            're-save it from a model whose weights are materialised')
    return result


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
_GLOBAL_RE = re.compile(r'GLOBAL ([\w.]+)')
_ANSI_RE = re.compile(r'\x1b\[[0-9;]*m')


def _refusal(name: str, source: Any, err: Exception) -> CheckpointError:
    """One line that says why ``weights_only`` loading refused ``source``
    (a path or an in-memory file), named ``name``."""
    message = _ANSI_RE.sub('', str(err))
    ours = re.search(r'maxsup_mm refuses ([^\n]*)', message)
    if ours:
        return CheckpointError(f'{name}: refused: {ours.group(1)}')
    names: Iterable[str] = ()
    try:
        if not isinstance(source, str):
            source.seek(0)
        admitted = set(safe_global_names())
        names = sorted(
            n for n in torch.serialization.get_unsafe_globals_in_checkpoint(
                source) if n not in admitted)
    except Exception:  # noqa: BLE001 - only for the message
        pass
    names = list(names) or sorted(set(_GLOBAL_RE.findall(message)))
    if names:
        return CheckpointError(
            f'{name}: refused: it needs {", ".join(names)}, which is not a '
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
    return CheckpointError(f'{name}: refused by safe (weights_only) '
                           f'loading: {reason[:300]}')


def _corrupt(name: str, err: BaseException, kind: str = 'a torch checkpoint'
             ) -> CheckpointError:
    """One line for a file that cannot be parsed."""
    text = _ANSI_RE.sub('', str(err)).strip().splitlines()
    return CheckpointError(
        f'{name}: cannot be read as {kind} (truncated or corrupt file?): '
        f'{type(err).__name__}' + (f': {text[0][:200]}' if text else ''))


def _is_safetensors_head(head: bytes, size: int) -> bool:
    return (len(head) >= 9 and head[8:9] == b'{'
            and 2 <= int.from_bytes(head[:8], 'little') <= size - 8)


def is_safetensors_file(path: str) -> bool:
    """Whether ``path`` has the safetensors layout: an 8-byte little-endian
    header length ``N``, then ``N`` bytes of JSON (``{...}``) within the
    file.  (A ``torch.save`` zip starts with ``PK``, a legacy one with a
    pickle opcode; neither fits.)"""
    with open(path, 'rb') as f:
        head = f.read(9)
    return _is_safetensors_head(head, osp.getsize(path))


def _load_safetensors(name: str, source: Any, map_location: Any
                      ) -> Dict[str, Any]:
    """``source``: a path, or an in-memory file (``BytesIO``)."""
    try:
        import safetensors.torch as st
    except ImportError:
        raise CheckpointError(f'{name}: a safetensors file, and the '
                              'safetensors package is not installed '
                              '(pip install safetensors)') from None
    device = str(map_location) if isinstance(
        map_location, (str, torch.device)) else 'cpu'
    try:
        if isinstance(source, str):
            return st.load_file(source, device=device)
        return {k: v.to(device)
                for k, v in st.load(source.getvalue()).items()}
    except Exception as err:  # noqa: BLE001 - safetensors' own error types
        raise _corrupt(name, err, 'a safetensors file') from None


def _check_zip_crc(name: str, f: Any) -> None:
    """One pass over a torch zip file: every member against its CRC-32
    (torch's own reader does not check them).  Other formats pass."""
    f.seek(0)
    magic = f.read(4)
    f.seek(0)
    if magic != b'PK\x03\x04':
        return
    try:
        with zipfile.ZipFile(f) as archive:
            bad = archive.testzip()
    except Exception as err:  # noqa: BLE001 - any damage of the archive
        raise _corrupt(name, err) from None
    finally:
        f.seek(0)
    if bad is not None:
        raise CheckpointError(
            f'{name}: damaged: member {bad} fails its CRC-32 check (a '
            'flipped bit or an incomplete copy); copy or download the file '
            'again')


CheckpointSource = Union[str, os.PathLike, bytes, bytearray, memoryview,
                         io.IOBase]


def load_checkpoint(path: CheckpointSource, map_location: Any = 'cpu',
                    name: Optional[str] = None) -> Any:
    """Load a checkpoint without executing code from it.

    Args:
        path (str | PathLike | bytes | file): a ``torch.save`` file (zip or
            legacy format) or a ``safetensors`` file (recognised from its
            contents): its path, or its contents in memory (``bytes`` or a
            binary file object such as ``io.BytesIO``).
        map_location: as :func:`torch.load`. Defaults to ``'cpu'``.
        name (str, optional): how messages name an in-memory file.

    Returns:
        The unpickled object (usually a dict); numpy data as numpy objects.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated / corrupt (a zip member fails
            its CRC-32), it references a global outside the allowlist or
            numpy state that is not plain numeric data (the message names
            it), or it holds meta tensors.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        source: Any = io.BytesIO(bytes(path))
    elif hasattr(path, 'read') and hasattr(path, 'seek'):
        source = io.BytesIO(path.read())
    else:
        source = os.fspath(path)
        if not osp.isfile(source):
            raise FileNotFoundError(f'checkpoint not found: {source}')
    if name is None:
        name = source if isinstance(source, str) else getattr(
            path, 'name', '<in-memory checkpoint>')
    with contextlib.ExitStack() as stack:
        if isinstance(source, str):
            # an open file, not the path: torch.load would hand any file
            # named *.safetensors to safetensors, whatever it holds
            f = stack.enter_context(open(source, 'rb'))
            size = osp.getsize(source)
        else:
            f, size = source, len(source.getvalue())
        head = f.read(9)
        f.seek(0)
        if _is_safetensors_head(head, size):
            return _load_safetensors(name, source, map_location)
        _check_zip_crc(name, f)
        try:
            with _allowlist():
                obj = torch.load(f, map_location=map_location,
                                 weights_only=True)
        except pickle.UnpicklingError as err:
            raise _refusal(name, source, err) from None
        except Exception as err:  # noqa: BLE001 - whatever a crafted or
            # damaged file makes the reader raise (TypeError, IndexError,
            # RecursionError, MemoryError, ...): one line, no traceback
            raise _corrupt(name, err) from None
    return _finish(obj, name)


# ---------------------------------------------------------------------------
# finiteness
# ---------------------------------------------------------------------------
def _touched(v: torch.Tensor) -> torch.Tensor:
    """The elements a strided tensor really holds, each at most about once:
    its stride-0 (broadcast) and size-1 dimensions dropped, or, where the
    rest still overlaps, the span of its storage it covers (never more
    than its storage).  ``v.expand(2**40)`` of one element: one element."""
    dims = [(n, s) for n, s in zip(v.shape, v.stride()) if n > 1 and s]
    sizes = [n for n, _ in dims]
    strides = [s for _, s in dims]
    view = v.as_strided(sizes, strides, v.storage_offset())
    span = 1 + sum((n - 1) * s for n, s in dims)
    if view.numel() > span:  # overlapping: read the span once instead
        view = v.as_strided((span, ), (1, ), v.storage_offset())
    return view


def _all_finite(v: torch.Tensor) -> bool:
    if v.layout == torch.sparse_coo:
        v = v._values()
    elif v.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr,
                      torch.sparse_bsc):
        v = v.values()
    if v.numel() == 0:
        return True
    if v.layout == torch.strided:
        v = _touched(v)
    return bool(torch.isfinite(v).all())


def _meta_tensors(state_dict: Dict[str, Any]) -> List[str]:
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_meta]


def non_finite_tensors(state_dict: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors holding NaN or infinity (dense,
    broadcast / overlapping views read within their storage, sparse ones
    through their values).

    Raises:
        CheckpointError: a tensor is a meta tensor (holds no values).
    """
    meta = _meta_tensors(state_dict)
    if meta:
        raise CheckpointError(
            f'holds meta tensors (no data): {shown_names(meta)}')
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not _all_finite(v)]


def check_finite(state_dict: Dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` naming the non-finite tensors (or the
    meta tensors, which hold no data)."""
    meta = _meta_tensors(state_dict)
    if meta:
        raise CheckpointError(
            f'{source}: holds meta tensors (no data): {shown_names(meta)}; '
            're-save it from a model whose weights are materialised')
    bad = non_finite_tensors(state_dict)
    if bad:
        raise CheckpointError(
            f'{source}: {len(bad)} tensor(s) hold NaN or infinity '
            f'(a diverged or corrupt checkpoint): {shown_names(bad, 8)}')


# ---------------------------------------------------------------------------
# mmengine's CheckpointLoader: every URL scheme through load_checkpoint
# ---------------------------------------------------------------------------
def _mmengine_local_loader(filename: str,
                           map_location: Optional[Any] = None) -> Any:
    """mmengine's local-file scheme, through :func:`load_checkpoint`."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_checkpoint(filename, map_location)


def _cached_download(url: str, model_dir: Optional[str] = None,
                     progress: bool = True) -> str:
    """The local copy of ``url`` in torch's hub cache, downloaded first if
    absent: the file mmengine's ``load_from_http`` (torch's
    ``load_state_dict_from_url``) uses, ``<hub dir>/checkpoints/<name>``."""
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))
    if not osp.exists(cached):
        sys.stderr.write(f'Downloading: "{url}" to {cached}\n')
        try:
            torch.hub.download_url_to_file(url, cached, None,
                                           progress=progress)
        except (OSError, ValueError) as err:
            text = str(err).strip().splitlines()
            raise CheckpointError(
                f'{url}: download failed ({type(err).__name__}'
                + (f': {text[0][:200]}' if text else '') + '); check the '
                'URL and the network, or download the file and give its '
                'local path') from None
    return cached


def _load_url(url: str, map_location: Any = None,
              model_dir: Optional[str] = None, progress: bool = True) -> Any:
    """:func:`_cached_download`, then :func:`load_checkpoint`; a zip holding
    one file (torch hub's legacy format) is loaded from that file."""
    cached = _cached_download(url, model_dir, progress)
    if zipfile.is_zipfile(cached):
        try:
            with zipfile.ZipFile(cached) as archive:
                members = archive.infolist()
                if len(members) == 1 and not members[0].is_dir():
                    data = archive.read(members[0])  # checks its CRC-32
                    return load_checkpoint(
                        data, map_location,
                        name=f'{cached}:{members[0].filename}')
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise _corrupt(cached, err) from None
    return load_checkpoint(cached, map_location)


def _mmengine_http_loader(filename: str, map_location: Any = None,
                          model_dir: Optional[str] = None,
                          progress: bool = os.isatty(0)) -> Any:
    """mmengine's ``http://`` / ``https://`` scheme (``load_from_http``):
    rank 0 downloads first, the other ranks after a barrier."""
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()
    if rank == 0:
        checkpoint = _load_url(filename, map_location, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = _load_url(filename, map_location, model_dir,
                                   progress)
    return checkpoint


def _model_url(urls: Dict[str, str], model: str, filename: str) -> str:
    if model not in urls:
        raise CheckpointError(
            f'{filename}: unknown model name {model!r} (the names are the '
            'keys of the json files in mmengine/hub/); give a URL or a local '
            'path instead')
    return urls[model]


def _mmengine_torchvision_loader(filename: str,
                                 map_location: Any = None) -> Any:
    """``torchvision://<name>`` (and the old ``modelzoo://``)."""
    from mmengine.runner.checkpoint import get_torchvision_models
    model = filename.split('://', 1)[1]
    return _mmengine_http_loader(
        _model_url(get_torchvision_models(), model, filename), map_location)


def _mmengine_openmmlab_loader(filename: str,
                               map_location: Any = None) -> Any:
    """``open-mmlab://<name>`` / ``openmmlab://<name>``: a URL, or a file
    under mmengine's home."""
    from mmengine.runner.checkpoint import (_get_mmengine_home,
                                            get_deprecated_model_names,
                                            get_external_models)
    model = filename.split('://', 1)[1]
    model = get_deprecated_model_names().get(model, model)
    url = _model_url(get_external_models(), model, filename)
    if url.startswith(('http://', 'https://')):
        return _mmengine_http_loader(url, map_location)
    local = osp.join(_get_mmengine_home(), url)
    if not osp.isfile(local):
        raise FileNotFoundError(f'{local} can not be found.')
    return load_checkpoint(local, map_location)


def _mmengine_mmcls_loader(filename: str, map_location: Any = None) -> Any:
    """``mmcls://<name>``: the backbone weights of an mmcls model."""
    from mmengine.runner.checkpoint import (_process_mmcls_checkpoint,
                                            get_mmcls_models)
    url = _model_url(get_mmcls_models(), filename[len('mmcls://'):],
                     filename)
    return _process_mmcls_checkpoint(_mmengine_http_loader(url, map_location))


def _mmengine_pavi_loader(filename: str, map_location: Any = None) -> Any:
    """``pavi://<model>``: downloaded to a temporary folder."""
    try:
        from pavi import modelcloud
    except ImportError:
        raise CheckpointError(f'{filename}: pavi:// checkpoints need the '
                              'pavi package (pip install pavi)') from None
    model = modelcloud.get(filename[len('pavi://'):])
    with tempfile.TemporaryDirectory() as tmp:
        local = osp.join(tmp, osp.basename(str(model.name)) or 'checkpoint')
        model.download(local)
        return load_checkpoint(local, map_location, name=filename)


def _mmengine_ceph_loader(filename: str, map_location: Any = None,
                          backend: str = 'petrel') -> Any:
    """``s3://`` / ``petrel://``: read through mmengine's file backend."""
    from mmengine.fileio import get_file_backend
    data = get_file_backend(filename, backend_args={
        'backend': backend
    }).get(filename)
    return load_checkpoint(data, map_location, name=filename)


def _mmengine_refusing_loader(filename: str, map_location: Any = None):
    """A scheme maxsup_mm has no safe loader for."""
    raise CheckpointError(
        f'{filename}: maxsup_mm has no safe loader for this URL scheme '
        "(mmengine's would unpickle it without weights_only); download the "
        'file and give its local path')


#: mmengine's CheckpointLoader prefixes -> our loader for each
_SCHEMES: Dict[str, Callable] = {
    '': _mmengine_local_loader,
    'http://': _mmengine_http_loader,
    'https://': _mmengine_http_loader,
    'torchvision://': _mmengine_torchvision_loader,
    'modelzoo://': _mmengine_torchvision_loader,
    'open-mmlab://': _mmengine_openmmlab_loader,
    'openmmlab://': _mmengine_openmmlab_loader,
    'mmcls://': _mmengine_mmcls_loader,
    'pavi://': _mmengine_pavi_loader,
    r'(\S+\:)?s3://': _mmengine_ceph_loader,
    r'(\S+\:)?petrel://': _mmengine_ceph_loader,
}

_INSTALLED = [False]


def install_mmengine_loader() -> None:
    """Route every scheme of mmengine's ``CheckpointLoader`` through
    :func:`load_checkpoint` (idempotent).

    ``Runner.load_checkpoint`` / ``resume``, ``load_from`` and
    ``init_cfg=dict(type='Pretrained', checkpoint=...)`` read checkpoints
    through it: local files (scheme ``''``), URLs (downloaded to torch's hub
    cache as mmengine does), the model-name schemes (resolved to their URL
    as mmengine does), pavi and s3/petrel.  A scheme registered before this
    call that we do not know is refused with one line.
    """
    if _INSTALLED[0]:
        return
    from mmengine.runner.checkpoint import CheckpointLoader
    for prefix in list(CheckpointLoader._schemes):
        if prefix not in _SCHEMES:
            CheckpointLoader.register_scheme(prefixes=prefix, force=True)(
                _mmengine_refusing_loader)
    for prefix, loader in _SCHEMES.items():
        CheckpointLoader.register_scheme(prefixes=prefix, force=True)(loader)
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


def shown_names(keys: List[str], limit: int = 4) -> str:
    """``'a, b, c, d and 5 more'``: the first ``limit`` names."""
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
        parts = [f'{len(v)} {name} ({shown_names(v)})' for name, v in (
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
