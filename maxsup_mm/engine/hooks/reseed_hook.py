"""Re-seed the random generators from (seed, epoch, iteration, rank)."""
import random

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def derived_seed(seed: int, *counters: int) -> int:
    """A 32-bit seed that depends on ``seed`` and every counter."""
    rng = np.random.SeedSequence([seed % 2**32, *counters])
    return int(rng.generate_state(1)[0])


def reseed_all(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@HOOKS.register_module()
class ReseedHook(Hook):
    """Make the randomness of epoch ``e`` / iteration ``i`` a function of
    ``(seed, e, i, rank)`` only, so ``--resume`` reproduces the run exactly.

    mmengine seeds the generators once, at start-up.  After a resume the
    generators are therefore not where the uninterrupted run had them
    (validation, data loader start-up and augmentations have consumed
    numbers in between), and Mixup/CutMix draws, dropout and data
    augmentation differ.  This hook re-seeds Python, numpy and torch before
    every training epoch (before the data loader's workers are seeded),
    before fetching every training batch (augmentation in the main process;
    called by the loops of :mod:`maxsup_mm.engine.loops`) and before every
    training iteration.  Costs a few microseconds an iteration.

    Args:
        seed (int, optional): base seed; defaults to the runner's seed.
    """
    priority = 'VERY_HIGH'

    def __init__(self, seed=None):
        self.seed = seed

    def _base(self, runner) -> int:
        return int(self.seed if self.seed is not None else runner.seed)

    def before_train_epoch(self, runner) -> None:
        reseed_all(derived_seed(self._base(runner), 0, runner.epoch,
                                get_rank()))

    def before_train_fetch(self, runner, batch_idx: int) -> None:
        """Called by :mod:`maxsup_mm.engine.loops` right before the batch of
        iteration ``runner.iter`` is fetched from the data loader."""
        reseed_all(derived_seed(self._base(runner), 2, runner.iter,
                                get_rank()))

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        reseed_all(derived_seed(self._base(runner), 1, runner.iter,
                                get_rank()))
