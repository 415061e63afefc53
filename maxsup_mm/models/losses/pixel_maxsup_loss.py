"""MaxSup as a per-pixel segmentation loss (mmseg ``loss_decode``).

Registered in mmsegmentation's MODELS under the name ``MaxSupLoss``, so in an
mmseg config::

    model = dict(decode_head=dict(loss_decode=dict(
        type='MaxSupLoss', alpha=0.1, loss_name='loss_maxsup')))

The per-pixel formula is the classification one,
:func:`~maxsup_mm.models.losses.functional.maxsup_cross_entropy`, applied to
``(N, K, H, W)`` logits; this module only adds mmseg's calling convention
(``ignore_index`` from the decode head, ``avg_non_ignore``,
``class_weight``, ``weight`` / ``avg_factor``, ``loss_name``).
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmseg.registry import MODELS as SEG_MODELS

from .base import AlphaMixin, check_reduction
from .functional import maxsup_cross_entropy


def check_seg_inputs(cls_score: torch.Tensor, label: torch.Tensor,
                     ignore_index: int, loss_name: str) -> None:
    """Validate ``(N, K, *spatial)`` logits and ``(N, *spatial)`` labels.

    Raises:
        TypeError: non-tensors, non-float logits, non-integer labels.
        ValueError: shapes that do not match, labels outside ``[0, K)``
            that are not ``ignore_index``.
    """
    if not isinstance(cls_score, torch.Tensor) or \
            not isinstance(label, torch.Tensor):
        raise TypeError(f'{loss_name}: cls_score and label must be Tensors, '
                        f'got {type(cls_score).__name__} and '
                        f'{type(label).__name__}')
    if not cls_score.is_floating_point():
        raise TypeError(f'{loss_name}: logits must be floating point, got '
                        f'{cls_score.dtype}')
    if label.is_floating_point() or label.dtype == torch.bool:
        raise TypeError(f'{loss_name}: labels must be integer class indices, '
                        f'got {label.dtype}')
    if cls_score.dim() < 2 or \
            label.shape != cls_score.shape[:1] + cls_score.shape[2:]:
        raise ValueError(
            f'{loss_name}: label shape {tuple(label.shape)} does not match '
            f'logits of shape {tuple(cls_score.shape)}; expected (N, K, H, W) '
            'logits and (N, H, W) labels')
    num_classes = cls_score.shape[1]
    bad = (label != ignore_index) & ((label < 0) | (label >= num_classes))
    if bool(bad.any()):
        values = torch.unique(label[bad])[:8].tolist()
        raise ValueError(
            f'{loss_name}: labels must lie in [0, {num_classes}) or equal '
            f'ignore_index={ignore_index}; got {values}')


@SEG_MODELS.register_module(name='MaxSupLoss')
class PixelMaxSupLoss(AlphaMixin, nn.Module):
    r"""Cross-entropy with Max Suppression, per pixel, for mmseg heads.

    For every pixel with logits :math:`z` and label :math:`y`
    (paper eq. (8)):

    .. math::
        \ell = w_y \Big[-\log \mathrm{softmax}(z)_y
               + \alpha \big(z_{max} - \tfrac{1}{K}\textstyle\sum_k z_k\big)
               \Big]

    with :math:`w_y` the class weight (1 without ``class_weight``); pixels
    whose label is ``ignore_index`` contribute 0.  ``reduction='mean'``
    divides the sum by the summed pixel weights: every pixel counts (weight
    1 for ignored ones) when ``avg_non_ignore=False``, as mmseg's
    ``CrossEntropyLoss`` does, and only the non-ignored ones when it is
    True (PyTorch's convention).

    Args:
        alpha (float): weight of the MaxSup term; ``>= 0``. Defaults to 0.1.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        class_weight (list[float] | str, optional): per-class weights, or a
            file mmseg's ``get_class_weight`` reads. Defaults to None.
        loss_weight (float): multiplier of the loss. Defaults to 1.0.
        avg_non_ignore (bool): average over non-ignored pixels only.
            Defaults to False (mmseg's default for its cross-entropy).
        loss_name (str): key of the loss in the log; must start with
            ``'loss_'`` for mmseg to back-propagate it.
            Defaults to ``'loss_maxsup'``.
    """

    def __init__(self,
                 alpha: float = 0.1,
                 reduction: str = 'mean',
                 class_weight: Optional[Union[Sequence[float], str]] = None,
                 loss_weight: float = 1.0,
                 avg_non_ignore: bool = False,
                 loss_name: str = 'loss_maxsup'):
        super().__init__()
        self.alpha = alpha
        self.reduction = check_reduction(reduction)
        if class_weight is not None:
            from mmseg.models.losses.utils import get_class_weight
            class_weight = [float(w) for w in get_class_weight(class_weight)]
        self.class_weight = class_weight
        self.loss_weight = float(loss_weight)
        self.avg_non_ignore = bool(avg_non_ignore)
        if not isinstance(loss_name, str) or not loss_name.startswith('loss_'):
            raise ValueError(
                f"loss_name must start with 'loss_' (mmseg only "
                f'back-propagates such keys), got {loss_name!r}')
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        """The key of this loss in mmseg's loss dict."""
        return self._loss_name

    def forward(self,
                cls_score: torch.Tensor,
                label: torch.Tensor,
                weight: Optional[torch.Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                ignore_index: int = -100,
                **kwargs) -> torch.Tensor:
        """Compute the loss (mmseg's loss call signature).

        Args:
            cls_score (Tensor): ``(N, K, H, W)`` logits.
            label (Tensor): ``(N, H, W)`` class indices.
            weight (Tensor, optional): per-pixel weight ``(N, H, W)``
                (e.g. from an OHEM sampler).
            avg_factor (float, optional): divisor of the summed loss for
                ``'mean'``; computed from the pixels when None.
            reduction_override (str, optional): overrides ``reduction``.
            ignore_index (int): label of ignored pixels (the decode head
                passes its own, 255 by default). Defaults to -100.

        Returns:
            Tensor: the reduced loss times ``loss_weight``.
        """
        # mmseg.models is imported by whoever calls the loss; importing it
        # at module level would make ``import maxsup_mm`` load all of it.
        from mmseg.models.losses.utils import weight_reduce_loss
        reduction = check_reduction(reduction_override or self.reduction)
        check_seg_inputs(cls_score, label, ignore_index, self.loss_name)
        loss = maxsup_cross_entropy(cls_score, label, self.alpha, ignore_index)
        valid = label != ignore_index
        if self.class_weight is not None:
            class_weight = cls_score.new_tensor(self.class_weight)
            pixel_weight = class_weight[label.masked_fill(~valid, 0)]
            loss = loss * pixel_weight  # ignored pixels are 0 already
            denom = torch.where(valid, pixel_weight,
                                torch.zeros_like(pixel_weight)
                                if self.avg_non_ignore else
                                torch.ones_like(pixel_weight))
        else:
            denom = valid if self.avg_non_ignore else None
        if avg_factor is None and reduction == 'mean':
            avg_factor = label.numel() if denom is None else \
                denom.sum().to(loss.dtype)
        if weight is not None:
            weight = weight.float()
        loss = weight_reduce_loss(
            loss, weight=weight, reduction=reduction, avg_factor=avg_factor)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return (f'alpha={self.alpha}, reduction={self.reduction!r}, '
                f'avg_non_ignore={self.avg_non_ignore}, '
                f'loss_weight={self.loss_weight}, '
                f'loss_name={self.loss_name!r}')
