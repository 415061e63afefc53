"""Triton kernels of the fused MaxSup loss (CUDA).

Same math and saved state as the CPU kernel (see :mod:`.fused_maxsup`).
Both kernels walk a ``[BLOCK_P positions, BLOCK_K classes]`` tile over the
classes of a block of positions:

* rows (``(N, K)``, or channels-last): positions are rows, the class axis is
  contiguous; ``BLOCK_K`` up to 4096 and as many rows per program as keep
  two programs per multiprocessor.
* ``(N, K, S)`` with ``S > 1`` (segmentation, class dim 1): positions are the
  ``S`` contiguous pixels of one image, the class axis has stride ``S``;
  tiles of 128 pixels x 16 classes, coalesced along the pixels.

Forward: one program per block of positions loops over the classes: one read
of the logits, an online (running-max) log-sum-exp, the max with its first
arg-max, the sum, ``z_gt`` or ``sum y z`` and ``sum y``.  Backward: one
program per tile (positions x classes): one read of the logits and one write
of the gradient.

A hard target outside ``[0, K)`` that is not ``ignore_index`` gives a NaN
loss (checking it on the host would cost a device synchronisation; PyTorch's
own CUDA cross-entropy raises a device-side assert instead).
"""
import torch
import triton
import triton.language as tl

__all__ = ['TritonImpl']


@triton.jit
def _maxsup_fwd_kernel(z_ptr, t_ptr, loss_ptr, aux_ptr, P, NS, K, stride_outer,
                       stride_pos, stride_k, alpha, ignore_index,
                       SOFT: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    outer = tl.program_id(1).to(tl.int64)
    pos = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pos < P
    base = outer * stride_outer + pos.to(tl.int64) * stride_pos  # [BLOCK_P]
    out = outer * P + pos  # index into the (N, S) outputs
    ninf = float('-inf')
    m = tl.full([BLOCK_P], ninf, tl.float32)
    se = tl.zeros([BLOCK_P], tl.float32)
    am = tl.zeros([BLOCK_P], tl.int32)
    # plain sums accumulate element-wise and are reduced once after the loop
    acc_z = tl.zeros([BLOCK_P, BLOCK_K], tl.float32)
    acc_yz = tl.zeros([BLOCK_P, BLOCK_K], tl.float32)
    acc_y = tl.zeros([BLOCK_P, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        mask = pmask[:, None] & (ks < K)[None, :]
        offs = base[:, None] + ks.to(tl.int64)[None, :] * stride_k
        x = tl.load(z_ptr + offs, mask=mask, other=ninf).to(tl.float32)
        cmax = tl.max(x, axis=1)
        carg = tl.argmax(x, axis=1, tie_break_left=True).to(tl.int32) + k0
        am = tl.where(cmax > m, carg, am)  # strict: earlier index wins ties
        new_m = tl.maximum(m, cmax)
        scale = tl.where(m == new_m, 1.0, tl.exp(m - new_m))
        p = tl.where(x == ninf, 0.0, tl.exp(x - new_m[:, None]))
        se = se * scale + tl.sum(p, axis=1)
        m = new_m
        x0 = tl.where(mask, x, 0.0)
        acc_z += x0
        if SOFT:
            y = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc_yz += y * x0
            acc_y += y
    lse = m + tl.log(se)
    reg = alpha * (m - tl.sum(acc_z, axis=1) / K)
    if SOFT:
        sy = tl.sum(acc_y, axis=1)
        loss = sy * lse - tl.sum(acc_yz, axis=1) + reg
        tl.store(aux_ptr + 2 * NS + out, sy, mask=pmask)
    else:
        t = tl.load(t_ptr + out, mask=pmask, other=0).to(tl.int64)
        ignored = t == ignore_index
        inside = (t >= 0) & (t < K)
        zgt = tl.load(z_ptr + base + t * stride_k,
                      mask=pmask & inside & (t != ignore_index),
                      other=0.0).to(tl.float32)
        loss = tl.where(ignored, 0.0,
                        tl.where(inside, lse - zgt + reg, float('nan')))
    tl.store(loss_ptr + out, loss.to(loss_ptr.dtype.element_ty), mask=pmask)
    tl.store(aux_ptr + out, lse, mask=pmask)
    tl.store(aux_ptr.to(tl.pointer_type(tl.int32)) + NS + out, am, mask=pmask)


@triton.jit
def _maxsup_bwd_kernel(z_ptr, t_ptr, g_ptr, aux_ptr, dz_ptr, P, NS, K,
                       stride_outer, stride_pos, stride_k, g_stride_outer,
                       g_stride_pos, alpha, ignore_index, SOFT: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    # one [BLOCK_P, BLOCK_K] tile per program: every gradient entry depends
    # only on its logit and the per-position lse / arg-max / target
    pid = tl.program_id(0)
    k0 = tl.program_id(1) * BLOCK_K
    outer = tl.program_id(2).to(tl.int64)
    pos = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pos < P
    base = outer * stride_outer + pos.to(tl.int64) * stride_pos
    out = outer * P + pos
    g = tl.load(g_ptr + outer * g_stride_outer + pos.to(tl.int64) * g_stride_pos,
                mask=pmask, other=0.0).to(tl.float32)
    lse = tl.load(aux_ptr + out, mask=pmask, other=0.0)
    am = tl.load(aux_ptr.to(tl.pointer_type(tl.int32)) + NS + out, mask=pmask,
                 other=-1)
    if SOFT:
        gs = g * tl.load(aux_ptr + 2 * NS + out, mask=pmask, other=0.0)
        t = tl.full([BLOCK_P], -1, tl.int32)
    else:
        t64 = tl.load(t_ptr + out, mask=pmask, other=0).to(tl.int64)
        g = tl.where(t64 == ignore_index, 0.0, g)  # ignored: zero gradient
        t = t64.to(tl.int32)
        gs = g
    ga = g * alpha
    c0 = -g * (alpha / K)
    ks = k0 + tl.arange(0, BLOCK_K)
    mask = pmask[:, None] & (ks < K)[None, :]
    offs = base[:, None] + ks.to(tl.int64)[None, :] * stride_k
    x = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    p = tl.exp(x - lse[:, None])
    d = p * gs[:, None] + c0[:, None]
    if SOFT:
        y = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d -= g[:, None] * y
    else:
        d -= tl.where(ks[None, :] == t[:, None], g[:, None], 0.0)
    d += tl.where(ks[None, :] == am[:, None], ga[:, None], 0.0)
    tl.store(dz_ptr + offs, d.to(dz_ptr.dtype.element_ty), mask=mask)


_SMS = {}


def _sm_count(device) -> int:
    if device not in _SMS:
        try:
            _SMS[device] = torch.cuda.get_device_properties(
                device).multi_processor_count
        except Exception:  # interpreter / no CUDA
            _SMS[device] = 1
    return _SMS[device]


def _config(z: torch.Tensor, backward: bool = False):
    """``(grid, BLOCK_P, BLOCK_K, num_warps, geometry)`` for a contiguous
    ``(N, K, S)`` tensor; geometry = (P, outer, stride_outer, stride_pos,
    stride_k)."""
    n, k, s = z.shape
    if s == 1:  # rows of K contiguous logits
        geo = (n, 1, 0, k, 1)
        block_k = min(triton.next_power_of_2(k), 2048 if backward else 4096)
        block_p = max(1, min(16, 2048 // block_k))
        # enough programs to fill the GPU (two per multiprocessor)
        while block_p > 1 and triton.cdiv(n, block_p) < 2 * _sm_count(
                z.device):
            block_p //= 2
    else:  # (N, K, S): pixels contiguous, classes at stride S
        geo = (s, n, k * s, 1, s)
        block_p, block_k = 128, min(triton.next_power_of_2(k), 16)
    warps = 8 if block_k * block_p >= 4096 else 4
    if backward:
        grid = (triton.cdiv(geo[0], block_p), triton.cdiv(k, block_k), geo[1])
    else:
        grid = (triton.cdiv(geo[0], block_p), geo[1])
    return grid, block_p, block_k, warps, geo


class TritonImpl:
    """Back-end object for :class:`~.fused_maxsup.MaxSupFunction`.

    Saves, per position, one fp32 buffer ``aux`` of 2 (hard) or 3 (soft)
    rows: lse, the arg-max (int32 bits) and sum_y.
    """

    @staticmethod
    def forward(z, target, alpha, ignore_index, soft):
        n, k, s = z.shape
        grid, block_p, block_k, warps, geo = _config(z)
        if not target.is_contiguous():
            target = target.contiguous()
        loss = torch.empty((n, s), device=z.device, dtype=z.dtype)
        aux = torch.empty((3 if soft else 2, n * s), device=z.device,
                          dtype=torch.float32)
        _maxsup_fwd_kernel[grid](z, target, loss, aux, geo[0], n * s, k,
                                 geo[2], geo[3], geo[4], alpha, ignore_index,
                                 SOFT=soft, BLOCK_P=block_p, BLOCK_K=block_k,
                                 num_warps=warps)
        return loss, (target, aux)

    @staticmethod
    def backward(grad, z, saved, alpha, ignore_index, soft):
        target, aux = saved
        n, k, s = z.shape
        grid, block_p, block_k, warps, geo = _config(z, backward=True)
        gso, gsp = (0, grad.stride(0)) if s == 1 else (grad.stride(0),
                                                       grad.stride(1))
        dz = torch.empty_like(z)
        _maxsup_bwd_kernel[grid](z, target, grad, aux, dz, geo[0], n * s, k,
                                 geo[2], geo[3], geo[4], gso, gsp, alpha,
                                 ignore_index, SOFT=soft, BLOCK_P=block_p,
                                 BLOCK_K=block_k, num_warps=warps)
        return dz
