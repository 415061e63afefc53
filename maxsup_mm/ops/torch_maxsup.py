"""The fused MaxSup math in PyTorch ops: the op's kernel where no compiled
one applies (no C++ build, CUDA without Triton, other devices, float64).

Same interface, saved statistics and conventions as the C++ and Triton
kernels (see :mod:`.maxsup_op`): ``forward`` and ``backward`` work on the
``(N, K, S)`` view of the logits and a target in the same order.  Every sum
is over ``z - max`` (no term grows with the logits' offset); the backward
pass computes ``exp((z - m) - ls)`` in the one ``(N, K, S)`` gradient
buffer.  Arithmetic in float32 for float16 / bfloat16 logits, float64 for
float64.
"""
import torch

__all__ = ['forward', 'backward', 'stats_dtype']

_LOW = (torch.float16, torch.bfloat16)


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the saved statistics, the loss and the gap: float64 for
    float64 logits, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_targets(bad: torch.Tensor, index: torch.Tensor, k: int,
                  ignore_index: int) -> None:
    """Refuse hard targets outside ``[0, K)`` that are not ``ignore_index``.

    CPU tensors: an IndexError naming the first bad value (reading a CPU
    tensor costs no device synchronisation).  Other devices: an
    asynchronous device-side assert (no host sync)."""
    if bad.device.type == 'cpu':
        if bool(bad.any()):
            raise IndexError(
                f'maxsup_cross_entropy: target {int(index[bad][0])} is out of '
                f'bounds for {k} classes (ignore_index is {ignore_index})')
    else:
        torch._assert_async(
            ~bad.any(), f'maxsup_cross_entropy: a target is out of bounds '
            f'for {k} classes and is not ignore_index={ignore_index}')


def forward(z: torch.Tensor, target: torch.Tensor, alpha,
            ignore_index: int, reduction: int, soft: bool):
    """``(loss, gap, aux)`` of the ``(N, K, S)`` logits ``z``.

    ``loss`` and ``gap`` are ``(N, S)`` (reduction 0) or 0-d sums / means
    over the ``N * S`` positions (1 = mean, 2 = sum), in
    :func:`stats_dtype` (float32 for bf16 / fp16 logits); ``aux`` holds, per
    position, the rows max, log-sum-exp minus max, arg-max, [sum y], and for
    a reduction the row losses and gaps.  ``alpha``: a float or a 0-d
    tensor on z's device.
    """
    n, k, s = z.shape
    zf = z.float() if z.dtype in _LOW else z
    m, am = zf.max(dim=1)
    v = zf - m.unsqueeze(1)  # (N, K, S), exact differences to the max
    d = v.sum(dim=1)
    gap = d.div_(-k)  # z_max - mean z
    if soft:
        y = target.to(zf.dtype)
        sum_y = y.sum(dim=1)
        # sum y (z - m) in v's own buffer (one (N, K, S) buffer at a time),
        # then z - m again for the exponentials
        yv = v.mul_(y).sum(dim=1)
        torch.sub(zf, m.unsqueeze(1), out=v)
    else:
        ignored = target == ignore_index
        index = target.long().masked_fill(ignored, 0)
        check_targets((index < 0) | (index >= k), index, k, ignore_index)
        zg = v.gather(1, index.clamp(0, k - 1).unsqueeze(1)).squeeze(1)
    ls = v.exp_().sum(dim=1).log_()  # v is not needed any more
    if soft:
        loss = sum_y * ls - yv + alpha * gap
    else:
        loss = (ls - zg + alpha * gap).masked_fill_(ignored, 0.)
        gap = gap.masked_fill_(ignored, 0.)
    rows = [m, ls, am.to(zf.dtype)] + ([sum_y] if soft else [])
    if reduction:
        rows += [loss, gap]
        # the mean over no position is 0 (the sum), not 0 / 0
        div = max(n * s, 1) if reduction == 1 else 1
        loss, gap = loss.sum() / div, gap.sum() / div
    aux = torch.stack(rows).view(len(rows), n * s)
    return loss, gap, aux


def backward(grad: torch.Tensor, z: torch.Tensor, target: torch.Tensor,
             aux: torch.Tensor, alpha, ignore_index: int,
             reduction: int, soft: bool) -> torch.Tensor:
    """d(loss)/dz times the upstream gradient, ``(N, K, S)``, dtype of z."""
    n, k, s = z.shape
    zf = z.float() if z.dtype in _LOW else z
    stats = aux.view(aux.shape[0], n, s)
    m, ls, am = stats[0], stats[1], stats[2].long()
    if reduction:
        g = grad.reshape(()).to(zf.dtype).expand(n, s)
        if reduction == 1:
            g = g / max(n * s, 1)
    else:
        g = grad.reshape(n, s).to(zf.dtype)
    # the one (N, K, S) buffer: exp((z - m) - ls), the softmax
    d = torch.sub(zf, m.unsqueeze(1)).sub_(ls.unsqueeze(1)).exp_()
    if soft:
        d.mul_(stats[3].unsqueeze(1)).sub_(target.to(zf.dtype))
    else:
        ignored = target == ignore_index
        index = target.long().masked_fill(ignored, 0).clamp_(0, k - 1)
        d.scatter_add_(1, index.unsqueeze(1),
                       torch.full_like(m, -1.).unsqueeze(1))
        g = g.masked_fill(ignored, 0.)
    d.scatter_add_(1, am.clamp(0, k - 1).unsqueeze(1),
                   torch.zeros_like(m).add_(alpha).unsqueeze(1))
    d.sub_(alpha / k).mul_(g.unsqueeze(1))
    return d.to(z.dtype)
