"""The fused MaxSup loss as one registered op (imports only torch / triton).

:func:`maxsup_cross_entropy` is the one entry point: it calls the op
``torch.ops.maxsup_mm.maxsup_ce`` (:mod:`.maxsup_op`: C++ kernel on CPU,
Triton on CUDA, PyTorch elsewhere, a fake implementation for
``torch.compile``, one autograd formula).  The naive oracle
:func:`maxsup_cross_entropy_reference` lives in :mod:`.reference`.  The CPU
kernel is compiled once by ``python maxsup_mm/ops/build.py``
(``tools/setup_env.sh`` runs it); the Triton kernels compile at first use.
"""
from .maxsup_op import (BACKENDS, REDUCTIONS, available_backends,
                        check_finite, check_nonnegative, check_soft_target,
                        cpu_kernel_available, cpu_kernel_error,
                        maxsup_cross_entropy, set_default_backend)
from .reference import (cross_entropy, is_soft_target, max_suppression,
                        maxsup_cross_entropy_reference, soft_cross_entropy)

__all__ = [
    'BACKENDS', 'REDUCTIONS', 'available_backends', 'cpu_kernel_available',
    'cpu_kernel_error', 'maxsup_cross_entropy', 'set_default_backend',
    'maxsup_cross_entropy_reference', 'max_suppression', 'cross_entropy',
    'soft_cross_entropy', 'is_soft_target', 'check_nonnegative',
    'check_finite', 'check_soft_target'
]
