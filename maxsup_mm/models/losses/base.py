"""Shared plumbing of the classification losses: input checks and reduction.

The formulas live in :mod:`.functional`; this module only validates what the
mmpretrain heads pass in and reduces the per-sample loss the way mmpretrain's
own losses do (:func:`mmpretrain.models.losses.utils.weight_reduce_loss`).
"""
from typing import Optional

import torch
import torch.nn as nn
from mmpretrain.models.losses.utils import weight_reduce_loss

_REDUCTIONS = ('none', 'mean', 'sum')


def check_nonnegative(name: str, value: float) -> float:
    """Return ``float(value)`` or raise if it is negative or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{name} must be a number, got {type(value).__name__}')
    if not value >= 0:  # also rejects NaN
        raise ValueError(f'{name} must be >= 0, got {value}')
    return float(value)


def check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f'reduction must be one of {_REDUCTIONS}, '
                         f'got {reduction!r}')
    return reduction


def check_cls_inputs(cls_score: torch.Tensor,
                     label: torch.Tensor,
                     loss_name: str,
                     soft_ok: bool = True,
                     soft_reason: str = '') -> bool:
    """Validate classification logits and labels; return whether soft.

    Args:
        cls_score (Tensor): must be floating point and 2-D ``(N, K)``.
        label (Tensor): ``(N,)`` integer class indices in ``[0, K)`` or an
            ``(N, K)`` floating-point soft target.
        loss_name (str): used in error messages.
        soft_ok (bool): whether soft targets are accepted.
        soft_reason (str): why not, appended to the error message.

    Raises:
        TypeError: non-tensor input, non-float logits, float hard labels.
        ValueError: wrong dimensions, shape mismatch, labels out of range,
            soft target to a hard-only loss.
    """
    if not isinstance(cls_score, torch.Tensor):
        raise TypeError(f'{loss_name}: cls_score must be a Tensor, '
                        f'got {type(cls_score).__name__}')
    if not isinstance(label, torch.Tensor):
        raise TypeError(f'{loss_name}: label must be a Tensor, '
                        f'got {type(label).__name__}')
    if cls_score.dim() != 2:
        raise ValueError(f'{loss_name}: expects 2-D logits (N, K), got shape '
                         f'{tuple(cls_score.shape)}')
    if not cls_score.is_floating_point():
        raise TypeError(f'{loss_name}: logits must be floating point, got '
                        f'{cls_score.dtype}')
    num, num_classes = cls_score.shape
    if label.dim() == 2:
        if label.shape != cls_score.shape:
            raise ValueError(
                f'{loss_name}: soft target shape {tuple(label.shape)} does '
                f'not match cls_score shape {tuple(cls_score.shape)}')
        if not label.is_floating_point():
            raise TypeError(f'{loss_name}: a 2-D (soft) target must be '
                            f'floating point, got {label.dtype}')
        if not soft_ok:
            raise ValueError(f'{loss_name}: got a soft (N, K) target but this '
                             f'loss needs hard class indices (N,): '
                             f'{soft_reason}')
        return True
    if label.dim() != 1 or label.shape[0] != num:
        raise ValueError(
            f'{loss_name}: label shape {tuple(label.shape)} does not match '
            f'cls_score shape {tuple(cls_score.shape)}; expected ({num},) '
            f'class indices or a ({num}, {num_classes}) soft target')
    if label.is_floating_point() or label.dtype == torch.bool:
        raise TypeError(f'{loss_name}: hard labels must be an integer tensor, '
                        f'got {label.dtype}')
    if num > 0:
        low, high = torch.aminmax(label)
        low, high = int(low), int(high)
        if low < 0 or high >= num_classes:
            raise ValueError(
                f'{loss_name}: labels must lie in [0, {num_classes}) for '
                f'{num_classes} classes, got values in [{low}, {high}]')
    return False


class BaseClsLoss(nn.Module):
    """Base of the classification losses: mmpretrain's loss call signature.

    Subclasses implement :meth:`loss_per_sample`; this class checks inputs,
    applies ``weight``/``avg_factor``/``reduction`` and ``loss_weight``.

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): multiplier of the reduced loss.
    """
    #: whether soft (Mixup/CutMix) targets are accepted, and why not
    accepts_soft_target = True
    soft_target_reason = ''

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.loss_weight = float(loss_weight)

    def loss_per_sample(self, cls_score: torch.Tensor,
                        label: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self,
                cls_score: torch.Tensor,
                label: torch.Tensor,
                weight: Optional[torch.Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> torch.Tensor:
        """Compute the loss.

        Args:
            cls_score (Tensor): ``(N, K)`` logits.
            label (Tensor): ``(N,)`` class indices or ``(N, K)`` soft target.
            weight (Tensor, optional): per-sample weight ``(N,)``.
            avg_factor (float, optional): divisor of the summed loss when
                the reduction is ``'mean'``.
            reduction_override (str, optional): overrides ``reduction``.

        Returns:
            Tensor: the reduced loss times ``loss_weight``.
        """
        reduction = check_reduction(reduction_override or self.reduction)
        check_cls_inputs(cls_score, label, type(self).__name__,
                         self.accepts_soft_target, self.soft_target_reason)
        loss = self.loss_per_sample(cls_score, label)
        if weight is not None:
            weight = weight.float()
            if weight.dim() != 1 or weight.shape[0] != cls_score.shape[0]:
                raise ValueError(f'{type(self).__name__}: weight must have '
                                 f'shape ({cls_score.shape[0]},), got '
                                 f'{tuple(weight.shape)}')
        loss = weight_reduce_loss(
            loss, weight=weight, reduction=reduction, avg_factor=avg_factor)
        return self.loss_weight * loss


class AlphaMixin:
    """A loss whose regularization weight ``alpha`` can be scheduled.

    :class:`~maxsup_mm.engine.hooks.AlphaScheduleHook` sets ``alpha`` of every
    module of the model that has this mixin.
    """
    alpha_schedulable = True

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._alpha = check_nonnegative('alpha', value)
