"""Bit-exact comparison of loaded checkpoints (numpy data included)."""
from typing import Any

import numpy as np
import torch


def assert_same(ours: Any, oracle: Any, where: str = 'checkpoint') -> None:
    """``ours`` equals ``oracle`` bit for bit, recursively.

    numpy arrays: type, dtype (byte order included), shape, memory layout
    (C / Fortran), writeable flag and bytes; numpy scalars: type and bytes;
    dtypes: equal with the same byte order; tensors: dtype and values
    (NaN payloads included, through their bytes); containers, namespaces
    and objects such as ``HistoryBuffer``: their items / ``__dict__``.
    """
    assert type(ours) is type(oracle), (where, type(ours), type(oracle))
    if isinstance(oracle, np.ndarray):
        assert ours.dtype == oracle.dtype and ours.dtype.str == \
            oracle.dtype.str, (where, ours.dtype, oracle.dtype)
        assert ours.shape == oracle.shape, where
        for flag in ('C_CONTIGUOUS', 'F_CONTIGUOUS', 'WRITEABLE', 'ALIGNED'):
            assert ours.flags[flag] == oracle.flags[flag], (where, flag)
        assert ours.tobytes(order='A') == oracle.tobytes(order='A'), where
    elif isinstance(oracle, np.generic):
        assert ours.tobytes() == oracle.tobytes(), where
    elif isinstance(oracle, np.dtype):
        assert ours == oracle and ours.str == oracle.str, where
    elif isinstance(oracle, torch.Tensor):
        assert ours.dtype == oracle.dtype and ours.shape == oracle.shape
        assert ours.reshape(-1).view(torch.uint8).equal(
            oracle.reshape(-1).view(torch.uint8)), where
    elif isinstance(oracle, dict):
        assert list(ours) == list(oracle), where
        for key in oracle:
            assert_same(ours[key], oracle[key], f'{where}.{key}')
    elif isinstance(oracle, (list, tuple)):
        assert len(ours) == len(oracle), where
        for i, (a, b) in enumerate(zip(ours, oracle)):
            assert_same(a, b, f'{where}[{i}]')
    elif type(getattr(oracle, '__dict__', None)) is dict and not callable(
            oracle):
        assert_same(vars(ours), vars(oracle), where)
    else:
        assert ours == oracle, (where, ours, oracle)
