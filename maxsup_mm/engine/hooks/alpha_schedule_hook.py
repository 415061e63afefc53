"""Linear schedule of the MaxSup / LS weight alpha (MaxSup paper, Table 8)."""
import logging
from typing import List, Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop
from mmpretrain.utils import get_ori_model

from maxsup_mm.models.losses.base import AlphaMixin, check_nonnegative


def scheduled_alpha(start: float, end: float, t: int, total: int,
                    end_inclusive: bool = True) -> float:
    r"""Alpha of step ``t`` (0-based epoch or iteration) of ``total``.

    Table 8 of the paper writes :math:`\alpha = 0.1 + 0.1\,t/T`.  The
    authors' training code (DeiT ``engine.py``: ``0.1 + epoch*0.1/299`` for
    300 epochs; ResNet ``train.py`` and long-tail ``MAXsupLoss.py``:
    ``/(epochs - 1)``) divides by :math:`T-1`, so the last epoch trains with
    exactly ``end``:

    * ``end_inclusive=True`` (default, the authors' code):
      ``start + (end - start) * t / (total - 1)``;
    * ``end_inclusive=False`` (the formula as printed):
      ``start + (end - start) * t / total``, whose last step uses
      ``start + (end - start) * (total - 1) / total``.

    ``t`` is clipped to the schedule; a schedule of one step is ``start``.
    """
    span = total - 1 if end_inclusive else total
    if span <= 0:
        return float(start)
    return start + (end - start) * min(max(t, 0), span) / span


@HOOKS.register_module()
class AlphaScheduleHook(Hook):
    r"""Raise alpha of every MaxSup-family loss linearly during training.

    Before each training iteration, sets

    .. math:: \alpha = \alpha_{start} + (\alpha_{end} - \alpha_{start})
              \,t/(T-1)

    on every module of the model with a schedulable ``alpha``
    (:class:`~maxsup_mm.models.losses.MaxSupLoss`,
    :class:`~maxsup_mm.models.losses.LabelSmoothDecompLoss`), where ``t``/``T``
    are the current (0-based) / total epochs (``by_epoch=True``, the paper's
    choice) or iterations.  The first epoch trains with ``start`` and the
    last with exactly ``end``, as in the authors' code;
    ``end_inclusive=False`` divides by ``T`` instead (Table 8's formula as
    printed, which never reaches ``end``); see :func:`scheduled_alpha`.

    On an iteration-based loop (``IterBasedTrainLoop``, every mmseg config)
    there are no epochs to follow (mmengine reports ``max_epochs=1``), so
    ``by_epoch=True`` follows the iterations instead and says so once in the
    log.  Alpha is derived from the runner's counters every time, so a
    resumed run continues the same schedule.  The current value is logged as
    ``train/alpha``.

    Example:
        >>> custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]

    Args:
        start (float): alpha of the first epoch/iteration. Defaults to 0.1.
        end (float): alpha of the last epoch/iteration. Defaults to 0.2.
        by_epoch (bool): schedule over epochs (True) or iterations.
        end_inclusive (bool): divide by ``T - 1`` (True, the authors' code)
            or by ``T`` (False).
    """
    priority = 'NORMAL'

    def __init__(self, start: float = 0.1, end: float = 0.2,
                 by_epoch: bool = True, end_inclusive: bool = True):
        self.start = check_nonnegative('start', start)
        self.end = check_nonnegative('end', end)
        self.by_epoch = bool(by_epoch)
        self.end_inclusive = bool(end_inclusive)
        self._follow_epochs = self.by_epoch
        self._losses: Optional[List[AlphaMixin]] = None

    @staticmethod
    def find_losses(model) -> List[AlphaMixin]:
        """Every module of ``model`` whose ``alpha`` can be scheduled."""
        return [m for m in get_ori_model(model).modules()
                if isinstance(m, AlphaMixin)]

    @staticmethod
    def iteration_based(runner) -> bool:
        """Whether the runner trains by iterations (no epochs to follow)."""
        loop = getattr(runner, 'train_loop', None)
        return isinstance(loop, IterBasedTrainLoop) or \
            runner.max_epochs is None

    def before_train(self, runner) -> None:
        self._losses = self.find_losses(runner.model)
        if not self._losses:
            raise RuntimeError(
                'AlphaScheduleHook found no loss with a schedulable alpha '
                '(MaxSupLoss, LabelSmoothDecompLoss) in the model')
        self._follow_epochs = self.by_epoch
        if self.by_epoch and self.iteration_based(runner):
            self._follow_epochs = False
            print_log(
                'AlphaScheduleHook(by_epoch=True) on an iteration-based train '
                'loop: alpha follows the iterations instead '
                f'({runner.max_iters} of them; set by_epoch=False to silence '
                'this).',
                logger='current', level=logging.WARNING)

    def current_alpha(self, runner) -> float:
        if self._follow_epochs:
            return scheduled_alpha(self.start, self.end, runner.epoch,
                                   runner.max_epochs, self.end_inclusive)
        return scheduled_alpha(self.start, self.end, runner.iter,
                               runner.max_iters, self.end_inclusive)

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        if self._losses is None:
            self.before_train(runner)
        alpha = self.current_alpha(runner)
        for loss in self._losses:
            loss.alpha = alpha
        runner.message_hub.update_scalar('train/alpha', alpha)
