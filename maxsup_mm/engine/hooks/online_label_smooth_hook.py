"""Epoch switch of Online Label Smoothing's soft-label matrix."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from maxsup_mm.models.losses import OnlineLabelSmoothLoss


@HOOKS.register_module()
class OnlineLabelSmoothHook(Hook):
    """Switch every :class:`OnlineLabelSmoothLoss` to the new matrix at the
    end of each training epoch.

    The statistics are summed over all DDP ranks first, so every rank starts
    the next epoch with the same matrix.  Runs before the checkpoint hook, so
    a checkpoint saved at the end of an epoch holds the switched matrix.

    Example:
        >>> custom_hooks = [dict(type='OnlineLabelSmoothHook')]
    """
    priority = 'NORMAL'

    @staticmethod
    def find_losses(runner):
        model = runner.model
        if is_model_wrapper(model):
            if getattr(model, 'broadcast_buffers', False):
                raise RuntimeError(
                    'OnlineLabelSmoothLoss needs DDP with broadcast_buffers='
                    'False (mmengine\'s default): otherwise rank 0 overwrites '
                    'the statistics of the other ranks')
            model = model.module
        return [m for m in model.modules()
                if isinstance(m, OnlineLabelSmoothLoss)]

    def before_train(self, runner) -> None:
        losses = self.find_losses(runner)
        if not losses:
            raise RuntimeError('OnlineLabelSmoothHook found no '
                               'OnlineLabelSmoothLoss in the model')
        for loss in losses:
            loss.hook_attached = True

    def after_train_epoch(self, runner) -> None:
        for loss in self.find_losses(runner):
            loss.epoch_update()
