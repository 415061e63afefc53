"""Epoch switch of Online Label Smoothing's soft-label matrix."""
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmpretrain.utils import get_ori_model

from maxsup_mm.models.losses import OnlineLabelSmoothLoss

from .non_finite_loss_hook import checkpoint_follows


@HOOKS.register_module()
class OnlineLabelSmoothHook(Hook):
    """Switch every :class:`OnlineLabelSmoothLoss` to the new matrix at the
    end of each training epoch.

    The statistics are summed over all DDP ranks first, so every rank starts
    the next epoch with the same matrix.  Runs before the checkpoint hook, so
    a checkpoint saved at the end of an epoch holds the switched matrix.

    A checkpoint written in the middle of an epoch
    (``CheckpointHook(by_epoch=False)``) holds the statistics of the epoch so
    far, but only rank 0's buffers.  So under DDP, right before such a
    checkpoint, the statistics of all ranks are moved to rank 0 (one
    all-reduce; their sum, all the epoch switch uses, is unchanged), and on
    resuming the other ranks start from zero statistics: the resumed run
    switches to the same matrix as the uninterrupted one.

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
        return [m for m in get_ori_model(model).modules()
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

    @staticmethod
    def checkpoint_follows(runner) -> bool:
        """Whether a ``CheckpointHook`` saves after this training iteration
        (its own test, as in ``CheckpointHook.after_train_iter``)."""
        return checkpoint_follows(runner, by_epoch=False)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if get_world_size() > 1 and self.checkpoint_follows(runner):
            for loss in self.find_losses(runner):
                loss.consolidate_statistics()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Rank 0's checkpointed statistics are the sum over all ranks
        (:meth:`after_train_iter`): the other ranks start from zeros."""
        if get_rank() == 0 or 'state_dict' not in checkpoint:
            return
        state = checkpoint['state_dict']
        for key in list(state):
            prefix, _, name = key.rpartition('.')
            matrix = f'{prefix}.supervise' if prefix else 'supervise'
            if name in OnlineLabelSmoothLoss.STATISTICS and matrix in state:
                state[key] = state[key].new_zeros(state[key].shape)
