"""Checkpoints made only of the numpy globals a checkpoint may name
(``numpy.dtype``, ``numpy.ndarray``, ``..multiarray._reconstruct``,
``..multiarray.scalar``), with pickled state numpy would trust: forged dtype
flags (``NPY_ITEM_HASOBJECT``: raw bytes taken for object pointers), object,
structured and subarray dtypes, a data length that does not fit the shape.
Before maxsup_mm checked that state, loading some of them crashed the
interpreter (segfault), so tests load them in a subprocess."""
import io
import zipfile
from typing import Callable, Dict

import numpy as np
import torch

NPY_ITEM_REFCOUNT = 0x01  # == NPY_ITEM_HASOBJECT
NPY_OBJECT_FLAGS = 0x3f   # the flags of numpy's object dtype
_core = getattr(np, '_core', None) or np.core
RECONSTRUCT = _core.multiarray._reconstruct
SCALAR = _core.multiarray.scalar


class Reduce:
    """Pickles as ``func(*args)``, then BUILD with ``state`` (if given):
    any call pickle can express, with any state."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is None:
            return self.func, self.args
        return self.func, self.args, self.state


def dtype(spec: str, endian: str = '<', subarray=None, names=None,
          fields=None, elsize: int = -1, alignment: int = -1,
          flags: int = 0) -> Reduce:
    """``numpy.dtype(spec)`` with the given ``__setstate__`` state
    (numpy's own pickle of ``np.dtype('f8')`` is ``dtype('f8')``)."""
    return Reduce(np.dtype, (spec, False, True),
                  (3, endian, subarray, names, fields, elsize, alignment,
                   flags))


def array(descr, shape, data: bytes, fortran: bool = False) -> Reduce:
    """An ndarray as numpy pickles it: ``_reconstruct`` + BUILD state."""
    return Reduce(RECONSTRUCT, (np.ndarray, (0, ), b'b'),
                  (1, tuple(shape), descr, fortran, data))


def forged_cases() -> Dict[str, object]:
    """name -> object whose pickle must be refused."""
    pointers = b'\x41' * 16  # two "object pointers" 0x4141414141414141
    obj = dtype('O8', '|', flags=NPY_OBJECT_FLAGS)
    plain_obj = Reduce(np.dtype, ('O8', False, True))  # no BUILD
    return {
        # numpy 2.4: segfaults as soon as the array is printed
        'object_field_flags_cleared': array(
            dtype('V8', '|', names=('a', ), fields={'a': (plain_obj, 0)},
                  elsize=8, alignment=1, flags=0), (2, ), pointers),
        'plain_object_dtype_array': array(plain_obj, (2, ), pointers),
        'hasobject_flag_array': array(
            dtype('f8', flags=NPY_ITEM_REFCOUNT), (2, ), pointers),
        'object_flags_array': array(
            dtype('f8', flags=NPY_OBJECT_FLAGS), (2, ), pointers),
        'hasobject_flag_dtype': dtype('f8', flags=NPY_ITEM_REFCOUNT),
        'object_dtype_array': array(obj, (2, ), pointers),
        'object_scalar': Reduce(SCALAR, (obj, pointers[:8])),
        'hasobject_scalar': Reduce(
            SCALAR, (dtype('f8', flags=NPY_ITEM_REFCOUNT), pointers[:8])),
        'structured_object_field': array(
            dtype('V8', '|', names=('a', ), fields={'a': (obj, 0)},
                  elsize=8, alignment=1, flags=NPY_OBJECT_FLAGS),
            (2, ), pointers),
        'record_dtype': array(
            dtype('V4', '|', names=('a', ),
                  fields={'a': (dtype('f4'), 0)}, elsize=4, alignment=1,
                  flags=0x10), (1, ), b'\0' * 4),
        'subarray_dtype': array(
            dtype('V16', '|', subarray=(dtype('f8'), (2, )), elsize=16,
                  alignment=8), (1, ), b'\0' * 16),
        'forged_elsize': array(dtype('f8', elsize=1 << 20), (1, ),
                               b'\0' * 8),
        'short_data': array(dtype('f8'), (1 << 20, ), b'\0' * 8),
        'fake_ndarray_class': Reduce(RECONSTRUCT,
                                     (np.dtype, (0, ), b'b')),
    }


def rewrite_pickle(checkpoint: bytes,
                   edit: Callable[[bytes], bytes]) -> bytes:
    """``checkpoint`` (a torch zip) with its ``data.pkl`` replaced by
    ``edit(data.pkl)`` (e.g. numpy 2.x module names -> 1.x names, or a
    hand-written pickle); the other members are kept."""
    src = zipfile.ZipFile(io.BytesIO(checkpoint))
    out = io.BytesIO()
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith('/data.pkl'):
                data = edit(data)
            dst.writestr(info.filename, data)
    return out.getvalue()


def numpy1_names(checkpoint: bytes) -> bytes:
    """``checkpoint`` as numpy 1.x writes it (``numpy.core.multiarray``)."""
    return rewrite_pickle(checkpoint, lambda data: data.replace(
        b'numpy._core.multiarray', b'numpy.core.multiarray'))


def write_forged_checkpoints(folder: str, with_numpy1: bool = True
                             ) -> Dict[str, str]:
    """Write each of :func:`forged_cases` (inside a state-dict-like dict)
    as a torch zip file; with ``with_numpy1`` also the numpy 1.x spelling
    (``numpy.core.multiarray``) of each.  Returns name -> path."""
    paths = {}
    for name, obj in forged_cases().items():
        buf = io.BytesIO()
        torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': obj}, buf)
        variants = {name: buf.getvalue()}
        if with_numpy1:
            variants[name + '_np1'] = numpy1_names(buf.getvalue())
        for key, data in variants.items():
            path = f'{folder}/{key}.pth'
            with open(path, 'wb') as f:
                f.write(data)
            paths[key] = path
    return paths
