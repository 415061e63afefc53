r"""The naive MaxSup loss: the oracle of the fused op (separate ops, autograd).

Zhou et al., "MaxSup: Overcoming Representation Collapse in Label
Smoothing", 2025 (``shared/paper``), eq. (6) with eq. (8):

.. math::
    L = H(y, q) + \alpha \Big(z_{max} - \frac{1}{K}\sum_k z_k\Big)

written with PyTorch's own functions and differentiated by autograd.  It
lives beside the op (not with the losses) so that ``maxsup_mm.ops`` needs
nothing above it: the losses in :mod:`maxsup_mm.models.losses` import these
functions from here.

A *hard* target is an integer tensor of class indices with the logits' shape
minus the class dimension; a *soft* target is a float tensor with the logits'
shape (Mixup / CutMix).
"""
import torch
import torch.nn.functional as F

__all__ = [
    'is_soft_target', 'soft_cross_entropy', 'cross_entropy',
    'max_suppression', 'maxsup_cross_entropy_reference'
]


def is_soft_target(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``target`` is a soft (probability) target for ``logits``."""
    return target.dim() == logits.dim() and target.is_floating_point()


def soft_cross_entropy(logits: torch.Tensor,
                       target: torch.Tensor) -> torch.Tensor:
    r"""Cross-entropy with a soft target, :math:`-\sum_k y_k \log q_k`.

    Args:
        logits (Tensor): ``(N, K)`` or ``(N, K, *spatial)`` logits.
        target (Tensor): soft target of the same shape.

    Returns:
        Tensor: the loss per sample, shape ``(N, *spatial)``.
    """
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


def cross_entropy(logits: torch.Tensor,
                  target: torch.Tensor,
                  ignore_index: int = -100) -> torch.Tensor:
    """:math:`H(y, q)` for hard (class index) or soft targets, unreduced.

    Ignored positions (hard targets equal to ``ignore_index``) get loss 0.
    """
    if is_soft_target(logits, target):
        return soft_cross_entropy(logits, target)
    return F.cross_entropy(
        logits, target.long(), ignore_index=ignore_index, reduction='none')


def max_suppression(logits: torch.Tensor) -> torch.Tensor:
    r"""The Max Suppression term, eq. (8): :math:`z_{max} - \bar z`.

    Its gradient is eq. (9): :math:`1 - 1/K` on the arg-max logit (the first
    one, as :func:`torch.max` picks, when several tie) and :math:`-1/K` on
    every other logit.

    Args:
        logits (Tensor): ``(N, K)`` or ``(N, K, *spatial)`` logits.

    Returns:
        Tensor: ``(N, *spatial)``, always :math:`\ge 0`.
    """
    return logits.max(dim=1).values - logits.mean(dim=1)


def maxsup_cross_entropy_reference(logits: torch.Tensor,
                                   target: torch.Tensor,
                                   alpha: float = 0.1,
                                   ignore_index: int = -100) -> torch.Tensor:
    r"""Naive MaxSup loss, eq. (6)+(8), kept as the oracle of the fused op.

    :math:`L = H(y, q) + \alpha (z_{max} - \bar z)`, computed with separate
    ops and differentiated by autograd (also twice).  Ignored positions of a
    hard target (``ignore_index``) contribute 0.

    Returns:
        Tensor: the loss per sample (per pixel), shape ``(N, *spatial)``.
    """
    loss = cross_entropy(logits, target, ignore_index) \
        + alpha * max_suppression(logits)
    if is_soft_target(logits, target):
        return loss
    return loss.masked_fill(target == ignore_index, 0.)
