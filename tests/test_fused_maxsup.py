"""The fused MaxSup op against independent oracles.

Oracles: the naive MaxSup (``maxsup_cross_entropy_reference``: separate
PyTorch ops, differentiated by autograd), evaluated in float64 and in the
input's precision, ``F.cross_entropy`` (alpha = 0), and hand-made rows whose
arg-max is known.  Every kernel of the op available here is checked: the
compiled CPU kernel (AVX-512, AVX2 and portable builds), the pure-PyTorch
kernel, the Triton kernels through Triton's CPU interpreter, and on a CUDA
machine the Triton kernels themselves.  The op's registration (opcheck,
gradcheck, torch.compile, no host sync) is tested in ``test_maxsup_op.py``.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from maxsup_mm import ops
from maxsup_mm.models.losses.functional import (
    maxsup_cross_entropy, maxsup_cross_entropy_reference)
from maxsup_mm.ops import torch_maxsup

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ALPHA = 0.1

CPU_BACKENDS = [b for b in ('cpp', 'cpp-avx2', 'cpp-generic', 'torch')
                if b in ops.available_backends('cpu')]
CUDA = torch.cuda.is_available()
DEVICE_BACKENDS = [('cpu', b) for b in CPU_BACKENDS]
if CUDA and 'triton' in ops.available_backends('cuda'):
    DEVICE_BACKENDS += [('cuda', 'triton'), ('cuda', 'torch')]

SHAPES = [
    (7, 3),  # K < one vector: the masked tail only
    (33, 1000),  # rows with a 1000 % 16 = 8 tail
    (5, 4999),  # long rows, odd length
    (64, 100),
    (2, 19, 9, 7),  # (N, K, H, W): 63 pixels = 3 blocks of 16 + 15 scalar
    (2, 150, 16, 16),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make_case(shape, soft, device='cpu', dtype=torch.float32, seed=0,
              ignore_index=-100, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g) * 3
    k = shape[1]
    if soft:
        t = torch.softmax(torch.randn(shape, generator=g) * 2, dim=1)
    else:
        t = torch.randint(0, k, (shape[0], ) + tuple(shape[2:]), generator=g)
        t[torch.rand(t.shape, generator=g) < ignore_frac] = ignore_index
    w = torch.rand((shape[0], ) + tuple(shape[2:]), generator=g) + 0.5
    return (z.to(device, dtype), t.to(device), w.to(device))


def loss_and_grad(fn, z, t, w):
    """Per-sample loss and d(sum w * loss)/dz: gradients must flow through
    weights applied after the unreduced loss."""
    z = z.detach().clone().requires_grad_(True)
    loss = fn(z, t)
    (loss * w).sum().backward()
    return loss.detach(), z.grad


def reference(z, t, w, dtype=torch.float64, ignore_index=-100):
    soft = t.is_floating_point()
    return loss_and_grad(
        lambda zz, tt: maxsup_cross_entropy_reference(
            zz, tt, ALPHA, ignore_index),
        z.to(dtype), t.to(dtype) if soft else t, w.to(dtype))


def fused(backend, ignore_index=-100):
    return lambda z, t: ops.maxsup_cross_entropy(
        z, t, ALPHA, ignore_index, backend=backend)


# --------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which('c++') is None and shutil.which('g++') is None,
                    reason='no C++ compiler: the PyTorch fallback is used')
def test_cpu_kernel_is_built_where_a_compiler_exists():
    assert ops.cpu_kernel_available(), (
        'the fused MaxSup CPU kernel is not available although a C++ compiler '
        f'is: {ops.cpu_kernel_error()} (build it: python maxsup_mm/ops/build.py)')


def _profiled_ops(fn):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return {e.name for e in p.events()}


def test_maxsup_cross_entropy_uses_the_fused_kernel():
    from torch.utils._python_dispatch import TorchDispatchMode
    z = torch.randn(4, 5, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3])
    loss = maxsup_cross_entropy(z, t, ALPHA)
    assert 'MaxSupCE' in loss.grad_fn.name(), loss.grad_fn.name()
    if ops.cpu_kernel_available():  # eager: the compiled kernel runs
        names = _profiled_ops(
            lambda: maxsup_cross_entropy(z, t, ALPHA).sum().backward())
        assert {'maxsup_mm_cpu::fwd', 'maxsup_mm_cpu::bwd'} <= names

    class Seen(TorchDispatchMode):  # what a tracer (torch.compile) sees
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    with Seen() as seen:
        maxsup_cross_entropy(z, t, ALPHA).sum().backward()
    assert {'maxsup_mm.maxsup_ce.default',
            'maxsup_mm.maxsup_ce_backward.default'} <= seen.ops, seen.ops


# --------------------------------------------------------------------------
# Values and gradients: fp32 to 1e-6 (relative), every back-end and layout
# --------------------------------------------------------------------------
@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
@pytest.mark.parametrize('shape', SHAPES, ids=str)
@pytest.mark.parametrize('soft', [False, True], ids=['hard', 'soft'])
def test_fp32_matches_reference(device, backend, shape, soft):
    z, t, w = make_case(shape, soft, device)
    loss, grad = loss_and_grad(fused(backend), z, t, w)
    ref32_loss, ref32_grad = reference(z, t, w, torch.float32)
    ref64_loss, ref64_grad = reference(z, t, w, torch.float64)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    assert loss.shape == (shape[0], ) + tuple(shape[2:])
    assert rel(loss, ref32_loss) <= 1e-6
    assert rel(grad, ref32_grad) <= 1e-6
    # and at least as close to the float64 truth as the fp32 reference is
    assert rel(loss, ref64_loss) <= max(2 * rel(ref32_loss, ref64_loss), 1e-6)
    assert rel(grad, ref64_grad) <= max(2 * rel(ref32_grad, ref64_grad), 1e-6)
    torch.testing.assert_close(grad.double(), ref64_grad, rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
def test_ignore_index_zero_loss_and_gradient(device, backend):
    for ignore_index in (255, 0):  # 0: also a valid class index
        z, t, w = make_case((2, 19, 9, 7), False, device,
                            ignore_index=ignore_index, ignore_frac=0.3)
        loss, grad = loss_and_grad(fused(backend, ignore_index), z, t, w)
        ignored = t == ignore_index
        assert ignored.any() and (~ignored).any()
        assert (loss[ignored] == 0).all()
        assert (grad.movedim(1, -1)[ignored] == 0).all()
        ref_loss, ref_grad = reference(z, t, w, torch.float64, ignore_index)
        assert rel(loss, ref_loss) <= 1e-6 and rel(grad, ref_grad) <= 1e-6


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
def test_alpha_zero_is_cross_entropy(device, backend):
    z, t, w = make_case((33, 1000), False, device, ignore_frac=0.1)
    loss = ops.maxsup_cross_entropy(z, t, 0.0, backend=backend)
    ce = F.cross_entropy(z.double(), t, reduction='none')
    assert rel(loss, ce) <= 1e-6
    zs, ys, _ = make_case((2, 19, 9, 7), True, device)
    soft = ops.maxsup_cross_entropy(zs, ys, 0.0, backend=backend)
    assert rel(soft, F.cross_entropy(zs.double(), ys.double(),
                                     reduction='none')) <= 1e-6


# --------------------------------------------------------------------------
# Ties in the max: the first index gets alpha (torch.max's rule)
# --------------------------------------------------------------------------
def _tie_rows(k, positions, device, dtype=torch.float32):
    z = torch.zeros(len(positions), k)
    for r, pos in enumerate(positions):
        z[r] = torch.linspace(-3, 1, k)[torch.randperm(
            k, generator=torch.Generator().manual_seed(r))]
        z[r, list(pos)] = 2.0  # tied maxima
    return z.to(device, dtype)


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
def test_ties_give_alpha_to_the_first_maximal_index(device, backend):
    k = 37  # two 16-wide chains, one 8-wide step... and a masked tail of 5
    positions = [(3, 11), (11, 3, 30), (35, 36), (0, 8, 16, 24, 32),
                 (20, 33), (36, 1)]
    z = _tie_rows(k, positions, device)
    t = torch.full((len(positions), ), 5, device=device)
    zz = z.clone().requires_grad_(True)
    ops.maxsup_cross_entropy(zz, t, ALPHA, backend=backend).sum().backward()
    q = torch.softmax(z.double(), 1)
    for r, pos in enumerate(positions):
        first = min(pos)
        expected = q[r] - F.one_hot(t[r], k).double() - ALPHA / k
        expected[first] += ALPHA
        torch.testing.assert_close(zz.grad[r].double(), expected, rtol=1e-5,
                                   atol=1e-6)
    # and the reference (torch.max) agrees on integer-valued logits: many ties
    zi = torch.randint(0, 3, (64, 100), generator=torch.Generator().manual_seed(
        1)).float().to(device)
    ti = torch.randint(0, 100, (64, ), device=device)
    w = torch.ones(64, device=device)
    _, grad = loss_and_grad(fused(backend), zi, ti, w)
    _, ref_grad = reference(zi, ti, w)
    assert rel(grad, ref_grad) <= 1e-6


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
def test_ties_in_segmentation_layout(device, backend):
    # (N, K, H, W): the class axis is strided; ties at classes 2 and 7
    z = torch.randn(2, 9, 5, 7) - 5
    z[:, 2] = 3.0
    z[:, 7] = 3.0
    z = z.to(device)
    t = torch.zeros(2, 5, 7, dtype=torch.long, device=device)
    w = torch.ones(2, 5, 7, device=device)
    _, grad = loss_and_grad(fused(backend), z, t, w)
    q = torch.softmax(z.double(), 1)
    expected = q - F.one_hot(t, 9).movedim(-1, 1).double() - ALPHA / 9
    expected[:, 2] += ALPHA
    torch.testing.assert_close(grad.double(), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Layouts: non-contiguous logits, channels-last, soft targets not summing to 1
# --------------------------------------------------------------------------
@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
@pytest.mark.parametrize('soft', [False, True], ids=['hard', 'soft'])
def test_non_contiguous_inputs(device, backend, soft):
    cases = []
    z, t, w = make_case((40, 30), soft, device)
    cases.append((z.t().contiguous().t(), t, w))  # transposed storage
    big, _, _ = make_case((40, 60), soft, device, seed=3)
    cases.append((big[:, ::2], t, w))  # strided columns
    zs, ts, ws = make_case((2, 19, 9, 7), soft, device, seed=4)
    cases.append((zs.contiguous(memory_format=torch.channels_last), ts, ws))
    cases.append((zs.transpose(2, 3).contiguous().transpose(2, 3), ts, ws))
    for z, t, w in cases:
        assert not z.is_contiguous()
        loss, grad = loss_and_grad(fused(backend), z, t, w)
        ref_loss, ref_grad = reference(z, t, w)
        assert rel(loss, ref_loss) <= 1e-6 and rel(grad, ref_grad) <= 1e-6


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS + [
    ('cpu', 'reference')])
def test_soft_target_must_be_a_distribution(device, backend):
    """Issue 18.14: a soft target whose rows do not sum to 1, or with a
    negative entry, is refused (a device-side assert: on the CPU it raises
    at once); a Mixup target, a softmax and a bf16-rounded one pass."""
    z, _, _ = make_case((16, 50), False, device)
    g = torch.Generator().manual_seed(5)
    y = torch.softmax(torch.randn(16, 50, generator=g) * 2, 1).to(device)
    bad_sum = y.clone()
    bad_sum[3] *= 2  # Mixup of two one-hot rows without the (1 - lam)
    negative = y.clone()
    negative[5, :2] += torch.tensor([-0.5, 0.5], device=device)  # sums to 1
    nan = y.clone()
    nan[0, 0] = float('nan')
    # (a failed device-side assert ends the CUDA context: CUDA is checked
    # in a child process, test_cuda_bad_soft_target_is_a_device_assert)
    for bad in (bad_sum, negative, torch.rand(16, 50, generator=g).to(device),
                nan) if device == 'cpu' else ():
        with pytest.raises(RuntimeError, match='sum to 1'):
            fused(backend)(z, bad)
    mix = 0.7 * F.one_hot(torch.arange(16) % 50, 50) + 0.3 * F.one_hot(
        torch.arange(16).flip(0), 50)
    for ok in (y, mix.to(device), y.bfloat16(), y.double()):
        assert torch.isfinite(fused(backend)(z, ok)).all()


CUDA_BAD_SOFT_TARGET = r'''
import torch
from maxsup_mm import ops
z = torch.randn(16, 50, device="cuda")
y = torch.softmax(torch.randn(16, 50, device="cuda"), 1)
y[3] *= 2
loss = ops.maxsup_cross_entropy(z, y, 0.1, reduction="mean")
print("QUEUED", flush=True)  # no host sync before this line
torch.cuda.synchronize()
print("NO ERROR", flush=True)
'''


@pytest.mark.skipif(not CUDA, reason='needs a GPU')
def test_cuda_bad_soft_target_is_a_device_assert():
    """On a GPU (the lead's run), in a child process (a failed device-side
    assert ends the CUDA context): a soft target summing to 2 is queued
    without a host sync and fails at the next synchronisation."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, '-c', CUDA_BAD_SOFT_TARGET],
                         env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert 'QUEUED' in out.stdout and 'NO ERROR' not in out.stdout, out
    assert out.returncode != 0 and 'device-side assert' in out.stderr, (
        out.stderr[-3000:])


# --------------------------------------------------------------------------
# Low precision: fp32 arithmetic inside, result rounded once
# --------------------------------------------------------------------------
@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16],
                         ids=['bf16', 'fp16'])
@pytest.mark.parametrize('shape', [(33, 1000), (2, 19, 9, 7)], ids=str)
@pytest.mark.parametrize('soft', [False, True], ids=['hard', 'soft'])
def test_low_precision(device, backend, dtype, shape, soft):
    z, t, w = make_case(shape, soft, device, dtype=dtype)
    loss, grad = loss_and_grad(fused(backend), z, t, w)
    # issue 18.9: a float32 loss (as F.cross_entropy gives under autocast),
    # the gradient in the logits' dtype
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    # the oracle sees the same (rounded) inputs, in float64: the loss is
    # float32 arithmetic, never rounded to the logits' precision
    ref_loss, ref_grad = reference(z.double(), t.double() if soft else t,
                                   w.double())
    eps = torch.finfo(dtype).eps
    assert rel(loss, ref_loss) <= 1e-6
    assert rel(grad, ref_grad) <= eps
    # and no worse than the naive loss run in this precision
    lo_loss, lo_grad = reference(z, t, w, dtype)
    assert rel(loss, ref_loss) <= max(rel(lo_loss, ref_loss), eps / 4)
    assert rel(grad, ref_grad) <= max(rel(lo_grad, ref_grad), eps / 4)


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS + [
    ('cpu', 'reference')])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16],
                         ids=['bf16', 'fp16'])
@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
@pytest.mark.parametrize('shape', [(33, 100), (2, 19, 9, 7)], ids=str)
@pytest.mark.parametrize('soft', [False, True], ids=['hard', 'soft'])
def test_low_precision_loss_and_gap_are_float32(device, backend, dtype,
                                                reduction, shape, soft):
    """Issue 18.9, every reduction: loss and gap in float32 and exact to
    float32 rounding (oracle: the naive loss in float64 on the same rounded
    logits), the gradient in the logits' dtype."""
    z, t, _ = make_case(shape, soft, device, dtype=dtype)
    zz = z.clone().requires_grad_(True)
    loss, gap = ops.maxsup_cross_entropy(zz, t, ALPHA, reduction=reduction,
                                         backend=backend, return_gap=True)
    assert loss.dtype == torch.float32 and gap.dtype == torch.float32
    z64 = z.double().requires_grad_(True)
    ref = maxsup_cross_entropy_reference(z64, t.double() if soft else t,
                                         ALPHA)
    ref_gap = ops.max_suppression(z.double())
    if not soft:
        ref_gap = ref_gap.masked_fill(t == -100, 0.)
    if reduction != 'none':
        ref, ref_gap = getattr(ref, reduction)(), getattr(ref_gap,
                                                          reduction)()
    assert rel(loss, ref) <= 1e-6 and rel(gap, ref_gap) <= 1e-6
    (loss * 3).sum().backward()
    (ref * 3).sum().backward()
    assert zz.grad.dtype == dtype
    assert rel(zz.grad, z64.grad) <= torch.finfo(dtype).eps


def _amp_devices():
    out = [('cpu', b, torch.bfloat16) for b in CPU_BACKENDS]
    if CUDA:
        out += [('cuda', b, d) for b in ops.available_backends('cuda')
                if b != 'reference' for d in (torch.float16, torch.bfloat16)]
    return out


@pytest.mark.parametrize('device,backend,dtype', _amp_devices(), ids=str)
@pytest.mark.parametrize('soft', [False, True], ids=['hard', 'soft'])
def test_autocast_loss_is_float32_like_cross_entropy(device, backend, dtype,
                                                     soft):
    """Issue 18.9: under torch.autocast a Linear gives low-precision
    logits; F.cross_entropy (on autocast's float32 list) returns a float32
    loss and a gradient in the logits' dtype.  The fused loss does the same,
    with alpha = 0 the value of F.cross_entropy under the same autocast,
    with alpha > 0 the naive loss in float64 on the same logits."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g).to(device)
    fc = torch.nn.Linear(32, 100).to(device)
    y = torch.randint(0, 100, (64, ), generator=g).to(device)
    if soft:
        y = 0.6 * F.one_hot(y, 100) + 0.4 * F.one_hot(y.roll(1), 100)
    for alpha in (0.0, ALPHA):
        with torch.autocast(device, dtype=dtype):
            z = fc(x)
            z.retain_grad()
            loss = ops.maxsup_cross_entropy(z, y, alpha, reduction='mean',
                                            backend=backend)
            z_ce = fc(x)
            z_ce.retain_grad()
            ce = F.cross_entropy(z_ce, y)
        assert z.dtype == dtype and ce.dtype == torch.float32
        assert loss.dtype == torch.float32
        loss.backward()
        ce.backward()
        assert z.grad.dtype == dtype == z_ce.grad.dtype
        z64 = z.detach().double().requires_grad_(True)
        ref = maxsup_cross_entropy_reference(
            z64, y.double() if soft else y, alpha).mean()
        ref.backward()
        assert rel(loss, ref) <= 1e-6
        assert rel(z.grad, z64.grad) <= torch.finfo(dtype).eps
        if alpha == 0:  # both float32 math, rounded once to the logits'
            torch.testing.assert_close(loss, ce, rtol=1e-6, atol=1e-6)
            assert rel(z.grad, z_ce.grad) <= torch.finfo(dtype).eps


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
def test_fp16_loss_survives_grad_scaler(device, backend):
    """Issue 18.9: GradScaler multiplies the loss by 2**16 before backward;
    a float16 loss of ~4.6 then overflows (65504 is float16's largest),
    the float32 loss does not, and the gradient is the scaled one."""
    z, t, _ = make_case((64, 100), False, device, dtype=torch.float16,
                        ignore_frac=0)
    scaler = torch.amp.GradScaler(device, init_scale=2.**16)
    zz = z.clone().requires_grad_(True)
    loss = ops.maxsup_cross_entropy(zz, t, ALPHA, reduction='mean',
                                    backend=backend)
    scaled = scaler.scale(loss)
    assert torch.isfinite(scaled), (loss, scaled)
    scaled.backward()
    z64 = z.double().requires_grad_(True)
    maxsup_cross_entropy_reference(z64, t, ALPHA).mean().backward()
    assert torch.isfinite(zz.grad).all()
    assert rel(zz.grad.double() / 2**16, z64.grad) <= 1e-3


@pytest.mark.skipif(not CUDA, reason='needs a GPU')
def test_cuda_autocast_fp16_with_grad_scaler_trains():
    """On a GPU (the lead's run): a few steps of a Linear classifier under
    autocast(float16) with GradScaler: no step is skipped for an overflow
    (the scale stays 2**16) and the loss goes down."""
    torch.manual_seed(0)
    fc = torch.nn.Linear(32, 100).cuda()
    opt = torch.optim.SGD(fc.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler('cuda', init_scale=2.**16,
                                  growth_interval=1000)
    x = torch.randn(256, 32, device='cuda')
    y = torch.randint(0, 100, (256, ), device='cuda')
    losses = []
    for _ in range(5):
        opt.zero_grad()
        with torch.autocast('cuda', dtype=torch.float16):
            loss = ops.maxsup_cross_entropy(fc(x), y, ALPHA,
                                            reduction='mean')
        assert loss.dtype == torch.float32
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert scaler.get_scale() == 2.**16, losses
    assert losses[-1] < losses[0], losses


# --------------------------------------------------------------------------
# Empty batches and alpha (issue 18.14)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS + [
    ('cpu', 'reference')])
@pytest.mark.parametrize('shape', [(0, 5), (0, 5, 3, 4), (2, 5, 0, 3)],
                         ids=str)
@pytest.mark.parametrize('soft', [False, True], ids=['hard', 'soft'])
def test_empty_batch_mean_is_zero_with_zero_gradient(device, backend, shape,
                                                     soft):
    """A mean over no position is 0 (not F.cross_entropy's NaN), still in
    the graph, with a zero gradient; the sum is 0 and 'none' is empty."""
    z = torch.randn(shape, device=device, requires_grad=True)
    t = (torch.zeros(shape, device=device) if soft else torch.zeros(
        (shape[0], ) + shape[2:], dtype=torch.long, device=device))
    for reduction in ('mean', 'sum'):
        z.grad = None
        loss, gap = ops.maxsup_cross_entropy(z, t, ALPHA, reduction=reduction,
                                             backend=backend, return_gap=True)
        assert loss.shape == () and loss.requires_grad
        assert loss.item() == 0 and gap.item() == 0, (reduction, loss, gap)
        loss.backward()
        assert z.grad.shape == z.shape and not z.grad.abs().sum().item()
    loss = ops.maxsup_cross_entropy(z, t, ALPHA, backend=backend)
    assert loss.shape == (shape[0], ) + shape[2:]


@pytest.mark.parametrize('backend', CPU_BACKENDS + ['reference'])
@pytest.mark.parametrize('alpha', [float('nan'), float('inf'), -float('inf'),
                                   -1, -1e-9])
def test_alpha_must_be_finite_and_nonnegative(backend, alpha):
    """A ValueError naming the value, before anything is computed."""
    z, t, _ = make_case((4, 6), False)
    with pytest.raises(ValueError,
                       match=rf'alpha must be >= 0 and finite, got {alpha}'):
        ops.maxsup_cross_entropy(z, t, alpha, backend=backend)
    with pytest.raises(TypeError, match='alpha must be a number'):
        ops.maxsup_cross_entropy(z, t, '0.1', backend=backend)
    assert torch.isfinite(ops.maxsup_cross_entropy(z, t, 0, backend=backend)
                          ).all()


def test_float64_runs_the_pytorch_backend_exactly():
    z, t, w = make_case((33, 100), False, dtype=torch.float64)
    loss, grad = loss_and_grad(fused(None), z, t, w)
    ref_loss, ref_grad = reference(z, t, w)
    assert rel(loss, ref_loss) <= 1e-12 and rel(grad, ref_grad) <= 1e-12


# --------------------------------------------------------------------------
# Fallback selection, errors, memory
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_fallback_forced_by_argument_env_and_default(monkeypatch):
    z, t, w = make_case((33, 100), False)
    ref_loss, ref_grad = reference(z, t, w)
    calls = []
    for name in ('forward', 'backward'):  # count the PyTorch kernel's calls
        real = getattr(torch_maxsup, name)
        monkeypatch.setattr(torch_maxsup, name, lambda *a, _r=real, _n=name:
                            calls.append(_n) or _r(*a))
    zz = z.clone().requires_grad_(True)
    loss = ops.maxsup_cross_entropy(zz, t, ALPHA, backend='torch')
    assert 'MaxSupCE' in loss.grad_fn.name() and calls == ['forward']
    old = ops.set_default_backend('torch')
    try:
        loss = maxsup_cross_entropy(zz, t, ALPHA)
        assert 'MaxSupCE' in loss.grad_fn.name()
        (loss * w).sum().backward()
        assert calls == ['forward', 'forward', 'backward']
        assert rel(loss, ref_loss) <= 1e-6 and rel(zz.grad, ref_grad) <= 1e-6
    finally:
        ops.set_default_backend(old)
    # the environment variable is read when the module is imported
    code = ('import torch; from maxsup_mm.models.losses.functional import '
            'maxsup_cross_entropy as f; z = torch.randn(3, 4, requires_grad=True);'
            ' print(f(z, torch.tensor([0, 1, 2])).grad_fn.name())')
    env = dict(os.environ, MAXSUP_MM_BACKEND='reference', PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'MaxSupCE' not in out.stdout and out.stdout.strip()
    with pytest.raises(ValueError, match='backend'):
        ops.set_default_backend('fast')
    with pytest.raises(ValueError, match='backend'):
        ops.maxsup_cross_entropy(z, t, backend='fast')
    if ops.cpu_kernel_available():  # a kernel that cannot run: a clear error
        with pytest.raises(ValueError, match="'triton' needs CUDA"):
            ops.maxsup_cross_entropy(z, t, backend='triton')


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
def test_double_backward_raises_a_clear_error(device, backend):
    z = torch.randn(4, 6, device=device, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3], device=device)
    loss = ops.maxsup_cross_entropy(z, t, ALPHA, backend=backend).sum()
    # the op's autograd formula refuses create_graph=True
    with pytest.raises(RuntimeError, match='differentiable once'):
        (g, ) = torch.autograd.grad(loss, z, create_graph=True)
        g.sum().backward()
    # the reference supports it
    ref = maxsup_cross_entropy_reference(z, t, ALPHA).sum()
    (g, ) = torch.autograd.grad(ref, z, create_graph=True)
    g.pow(2).sum().backward()


@pytest.mark.parametrize('backend', CPU_BACKENDS)
def test_bad_inputs_raise(backend):
    f = fused(backend)
    with pytest.raises(IndexError, match='out of bounds'):
        f(torch.randn(3, 4), torch.tensor([0, 4, 1]))
    with pytest.raises(IndexError, match='out of bounds'):
        f(torch.randn(3, 4), torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match='target'):
        f(torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='soft target'):
        f(torch.randn(3, 4), torch.rand(3, 5))
    with pytest.raises(ValueError, match='logits'):
        f(torch.randn(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match='no classes'):
        f(torch.randn(3, 0), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match='target'):  # bool is not a class
        f(torch.randn(3, 4), torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match='reduction'):
        ops.maxsup_cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]),
                                 reduction='avg', backend=backend)


def test_target_requiring_grad_uses_the_reference():
    z = torch.randn(5, 7, requires_grad=True)
    y = torch.softmax(torch.randn(5, 7), 1).requires_grad_(True)
    maxsup_cross_entropy(z, y, ALPHA).sum().backward()
    q = F.log_softmax(z.detach(), 1)
    torch.testing.assert_close(y.grad, -q)  # d/dy of -sum y log q


@pytest.mark.skipif(not ops.cpu_kernel_available(), reason='no CPU kernel')
@pytest.mark.parametrize('shape', [(256, 1000), (2, 150, 32, 32)], ids=str)
def test_cpu_kernel_allocates_only_the_gradient(shape):
    """At most one (B, K) buffer: the gradient itself (no softmax kept)."""
    from torch.profiler import ProfilerActivity, profile
    z = torch.randn(shape, requires_grad=True)
    t = torch.randint(0, shape[1], (shape[0], ) + shape[2:])
    maxsup_cross_entropy(z, t, ALPHA).mean().backward()  # warm-up
    z.grad = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        maxsup_cross_entropy(z, t, ALPHA).mean().backward()
    try:
        events = [e for e in p.profiler.kineto_results.events()
                  if e.name() == '[memory]']
    except AttributeError:
        pytest.skip('this torch profiler does not expose allocation events')
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    logits = z.numel() * 4
    assert logits <= peak <= 1.1 * logits, (peak, logits)


# --------------------------------------------------------------------------
# The Triton kernels, without a GPU: Triton's interpreter on CPU tensors
# --------------------------------------------------------------------------
TRITON_INTERPRETER_CHECK = r'''
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
from maxsup_mm import ops
from maxsup_mm.ops import maxsup_op, triton_maxsup
# the op's Triton kernels on CPU tensors: the whole op path (autograd,
# layouts, reductions), with every kernel run by Triton's interpreter
maxsup_op._kernel_for = lambda dev, dtype, backend: triton_maxsup
split = {"n": 1}
triton_maxsup.default_splits = lambda z: split["n"] if z.shape[2] == 1 else 1
ref = ops.maxsup_cross_entropy_reference
worst = 0.0


def check(z, t, w, reduction, ignore_index=-100):
    global worst
    soft = t.is_floating_point()
    zz = z.clone().requires_grad_(True)
    loss, gap = ops.maxsup_cross_entropy(zz, t, 0.1, ignore_index, reduction,
                                         return_gap=True)
    (loss * w if reduction == "none" else loss * w.sum()).sum().backward()
    z64 = z.double().requires_grad_(True)
    l64 = ref(z64, t.double() if soft else t, 0.1, ignore_index)
    g64 = ops.max_suppression(z.double())
    if not soft:
        g64 = g64.masked_fill(t == ignore_index, 0.)
    if reduction != "none":
        l64, g64 = getattr(l64, reduction)(), getattr(g64, reduction)()
    (l64 * w.double() if reduction == "none" else
     l64 * w.double().sum()).sum().backward()
    assert gap.dtype == torch.float32 and not gap.requires_grad
    for a, b in ((loss, l64), (zz.grad, z64.grad), (gap, g64)):
        worst = max(worst, ((a.double() - b).norm() / b.norm()).item())


cases = [(7, 3), (9, 4999), (37, 100), (2, 19, 9, 7)]
for shape in cases:
    for soft in (False, True):
        g = torch.Generator().manual_seed(0)
        z = torch.randn(shape, generator=g) * 3
        z[:, :2] = z.amax(1, keepdim=True)[:, :1] + 1  # ties at the max
        k = shape[1]
        if soft:
            t = torch.softmax(torch.randn(shape, generator=g), 1)
        else:
            t = torch.randint(0, k, (shape[0],) + shape[2:], generator=g)
            t.view(-1)[::4] = -100
        w = torch.rand((shape[0],) + shape[2:], generator=g)
        for reduction in ("none", "mean", "sum"):
            check(z, t, w, reduction)
        if len(shape) > 2:  # channels-last: read as rows
            check(z.contiguous(memory_format=torch.channels_last), t, w, "none")
        if shape[1] > 50:  # split-K forward: 3 ranges of classes per row
            split["n"] = 3
            check(z, t, w, "mean")
            check(z + 1e4, t, w, "none")  # large offset, merged partials
            split["n"] = 1
# alpha as a 0-d tensor (what the op gets inside torch.compile)
op = torch.ops.maxsup_mm.maxsup_ce.default
z, t = torch.randn(37, 100) * 3, torch.randint(0, 100, (37,))
zz = z.clone().requires_grad_(True)
loss = op(zz, t, 0.0, -100, 1, "auto", torch.tensor(0.1))[0]
loss.backward()
z64 = z.double().requires_grad_(True)
l64 = ref(z64, t, 0.1).mean()
l64.backward()
for a, b in ((loss, l64), (zz.grad, z64.grad)):
    worst = max(worst, ((a.double() - b).norm() / b.norm()).item())
print("WORST", worst)
try:  # an out-of-range target: the asynchronous assert of the op
    ops.maxsup_cross_entropy(torch.randn(3, 4), torch.tensor([0, 4, 1]))
    print("NO ERROR")
except RuntimeError as exc:
    print("ASSERT", "out of bounds" in str(exc))
'''


@pytest.mark.slow
def test_triton_kernels_in_the_interpreter():
    pytest.importorskip('triton')
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, '-c', TRITON_INTERPRETER_CHECK],
                         env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0 and 'TRITON_INTERPRET' in out.stderr:
        pytest.skip('this Triton has no interpreter')
    assert out.returncode == 0, out.stderr[-3000:]
    worst = float(out.stdout.split('WORST')[-1].split()[0])
    assert worst <= 1e-6, worst
    assert 'ASSERT True' in out.stdout, out.stdout


# --------------------------------------------------------------------------
# No read past the end of the logits / soft target (guard page)
# --------------------------------------------------------------------------
GUARD_PAGE_CHECK = r'''
import ctypes, mmap, sys
import torch
from maxsup_mm import ops
from maxsup_mm.ops.reference import maxsup_cross_entropy_reference as ref

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
keep = []


def at_page_end(src):
    """A copy of src whose last byte is the last one before a PROT_NONE page."""
    nbytes = src.numel() * src.element_size()
    mm = mmap.mmap(-1, 2 * PAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    assert libc.mprotect(addr + PAGE, PAGE, 0) == 0, ctypes.get_errno()
    t = torch.frombuffer(mm, dtype=src.dtype, count=src.numel(),
                         offset=PAGE - nbytes).view(src.shape)
    t.copy_(src)
    keep.append(mm)
    return t


for backend in sys.argv[1].split(','):
    for dtype in (torch.float32, torch.bfloat16):
        for soft in (False, True):
            for n, k in [(1, 1), (2, 1), (1, 2), (3, 2), (1, 3), (2, 3),
                         (4, 3), (2, 5), (3, 7), (2, 9), (2, 13), (2, 17)]:
                g = torch.Generator().manual_seed(n * 100 + k)
                z0 = (torch.randn(n, k, generator=g) * 3).to(dtype)
                t0 = (torch.softmax(torch.randn(n, k, generator=g), 1) if soft
                      else torch.randint(0, k, (n,), generator=g))
                z = at_page_end(z0).requires_grad_(True)
                t = at_page_end(t0) if soft else t0
                loss = ops.maxsup_cross_entropy(z, t, 0.1, backend=backend)
                loss.sum().backward()
                zr = z0.double().requires_grad_(True)
                ref(zr, t0.double() if soft else t0, 0.1).sum().backward()
                tol = 1e-5 if dtype == torch.float32 else 2e-2
                lr = ref(z0.double(), t0.double() if soft else t0, 0.1)
                torch.testing.assert_close(loss.double(), lr, rtol=tol, atol=tol)
                torch.testing.assert_close(z.grad.double(), zr.grad, rtol=tol,
                                           atol=tol)
print('GUARD OK')
'''


@pytest.mark.slow  # a child process per case
@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='mmap/mprotect guard page: Linux only')
@pytest.mark.parametrize('backend', [b for b in ('auto', 'cpp', 'cpp-avx2',
                                               'cpp-generic')
                                     if b == 'auto' or b in CPU_BACKENDS])
def test_no_read_past_the_end_of_the_logits(backend):
    """K <= 3 (and any tail): logits and soft targets that end right before
    an unreadable page, fp32 and bf16, forward and backward.  Run in a child
    process so that a segfault fails this test instead of killing pytest."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', GUARD_PAGE_CHECK, backend],
                         env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and 'GUARD OK' in out.stdout, (
        f'rc={out.returncode} (-11: segfault, a read past the tensor)\n'
        f'{out.stderr[-3000:]}')


def test_triton_kernels_compile_for_cuda_without_a_gpu():
    """Every Triton kernel of the op compiles for a real GPU (sm_90: Triton
    front end, LLVM, PTX and the bundled ptxas), fp32 and bf16 logits (the
    loss and its gradient float32), hard and soft, reduced or not, alpha
    as a float or a tensor: what the interpreter test cannot show (types,
    layouts, constexpr branches)."""
    triton = pytest.importorskip('triton')
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip('this Triton cannot compile ahead of time')
    from maxsup_mm.ops import triton_maxsup as tm
    target = GPUTarget('cuda', 90, 32)

    def build(fn, names, types, consts, warps=4):
        sig = dict(zip(names, types))
        sig.update({k: 'constexpr' for k in consts})
        triton.compile(ASTSource(fn, sig, consts), target=target,
                       options={'num_warps': warps})

    fwd = ['z_ptr', 't_ptr', 'loss_ptr', 'gap_ptr', 'aux_ptr', 'sums_ptr', 'P',
           'NS', 'K', 'stride_outer', 'stride_pos', 'stride_k', 'alpha',
           'alpha_ptr', 'ignore_index']
    bwd = ['z_ptr', 't_ptr', 'g_ptr', 'aux_ptr', 'dz_ptr', 'P', 'NS', 'K',
           'stride_outer', 'stride_pos', 'stride_k', 'g_stride_outer',
           'g_stride_pos', 'g_scale', 'alpha', 'alpha_ptr', 'ignore_index']
    i32 = ['i32'] * 6
    for zt, soft, flag in [('*fp32', False, False), ('*bf16', True, True),
                           ('*bf16', False, True), ('*fp32', True, False)]:
        tt = '*fp32' if soft else '*i64'
        for bp, bk in ((1, 4096), (128, 16)):
            build(tm._fwd_kernel, fwd,
                  [zt, tt, '*fp32', '*fp32', '*fp32', '*fp32'] + i32 +
                  ['fp32', '*fp32', 'i32'],
                  dict(SOFT=soft, REDUCED=flag, ALPHA_T=flag, BLOCK_P=bp,
                       BLOCK_K=bk), 8)
            build(tm._bwd_kernel, bwd,
                  [zt, tt, '*fp32', '*fp32', zt] + i32 +
                  ['i32', 'i32', 'fp32', 'fp32', '*fp32', 'i32'],
                  dict(SOFT=soft, ALPHA_T=flag, BLOCK_P=bp,
                       BLOCK_K=min(bk, 2048)), 8)
        build(tm._fwd_split_kernel,
              ['z_ptr', 't_ptr', 'part_ptr', 'NS', 'K', 'SPLITS',
               'k_per_split'], [zt, tt, '*fp32', 'i32', 'i32', 'i32', 'i32'],
              dict(SOFT=soft, BLOCK_P=1, BLOCK_K=2048), 8)
        build(tm._fwd_combine_kernel,
              ['z_ptr', 't_ptr', 'part_ptr', 'loss_ptr', 'gap_ptr', 'aux_ptr',
               'sums_ptr', 'NS', 'K', 'SPLITS', 'alpha', 'alpha_ptr',
               'ignore_index'],
              [zt, tt] + ['*fp32'] * 5 + ['i32', 'i32', 'i32', 'fp32', '*fp32',
                                          'i32'],
              dict(SOFT=soft, REDUCED=flag, ALPHA_T=flag, BLOCK_P=64,
                   BLOCK_S=32))
        build(tm._finish_kernel,
              ['sums_ptr', 'loss_ptr', 'gap_ptr', 'ok_ptr', 'NP', 'scale'],
              ['*fp32', '*fp32', '*fp32', '*i32', 'i32', 'fp32'],
              dict(REDUCED=flag, CHECK=not soft, BLOCK=1024))
