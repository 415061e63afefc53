r"""Fused MaxSup cross-entropy: one read of the logits forward, one backward.

The loss is eq. (6) with eq. (8) of the MaxSup paper,

.. math::
    L = \sum_k y_k \cdot \mathrm{lse}(z) - \sum_k y_k z_k
        + \alpha \Big(z_{max} - \frac{1}{K} \sum_k z_k\Big),

(:math:`y` one-hot for a hard target), and its gradient is closed-form
(softmax, eq. (9)):

.. math::
    \frac{\partial L}{\partial z_k} = \Big(\sum_j y_j\Big) q_k - y_k
        + \alpha \Big([k = \arg\max_j z_j] - \frac{1}{K}\Big).

:class:`MaxSupFunction` computes, per sample (per pixel), the log-sum-exp,
the max and its **first** arg-max (``torch.max``'s rule when logits tie: the
lowest class index gets the whole ``alpha``), the sum of the logits, and
``z_gt`` (hard) or ``sum_k y_k z_k`` and ``sum_k y_k`` (soft) in one pass,
saves only ``lse``, the arg-max (and ``sum_k y_k``) per sample, and writes
the gradient above, times the upstream gradient, into the one gradient
buffer in the backward pass.  Arithmetic is fp32 for fp32/bf16/fp16 logits.

Back-ends, chosen per device (``backend='auto'``):

* ``'cpp'``: a small compiled CPU kernel (``csrc/maxsup_cpu.cpp``, built
  once by ``tools/setup_env.sh`` / ``python maxsup_mm/ops/build.py``);
  ``'cpp-generic'`` forces its portable (non-AVX2) build.
* ``'triton'``: Triton kernels for CUDA tensors (:mod:`.triton_maxsup`).
* ``'torch'``: the same Function written with PyTorch ops, used where no
  kernel is available (any device, float64).
* ``'reference'``: the naive oracle
  :func:`~maxsup_mm.models.losses.functional.maxsup_cross_entropy_reference`
  (separate ops, autograd); also used when the target requires grad.

``MAXSUP_MM_BACKEND=torch`` (or any name above; read at import) or
:func:`set_default_backend` overrides ``'auto'``.

Layouts: ``(N, K)`` rows; ``(N, K, *spatial)`` with the class dim 1 is read
in place (no permute copy): blocks of pixels are vectorised along the
contiguous spatial axis; a channels-last tensor (class dim innermost in
memory) is read as rows, also without a copy.  Other strides are made
contiguous first (one copy).

The fused loss is differentiable once: a backward pass with
``create_graph=True`` raises a RuntimeError that says so; use
``backend='reference'`` for double backward.
"""
import os
import os.path as osp
import warnings
from typing import Optional, Tuple

import torch

__all__ = [
    'fused_maxsup_cross_entropy', 'MaxSupFunction', 'available_backends',
    'cpu_kernel_available', 'set_default_backend', 'BACKENDS'
]

BACKENDS = ('auto', 'cpp', 'cpp-generic', 'triton', 'torch', 'reference')
_LOW = (torch.float16, torch.bfloat16)
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# ---------------------------------------------------------------------------
# Back-end: compiled CPU kernel
# ---------------------------------------------------------------------------
_cpu_state = {'tried': False, 'ok': False, 'why': '', 'isa': 0}
_CPU_OP = [None]  # torch.ops.maxsup_mm.maxsup_ce once loaded
_DEFAULT_BACKEND = [os.environ.get('MAXSUP_MM_BACKEND') or 'auto']


def set_default_backend(name: str) -> str:
    """Set the back-end used when none is passed; return the previous one.

    The initial default is ``$MAXSUP_MM_BACKEND`` (read at import) or
    ``'auto'``.

    Args:
        name (str): one of :data:`BACKENDS`.
    """
    if name not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {name!r}')
    old, _DEFAULT_BACKEND[0] = _DEFAULT_BACKEND[0], name
    return old


def cpu_kernel_available() -> bool:
    """Load the compiled CPU kernel once; whether it is usable."""
    if _cpu_state['tried']:
        return _cpu_state['ok']
    _cpu_state['tried'] = True
    try:
        if not hasattr(torch.ops.maxsup_mm, 'maxsup_ce'):
            from . import build
            path = build.kernel_path()
            if not osp.exists(path):
                _cpu_state['why'] = (
                    f'{path} is not built; run `python maxsup_mm/ops/build.py` '
                    '(tools/setup_env.sh does)')
                return False
            torch.ops.load_library(path)
        _cpu_state['isa'] = int(torch.ops.maxsup_mm.best_isa())
        overload = torch.ops.maxsup_mm.maxsup_ce.default
        # the bound C++ operator (what OpOverload.__call__ forwards to)
        _CPU_OP[0] = getattr(overload, '_op', overload)
        _cpu_state['ok'] = True
    except Exception as exc:  # a broken build must not break the loss
        _cpu_state['why'] = f'loading the CPU kernel failed: {exc}'
    return _cpu_state['ok']


# ---------------------------------------------------------------------------
# Back-end: pure PyTorch (any device, any float dtype)
# ---------------------------------------------------------------------------
class _TorchImpl:
    """The fused math with PyTorch ops: no compiled code needed."""

    @staticmethod
    def forward(z, target, alpha, ignore_index, soft):
        zf = z.float() if z.dtype in _LOW else z
        k = z.shape[1]
        zmax, amax = zf.max(dim=1)
        lse = torch.logsumexp(zf, dim=1)
        reg = alpha * (zmax - zf.sum(dim=1) / k)
        if soft:
            y = target.to(zf.dtype)
            sum_y = y.sum(dim=1)
            loss = sum_y * lse - (y * zf).sum(dim=1) + reg
            saved_target = y
        else:
            ignored = target == ignore_index
            index = target.masked_fill(ignored, 0)
            bad = (index < 0) | (index >= k)
            if bool(bad.any()):
                raise IndexError(
                    f'maxsup_mm: target {int(index[bad][0])} is out of bounds '
                    f'for {k} classes (ignore_index is {ignore_index})')
            z_gt = zf.gather(1, index.unsqueeze(1)).squeeze(1)
            loss = (lse - z_gt + reg).masked_fill(ignored, 0.)
            sum_y = None
            saved_target = (index, ignored)
        return loss.to(z.dtype), (saved_target, lse, amax, sum_y)

    @staticmethod
    def backward(grad, z, saved, alpha, ignore_index, soft):
        target, lse, amax, sum_y = saved
        zf = z.float() if z.dtype in _LOW else z
        k = z.shape[1]
        d = torch.sub(zf, lse.unsqueeze(1)).exp_()  # the one (N, K, S) buffer
        g = grad.to(d.dtype)
        if soft:
            d.mul_(sum_y.unsqueeze(1)).sub_(target)
        else:
            index, ignored = target
            d.scatter_add_(1, index.unsqueeze(1),
                           torch.full_like(lse, -1.).unsqueeze(1))
            g = g.masked_fill(ignored, 0.)
        d.scatter_add_(1, amax.unsqueeze(1),
                       torch.full_like(lse, alpha).unsqueeze(1))
        d.sub_(alpha / k).mul_(g.unsqueeze(1))
        return d.to(z.dtype)


# ---------------------------------------------------------------------------
# The autograd Function
# ---------------------------------------------------------------------------
_ONCE = ('maxsup_cross_entropy: the fused MaxSup loss is differentiable once '
         '(its backward is a closed-form kernel); for double backward '
         "(create_graph=True) use backend='reference'")


class MaxSupFunction(torch.autograd.Function):
    """Forward/backward of the fused loss.

    ``apply(logits, target, alpha, ignore_index, soft, impl)`` returns the
    loss per sample, ``(N, *spatial)``; ``impl`` is a back-end object
    (``forward`` / ``backward`` over the ``(N, K, S)`` view made by
    :func:`_as_nks`, ``S`` the flattened spatial size, 1 for classification).
    """

    @staticmethod
    def forward(ctx, logits, target, alpha, ignore_index, soft, impl):
        z, t, layout = _as_nks(logits, target, soft)
        loss, saved = impl.forward(z, t, alpha, ignore_index, soft)
        ctx.impl = impl
        ctx.args = (alpha, ignore_index, soft, layout, logits.shape)
        ctx.saved = saved
        ctx.save_for_backward(z)
        return loss.view((logits.shape[0], ) + tuple(logits.shape[2:]))

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError(_ONCE)
        alpha, ignore_index, soft, layout, shape = ctx.args
        z, = ctx.saved_tensors
        grad = grad.reshape(z.shape[0], z.shape[2])
        d = ctx.impl.backward(grad, z, ctx.saved, alpha, ignore_index, soft)
        return _unlayout(d, layout, shape), None, None, None, None, None


def _unlayout(d: torch.Tensor, layout: int, shape) -> torch.Tensor:
    if layout == 0:  # (N, K, S) with S the flattened spatial dims
        return d.view(shape)
    # channels-last: d is (N * S, K, 1) in (N, *spatial, K) memory order
    n, k = shape[0], shape[1]
    spatial = tuple(shape[2:])
    nd = len(shape)
    return d.view((n, ) + spatial + (k, )).permute(0, nd - 1,
                                                    *range(1, nd - 1))


def _as_nks(logits: torch.Tensor, target: torch.Tensor, soft: bool):
    """``(z, target, layout)``: the kernels' ``(N, K, S)`` view, no copy when
    the logits are contiguous or channels-last."""
    n, k = logits.shape[0], logits.shape[1]
    if logits.dim() == 2:
        z = logits if logits.is_contiguous() else logits.contiguous()
        return z.view(n, k, 1), (target.reshape(n, k, 1) if soft else
                                 target.reshape(n, 1)), 0
    s = logits.numel() // max(n * k, 1)
    if not logits.is_contiguous():
        nd = logits.dim()
        perm = (0, ) + tuple(range(2, nd)) + (1, )
        last = logits.permute(perm)
        if last.is_contiguous():  # channels-last: rows of K logits
            z = last.view(n * s, k, 1)
            t = (target.permute(perm).reshape(n * s, k, 1)
                 if soft else target.reshape(n * s, 1))
            return z, t, 1
        logits = logits.contiguous()
    z = logits.view(n, k, s)
    t = target.reshape(n, k, s) if soft else target.reshape(n, s)
    return z, t, 0


def _check(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """Validate shapes; return whether the target is soft."""
    if not isinstance(logits, torch.Tensor) or not isinstance(
            target, torch.Tensor):
        raise TypeError('maxsup_cross_entropy: logits and target must be '
                        f'Tensors, got {type(logits).__name__} and '
                        f'{type(target).__name__}')
    if logits.dim() < 2 or not logits.is_floating_point():
        raise ValueError('maxsup_cross_entropy: logits must be a floating '
                         '(N, K) or (N, K, *spatial) tensor, got '
                         f'{logits.dtype} of shape {tuple(logits.shape)}')
    soft = target.dim() == logits.dim() and target.is_floating_point()
    if soft:
        if target.shape != logits.shape:
            raise ValueError(
                f'maxsup_cross_entropy: soft target shape '
                f'{tuple(target.shape)} != logits shape {tuple(logits.shape)}')
    else:
        expected = (logits.shape[0], ) + tuple(logits.shape[2:])
        if tuple(target.shape) != expected or target.is_floating_point():
            raise ValueError(
                'maxsup_cross_entropy: hard target must be integer class '
                f'indices of shape {expected}, got {target.dtype} of shape '
                f'{tuple(target.shape)}')
    if target.device != logits.device:
        raise ValueError('maxsup_cross_entropy: logits on '
                         f'{logits.device}, target on {target.device}')
    return soft


_triton_state = {'tried': False, 'mod': None, 'why': ''}


def _triton():
    if not _triton_state['tried']:
        _triton_state['tried'] = True
        try:
            from . import triton_maxsup
            _triton_state['mod'] = triton_maxsup
        except Exception as exc:  # no triton / broken install -> fallback
            _triton_state['why'] = f'Triton kernel unavailable: {exc}'
    return _triton_state['mod']


_IMPLS = {}
_warned = set()


def _impl(name: str):
    if name not in _IMPLS:
        if name == 'triton':
            _IMPLS[name] = _triton().TritonImpl()
        else:
            _IMPLS[name] = _TorchImpl()
    return _IMPLS[name]


def _auto_backend(logits: torch.Tensor) -> str:
    if logits.dtype in _KERNEL_DTYPES:
        dev = logits.device.type
        if dev == 'cpu':
            if cpu_kernel_available():
                return 'cpp'
            _warn_once('cpu', _cpu_state['why'])
        elif dev == 'cuda':
            if _triton() is not None:
                return 'triton'
            _warn_once('cuda', _triton_state['why'])
    return 'torch'


def _warn_once(key: str, why: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f'maxsup_mm: fused MaxSup kernel not used on {key} '
                      f'({why}); using the pure-PyTorch implementation')


def available_backends(device: str = 'cpu') -> Tuple[str, ...]:
    """Back-ends usable for float32 logits on ``device`` (``'cpu'``/``'cuda'``)."""
    names = ['torch', 'reference']
    if device == 'cpu' and cpu_kernel_available():
        names = ['cpp', 'cpp-generic'] + names
        if _cpu_state['isa'] < 2:
            names.remove('cpp-generic')
    if device == 'cuda' and _triton() is not None:
        names = ['triton'] + names
    return tuple(names)


def fused_maxsup_cross_entropy(logits: torch.Tensor,
                               target: torch.Tensor,
                               alpha: float = 0.1,
                               ignore_index: int = -100,
                               backend: Optional[str] = None) -> torch.Tensor:
    r"""MaxSup cross-entropy, unreduced, with a fused forward and backward.

    Same values and gradients as
    :func:`~maxsup_mm.models.losses.functional.maxsup_cross_entropy_reference`
    (up to float rounding); see the module docstring for the math.

    Args:
        logits (Tensor): ``(N, K)`` or ``(N, K, *spatial)`` logits, float32,
            bfloat16 or float16 for the kernels (float64 runs the PyTorch
            back-end).
        target (Tensor): class indices ``(N, *spatial)`` or a soft target
            with the logits' shape.
        alpha (float): weight of the MaxSup term.
        ignore_index (int): hard-target value whose loss and gradient are 0.
        backend (str, optional): one of :data:`BACKENDS`; ``None``: the
            default (``'auto'``, see :func:`set_default_backend`).

    Returns:
        Tensor: loss per sample (pixel), shape ``(N, *spatial)``, dtype of
        ``logits``.

    Raises:
        ValueError: bad shapes or backend name.
        IndexError: a hard target outside ``[0, K)`` that is not
            ``ignore_index``.
    """
    if backend is None:
        backend = _DEFAULT_BACKEND[0]
    if backend == 'auto' and logits.is_cpu and not target.requires_grad and \
            logits.dtype in _KERNEL_DTYPES:
        # the common case first: the C++ op checks its inputs and does its
        # own autograd (no Python autograd.Function on this path)
        op = _CPU_OP[0]
        if op is not None or (cpu_kernel_available() and _CPU_OP[0]):
            return _CPU_OP[0](logits, target, float(alpha), int(ignore_index),
                              0)
    soft = _check(logits, target)
    if backend not in BACKENDS:
        raise ValueError(f'maxsup_cross_entropy: backend must be one of '
                         f'{BACKENDS}, got {backend!r}')
    alpha = float(alpha)
    if (backend == 'reference' or logits.numel() == 0
            or (soft and target.requires_grad)):
        from maxsup_mm.models.losses.functional import \
            maxsup_cross_entropy_reference
        return maxsup_cross_entropy_reference(logits, target, alpha,
                                              ignore_index)
    if backend == 'auto':
        backend = _auto_backend(logits)
    elif backend in ('cpp', 'cpp-generic'):
        if logits.device.type != 'cpu' or not cpu_kernel_available():
            raise ValueError(f'maxsup_cross_entropy: backend {backend!r} '
                             f'needs CPU logits and the built kernel '
                             f'({_cpu_state["why"] or logits.device})')
    elif backend == 'triton':
        if logits.device.type != 'cuda' or _triton() is None:
            raise ValueError('maxsup_cross_entropy: backend \'triton\' needs '
                             'CUDA logits and Triton '
                             f'({_triton_state["why"] or logits.device})')
    if backend != 'torch' and logits.dtype not in _KERNEL_DTYPES:
        backend = 'torch'
    if backend in ('cpp', 'cpp-generic'):
        return _CPU_OP[0](logits, target, alpha, int(ignore_index),
                          0 if backend == 'cpp' else 1)
    return MaxSupFunction.apply(logits, target, alpha, int(ignore_index),
                                soft, _impl(backend))
