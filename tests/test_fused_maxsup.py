"""The fused MaxSup loss against independent oracles.

Oracles: the naive MaxSup (``maxsup_cross_entropy_reference``: separate
PyTorch ops, differentiated by autograd), evaluated in float64 and in the
input's precision, ``F.cross_entropy`` (alpha = 0), and hand-made rows whose
arg-max is known.  Every back-end available here is checked: the compiled
CPU kernel (AVX2 and portable builds), the pure-PyTorch fallback, the Triton
kernel through Triton's CPU interpreter, and on a CUDA machine the Triton
kernel itself.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from maxsup_mm.models.losses.functional import (
    maxsup_cross_entropy, maxsup_cross_entropy_reference)
from maxsup_mm.ops import fused_maxsup as fm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ALPHA = 0.1

CPU_BACKENDS = [b for b in ('cpp', 'cpp-generic', 'torch')
                if b in fm.available_backends('cpu')]
CUDA = torch.cuda.is_available()
DEVICE_BACKENDS = [('cpu', b) for b in CPU_BACKENDS]
if CUDA and 'triton' in fm.available_backends('cuda'):
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
    return lambda z, t: fm.fused_maxsup_cross_entropy(
        z, t, ALPHA, ignore_index, backend=backend)


# --------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which('c++') is None and shutil.which('g++') is None,
                    reason='no C++ compiler: the PyTorch fallback is used')
def test_cpu_kernel_is_built_where_a_compiler_exists():
    assert fm.cpu_kernel_available(), (
        'the fused MaxSup CPU kernel is not available although a C++ compiler '
        f'is: {fm._cpu_state["why"]} (build it: python maxsup_mm/ops/build.py)')


def test_maxsup_cross_entropy_uses_the_fused_kernel():
    z = torch.randn(4, 5, requires_grad=True)
    loss = maxsup_cross_entropy(z, torch.tensor([0, 1, 2, 3]), ALPHA)
    name = loss.grad_fn.name()
    if fm.cpu_kernel_available():
        assert 'MaxSupCE' in name, name
    else:
        assert 'MaxSupFunction' in name, name


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
    loss = fm.fused_maxsup_cross_entropy(z, t, 0.0, backend=backend)
    ce = F.cross_entropy(z.double(), t, reduction='none')
    assert rel(loss, ce) <= 1e-6
    zs, ys, _ = make_case((2, 19, 9, 7), True, device)
    soft = fm.fused_maxsup_cross_entropy(zs, ys, 0.0, backend=backend)
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
    fm.fused_maxsup_cross_entropy(zz, t, ALPHA, backend=backend).sum().backward()
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


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
def test_soft_target_not_summing_to_one(device, backend):
    z, _, w = make_case((16, 50), False, device)
    y = torch.rand(16, 50, generator=torch.Generator().manual_seed(5)).to(
        device)  # sums to ~25: -sum y log q, no normalisation assumed
    loss, grad = loss_and_grad(fused(backend), z, y, w)
    ref_loss, ref_grad = reference(z, y, w)
    assert rel(loss, ref_loss) <= 1e-6 and rel(grad, ref_grad) <= 1e-6


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
    assert loss.dtype == dtype and grad.dtype == dtype
    # the oracle sees the same (rounded) inputs, in float64
    ref_loss, ref_grad = reference(z.double(), t.double() if soft else t,
                                   w.double())
    eps = torch.finfo(dtype).eps
    assert rel(loss, ref_loss) <= eps
    assert rel(grad, ref_grad) <= eps
    # and no worse than the naive loss run in this precision
    lo_loss, lo_grad = reference(z, t, w, dtype)
    assert rel(loss, ref_loss) <= max(rel(lo_loss, ref_loss), eps / 4)
    assert rel(grad, ref_grad) <= max(rel(lo_grad, ref_grad), eps / 4)


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
    zz = z.clone().requires_grad_(True)
    loss = fm.fused_maxsup_cross_entropy(zz, t, ALPHA, backend='torch')
    assert 'MaxSupFunction' in loss.grad_fn.name()
    old = fm.set_default_backend('torch')
    try:
        loss = maxsup_cross_entropy(zz, t, ALPHA)
        assert 'MaxSupFunction' in loss.grad_fn.name()
        (loss * w).sum().backward()
        assert rel(loss, ref_loss) <= 1e-6 and rel(zz.grad, ref_grad) <= 1e-6
    finally:
        fm.set_default_backend(old)
    # the environment variable is read when the module is imported
    code = ('import torch; from maxsup_mm.models.losses.functional import '
            'maxsup_cross_entropy as f; z = torch.randn(3, 4, requires_grad=True);'
            ' print(f(z, torch.tensor([0, 1, 2])).grad_fn.name())')
    env = dict(os.environ, MAXSUP_MM_BACKEND='reference', PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'MaxSupFunction' not in out.stdout and 'MaxSupCE' not in out.stdout
    with pytest.raises(ValueError, match='backend'):
        fm.set_default_backend('fast')


@pytest.mark.parametrize('device,backend', DEVICE_BACKENDS)
def test_double_backward_raises_a_clear_error(device, backend):
    z = torch.randn(4, 6, device=device, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3], device=device)
    loss = fm.fused_maxsup_cross_entropy(z, t, ALPHA, backend=backend).sum()
    # the C++ op refuses create_graph=True; the Python Function (torch,
    # triton) is @once_differentiable and refuses the second backward
    with pytest.raises(RuntimeError, match='differentiable once|twice'):
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


def test_target_requiring_grad_uses_the_reference():
    z = torch.randn(5, 7, requires_grad=True)
    y = torch.softmax(torch.randn(5, 7), 1).requires_grad_(True)
    maxsup_cross_entropy(z, y, ALPHA).sum().backward()
    q = F.log_softmax(z.detach(), 1)
    torch.testing.assert_close(y.grad, -q)  # d/dy of -sum y log q


@pytest.mark.skipif(not fm.cpu_kernel_available(), reason='no CPU kernel')
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
from maxsup_mm.ops import fused_maxsup as fm
from maxsup_mm.ops.triton_maxsup import TritonImpl
from maxsup_mm.models.losses.functional import maxsup_cross_entropy_reference as ref
worst = 0.0
for shape in [(7, 3), (9, 4999), (37, 100), (2, 19, 9, 7)]:
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
        w = torch.rand(t.shape if not soft else (shape[0],) + shape[2:], generator=g)
        zz = z.clone().requires_grad_(True)
        loss = fm.MaxSupFunction.apply(zz, t, 0.1, -100, soft, TritonImpl()).view(w.shape)
        (loss * w).sum().backward()
        z64 = z.double().requires_grad_(True)
        l64 = ref(z64, t.double() if soft else t, 0.1, -100)
        (l64 * w.double()).sum().backward()
        for a, b in ((loss, l64), (zz.grad, z64.grad)):
            worst = max(worst, ((a.double() - b).norm() / b.norm()).item())
print("WORST", worst)
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
    worst = float(out.stdout.split('WORST')[-1])
    assert worst <= 1e-6, worst
