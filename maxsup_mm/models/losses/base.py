"""Shared plumbing of the classification losses: input checks, reduction and
the record of the loss's parts for the training log.

The formulas live in :mod:`.functional`; this module only validates what the
mmpretrain heads pass in and reduces the per-sample loss the way mmpretrain's
own losses do (:func:`mmpretrain.models.losses.utils.weight_reduce_loss`).

No check here reads a tensor's values into Python unless the tensor is on
the CPU (where that costs no device synchronisation) and no graph is being
compiled: on other devices, label ranges are checked by an asynchronous
device-side assert (or by the fused op's kernel itself).

The checks of the hyper-parameters (``alpha``, ``beta``, weights:
:func:`check_nonnegative`, :func:`check_finite`) and of soft targets
(:func:`check_soft_target`, a device-side assert) are the fused op's own
(:mod:`maxsup_mm.ops`), re-exported here: one rule for the op and every loss.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmpretrain.models.losses.utils import weight_reduce_loss

from maxsup_mm.ops import check_finite, check_nonnegative, check_soft_target

__all__ = [
    'check_nonnegative', 'check_finite', 'check_soft_target',
    'check_reduction', 'values_readable', 'check_label_range',
    'label_range_error', 'check_cls_inputs', 'reduce_weighted',
    'LossTermsMixin', 'BaseClsLoss', 'AlphaMixin'
]

_REDUCTIONS = ('none', 'mean', 'sum')


def check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f'reduction must be one of {_REDUCTIONS}, '
                         f'got {reduction!r}')
    return reduction


def values_readable(tensor: torch.Tensor) -> bool:
    """Whether reading ``tensor``'s values into Python is free: a CPU tensor
    outside a graph being compiled (no device sync, no graph break)."""
    return tensor.device.type == 'cpu' and not torch.compiler.is_compiling()


def _bad_labels(label: torch.Tensor, num_classes: int,
                ignore_index: Optional[int]) -> torch.Tensor:
    bad = (label < 0) | (label >= num_classes)
    if ignore_index is not None:
        bad &= label != ignore_index
    return bad


def _allowed(num_classes: int, ignore_index: Optional[int]) -> str:
    if ignore_index is None:
        return f'[0, {num_classes})'
    return f'[0, {num_classes}) or equal ignore_index={ignore_index}'


def label_range_error(label: torch.Tensor, num_classes: int, loss_name: str,
                      ignore_index: Optional[int] = None) -> str:
    """The message naming the out-of-range labels of a CPU tensor ('' if
    none): read on the error path only."""
    bad = _bad_labels(label, num_classes, ignore_index)
    if not bool(bad.any()):
        return ''
    values = torch.unique(label[bad])[:8].tolist()
    return (f'{loss_name}: labels must lie in '
            f'{_allowed(num_classes, ignore_index)} for {num_classes} '
            f'classes, got {values}')


def check_label_range(label: torch.Tensor, num_classes: int, loss_name: str,
                      ignore_index: Optional[int] = None) -> None:
    """Labels must lie in ``[0, num_classes)`` (or equal ``ignore_index``).

    CPU tensors (eager): a ValueError naming the offending values.  Other
    devices, or a graph being compiled: :func:`torch._assert_async`, an
    asynchronous device-side assert that costs no host synchronisation.
    """
    if label.numel() == 0:
        return
    if values_readable(label):
        message = label_range_error(label, num_classes, loss_name,
                                    ignore_index)
        if message:
            raise ValueError(message)
    else:
        torch._assert_async(
            ~_bad_labels(label, num_classes, ignore_index).any(),
            f'{loss_name}: labels must lie in '
            f'{_allowed(num_classes, ignore_index)}')


def reduce_weighted(loss: torch.Tensor,
                    weight: Optional[torch.Tensor] = None,
                    reduction: str = 'mean',
                    avg_factor=None,
                    reduce_fn=weight_reduce_loss) -> torch.Tensor:
    """``reduce_fn`` (mmpretrain's ``weight_reduce_loss``, or mmseg's),
    except that a mean over no sample is 0, not NaN (``0 / 0``): the sum of
    the empty loss, still in the graph, with a zero gradient.  (mmpretrain's
    own losses give NaN or raise there, mmseg's give 0.)"""
    if reduction == 'mean' and loss.numel() == 0:
        return loss.sum()
    return reduce_fn(loss, weight=weight, reduction=reduction,
                     avg_factor=avg_factor)


def check_cls_inputs(cls_score: torch.Tensor,
                     label: torch.Tensor,
                     loss_name: str,
                     soft_ok: bool = True,
                     soft_reason: str = '',
                     check_values: bool = True) -> bool:
    """Validate classification logits and labels; return whether soft.

    Args:
        cls_score (Tensor): must be floating point and 2-D ``(N, K)``.
        label (Tensor): ``(N,)`` integer class indices in ``[0, K)`` (any
            integer dtype) or an ``(N, K)`` floating-point soft target
            (a distribution per row: :func:`check_soft_target`).
        loss_name (str): used in error messages.
        soft_ok (bool): whether soft targets are accepted.
        soft_reason (str): why not, appended to the error message.
        check_values (bool): check the label range, or that a soft target
            is a distribution, here (see :func:`check_label_range`); a loss
            whose kernel checks them itself passes False.

    Raises:
        TypeError: non-tensor input, non-float logits, float hard labels.
        ValueError: wrong dimensions, shape mismatch, labels out of range,
            soft target to a hard-only loss.
        RuntimeError: (CPU) a soft target that is not a distribution; on
            other devices a device-side assert.
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
        if check_values:
            check_soft_target(label, loss_name)
        return True
    if label.dim() != 1 or label.shape[0] != num:
        raise ValueError(
            f'{loss_name}: label shape {tuple(label.shape)} does not match '
            f'cls_score shape {tuple(cls_score.shape)}; expected ({num},) '
            f'class indices or a ({num}, {num_classes}) soft target')
    if label.is_floating_point() or label.is_complex() or \
            label.dtype == torch.bool:
        raise TypeError(f'{loss_name}: hard labels must be an integer tensor, '
                        f'got {label.dtype}')
    if check_values:
        check_label_range(label, num_classes, loss_name)
    return False


class LossTermsMixin:
    """A loss whose training log shows its parts (CE and the regularizer).

    :class:`~maxsup_mm.engine.hooks.LossTermsHook` sets ``record_terms``;
    then every training call keeps its reduced loss and the (unweighted)
    regularizer term, detached, with their Python-float weights.  Nothing is
    read from the device here: the hook reads all recorded values of a
    logging interval at once.  ``term_name`` names the regularizer in the
    log (its share of the loss, ``coefficient * term * loss_weight``); the
    rest of the loss is logged as ``ce_term``.
    """
    #: log key of the regularizer's share of the loss (None: not split)
    term_name: Optional[str] = None
    record_terms = False

    def _record(self, loss: torch.Tensor, term: Optional[torch.Tensor],
                coefficient: float, loss_weight: float) -> None:
        if not (self.record_terms and self.training and term is not None):
            return
        if loss.dim() != 0:  # reduction='none': log the mean
            loss, term = loss.mean(), term.mean()
        self.__dict__.setdefault('_recorded', []).append(
            (loss.detach(), term.detach(), float(coefficient),
             float(loss_weight)))

    def pop_recorded(self) -> List[Tuple[torch.Tensor, torch.Tensor, float,
                                         float]]:
        """The records since the last call: ``(loss, term, coefficient,
        loss_weight)``; ``ce_term = loss_weight * (loss - coefficient *
        term)``, ``term_name = loss_weight * coefficient * term``."""
        return self.__dict__.pop('_recorded', [])


class BaseClsLoss(LossTermsMixin, nn.Module):
    """Base of the classification losses: mmpretrain's loss call signature.

    Subclasses implement :meth:`loss_per_sample` (and, to log the
    regularizer, :meth:`loss_and_term`); this class checks inputs, applies
    ``weight``/``avg_factor``/``reduction`` and ``loss_weight``.  Hard
    labels of any integer dtype are used as int64 class indices.

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): multiplier of the reduced loss; finite.
    """
    #: whether soft (Mixup/CutMix) targets are accepted, and why not
    accepts_soft_target = True
    soft_target_reason = ''
    #: the loss's kernel checks the label range on the device itself (the
    #: Python-side check then runs only for CPU tensors)
    kernel_checks_labels = False
    #: :meth:`loss_and_term` reduces by itself ('mean' / 'sum' in-kernel)
    reduces_itself = False

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.loss_weight = check_finite('loss_weight', loss_weight)

    def loss_per_sample(self, cls_score: torch.Tensor,
                        label: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss_and_term(self, cls_score: torch.Tensor, label: torch.Tensor,
                      reduction: str = 'none'):
        """``(loss, term, coefficient)``: the loss, the regularizer term
        (detached, or None) and its weight in the loss; per sample, or
        reduced by ``reduction`` where :attr:`reduces_itself`."""
        return self.loss_per_sample(cls_score, label), None, 0.0

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
        name = type(self).__name__
        # a loss whose kernel checks the labels / soft target itself (on
        # the device, or with an IndexError on the CPU) is not checked twice
        soft = check_cls_inputs(cls_score, label, name,
                                self.accepts_soft_target,
                                self.soft_target_reason,
                                check_values=not self.kernel_checks_labels)
        if not soft and label.dtype != torch.long:
            label = label.long()  # int32 / uint8 / ... class indices
        if weight is not None:
            if weight.dim() != 1 or weight.shape[0] != cls_score.shape[0]:
                raise ValueError(f'{name}: weight must have '
                                 f'shape ({cls_score.shape[0]},), got '
                                 f'{tuple(weight.shape)}')
            weight = weight.float()
        try:
            loss, term, coef = self._reduced_loss(cls_score, label, weight,
                                                  avg_factor, reduction)
        except IndexError:  # the kernel's label check, on a CPU tensor
            message = '' if soft or not values_readable(label) else \
                label_range_error(label, cls_score.shape[1], name)
            if message:
                raise ValueError(message) from None
            raise
        self._record(loss, term, coef, self.loss_weight)
        # no product node (and its backward) for the default weight
        return loss if self.loss_weight == 1.0 else self.loss_weight * loss

    def _reduced_loss(self, cls_score, label, weight, avg_factor, reduction):
        """``(loss, term, coefficient)`` reduced as mmpretrain reduces."""
        if self.reduces_itself and weight is None and (
                avg_factor is None or reduction == 'mean'):
            # reduced inside the kernel: mmpretrain's heads pass
            # avg_factor = batch size, which is the mean
            if avg_factor is None or (not isinstance(avg_factor, torch.Tensor)
                                      and avg_factor == cls_score.shape[0]):
                return self.loss_and_term(cls_score, label, reduction)
            # mmpretrain: the sum divided by avg_factor
            loss, term, coef = self.loss_and_term(cls_score, label, 'sum')
            if term is not None and self.record_terms and self.training:
                term = term / avg_factor
            return loss / avg_factor, term, coef
        loss, term, coef = self.loss_and_term(cls_score, label)
        if term is not None and self.record_terms and self.training:
            term = reduce_weighted(term.to(loss.dtype), weight, reduction,
                                   avg_factor)
        return (reduce_weighted(loss, weight, reduction, avg_factor), term,
                coef)


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
