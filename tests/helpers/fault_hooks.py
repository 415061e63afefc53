"""Hooks that inject faults into a training run (imported by test configs)."""
import os
import signal

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAfterEpochHook(Hook):
    """SIGKILL the process after the checkpoint of epoch ``epoch`` is saved."""
    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW)

    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_train_epoch(self, runner) -> None:
        # runner.epoch is still the 0-based index of the finishing epoch
        if runner.epoch + 1 == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class KillAfterIterHook(Hook):
    """SIGKILL the process after training iteration ``iter`` (1-based), after
    any checkpoint of that iteration is saved."""
    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW)

    def __init__(self, iter: int):
        self.iter = iter

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        # runner.iter is still the 0-based index of the finishing iteration
        if runner.iter + 1 == self.iter:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class PoisonWeightsHook(Hook):
    """Fill the first parameter with NaN before training iteration ``iter``
    (0-based), on every rank or only on rank ``rank``."""

    def __init__(self, iter: int, rank=None):
        self.iter = iter
        self.rank = rank

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter == self.iter and self.rank in (None, get_rank()):
            with torch.no_grad():
                next(runner.model.parameters()).fill_(float('nan'))
