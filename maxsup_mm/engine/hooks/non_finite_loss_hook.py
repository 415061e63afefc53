"""Stop training, on every rank, as soon as any rank's loss is NaN or Inf,
and before any checkpoint of non-finite weights is written."""
from itertools import chain
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.dist import all_reduce, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS

from maxsup_mm.checkpoint import shown_names, unwrap_model


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss is not finite."""


class NonFiniteWeightsError(NonFiniteLossError):
    """Raised before a checkpoint when the model's weights are not finite."""


def flagged_ranks(bad: torch.Tensor) -> List[int]:
    """The ranks whose boolean scalar ``bad`` is true (every rank gets the
    same list).

    One all-reduce of a ``(world_size,)`` tensor when distributed, and one
    read of it on the host: the only host sync.
    """
    world = get_world_size()
    if world == 1:
        return [0] if bool(bad) else []
    flags = torch.zeros(world, dtype=torch.float32, device=bad.device)
    flags[get_rank()] = bad.to(flags.dtype)
    all_reduce(flags, op='sum')
    return [rank for rank, flag in enumerate(flags.tolist()) if flag > 0]


def non_finite_ranks(loss: torch.Tensor) -> List[int]:
    """The ranks whose ``loss`` is not finite (every rank gets the same
    list), by :func:`flagged_ranks`."""
    return flagged_ranks(torch.logical_not(torch.isfinite(loss.detach())
                                           .all()))


def floating_state(model: torch.nn.Module
                   ) -> List[Tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every floating-point parameter and buffer of
    ``model`` (names as in its ``state_dict``)."""
    return [(name, tensor) for name, tensor in chain(
        model.named_parameters(), model.named_buffers())
        if tensor.is_floating_point()]


def finite_flags(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(len(tensors),)`` bools on the first tensor's device: whether each
    tensor holds only finite values.  Device work only (no host sync)."""
    device = tensors[0].device
    return torch.stack([torch.isfinite(t.detach()).all().to(device)
                        for t in tensors])


def checkpoint_follows(runner, by_epoch: bool) -> bool:
    """Whether a ``CheckpointHook`` saves after this training iteration
    (``by_epoch=False``, asked in ``after_train_iter``) or epoch
    (``by_epoch=True``, in ``after_train_epoch``): its own tests.  Pure
    Python on the runner's counters (no tensor is read)."""
    for hook in runner.hooks:
        if not isinstance(hook, CheckpointHook) or hook.by_epoch != by_epoch:
            continue
        if by_epoch:
            due = hook.every_n_epochs(runner, hook.interval, hook.save_begin) \
                or (hook.save_last and hook.is_last_train_epoch(runner))
        else:
            due = hook.every_n_train_iters(runner, hook.interval,
                                           hook.save_begin) \
                or (hook.save_last and hook.is_last_train_iter(runner))
        if due:
            return True
    return False


def _saves_best(runner) -> bool:
    """Whether a ``CheckpointHook`` may save a best checkpoint after
    validation."""
    return any(isinstance(hook, CheckpointHook) and hook.save_best
               for hook in runner.hooks)


def _newest_checkpoint(runner) -> Optional[str]:
    """The checkpoint ``CheckpointHook`` wrote last (also before a resume)."""
    return runner.message_hub.get_info('last_ckpt', None)


def _where_stopped(bad: List[int]) -> Tuple[str, str]:
    """The message parts naming the diverged ranks (distributed only) and
    who stopped."""
    if get_world_size() > 1:
        return (f' on rank {", ".join(map(str, bad))}',
                'Training stopped on every rank.')
    return '', 'Training stopped.'


def _advice(runner, state: str) -> str:
    """What to resume from: the newest checkpoint (``state`` says why it is
    good) or none."""
    newest = _newest_checkpoint(runner)
    if newest:
        return (f'The newest checkpoint, {newest}, {state}; --resume starts '
                'from it.')
    return 'No checkpoint has been written in this run yet.'


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise :class:`NonFiniteLossError` on every rank, naming the iteration
    and the diverged rank(s), when the total training loss of any rank is NaN
    or infinite; raise :class:`NonFiniteWeightsError` on every rank, before a
    checkpoint is written, when a floating parameter or buffer of any rank's
    model is NaN or infinite.

    In distributed training one rank's non-finite loss reaches every rank's
    weights through the gradient all-reduce, while the other ranks' own
    losses are still finite; so the finiteness flags are summed over the
    ranks (one all-reduce of a ``(world_size,)`` tensor per iteration) and
    every rank stops.  The hook runs after each iteration and before the
    checkpoint hook, so no checkpoint is written from the broken state: the
    newest checkpoint (the message names it) stays the newest, and
    ``--resume`` starts from it.  It reads one small tensor on the host per
    iteration, as it did before the all-reduce (the single sync).

    A finite loss does not mean finite weights: a NaN gradient (the loss is
    computed before it) or a NaN buffer (a BatchNorm running statistic,
    per rank when buffers are not broadcast) reaches the checkpoint.  So
    when a ``CheckpointHook`` saves after this iteration or epoch (or may
    save a best checkpoint after validation) every rank checks its model:
    one reduction over all its floating tensors, one all-reduce over the
    ranks, one host read; at checkpoint time only.  (``Runner.
    save_checkpoint`` and so ``before_save_checkpoint`` run on rank 0 only,
    where no collective can be called; checking before ``CheckpointHook``
    also keeps ``max_keep_ckpts`` from deleting the newest good file.)
    """
    priority = 'ABOVE_NORMAL'  # before CheckpointHook (VERY_LOW)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if outputs and 'loss' in outputs:
            self._check_loss(runner, batch_idx, outputs)
        if checkpoint_follows(runner, by_epoch=False):
            self._check_weights(
                runner, f'the checkpoint of iteration {runner.iter + 1}')

    def after_train_epoch(self, runner) -> None:
        if checkpoint_follows(runner, by_epoch=True):
            self._check_weights(
                runner, f'the checkpoint of epoch {runner.epoch + 1}')

    def after_val_epoch(self, runner, metrics=None) -> None:
        if metrics and _saves_best(runner):
            self._check_weights(runner, 'a best checkpoint')

    @staticmethod
    def _check_weights(runner, checkpoint: str) -> None:
        """Raise :class:`NonFiniteWeightsError` on every rank when any
        rank's model holds NaN or infinity (``checkpoint`` names the
        checkpoint that is then not written)."""
        named = floating_state(unwrap_model(runner.model))
        if not named:
            return
        finite = finite_flags([tensor for _, tensor in named])
        bad = flagged_ranks(torch.logical_not(finite.all()))
        if not bad:
            return
        # the error path: reading values here costs nothing that matters
        names = [name for (name, _), ok in zip(named, finite.tolist())
                 if not ok]
        what = (f'{shown_names(names, 8)} ({len(names)} of {len(named)} '
                'tensors)') if names else 'none'
        if get_world_size() > 1:
            what = f'rank {get_rank()}\'s non-finite tensors: {what}'
        where, stopped = _where_stopped(bad)
        raise NonFiniteWeightsError(
            f'model weights hold NaN or infinity{where}: {what}; '
            f'{checkpoint} was not written. {stopped} '
            f'{_advice(runner, "is intact")}')

    @staticmethod
    def _check_loss(runner, batch_idx: int, outputs: dict) -> None:
        """Raise :class:`NonFiniteLossError` on every rank when any rank's
        total loss is not finite."""
        loss = torch.as_tensor(outputs['loss'])
        bad = non_finite_ranks(loss)
        if not bad:
            return
        # the error path: reading values here costs nothing that matters
        parts = ', '.join(
            f'{k}={float(torch.as_tensor(v).detach().float().mean()):.4g}'
            for k, v in outputs.items() if k.startswith('loss'))
        if get_world_size() > 1:
            parts = f'rank {get_rank()}\'s losses: {parts}'
        where, stopped = _where_stopped(bad)
        advice = _advice(runner, 'was written before this iteration')
        raise NonFiniteLossError(
            f'training loss became non-finite{where} at iteration '
            f'{runner.iter + 1} (epoch {runner.epoch + 1}, batch '
            f'{batch_idx + 1}): {parts}. {stopped} {advice}')
