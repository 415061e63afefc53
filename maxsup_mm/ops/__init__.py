"""Fused kernels: the MaxSup cross-entropy at the cost of plain cross-entropy.

See :mod:`maxsup_mm.ops.fused_maxsup`.  The CPU kernel is compiled once by
``python maxsup_mm/ops/build.py`` (``tools/setup_env.sh`` runs it); the CUDA
kernel is Triton, compiled at first use.  Without either, a pure-PyTorch
implementation of the same fused math is used.
"""
from .fused_maxsup import (BACKENDS, MaxSupFunction, available_backends,
                           cpu_kernel_available, fused_maxsup_cross_entropy,
                           set_default_backend)

__all__ = [
    'BACKENDS', 'MaxSupFunction', 'available_backends', 'cpu_kernel_available',
    'fused_maxsup_cross_entropy', 'set_default_backend'
]
