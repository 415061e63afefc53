"""Triton kernels of the fused MaxSup op (its CUDA implementation).

Same math, saved statistics and conventions as the CPU kernel (see
:mod:`.maxsup_op` and ``csrc/maxsup_cpu.cpp``).  ``forward`` and
``backward`` work on the contiguous ``(N, K, S)`` view of the logits; the
kernels walk ``[BLOCK_P positions, BLOCK_K classes]`` tiles:

* rows (``(N, K)``, or channels-last): positions are rows, the class axis is
  contiguous; ``BLOCK_K`` up to 4096 and as many rows per program as keep
  two programs per multiprocessor.
* ``(N, K, S)`` with ``S > 1`` (segmentation, class dim 1): positions are the
  ``S`` contiguous pixels of one image, the class axis has stride ``S``;
  tiles of 128 pixels x 16 classes, coalesced along the pixels.

Forward (one launch): one program per block of positions loops over the
classes: one read of the logits, an online (running-max) log-sum-exp, the
max with its first arg-max, and sums of ``z - r`` (``r`` the row's first
logit, so no sum grows with the logits' offset; ``sum (z - max)`` follows
exactly).  **Split-K**: when there are too few rows to fill the GPU and the
rows are long (e.g. 64 x 21841), each row is cut into ``splits`` ranges of
classes, one program each, and a second small kernel merges the partial
statistics.  Each forward program also writes its sums of loss and gap and
its count of out-of-range targets; a single-program kernel (launched for
hard targets or a ``mean`` / ``sum`` reduction) adds those partial sums up
(one value per program, not per position), which gives the reduced loss in
place and a flag that :func:`torch._assert_async` turns into a device-side
error without a host synchronisation.  The loss and the gap are float32
whatever the logits' dtype; the gradient has the logits' dtype.

Backward (one launch): one program per (positions x classes) tile reads the
logits once and writes the gradient once.
"""
import functools

import torch
import triton
import triton.language as tl

__all__ = ['forward', 'backward']


@triton.jit
def _finish_position(z_ptr, t_ptr, loss_ptr, gap_ptr, aux_ptr, base, out,
                     pmask, NS, K, stride_k, alpha, ignore_index, r, m, se, am,
                     dr, ydr, sy, SOFT: tl.constexpr, REDUCED: tl.constexpr):
    """Per position: loss, gap and the saved statistics from the row's
    max ``m``, ``se = sum exp(z - m)``, arg-max, ``dr = sum (z - r)`` and,
    soft, ``ydr = sum y (z - r)`` and ``sy = sum y``.  Returns the block's
    sums of loss and gap and its number of out-of-range targets."""
    ls = tl.log(se)
    d = dr - K * (m - r)  # sum_k (z_k - m), exact up to fp32 rounding
    gap = -d / K
    SAVED: tl.constexpr = 4 if SOFT else 3
    if SOFT:
        yd = ydr - sy * (m - r)  # sum_k y_k (z_k - m)
        loss = sy * ls - yd + alpha * gap
        amf = am.to(tl.float32)
        nbad = tl.zeros_like(m)
        tl.store(aux_ptr + 3 * NS + out, sy, mask=pmask)
    else:
        t = tl.load(t_ptr + out, mask=pmask, other=0).to(tl.int64)
        ignored = t == ignore_index
        inside = (t >= 0) & (t < K)
        zgt = tl.load(z_ptr + base + t * stride_k,
                      mask=pmask & inside & (t != ignore_index),
                      other=0.0).to(tl.float32)
        loss = tl.where(ignored, 0.0,
                        tl.where(inside, ls - (zgt - m) + alpha * gap,
                                 float('nan')))
        gap = tl.where(ignored | (~inside), 0.0, gap)
        # -1 marks an out-of-range target (also counted for the check)
        amf = tl.where(inside | ignored, am.to(tl.float32), -1.0)
        nbad = tl.where(pmask & (~inside) & (~ignored), 1.0, 0.0)
    if REDUCED:
        tl.store(aux_ptr + SAVED * NS + out, loss, mask=pmask)
        tl.store(aux_ptr + (SAVED + 1) * NS + out, gap, mask=pmask)
    else:
        tl.store(loss_ptr + out, loss.to(loss_ptr.dtype.element_ty),
                 mask=pmask)
        tl.store(gap_ptr + out, gap, mask=pmask)
    tl.store(aux_ptr + out, m, mask=pmask)
    tl.store(aux_ptr + NS + out, ls, mask=pmask)
    tl.store(aux_ptr + 2 * NS + out, amf, mask=pmask)
    return (tl.sum(tl.where(pmask, loss, 0.0), axis=0),
            tl.sum(tl.where(pmask, gap, 0.0), axis=0), tl.sum(nbad, axis=0))


@triton.jit
def _store_partials(part_ptr, pidx, NP, lsum, gsum, nbad):
    """One program's sums, for the finishing kernel (3 rows of NP)."""
    tl.store(part_ptr + pidx, lsum)
    tl.store(part_ptr + NP + pidx, gsum)
    tl.store(part_ptr + 2 * NP + pidx, nbad)


@triton.jit
def _row_reference(z_ptr, base, pmask):
    """The row's first logit (0 if it is not finite): sums are of z - r."""
    r = tl.load(z_ptr + base, mask=pmask, other=0.0).to(tl.float32)
    return tl.where(tl.abs(r) < float('inf'), r, 0.0)


@triton.jit
def _scan_classes(z_ptr, t_ptr, base, pmask, r, k_lo, k_hi, K, stride_k,
                  SOFT: tl.constexpr, BLOCK_P: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """One read of classes [k_lo, k_hi) of a block of positions: running
    max, first arg-max, sum exp(z - max), sum (z - r) [, sum y (z - r),
    sum y]."""
    ninf = float('-inf')
    m = tl.full([BLOCK_P], ninf, tl.float32)
    se = tl.zeros([BLOCK_P], tl.float32)
    am = tl.zeros([BLOCK_P], tl.int32)
    # plain sums accumulate element-wise and are reduced once after the loop
    acc_d = tl.zeros([BLOCK_P, BLOCK_K], tl.float32)
    acc_yd = tl.zeros([BLOCK_P, BLOCK_K], tl.float32)
    acc_y = tl.zeros([BLOCK_P, BLOCK_K], tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        mask = pmask[:, None] & (ks < k_hi)[None, :] & (ks < K)[None, :]
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
        xd = tl.where(mask, x - r[:, None], 0.0)
        acc_d += xd
        if SOFT:
            y = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc_yd += y * xd
            acc_y += y
    return (m, se, am, tl.sum(acc_d, axis=1), tl.sum(acc_yd, axis=1),
            tl.sum(acc_y, axis=1))


@triton.jit
def _fwd_kernel(z_ptr, t_ptr, loss_ptr, gap_ptr, aux_ptr, sums_ptr, P, NS,
                K, stride_outer, stride_pos, stride_k, alpha, alpha_ptr,
                ignore_index, SOFT: tl.constexpr, REDUCED: tl.constexpr,
                ALPHA_T: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_K: tl.constexpr):
    if ALPHA_T:  # alpha as a 0-d device tensor (inside torch.compile)
        alpha = tl.load(alpha_ptr).to(tl.float32)
    pid = tl.program_id(0)
    outer = tl.program_id(1).to(tl.int64)
    pos = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pos < P
    base = outer * stride_outer + pos.to(tl.int64) * stride_pos  # [BLOCK_P]
    out = outer * P + pos  # index into the (N, S) outputs
    r = _row_reference(z_ptr, base, pmask)
    m, se, am, dr, ydr, sy = _scan_classes(z_ptr, t_ptr, base, pmask, r, 0,
                                           K, K, stride_k, SOFT, BLOCK_P,
                                           BLOCK_K)
    lsum, gsum, nbad = _finish_position(z_ptr, t_ptr, loss_ptr, gap_ptr,
                                        aux_ptr, base, out, pmask, NS, K,
                                        stride_k, alpha, ignore_index, r, m,
                                        se, am, dr, ydr, sy, SOFT, REDUCED)
    np0 = tl.num_programs(0)
    _store_partials(sums_ptr, outer * np0 + pid, np0 * tl.num_programs(1),
                    lsum, gsum, nbad)


@triton.jit
def _fwd_split_kernel(z_ptr, t_ptr, part_ptr, NS, K, SPLITS, k_per_split,
                      SOFT: tl.constexpr, BLOCK_P: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    # rows layout only: position = row, classes contiguous
    pid = tl.program_id(0)
    split = tl.program_id(1)
    pos = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pos < NS
    base = pos.to(tl.int64) * K
    r = _row_reference(z_ptr, base, pmask)
    k_lo = split * k_per_split
    m, se, am, dr, ydr, sy = _scan_classes(z_ptr, t_ptr, base, pmask, r, k_lo,
                                           k_lo + k_per_split, K, 1, SOFT,
                                           BLOCK_P, BLOCK_K)
    # partials: (6, SPLITS, NS) fp32: m, se, arg-max, dr, ydr, sy
    at = part_ptr + split * NS + pos
    step = SPLITS * NS
    tl.store(at, m, mask=pmask)
    tl.store(at + step, se, mask=pmask)
    tl.store(at + 2 * step, am.to(tl.float32), mask=pmask)
    tl.store(at + 3 * step, dr, mask=pmask)
    if SOFT:
        tl.store(at + 4 * step, ydr, mask=pmask)
        tl.store(at + 5 * step, sy, mask=pmask)


@triton.jit
def _fwd_combine_kernel(z_ptr, t_ptr, part_ptr, loss_ptr, gap_ptr, aux_ptr,
                        sums_ptr, NS, K, SPLITS, alpha, alpha_ptr,
                        ignore_index,
                        SOFT: tl.constexpr, REDUCED: tl.constexpr,
                        ALPHA_T: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_S: tl.constexpr):
    if ALPHA_T:
        alpha = tl.load(alpha_ptr).to(tl.float32)
    pid = tl.program_id(0)
    pos = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pos < NS
    base = pos.to(tl.int64) * K
    js = tl.arange(0, BLOCK_S)
    mask = pmask[:, None] & (js < SPLITS)[None, :]
    at = part_ptr + js[None, :] * NS + pos[:, None]
    step = SPLITS * NS
    ninf = float('-inf')
    mj = tl.load(at, mask=mask, other=ninf)
    m = tl.max(mj, axis=1)
    # first split holding the max: its (first) arg-max is the row's
    jstar = tl.argmax(mj, axis=1, tie_break_left=True)
    amj = tl.load(at + 2 * step, mask=mask, other=0.0)
    am = tl.sum(tl.where(js[None, :] == jstar[:, None], amj, 0.0),
                axis=1).to(tl.int32)
    sej = tl.load(at + step, mask=mask, other=0.0)
    se = tl.sum(tl.where(mj == ninf, 0.0, sej * tl.exp(mj - m[:, None])),
                axis=1)
    dr = tl.sum(tl.load(at + 3 * step, mask=mask, other=0.0), axis=1)
    if SOFT:
        ydr = tl.sum(tl.load(at + 4 * step, mask=mask, other=0.0), axis=1)
        sy = tl.sum(tl.load(at + 5 * step, mask=mask, other=0.0), axis=1)
    else:
        ydr = dr
        sy = dr
    r = _row_reference(z_ptr, base, pmask)
    lsum, gsum, nbad = _finish_position(z_ptr, t_ptr, loss_ptr, gap_ptr,
                                        aux_ptr, base, pos, pmask, NS, K, 1,
                                        alpha, ignore_index, r, m, se, am, dr,
                                        ydr, sy, SOFT, REDUCED)
    _store_partials(sums_ptr, pid, tl.num_programs(0), lsum, gsum, nbad)


@triton.jit
def _finish_kernel(sums_ptr, loss_ptr, gap_ptr, ok_ptr, NP, scale,
                   REDUCED: tl.constexpr, CHECK: tl.constexpr,
                   BLOCK: tl.constexpr):
    # one program over the forward programs' partial sums: the sum (or
    # mean) of the losses and gaps, in place, and whether every hard target
    # was in range
    acc_l = tl.zeros([BLOCK], tl.float32)
    acc_g = tl.zeros([BLOCK], tl.float32)
    bad = tl.zeros([BLOCK], tl.float32)
    for i0 in range(0, NP, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        mask = idx < NP
        if REDUCED:
            acc_l += tl.load(sums_ptr + idx, mask=mask, other=0.0)
            acc_g += tl.load(sums_ptr + NP + idx, mask=mask, other=0.0)
        if CHECK:
            bad += tl.load(sums_ptr + 2 * NP + idx, mask=mask, other=0.0)
    if REDUCED:
        tl.store(loss_ptr, (tl.sum(acc_l, axis=0) * scale).to(
            loss_ptr.dtype.element_ty))
        tl.store(gap_ptr, tl.sum(acc_g, axis=0) * scale)
    if CHECK:
        tl.store(ok_ptr, (tl.sum(bad, axis=0) == 0).to(tl.int32))


@triton.jit
def _bwd_kernel(z_ptr, t_ptr, g_ptr, aux_ptr, dz_ptr, P, NS, K, stride_outer,
                stride_pos, stride_k, g_stride_outer, g_stride_pos, g_scale,
                alpha, alpha_ptr, ignore_index, SOFT: tl.constexpr,
                ALPHA_T: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_K: tl.constexpr):
    if ALPHA_T:
        alpha = tl.load(alpha_ptr).to(tl.float32)
    # one [BLOCK_P, BLOCK_K] tile per program: every gradient entry depends
    # only on its logit and the per-position statistics / target
    pid = tl.program_id(0)
    k0 = tl.program_id(1) * BLOCK_K
    outer = tl.program_id(2).to(tl.int64)
    pos = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pos < P
    base = outer * stride_outer + pos.to(tl.int64) * stride_pos
    out = outer * P + pos
    g = tl.load(g_ptr + outer * g_stride_outer +
                pos.to(tl.int64) * g_stride_pos, mask=pmask,
                other=0.0).to(tl.float32) * g_scale
    m = tl.load(aux_ptr + out, mask=pmask, other=0.0)
    ls = tl.load(aux_ptr + NS + out, mask=pmask, other=0.0)
    am = tl.load(aux_ptr + 2 * NS + out, mask=pmask, other=-1.0).to(tl.int32)
    if SOFT:
        gs = g * tl.load(aux_ptr + 3 * NS + out, mask=pmask, other=0.0)
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
    p = tl.exp((x - m[:, None]) - ls[:, None])
    d = p * gs[:, None] + c0[:, None]
    if SOFT:
        y = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d -= g[:, None] * y
    else:
        d -= tl.where(ks[None, :] == t[:, None], g[:, None], 0.0)
    d += tl.where(ks[None, :] == am[:, None], ga[:, None], 0.0)
    tl.store(dz_ptr + offs, d.to(dz_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=None)
def _sm_count(device) -> int:
    try:
        return torch.cuda.get_device_properties(device).multi_processor_count
    except Exception:  # interpreter / no CUDA
        return 1


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


def default_splits(z: torch.Tensor) -> int:
    """Ranges of classes per row for the split-K forward (1: no split).

    Rows only; split when the rows alone give fewer than two programs per
    multiprocessor and a row spans several 4096-wide tiles."""
    n, k, s = z.shape
    if s != 1 or k < 8192:
        return 1
    want = triton.cdiv(2 * _sm_count(z.device), max(n, 1))
    return int(max(1, min(want, triton.cdiv(k, 2048), 64)))


def _alpha_args(alpha, dummy: torch.Tensor):
    """``(alpha, alpha_ptr, ALPHA_T)``: a float alpha, or a 0-d tensor read
    by the kernels on the device (no host synchronisation)."""
    if isinstance(alpha, torch.Tensor):
        return 0.0, alpha.to(device=dummy.device, dtype=torch.float32), True
    return float(alpha), dummy, False


def forward(z: torch.Tensor, target: torch.Tensor, alpha,
            ignore_index: int, reduction: int, soft: bool,
            splits: int = None):
    """``(loss, gap, aux)`` of the contiguous ``(N, K, S)`` logits ``z``
    (see :func:`maxsup_mm.ops.torch_maxsup.forward` for the layout).

    ``alpha``: a float or a 0-d tensor on z's device.  ``splits`` forces the
    number of class ranges per row of the split-K forward (rows layout);
    default: :func:`default_splits`.
    """
    n, k, s = z.shape
    ns = n * s
    saved = 4 if soft else 3
    reduced = reduction != 0
    if not target.is_contiguous():
        target = target.contiguous()
    aux = torch.empty((saved + (2 if reduced else 0), ns), device=z.device,
                      dtype=torch.float32)
    # loss and gap in float32 whatever the logits' dtype (as F.cross_entropy
    # under autocast): a loss scaler's 2**16 * loss must not overflow fp16
    if reduced:
        loss = torch.empty((), device=z.device, dtype=torch.float32)
        gap = torch.empty((), device=z.device, dtype=torch.float32)
    else:
        loss = torch.empty((n, s), device=z.device, dtype=torch.float32)
        gap = torch.empty((n, s), device=z.device, dtype=torch.float32)
    alpha, alpha_ptr, alpha_t = _alpha_args(alpha, aux)
    splits = default_splits(z) if splits is None else int(splits)
    if s == 1 and splits > 1:
        block_k = min(triton.next_power_of_2(triton.cdiv(k, splits)), 4096)
        k_per = triton.cdiv(triton.cdiv(k, splits), block_k) * block_k
        splits = triton.cdiv(k, k_per)
        part = torch.empty((6, splits, ns), device=z.device,
                           dtype=torch.float32)
        _fwd_split_kernel[(ns, splits)](
            z, target, part, ns, k, splits, k_per, SOFT=soft, BLOCK_P=1,
            BLOCK_K=block_k, num_warps=8 if block_k >= 2048 else 4)
        block_s = triton.next_power_of_2(splits)
        block_p = max(1, min(128, 2048 // block_s))
        programs = triton.cdiv(ns, block_p)
        sums = torch.empty((3, programs), device=z.device,
                           dtype=torch.float32)
        _fwd_combine_kernel[(programs, )](
            z, target, part, loss, gap, aux, sums, ns, k, splits, alpha,
            alpha_ptr, ignore_index, SOFT=soft, REDUCED=reduced,
            ALPHA_T=alpha_t, BLOCK_P=block_p, BLOCK_S=block_s, num_warps=4)
    else:
        grid, block_p, block_k, warps, geo = _config(z)
        programs = grid[0] * grid[1]
        sums = torch.empty((3, programs), device=z.device,
                           dtype=torch.float32)
        _fwd_kernel[grid](z, target, loss, gap, aux, sums, geo[0], ns, k,
                          geo[2], geo[3], geo[4], alpha, alpha_ptr,
                          ignore_index, SOFT=soft, REDUCED=reduced,
                          ALPHA_T=alpha_t, BLOCK_P=block_p, BLOCK_K=block_k,
                          num_warps=warps)
    check = not soft
    if reduced or check:
        ok = torch.empty((), device=z.device, dtype=torch.int32)
        _finish_kernel[(1, )](sums, loss, gap, ok, programs,
                              1.0 / ns if reduction == 1 else 1.0,
                              REDUCED=reduced, CHECK=check, BLOCK=1024,
                              num_warps=4)
        if check:
            torch._assert_async(
                ok, f'maxsup_cross_entropy: a target is out of bounds for {k} '
                f'classes and is not ignore_index={ignore_index}')
    return loss, gap, aux


def backward(grad: torch.Tensor, z: torch.Tensor, target: torch.Tensor,
             aux: torch.Tensor, alpha, ignore_index: int,
             reduction: int, soft: bool) -> torch.Tensor:
    """The gradient w.r.t. the contiguous ``(N, K, S)`` logits ``z``."""
    n, k, s = z.shape
    if not target.is_contiguous():
        target = target.contiguous()
    grid, block_p, block_k, warps, geo = _config(z, backward=True)
    if reduction:  # one upstream gradient for every position
        gso = gsp = 0
        scale = 1.0 / (n * s) if reduction == 1 else 1.0
    else:
        grad = grad.reshape(n, s)
        gso, gsp = (0, grad.stride(0)) if s == 1 else (grad.stride(0),
                                                       grad.stride(1))
        scale = 1.0
    dz = torch.empty_like(z)
    alpha, alpha_ptr, alpha_t = _alpha_args(alpha, aux)
    _bwd_kernel[grid](z, target, grad, aux, dz, geo[0], n * s, k, geo[2],
                      geo[3], geo[4], gso, gsp, scale, alpha, alpha_ptr,
                      ignore_index, SOFT=soft, ALPHA_T=alpha_t,
                      BLOCK_P=block_p, BLOCK_K=block_k, num_warps=warps)
    return dz
