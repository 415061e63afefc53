"""Linear schedule of the MaxSup / LS weight alpha (MaxSup paper, Table 8)."""
from typing import List, Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from maxsup_mm.models.losses.base import AlphaMixin, check_nonnegative


def scheduled_alpha(start: float, end: float, t: int, total: int) -> float:
    """``start + (end - start) * t / total`` (Table 8), ``t`` in [0, total]."""
    return start + (end - start) * min(t, total) / max(total, 1)


@HOOKS.register_module()
class AlphaScheduleHook(Hook):
    r"""Raise alpha of every MaxSup-family loss linearly during training.

    Before each training iteration, sets

    .. math:: \alpha = \alpha_{start} + (\alpha_{end} - \alpha_{start})\,t/T

    on every module of the model with a schedulable ``alpha``
    (:class:`~maxsup_mm.models.losses.MaxSupLoss`,
    :class:`~maxsup_mm.models.losses.LabelSmoothDecompLoss`), where ``t``/``T``
    are the current/total epochs (``by_epoch=True``, the paper's choice) or
    iterations.  Alpha is derived from the runner's counters every time, so a
    resumed run continues the same schedule.  The current value is logged as
    ``train/alpha``.

    Example:
        >>> custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]

    Args:
        start (float): alpha at the first epoch/iteration. Defaults to 0.1.
        end (float): alpha reached at the end of training. Defaults to 0.2.
        by_epoch (bool): schedule over epochs (True) or iterations.
    """
    priority = 'NORMAL'

    def __init__(self, start: float = 0.1, end: float = 0.2,
                 by_epoch: bool = True):
        self.start = check_nonnegative('start', start)
        self.end = check_nonnegative('end', end)
        self.by_epoch = by_epoch
        self._losses: Optional[List[AlphaMixin]] = None

    @staticmethod
    def find_losses(model) -> List[AlphaMixin]:
        """Every module of ``model`` whose ``alpha`` can be scheduled."""
        if is_model_wrapper(model):
            model = model.module
        return [m for m in model.modules() if isinstance(m, AlphaMixin)]

    def before_train(self, runner) -> None:
        self._losses = self.find_losses(runner.model)
        if not self._losses:
            raise RuntimeError(
                'AlphaScheduleHook found no loss with a schedulable alpha '
                '(MaxSupLoss, LabelSmoothDecompLoss) in the model')
        if self.by_epoch and runner.max_epochs is None:
            raise RuntimeError('AlphaScheduleHook(by_epoch=True) needs an '
                               'epoch-based train loop; use by_epoch=False')

    def current_alpha(self, runner) -> float:
        if self.by_epoch:
            return scheduled_alpha(self.start, self.end, runner.epoch,
                                   runner.max_epochs)
        return scheduled_alpha(self.start, self.end, runner.iter,
                               runner.max_iters)

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        if self._losses is None:
            self.before_train(runner)
        alpha = self.current_alpha(runner)
        for loss in self._losses:
            loss.alpha = alpha
        runner.message_hub.update_scalar('train/alpha', alpha)
