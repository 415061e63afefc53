"""Triton kernels of the fused MaxSup loss (CUDA).

Same math and saved state as the CPU kernel (see :mod:`.fused_maxsup`).
Both kernels walk a ``[BLOCK_P positions, BLOCK_K classes]`` tile over the
classes of a block of positions:

* rows (``(N, K)``, or channels-last): positions are rows, the class axis is
  contiguous; one program per ``BLOCK_P`` rows, ``BLOCK_K`` up to 4096.
* ``(N, K, S)`` with ``S > 1`` (segmentation, class dim 1): positions are the
  ``S`` contiguous pixels of one image, the class axis has stride ``S``; one
  program per (image, block of 128 pixels), coalesced along the pixels.

Forward: one read of the logits, an online (running-max) log-sum-exp, the
max with its first arg-max, the sum, ``z_gt`` or ``sum y z`` and ``sum y``.
Backward: one read of the logits and one write of the gradient.

A hard target outside ``[0, K)`` that is not ``ignore_index`` gives a NaN
loss (checking it on the host would cost a device synchronisation; PyTorch's
own CUDA cross-entropy raises a device-side assert instead).
"""
import torch
import triton
import triton.language as tl

__all__ = ['TritonImpl']


@triton.jit
def _maxsup_fwd_kernel(z_ptr, t_ptr, loss_ptr, lse_ptr, amax_ptr, sumy_ptr, P,
                       K, stride_outer, stride_pos, stride_k, alpha,
                       ignore_index, SOFT: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    outer = tl.program_id(1).to(tl.int64)
    pos = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pos < P
    base = outer * stride_outer + pos.to(tl.int64) * stride_pos  # [BLOCK_P]
    out = outer * P + pos  # index into the (N, S) outputs
    ninf = float('-inf')
    m = tl.full([BLOCK_P], ninf, tl.float32)
    se = tl.zeros([BLOCK_P], tl.float32)
    sm = tl.zeros([BLOCK_P], tl.float32)
    am = tl.zeros([BLOCK_P], tl.int32)
    syz = tl.zeros([BLOCK_P], tl.float32)
    sy = tl.zeros([BLOCK_P], tl.float32)
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
        sm += tl.sum(x0, axis=1)
        if SOFT:
            y = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            syz += tl.sum(y * x0, axis=1)
            sy += tl.sum(y, axis=1)
    lse = m + tl.log(se)
    reg = alpha * (m - sm / K)
    if SOFT:
        loss = sy * lse - syz + reg
        tl.store(sumy_ptr + out, sy, mask=pmask)
    else:
        t = tl.load(t_ptr + out, mask=pmask, other=0).to(tl.int64)
        ignored = t == ignore_index
        inside = (t >= 0) & (t < K)
        zgt = tl.load(z_ptr + base + t * stride_k,
                      mask=pmask & inside & (t != ignore_index), other=0.0).to(tl.float32)
        loss = tl.where(ignored, 0.0,
                        tl.where(inside, lse - zgt + reg, float('nan')))
    tl.store(loss_ptr + out, loss.to(loss_ptr.dtype.element_ty), mask=pmask)
    tl.store(lse_ptr + out, lse, mask=pmask)
    tl.store(amax_ptr + out, am, mask=pmask)


@triton.jit
def _maxsup_bwd_kernel(z_ptr, t_ptr, g_ptr, lse_ptr, amax_ptr, sumy_ptr,
                       dz_ptr, P, K, stride_outer, stride_pos, stride_k,
                       g_stride_outer, g_stride_pos, alpha, ignore_index,
                       SOFT: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    outer = tl.program_id(1).to(tl.int64)
    pos = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pos < P
    base = outer * stride_outer + pos.to(tl.int64) * stride_pos
    out = outer * P + pos
    g = tl.load(g_ptr + outer * g_stride_outer + pos.to(tl.int64) * g_stride_pos,
                mask=pmask, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + out, mask=pmask, other=0.0)
    am = tl.load(amax_ptr + out, mask=pmask, other=-1)
    if SOFT:
        gs = g * tl.load(sumy_ptr + out, mask=pmask, other=0.0)
        t = tl.full([BLOCK_P], -1, tl.int32)
    else:
        t64 = tl.load(t_ptr + out, mask=pmask, other=0).to(tl.int64)
        g = tl.where(t64 == ignore_index, 0.0, g)  # ignored: zero gradient
        t = t64.to(tl.int32)
        gs = g
    ga = g * alpha
    c0 = -g * (alpha / K)
    for k0 in range(0, K, BLOCK_K):
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


def _config(K: int, S: int):
    """(rows mode?, BLOCK_P, BLOCK_K, num_warps)."""
    if S == 1:
        block_k = min(triton.next_power_of_2(K), 4096)
        block_p = max(1, min(16, 2048 // block_k))
        warps = 8 if block_k * block_p >= 4096 else 4
        return True, block_p, block_k, warps
    block_k = min(triton.next_power_of_2(K), 16)
    return False, 128, block_k, 4


def _geometry(z: torch.Tensor):
    """(P, outer, stride_outer, stride_pos, stride_k) of a contiguous
    ``(N, K, S)`` tensor."""
    n, k, s = z.shape
    if s == 1:
        return n, 1, 0, k, 1
    return s, n, k * s, 1, s


class TritonImpl:
    """Back-end object for :class:`~.fused_maxsup.MaxSupFunction`."""

    @staticmethod
    def forward(z, target, alpha, ignore_index, soft):
        n, k, s = z.shape
        rows, block_p, block_k, warps = _config(k, s)
        p_, outer, so, sp, sk = _geometry(z)
        if soft:
            target = target.contiguous()
        else:
            target = target.reshape(n, s).contiguous()
        loss = torch.empty((n, s), device=z.device, dtype=z.dtype)
        lse = torch.empty((n, s), device=z.device, dtype=torch.float32)
        amax = torch.empty((n, s), device=z.device, dtype=torch.int32)
        sum_y = torch.empty((n, s) if soft else (1, ), device=z.device,
                            dtype=torch.float32)
        grid = (triton.cdiv(p_, block_p), outer)
        _maxsup_fwd_kernel[grid](z, target, loss, lse, amax, sum_y, p_, k, so,
                                 sp, sk, alpha, ignore_index, SOFT=soft,
                                 BLOCK_P=block_p, BLOCK_K=block_k,
                                 num_warps=warps)
        return loss, (target, lse, amax, sum_y)

    @staticmethod
    def backward(grad, z, saved, alpha, ignore_index, soft):
        target, lse, amax, sum_y = saved
        n, k, s = z.shape
        rows, block_p, block_k, warps = _config(k, s)
        p_, outer, so, sp, sk = _geometry(z)
        g = grad.reshape(n, s)
        gso, gsp = (0, g.stride(0)) if s == 1 else (g.stride(0), g.stride(1))
        dz = torch.empty_like(z)
        grid = (triton.cdiv(p_, block_p), outer)
        _maxsup_bwd_kernel[grid](z, target, g, lse, amax, sum_y, dz, p_, k, so,
                                 sp, sk, gso, gsp, alpha, ignore_index,
                                 SOFT=soft, BLOCK_P=block_p, BLOCK_K=block_k,
                                 num_warps=warps)
        return dz
