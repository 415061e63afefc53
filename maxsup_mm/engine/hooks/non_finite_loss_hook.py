"""Stop training as soon as the loss is NaN or infinite."""
import math

import torch

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss is not finite."""


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise :class:`NonFiniteLossError` naming the iteration when the total
    training loss is NaN or infinite.

    It runs before the checkpoint hook, so no checkpoint is written from the
    broken state: the last good checkpoint stays the newest one and
    ``--resume`` starts from it.  Checks one scalar per iteration (the value
    the logger reads anyway).
    """
    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if not outputs or 'loss' not in outputs:
            return
        loss = outputs['loss']
        value = loss.item() if torch.is_tensor(loss) else float(loss)
        if not math.isfinite(value):
            parts = ', '.join(
                f'{k}={float(torch.as_tensor(v).detach()):.4g}'
                for k, v in outputs.items() if k.startswith('loss'))
            raise NonFiniteLossError(
                f'training loss became {value} at iteration {runner.iter + 1} '
                f'(epoch {runner.epoch + 1}, batch {batch_idx + 1}): {parts}. '
                'Training stopped; the last checkpoint written before this '
                'iteration is intact and can be resumed with --resume.')
