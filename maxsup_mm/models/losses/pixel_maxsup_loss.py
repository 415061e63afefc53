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

from .base import (AlphaMixin, LossTermsMixin, check_finite,
                   check_label_range, check_reduction, reduce_weighted,
                   values_readable)
from .functional import maxsup_cross_entropy


def check_seg_inputs(cls_score: torch.Tensor,
                     label: torch.Tensor,
                     ignore_index: int,
                     loss_name: str,
                     check_values: bool = True) -> None:
    """Validate ``(N, K, *spatial)`` logits and ``(N, *spatial)`` labels.

    Shapes and dtypes always; the label values (``[0, K)`` or
    ``ignore_index``) with ``check_values``: a ValueError for CPU tensors,
    an asynchronous device-side assert elsewhere (no host sync; see
    :func:`~maxsup_mm.models.losses.base.check_label_range`).

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
    if label.is_floating_point() or label.is_complex() or \
            label.dtype == torch.bool:
        raise TypeError(f'{loss_name}: labels must be integer class indices, '
                        f'got {label.dtype}')
    if cls_score.dim() < 2 or \
            label.shape != cls_score.shape[:1] + cls_score.shape[2:]:
        raise ValueError(
            f'{loss_name}: label shape {tuple(label.shape)} does not match '
            f'logits of shape {tuple(cls_score.shape)}; expected (N, K, H, W) '
            'logits and (N, H, W) labels')
    if check_values:
        check_label_range(label, cls_score.shape[1], loss_name, ignore_index)


@SEG_MODELS.register_module(name='MaxSupLoss')
class PixelMaxSupLoss(AlphaMixin, LossTermsMixin, nn.Module):
    r"""Cross-entropy with Max Suppression, per pixel, for mmseg heads.

    For every pixel with logits :math:`z` and label :math:`y`
    (paper eq. (8)):

    .. math::
        \ell = w_y \Big[-\log \mathrm{softmax}(z)_y
               + \alpha \big(z_{max} - \tfrac{1}{K}\textstyle\sum_k z_k\big)
               \Big]

    with :math:`w_y` the class weight (1 without ``class_weight``); pixels
    whose label is ``ignore_index`` contribute 0.  ``reduction='mean'``
    averages exactly as mmseg's ``CrossEntropyLoss`` does: without
    ``class_weight`` it divides the sum by the number of pixels (all of
    them when ``avg_non_ignore=False``, the non-ignored ones when True);
    with ``class_weight`` by the summed class weights of the pixels, where
    an ignored pixel counts 0 (``avg_non_ignore=True``) or
    ``class_weight[ignore_index]`` (False; 1 when ``ignore_index`` is not a
    class index, e.g. 255, where mmseg 1.2.2 fails with an IndexError).

    Without ``class_weight`` / ``weight`` / ``avg_factor`` and with
    ``avg_non_ignore=False``, the pixels are summed inside the fused op.
    No label value is read into Python for non-CPU tensors.  The loss is
    float32 for bf16 / fp16 logits (the op's); a mean over no pixel (an
    empty crop) is 0, as mmseg's ``CrossEntropyLoss`` gives.
    With :class:`~maxsup_mm.engine.hooks.LossTermsHook` the training log
    shows ``maxsup_term`` (the MaxSup share of the loss) and ``ce_term``.

    Args:
        alpha (float): weight of the MaxSup term; ``>= 0``. Defaults to 0.1.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        class_weight (list[float] | str, optional): per-class weights (one
            per class of the logits), or a file mmseg's
            ``get_class_weight`` reads. Defaults to None.
        loss_weight (float): multiplier of the loss; finite.
            Defaults to 1.0.
        avg_non_ignore (bool): average over non-ignored pixels only.
            Defaults to False (mmseg's default for its cross-entropy).
        loss_name (str): key of the loss in the log; must start with
            ``'loss_'`` for mmseg to back-propagate it.
            Defaults to ``'loss_maxsup'``.
    """
    term_name = 'maxsup_term'

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
            class_weight = [check_finite('class_weight', w)
                            for w in get_class_weight(class_weight)]
        self.class_weight = class_weight
        self.loss_weight = check_finite('loss_weight', loss_weight)
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
            label (Tensor): ``(N, H, W)`` class indices (any integer dtype).
            weight (Tensor, optional): per-pixel weight, broadcastable to
                ``(N, H, W)`` with as many dims (e.g. from an OHEM sampler).
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
        name = type(self).__name__
        reduction = check_reduction(reduction_override or self.reduction)
        # the fused op checks the label range on the device itself
        check_seg_inputs(cls_score, label, ignore_index, name,
                         check_values=values_readable(label))
        num_classes = cls_score.shape[1]
        if self.class_weight is not None and \
                len(self.class_weight) != num_classes:
            raise ValueError(
                f'{name}: class_weight has {len(self.class_weight)} entries '
                f'but the logits have {num_classes} classes')
        if weight is not None:
            if weight.dim() != label.dim() or any(
                    w not in (1, n) for w, n in zip(weight.shape,
                                                    label.shape)):
                raise ValueError(
                    f'{name}: weight of shape {tuple(weight.shape)} does not '
                    f'match the labels {tuple(label.shape)}: expected a '
                    'per-pixel weight (N, H, W) (dims of size 1 broadcast)')
            weight = weight.float()
        if (self.class_weight is None and weight is None
                and avg_factor is None and not self.avg_non_ignore
                and reduction != 'none'):
            # summed inside the op; mmseg's mean divides by
            # (number of pixels + float32 eps)
            loss, gap = maxsup_cross_entropy(
                cls_score, label, self.alpha, ignore_index, reduction='sum',
                return_gap=True)
            coef = self.alpha
            if reduction == 'mean':
                div = label.numel() + torch.finfo(torch.float32).eps
                loss, coef = loss / div, coef / div
            self._record(loss, gap, coef, self.loss_weight)
            return self.loss_weight * loss
        loss, gap = maxsup_cross_entropy(
            cls_score, label, self.alpha, ignore_index, return_gap=True)
        valid = label != ignore_index
        if self.class_weight is not None:
            # in the loss's precision (float32 for bf16 / fp16 logits)
            class_weight = loss.new_tensor(self.class_weight)
            pixel_weight = class_weight[label.long().masked_fill(~valid, 0)]
            loss = loss * pixel_weight  # ignored pixels are 0 already
            gap = gap * pixel_weight.to(gap.dtype)
            # mmseg: the mean divides by the pixels' summed class weights;
            # an ignored pixel counts 0 (avg_non_ignore) or
            # class_weight[ignore_index] (1 if that is not a class)
            ignored_weight = 0.0 if self.avg_non_ignore else (
                self.class_weight[ignore_index]
                if 0 <= ignore_index < num_classes else 1.0)
            denom = torch.where(valid, pixel_weight,
                                torch.full_like(pixel_weight, ignored_weight))
        else:
            denom = valid if self.avg_non_ignore else None
        if avg_factor is None and reduction == 'mean' and denom is not None:
            avg_factor = denom.sum().to(loss.dtype)  # on the device
        # (a mean over no pixel: 0, as mmseg's CrossEntropyLoss gives)
        out = reduce_weighted(loss, weight, reduction, avg_factor,
                              weight_reduce_loss)
        if self.record_terms and self.training:
            gap = reduce_weighted(gap.to(out.dtype), weight, reduction,
                                  avg_factor, weight_reduce_loss)
            self._record(out, gap, self.alpha, self.loss_weight)
        return self.loss_weight * out

    def extra_repr(self) -> str:
        return (f'alpha={self.alpha}, reduction={self.reduction!r}, '
                f'avg_non_ignore={self.avg_non_ignore}, '
                f'loss_weight={self.loss_weight}, '
                f'loss_name={self.loss_name!r}')
