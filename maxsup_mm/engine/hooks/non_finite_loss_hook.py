"""Stop training, on every rank, as soon as any rank's loss is NaN or Inf."""
from typing import List, Optional

import torch
from mmengine.dist import all_reduce, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss is not finite."""


def non_finite_ranks(loss: torch.Tensor) -> List[int]:
    """The ranks whose ``loss`` is not finite (every rank gets the same list).

    One all-reduce of a ``(world_size,)`` tensor when distributed, and one
    read of it on the host: the only host sync.
    """
    bad = torch.logical_not(torch.isfinite(loss.detach()).all())
    world = get_world_size()
    if world == 1:
        return [0] if bool(bad) else []
    flags = torch.zeros(world, dtype=torch.float32, device=loss.device)
    flags[get_rank()] = bad.to(flags.dtype)
    all_reduce(flags, op='sum')
    return [rank for rank, flag in enumerate(flags.tolist()) if flag > 0]


def _newest_checkpoint(runner) -> Optional[str]:
    """The checkpoint ``CheckpointHook`` wrote last (also before a resume)."""
    return runner.message_hub.get_info('last_ckpt', None)


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise :class:`NonFiniteLossError` on every rank, naming the iteration
    and the diverged rank(s), when the total training loss of any rank is NaN
    or infinite.

    In distributed training one rank's non-finite loss reaches every rank's
    weights through the gradient all-reduce, while the other ranks' own
    losses are still finite; so the finiteness flags are summed over the
    ranks (one all-reduce of a ``(world_size,)`` tensor per iteration) and
    every rank stops.  The hook runs after each iteration and before the
    checkpoint hook, so no checkpoint is written from the broken state: the
    newest checkpoint (the message names it) stays the newest, and
    ``--resume`` starts from it.  It reads one small tensor on the host per
    iteration, as it did before the all-reduce (the single sync).
    """
    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if not outputs or 'loss' not in outputs:
            return
        loss = torch.as_tensor(outputs['loss'])
        bad = non_finite_ranks(loss)
        if not bad:
            return
        # the error path: reading values here costs nothing that matters
        parts = ', '.join(
            f'{k}={float(torch.as_tensor(v).detach().float().mean()):.4g}'
            for k, v in outputs.items() if k.startswith('loss'))
        if get_world_size() > 1:
            where = f' on rank {", ".join(map(str, bad))}'
            parts = f'rank {get_rank()}\'s losses: {parts}'
            stopped = 'Training stopped on every rank.'
        else:
            where, stopped = '', 'Training stopped.'
        newest = _newest_checkpoint(runner)
        if newest:
            advice = (f'The newest checkpoint, {newest}, was written before '
                      'this iteration; --resume starts from it.')
        else:
            advice = 'No checkpoint has been written in this run yet.'
        raise NonFiniteLossError(
            f'training loss became non-finite{where} at iteration '
            f'{runner.iter + 1} (epoch {runner.epoch + 1}, batch '
            f'{batch_idx + 1}): {parts}. {stopped} {advice}')
