r"""The fused MaxSup cross-entropy: ONE registered op, one autograd formula.

The loss is eq. (6) with eq. (8) of the MaxSup paper,

.. math::
    L = \sum_k y_k \cdot \mathrm{lse}(z) - \sum_k y_k z_k
        + \alpha \Big(z_{max} - \frac{1}{K} \sum_k z_k\Big),

(:math:`y` one-hot for a hard target), and its gradient is closed-form
(softmax, eq. (9)):

.. math::
    \frac{\partial L}{\partial z_k} = \Big(\sum_j y_j\Big) q_k - y_k
        + \alpha \Big([k = \arg\max_j z_j] - \frac{1}{K}\Big).

The op (``torch.ops.maxsup_mm.maxsup_ce``, defined with
:class:`torch.library.Library`)::

    maxsup_ce(Tensor logits, Tensor target, float alpha, int ignore_index,
              int reduction, str backend, Tensor? alpha_tensor=None)
        -> (Tensor loss, Tensor gap, Tensor aux)

(``alpha_tensor``, a 0-d tensor, replaces ``alpha`` where given: what
:func:`maxsup_cross_entropy` passes inside ``torch.compile``, so that a new
alpha, e.g. from ``AlphaScheduleHook``, is a new input, not a recompile.)

* ``loss``: per position ``(N, *spatial)`` (``reduction=0``), or its mean
  (1) / sum (2) over all positions, reduced inside the op (no extra autograd
  node).  Ignored positions count with loss 0 (the mean of the unreduced
  loss, as mmpretrain's losses take it); the mean over no position is 0.
  Float32 whatever the logits' dtype (float64 for float64 logits): what
  ``F.cross_entropy`` returns under autocast, so that a loss scaler's
  ``2**16 * loss`` cannot overflow float16.  The gradient w.r.t. the
  logits has the logits' dtype.
* ``gap``: :math:`z_{max} - \bar z` (eq. 8) reduced the same way, in the
  loss's dtype; not differentiable (``loss = CE + alpha * gap``: what the
  training logs show as the regularizer).
* ``aux``: what the backward pass needs, per position: the row max ``m``,
  ``ls = log sum exp(z - m)`` (stored apart so that ``exp((z - m) - ls)``
  keeps full precision however large the logits are), the **first** arg-max
  (``torch.max``'s rule when logits tie; stored as a float, exact below 2^24
  classes) and, soft, ``sum_k y_k``; plus scratch rows for a reduction.

Kernels, per device (``backend``; ``'auto'`` picks the compiled one):

* CPU: the C++ kernel (``csrc/maxsup_cpu.cpp``, built once by
  ``python maxsup_mm/ops/build.py``), ``'cpp'`` (the widest build the CPU
  runs: AVX-512, AVX2 or portable), ``'cpp-avx2'`` or ``'cpp-generic'``
  (portable 4-lane build);
* CUDA: the Triton kernels (:mod:`.triton_maxsup`), ``'triton'``;
* anywhere: the same math in PyTorch ops (:mod:`.torch_maxsup`),
  ``'torch'``; used with a warning where no compiled kernel applies, and for
  float64.

Plus a fake (meta) implementation for ``torch.compile`` / FakeTensor, and one
autograd formula, an ``autograd.Function`` registered to the op's Autograd
key (what :func:`torch.library.register_autograd` would generate, without
its per-call cost), whose backward is the op
``maxsup_mm::maxsup_ce_backward`` with the same kernels.  In eager mode,
for plain tensors and no dispatch mode, :func:`maxsup_cross_entropy` calls
that Function and the kernels directly; tracers see the op.  The fused
loss is differentiable once: differentiating its gradient raises a
RuntimeError that says so (use ``backend='reference'``, the naive oracle of
:mod:`.reference`, for double backward).

No value of a tensor is read into Python on this path for non-CPU tensors:
an out-of-range hard target is an IndexError from the CPU kernel, and a
device-side assert (:func:`torch._assert_async`, no synchronisation) on CUDA.
A soft target must be a distribution over the classes
(:func:`check_soft_target`, a device-side assert everywhere) and ``alpha``
a finite number >= 0 (:func:`check_nonnegative`, a Python float): the
checks every loss of :mod:`maxsup_mm.models.losses` shares.

Layouts: ``(N, K)`` rows; ``(N, K, *spatial)`` with the class dim 1 is read
in place (no permute copy); a channels-last tensor (class dim innermost in
memory) is read as rows, also without a copy.  Other strides are made
contiguous first (one copy, in each direction).  The gradient has the
logits' layout (contiguous or channels-last) and is the only ``(N, K, ...)``
buffer the op allocates.
"""
import functools
import math
import os
import os.path as osp
import warnings
from typing import Optional, Tuple, Union

import torch

from . import torch_maxsup
from .reference import max_suppression, maxsup_cross_entropy_reference

__all__ = [
    'maxsup_cross_entropy', 'available_backends', 'cpu_kernel_available',
    'cpu_kernel_error', 'set_default_backend', 'BACKENDS', 'REDUCTIONS',
    'check_nonnegative', 'check_finite', 'check_soft_target'
]

BACKENDS = ('auto', 'cpp', 'cpp-avx2', 'cpp-generic', 'triton', 'torch',
            'reference')
REDUCTIONS = ('none', 'mean', 'sum')
_REDUCTION_CODES = {name: i for i, name in enumerate(REDUCTIONS)}
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ISA = {'auto': 0, 'cpp': 0, 'cpp-generic': 1, 'cpp-avx2': 2}

#: the back-end used when none is passed: ``$MAXSUP_MM_BACKEND`` (read at
#: import) or ``'auto'``; changed only by :func:`set_default_backend`.
_DEFAULT_BACKEND = [os.environ.get('MAXSUP_MM_BACKEND') or 'auto']

_ONCE = ('maxsup_cross_entropy: the fused MaxSup loss is differentiable once '
         '(its backward is a closed-form kernel); for double backward '
         "(create_graph=True) use backend='reference'")


def set_default_backend(name: str) -> str:
    """Set the back-end used when none is passed; return the previous one.

    Args:
        name (str): one of :data:`BACKENDS`.
    """
    if name not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {name!r}')
    old, _DEFAULT_BACKEND[0] = _DEFAULT_BACKEND[0], name
    return old


# ---------------------------------------------------------------------------
# Compiled kernels, loaded on first use
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _cpu_kernel() -> Union[tuple, str]:
    """``(fwd, bwd, best_isa)`` of the C++ kernel, or why it is unusable."""
    try:
        if not hasattr(torch.ops.maxsup_mm_cpu, 'fwd'):
            from . import build
            path = build.kernel_path()
            if not osp.exists(path):
                return (f'{path} is not built; run `python '
                        'maxsup_mm/ops/build.py` (tools/setup_env.sh does)')
            torch.ops.load_library(path)
        ops = torch.ops.maxsup_mm_cpu
        # the bound C++ operators (what OpOverload.__call__ forwards to)
        return (getattr(ops.fwd.default, '_op', ops.fwd.default),
                getattr(ops.bwd.default, '_op', ops.bwd.default),
                int(ops.best_isa()))
    except Exception as exc:  # a broken build must not break the loss
        return f'loading the CPU kernel failed: {exc}'


@functools.lru_cache(maxsize=None)
def _triton_module():
    """:mod:`.triton_maxsup`, or why it is unusable."""
    try:
        from . import triton_maxsup
        return triton_maxsup
    except Exception as exc:  # no triton / broken install -> fallback
        return f'Triton kernel unavailable: {exc}'


def cpu_kernel_available() -> bool:
    """Whether the compiled CPU kernel is built and loads."""
    return not isinstance(_cpu_kernel(), str)


def cpu_kernel_error() -> str:
    """Why the compiled CPU kernel is unusable ('' when it is usable)."""
    kernel = _cpu_kernel()
    return kernel if isinstance(kernel, str) else ''


def available_backends(device: str = 'cpu') -> Tuple[str, ...]:
    """Back-ends usable for float32 logits on ``device`` (``'cpu'`` or
    ``'cuda'``)."""
    names = ['torch', 'reference']
    if device == 'cpu' and cpu_kernel_available():
        best = _cpu_kernel()[2]  # 1 generic, 2 AVX2, 3 AVX-512
        # 'cpp' is the widest build; the narrower ones where they differ
        names = ['cpp'] + (['cpp-avx2'] if best > 2 else []) + (
            ['cpp-generic'] if best > 1 else []) + names
    if device == 'cuda' and not isinstance(_triton_module(), str):
        names = ['triton'] + names
    return tuple(names)


def _kernel(logits: torch.Tensor, backend: str):
    """The kernel for these logits: a C++ entry, the Triton module or the
    PyTorch module; raises if an explicitly asked-for one cannot run."""
    return _kernel_for(logits.device.type, logits.dtype, backend)


@functools.lru_cache(maxsize=None)
def _kernel_for(dev: str, dtype: torch.dtype, backend: str):
    if backend in _ISA and backend != 'auto':
        if dev != 'cpu' or not cpu_kernel_available() or \
                _ISA[backend] > _cpu_kernel()[2]:
            raise ValueError(f'maxsup_cross_entropy: backend {backend!r} '
                             'needs CPU logits and the built kernel '
                             f'({cpu_kernel_error() or dev})')
    elif backend == 'triton':
        if dev != 'cuda' or isinstance(_triton_module(), str):
            raise ValueError("maxsup_cross_entropy: backend 'triton' needs "
                             'CUDA logits and Triton '
                             f'({_triton_module() if dev == "cuda" else dev})')
    elif backend == 'reference':
        raise ValueError("maxsup_cross_entropy: backend 'reference' is the "
                         'naive function maxsup_cross_entropy_reference, not '
                         'a kernel of the op')
    elif backend not in ('auto', 'torch'):
        raise ValueError(f'maxsup_cross_entropy: backend must be one of '
                         f'{BACKENDS}, got {backend!r}')
    if backend == 'torch' or dtype not in KERNEL_DTYPES:
        return torch_maxsup
    if dev == 'cpu':
        kernel = _cpu_kernel()
        if not isinstance(kernel, str):
            return kernel
        why = kernel
    elif dev == 'cuda':
        triton = _triton_module()
        if not isinstance(triton, str):
            return triton
        why = triton
    else:
        return torch_maxsup
    warnings.warn(f'maxsup_mm: fused MaxSup kernel not used on {dev} '
                  f'({why}); using the pure-PyTorch implementation')
    return torch_maxsup


# ---------------------------------------------------------------------------
# Layouts: the kernels' (N, K, S) view
# ---------------------------------------------------------------------------
def _class_last(logits: torch.Tensor) -> Optional[tuple]:
    """The permutation to ``(N, *spatial, K)`` if that view is contiguous
    (channels-last logits: rows of K), else None."""
    nd = logits.dim()
    if nd <= 2 or logits.is_contiguous():
        return None
    perm = (0, ) + tuple(range(2, nd)) + (1, )
    return perm if logits.permute(perm).is_contiguous() else None


def _as_nks(logits: torch.Tensor, target: torch.Tensor, soft: bool):
    """``(z, target, perm)``: the ``(N, K, S)`` view (no copy for contiguous
    or channels-last logits) and the channels-last permutation or None."""
    n, k = logits.shape[0], logits.shape[1]
    s = math.prod(logits.shape[2:])  # (an empty batch has no -1 to infer)
    perm = _class_last(logits)
    if perm is not None:
        z = logits.permute(perm).view(n * s, k, 1)
        t = (target.permute(perm).reshape(n * s, k, 1)
             if soft else target.reshape(n * s, 1))
        return z, t, perm
    z = logits if logits.is_contiguous() else logits.contiguous()
    z = z.view(n, k, s)
    t = target.reshape(z.shape) if soft else target.reshape(n, s)
    return z, t, None


def _empty_grad(logits: torch.Tensor, dtype=None) -> torch.Tensor:
    """The gradient buffer: channels-last for channels-last logits, else
    contiguous (what every kernel writes)."""
    perm = _class_last(logits)
    dtype = dtype or logits.dtype
    if perm is None:
        return logits.new_empty(logits.shape, dtype=dtype)
    inv = [perm.index(d) for d in range(logits.dim())]
    return logits.new_empty([logits.shape[p] for p in perm],
                            dtype=dtype).permute(inv)


def _loss_shape(logits: torch.Tensor) -> tuple:
    return (logits.shape[0], ) + tuple(logits.shape[2:])


def check_inputs(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """Validate types and shapes (no values); return whether soft."""
    if not isinstance(logits, torch.Tensor) or not isinstance(
            target, torch.Tensor):
        raise TypeError('maxsup_cross_entropy: logits and target must be '
                        f'Tensors, got {type(logits).__name__} and '
                        f'{type(target).__name__}')
    if logits.dim() < 2 or not logits.is_floating_point():
        raise ValueError('maxsup_cross_entropy: logits must be a floating '
                         '(N, K) or (N, K, *spatial) tensor, got '
                         f'{logits.dtype} of shape {tuple(logits.shape)}')
    if logits.shape[1] == 0:
        raise ValueError('maxsup_cross_entropy: logits have no classes')
    soft = target.dim() == logits.dim() and target.is_floating_point()
    if soft:
        if target.shape != logits.shape:
            raise ValueError(
                f'maxsup_cross_entropy: soft target shape '
                f'{tuple(target.shape)} != logits shape {tuple(logits.shape)}')
    else:
        expected = _loss_shape(logits)
        if (tuple(target.shape) != expected or target.is_floating_point()
                or target.is_complex() or target.dtype == torch.bool):
            raise ValueError(
                'maxsup_cross_entropy: hard target must be integer class '
                f'indices of shape {expected}, got {target.dtype} of shape '
                f'{tuple(target.shape)}')
    if target.device != logits.device:
        raise ValueError('maxsup_cross_entropy: logits on '
                         f'{logits.device}, target on {target.device}')
    return soft


# ---------------------------------------------------------------------------
# Hyper-parameters and soft targets: the checks every loss of ours shares
# ---------------------------------------------------------------------------
def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{name} must be a number, got {type(value).__name__}')
    return float(value)


def check_nonnegative(name: str, value) -> float:
    """Return ``float(value)``; raise unless it is a finite number >= 0.

    The one check of ``alpha`` (the op, every loss and its schedule) and of
    the other non-negative weights.  ``value`` is a Python number, so this
    reads no tensor.

    Raises:
        TypeError: not a number (a bool, a string, a tensor).
        ValueError: negative, NaN or infinite; the message names the value.
    """
    value = _number(name, value)
    if not (value >= 0 and math.isfinite(value)):  # also rejects NaN, inf
        raise ValueError(f'{name} must be >= 0 and finite, got {value}')
    return value


def check_finite(name: str, value) -> float:
    """Return ``float(value)``; raise unless it is a finite number."""
    value = _number(name, value)
    if not math.isfinite(value):
        raise ValueError(f'{name} must be a finite number, got {value}')
    return value


def _soft_target_tolerance(dtype: torch.dtype) -> float:
    """How far a row sum may be from 1: 1e-3, or two ulps of 1 in a coarser
    dtype (bf16 targets: 1.6e-2)."""
    return max(1e-3, 2 * torch.finfo(dtype).eps)


def check_soft_target(target: torch.Tensor,
                      name: str = 'maxsup_cross_entropy',
                      row_sums: Optional[torch.Tensor] = None) -> None:
    """A soft target must be a distribution over the classes (dim 1):
    entries >= 0 (NaN fails) whose sum is 1 within
    ``max(1e-3, 2 * eps(dtype))``.

    Checked by :func:`torch._assert_async`: an asynchronous device-side
    assert, no host synchronisation; on CPU tensors it raises a
    RuntimeError at once, on CUDA at the next synchronising call; works on
    meta and fake tensors and inside ``torch.compile`` (a device assert in
    the graph).  The one soft-target check of the op and of every loss
    that takes soft targets.

    Args:
        target (Tensor): ``(N, K)`` or ``(N, K, *spatial)`` soft target.
        name (str): who checks, for the message.
        row_sums (Tensor, optional): the target's sums over dim 1 where
            they are known (the op's kernels save them in ``aux``): one
            pass over the target less.
    """
    if target.numel() == 0:
        return
    if target.requires_grad:
        target = target.detach()
    tol = _soft_target_tolerance(target.dtype)
    if row_sums is None:
        row_sums = target.sum(1, dtype=torch_maxsup.stats_dtype(
            target.dtype))
    low, high = torch.aminmax(row_sums)
    ok = (low >= 1 - tol) & (high <= 1 + tol) & (target.amin() >= 0)
    torch._assert_async(
        ok, f'{name}: a soft target must have entries >= 0 that sum to 1 '
        f'along the class dim 1 (within {tol:g}); normalise it (rows of '
        'Mixup/CutMix targets do)')


# ---------------------------------------------------------------------------
# The op and its backward: schema, kernels, fake, autograd
# ---------------------------------------------------------------------------
_FWD_SCHEMA = ('maxsup_ce(Tensor logits, Tensor target, float alpha, '
               'int ignore_index, int reduction, str backend, '
               'Tensor? alpha_tensor=None) '
               '-> (Tensor loss, Tensor gap, Tensor aux)')
_BWD_SCHEMA = ('maxsup_ce_backward(Tensor grad, Tensor logits, Tensor target, '
               'Tensor aux, float alpha, int ignore_index, int reduction, '
               'str backend, Tensor? alpha_tensor=None) -> Tensor')


def _alpha(alpha: float, alpha_tensor: Optional[torch.Tensor]):
    """alpha as the kernels take it: the float, or the 0-d tensor (read
    into Python only on the CPU, where that costs no synchronisation)."""
    if alpha_tensor is None:
        return alpha
    if alpha_tensor.device.type == 'cpu':
        return float(alpha_tensor)
    return alpha_tensor


def _cpu_float32_loss(fwd, logits, target, alpha, ignore_index, reduction,
                      isa):
    """The C++ kernel for bf16 / fp16 logits, with a float32 loss.

    The kernel writes an unreduced loss in the logits' dtype and rounds a
    reduced one to it; when it reduces, its float32 per-position losses and
    gaps are the last two rows of ``aux``.  So it is always asked to reduce
    (``sum`` for ``none``), and the loss comes from those rows: summed in
    float64, as the kernel sums, or copied per position.
    """
    _, gap, aux = fwd(logits, target, alpha, ignore_index, reduction or 2,
                      isa)
    saved = aux.shape[0] - 2  # m, ls, arg-max[, sum_y]
    if reduction == 0:
        shape = _loss_shape(logits)
        return (aux[saved].view(shape).clone(),
                aux[saved + 1].view(shape).clone(), aux[:saved])
    loss = aux[saved].sum(dtype=torch.float64)
    if reduction == 1:
        loss = loss / aux.shape[1]
    return loss.float(), gap, aux


def _maxsup_ce(logits, target, alpha, ignore_index, reduction, backend,
               alpha_tensor=None):
    """The op's kernel on every device: dispatch to C++ / Triton / PyTorch."""
    alpha = _alpha(alpha, alpha_tensor)
    kernel = _kernel(logits, backend)
    if isinstance(kernel, tuple) and logits.numel():
        # the C++ kernel checks and takes the user layout
        if logits.dtype == torch.float32:
            return kernel[0](logits, target, alpha, ignore_index, reduction,
                             _ISA[backend])
        return _cpu_float32_loss(kernel[0], logits, target, alpha,
                                 ignore_index, reduction, _ISA[backend])
    soft = check_inputs(logits, target)
    z, t, _ = _as_nks(logits, target, soft)
    if z.numel() == 0:
        kernel = torch_maxsup
    loss, gap, aux = kernel.forward(z, t, alpha, ignore_index, reduction,
                                    soft)
    if reduction == 0:
        shape = _loss_shape(logits)
        loss, gap = loss.view(shape), gap.view(shape)
    return loss, gap, aux


def _maxsup_ce_backward(grad, logits, target, aux, alpha, ignore_index,
                        reduction, backend, alpha_tensor=None):
    alpha = _alpha(alpha, alpha_tensor)
    kernel = _kernel(logits, backend)
    if isinstance(kernel, tuple) and logits.numel():
        return kernel[1](grad, logits, target, aux, alpha, ignore_index,
                         reduction, _ISA[backend])
    soft = check_inputs(logits, target)
    z, t, perm = _as_nks(logits, target, soft)
    if z.numel() == 0:
        kernel = torch_maxsup
    d = kernel.backward(grad, z, t, aux, alpha, ignore_index, reduction, soft)
    if perm is None:
        return d.view(logits.shape)
    inv = [perm.index(i) for i in range(logits.dim())]
    return d.view([logits.shape[p] for p in perm]).permute(inv)


def _maxsup_ce_fake(logits, target, alpha, ignore_index, reduction, backend,
                    alpha_tensor=None):
    soft = check_inputs(logits, target)
    if reduction not in (0, 1, 2):
        raise ValueError('maxsup_mm: reduction must be 0 (none), 1 (mean) or '
                         f'2 (sum), got {reduction}')
    stats = torch_maxsup.stats_dtype(logits.dtype)
    shape = () if reduction else _loss_shape(logits)
    rows = (4 if soft else 3) + (2 if reduction else 0)
    positions = logits.numel() // logits.shape[1]
    return (logits.new_empty(shape, dtype=stats),
            logits.new_empty(shape, dtype=stats),
            logits.new_empty((rows, positions), dtype=stats))


def _maxsup_ce_backward_fake(grad, logits, target, aux, alpha, ignore_index,
                             reduction, backend, alpha_tensor=None):
    check_inputs(logits, target)
    return _empty_grad(logits)


class _MaxSupCE(torch.autograd.Function):
    """The op's one autograd formula (registered to its Autograd key):
    saves the logits, the target and ``aux``; the backward pass is the op
    ``maxsup_mm::maxsup_ce_backward``.  ``gap`` and ``aux`` are not
    differentiable."""

    @staticmethod
    def forward(ctx, logits, target, alpha, ignore_index, reduction, backend,
                alpha_tensor=None):
        if _plain(logits, target):  # the op's kernel, without a re-dispatch
            loss, gap, aux = _maxsup_ce(logits, target, alpha, ignore_index,
                                        reduction, backend, alpha_tensor)
        else:
            with torch._C._AutoDispatchBelowAutograd():
                loss, gap, aux = _OP_EAGER(logits, target, alpha,
                                           ignore_index, reduction, backend,
                                           alpha_tensor)
        ctx.mark_non_differentiable(gap, aux)
        ctx.set_materialize_grads(False)  # no zero gradients for gap, aux
        ctx.save_for_backward(logits, target, aux, alpha_tensor)
        ctx.args = (alpha, ignore_index, reduction, backend)
        return loss, gap, aux

    @staticmethod
    def backward(ctx, grad, grad_gap, grad_aux):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative
            raise RuntimeError(_ONCE)
        if ctx.needs_input_grad[1]:
            raise RuntimeError(
                'maxsup_cross_entropy: the fused op does not differentiate '
                "the target; use backend='reference'")
        logits, target, aux, alpha_tensor = ctx.saved_tensors
        if grad is None:  # the loss itself was not used
            return None, None, None, None, None, None, None
        bwd = _maxsup_ce_backward if _plain(grad, logits) else _BWD_EAGER
        return (bwd(grad, logits, target, aux, *ctx.args, alpha_tensor), None,
                None, None, None, None, None)


def _plain(*tensors) -> bool:
    """Plain tensors and no dispatch mode (no tracing, FakeTensor, compile):
    the op's kernels may then be called directly, skipping two crossings of
    the dispatcher into Python per direction (~10 us per fwd+bwd on a CPU).
    Anything else goes through the registered op."""
    return (not torch._C._len_torch_dispatch_stack()
            and all(type(t) is torch.Tensor for t in tensors))


def _maxsup_ce_autograd(logits, target, alpha, ignore_index, reduction,
                        backend, alpha_tensor=None):
    """Autograd kernel: the Function above when a gradient is wanted."""
    if torch.is_grad_enabled() and (logits.requires_grad
                                    or target.requires_grad):
        return _MaxSupCE.apply(logits, target, alpha, ignore_index,
                               reduction, backend, alpha_tensor)
    with torch._C._AutoDispatchBelowAutograd():
        return _OP_EAGER(logits, target, alpha, ignore_index, reduction,
                         backend, alpha_tensor)


def _register():
    """Define the two ops and register their kernels, fakes and autograd
    (once per process)."""
    try:  # defined already (this module executed twice in one process)
        torch.ops.maxsup_mm.maxsup_ce.default
        return None
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library('maxsup_mm', 'FRAGMENT')
    lib.define(_FWD_SCHEMA)
    lib.define(_BWD_SCHEMA)
    torch.library.register_fake('maxsup_mm::maxsup_ce', _maxsup_ce_fake,
                                lib=lib)
    torch.library.register_fake('maxsup_mm::maxsup_ce_backward',
                                _maxsup_ce_backward_fake, lib=lib)
    # one Python kernel for every device: it picks C++ / Triton / PyTorch
    lib.impl('maxsup_ce', _maxsup_ce, 'CompositeExplicitAutograd')
    lib.impl('maxsup_ce_backward', _maxsup_ce_backward,
             'CompositeExplicitAutograd')
    # the autograd formula: an autograd.Function on the Autograd key (what
    # torch.library.register_autograd generates, without its per-call
    # argument re-packing, which costs ~35 us per fwd+bwd on a CPU)
    lib.impl('maxsup_ce', _maxsup_ce_autograd, 'Autograd')
    return lib


_LIB = _register()  # keeps the registrations alive
_OP = torch.ops.maxsup_mm.maxsup_ce.default
_BWD = torch.ops.maxsup_mm.maxsup_ce_backward.default
# the bound C++ operators: same dispatch, without OpOverload.__call__
_OP_EAGER = getattr(_OP, '_op', _OP)
_BWD_EAGER = getattr(_BWD, '_op', _BWD)


# ---------------------------------------------------------------------------
# The one function everything above ops/ calls
# ---------------------------------------------------------------------------
def maxsup_cross_entropy(logits: torch.Tensor,
                         target: torch.Tensor,
                         alpha: float = 0.1,
                         ignore_index: int = -100,
                         reduction: str = 'none',
                         backend: Optional[str] = None,
                         return_gap: bool = False):
    r"""MaxSup cross-entropy through the fused op (see the module docstring).

    Same values and gradients as
    :func:`~maxsup_mm.ops.reference.maxsup_cross_entropy_reference` (up to
    float rounding).

    Args:
        logits (Tensor): ``(N, K)`` or ``(N, K, *spatial)`` logits, float32,
            bfloat16 or float16 for the kernels (float64 runs the PyTorch
            back-end).
        target (Tensor): class indices ``(N, *spatial)`` (any integer dtype)
            or a soft target with the logits' shape.
        alpha (float): weight of the MaxSup term, a finite number >= 0.
        ignore_index (int): hard-target value whose loss and gradient are 0.
        reduction (str): ``'none'`` (per position), ``'mean'`` (over all
            positions, ignored ones included with loss 0; 0 when there is
            no position, with a zero gradient) or ``'sum'``.
        backend (str, optional): one of :data:`BACKENDS`; ``None``: the
            default (``'auto'``, see :func:`set_default_backend`).
        return_gap (bool): also return :math:`z_{max} - \bar z` (eq. 8),
            reduced the same way, detached.

    Returns:
        Tensor: the loss, ``(N, *spatial)`` or 0-d, float32 whatever the
        logits' dtype (float64 for float64 logits), as ``F.cross_entropy``
        gives under autocast; the gradient w.r.t. the logits has their
        dtype.  ``(loss, gap)`` with ``return_gap`` (gap: same dtype).

    Raises:
        ValueError: bad shapes, reduction or backend name; an ``alpha``
            that is negative, NaN or infinite.
        TypeError: an ``alpha`` that is not a number.
        IndexError: (CPU) a hard target outside ``[0, K)`` that is not
            ``ignore_index``; on CUDA a device-side assert instead.
        RuntimeError: (CPU) a soft target that is not a distribution
            (:func:`check_soft_target`); on CUDA a device-side assert.
    """
    if backend is None:
        backend = _DEFAULT_BACKEND[0]
    code = _REDUCTION_CODES.get(reduction)
    if code is None:
        raise ValueError(f'maxsup_cross_entropy: reduction must be one of '
                         f'{REDUCTIONS}, got {reduction!r}')
    compiling = torch.compiler.is_compiling()
    if not compiling:  # inside a graph alpha is an input, set and checked
        alpha = check_nonnegative(  # where it came from (AlphaMixin)
            'maxsup_cross_entropy: alpha', alpha)
    # a soft target is checked by a device-side assert (no host read)
    soft = target.is_floating_point() and target.shape == logits.shape
    if backend == 'reference' or (target.requires_grad
                                  and target.is_floating_point()):
        if soft:
            check_soft_target(target)
        check_inputs(logits, target)
        return _reference(logits, target, alpha, ignore_index, reduction,
                          return_gap)
    # shapes, dtypes and the backend name are checked inside the op (by the
    # C++ kernel, the Python kernels and the fake implementation)
    if compiling:
        # a float argument is a constant of the compiled graph: each new
        # alpha (AlphaScheduleHook) would recompile.  As a 0-d tensor made
        # by arithmetic, alpha is an input of the graph instead.
        alpha_tensor = torch.ones(
            (), dtype=torch_maxsup.stats_dtype(logits.dtype),
            device=logits.device) * alpha
        loss, gap, aux = _OP(logits, target, 0.0, ignore_index, code,
                             backend, alpha_tensor)
    elif _plain(logits, target):
        # eager: the op's autograd formula and kernel, called directly
        args = (logits, target, alpha, int(ignore_index), code, backend)
        if torch.is_grad_enabled() and logits.requires_grad:
            loss, gap, aux = _MaxSupCE.apply(*args)
        else:
            loss, gap, aux = _maxsup_ce(*args)
    else:  # a dispatch mode or tensor subclass: through the dispatcher
        loss, gap, aux = _OP_EAGER(logits, target, alpha, int(ignore_index),
                                   code, backend)
    if soft:  # the kernels saved the row sums of the target: aux row 3
        check_soft_target(target, row_sums=aux[3])
    return (loss, gap) if return_gap else loss


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """``x.mean()`` / ``x.sum()``; the mean of no element is 0 (not NaN)."""
    if reduction == 'sum' or (reduction == 'mean' and not x.numel()):
        return x.sum()
    return x.mean() if reduction == 'mean' else x


def _reference(logits, target, alpha, ignore_index, reduction, return_gap):
    """The naive oracle in the op's precision: float32 (float64) math, the
    gradient back in the logits' dtype through the cast."""
    z = logits.to(torch_maxsup.stats_dtype(logits.dtype))
    loss = _reduce(maxsup_cross_entropy_reference(z, target, alpha,
                                                  ignore_index), reduction)
    if not return_gap:
        return loss
    with torch.no_grad():
        gap = max_suppression(z)
        if not target.is_floating_point():
            gap = gap.masked_fill(target == ignore_index, 0.)
    return loss, _reduce(gap, reduction)
