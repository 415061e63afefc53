"""Training loops whose ``--resume`` reproduces the uninterrupted run.

mmengine's :class:`~mmengine.runner.EpochBasedTrainLoop` restarts the
current epoch from its first batch when it resumes from a checkpoint written
in the middle of that epoch (``CheckpointHook(by_epoch=False)``): the batches
already trained are trained again and the run gets longer.  Both loops here

* skip the batches of the current epoch that the checkpoint had already
  trained, by drawing them from the same data loader (same sampler epoch and
  shuffle order; the data workers, if any, go through the same random draws);
* call the hook method :data:`BEFORE_FETCH` right before fetching every
  training batch, where :class:`~maxsup_mm.engine.hooks.ReseedHook` re-seeds
  the generators, so the random augmentation of a batch loaded in the main
  process does not depend on what ran before it.

Together with ``ReseedHook`` this makes the losses logged after a resume equal
to the uninterrupted run's, for epoch- and iteration-based training.  What a
checkpoint cannot hold is the random state of *persistent* data workers
(``persistent_workers=True`` with ``num_workers > 0``) from earlier epochs;
resuming such a run after its first epoch logs a warning.

``maxsup_mm.apis.add_default_hooks`` (every run of ``tools/train.py``)
replaces mmengine's two loops by these; in a config of your own::

    train_cfg = dict(type='ExactResumeEpochBasedTrainLoop', max_epochs=300)
"""
import logging
from typing import Optional

from mmengine.logging import print_log
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

#: hook method the loops call before fetching each training batch; keyword
#: argument ``batch_idx`` (the index the batch will have in its epoch)
BEFORE_FETCH = 'before_train_fetch'

#: message-hub info (saved in checkpoints): ``[epoch, iteration]`` at which
#: the current epoch started
EPOCH_START = 'exact_resume_epoch_start'

#: mmengine loop -> the loop here that replaces it
EXACT_RESUME_LOOPS = {
    'EpochBasedTrainLoop': 'ExactResumeEpochBasedTrainLoop',
    'IterBasedTrainLoop': 'ExactResumeIterBasedTrainLoop',
}


def _warn(msg: str) -> None:
    print_log(msg, logger='current', level=logging.WARNING)


def _info(msg: str) -> None:
    print_log(msg, logger='current', level=logging.INFO)


def _workers_persist(dataloader) -> bool:
    return bool(getattr(dataloader, 'num_workers', 0)) and \
        bool(getattr(dataloader, 'persistent_workers', False))


@LOOPS.register_module()
class ExactResumeEpochBasedTrainLoop(EpochBasedTrainLoop):
    """:class:`~mmengine.runner.EpochBasedTrainLoop` that resumes exactly
    from checkpoints written in the middle of an epoch (see the module
    docstring).  Arguments as the upstream loop."""

    def run(self):
        if self._iter > 0 and self._epoch > 0 and \
                _workers_persist(self.dataloader):
            _warn('Resuming with persistent_workers=True and num_workers > '
                  '0: the data workers\' random state of earlier epochs is '
                  'not in the checkpoint, so random data augmentation from '
                  'here on differs from the uninterrupted run (the data '
                  'order and the model-side randomness still match). Use '
                  'persistent_workers=False for an exact resume.')
        return super().run()

    def batches_done(self) -> int:
        """How many batches of the current epoch the resumed checkpoint had
        already trained (0 at the start of an epoch)."""
        if self._iter == 0:
            return 0
        hub = self.runner.message_hub
        start = hub.get_info(EPOCH_START)
        num = len(self.dataloader)
        if start is None:  # written by a loop that does not record it
            if self._iter != self._epoch * num:
                _warn(f'Resuming at iteration {self._iter}, in epoch '
                      f'{self._epoch + 1}: the checkpoint does not record '
                      'how many batches of this epoch it had trained (it was '
                      'not written by ExactResumeEpochBasedTrainLoop), so '
                      'the epoch starts from its first batch.')
            return 0
        epoch, start_iter = (int(v) for v in start)
        if epoch != self._epoch:  # written at the end of an epoch
            return 0
        done = self._iter - start_iter
        if not 0 <= done <= num:
            _warn(f'Resuming in epoch {self._epoch + 1} after {done} '
                  f'batches, but an epoch now has {num} batches (another '
                  'world size, batch size or dataset?): the epoch starts '
                  'from its first batch and the run does not reproduce the '
                  'interrupted one.')
            return 0
        return done

    def run_epoch(self) -> None:
        """Iterate one epoch, or its rest after a mid-epoch resume."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        skip = self.batches_done()
        batches = iter(self.dataloader)
        if skip == 0:
            self.runner.message_hub.update_info(EPOCH_START,
                                                [self._epoch, self._iter])
        elif skip == len(self.dataloader):
            # every batch was trained; only the epoch's end hooks are left
            # (the fetch hook runs as before the uninterrupted run's last,
            # empty fetch)
            self.runner.call_hook(BEFORE_FETCH, batch_idx=skip)
        else:
            _info(f'Resuming in the middle of epoch {self._epoch + 1}: '
                  f'drawing the {skip} batches it had already trained from '
                  'the data loader without training on them.')
            for _ in range(skip):
                next(batches)
        idx = skip
        while skip < len(self.dataloader):
            self.runner.call_hook(BEFORE_FETCH, batch_idx=idx)
            try:
                data_batch = next(batches)
            except StopIteration:
                break
            self.run_iter(idx, data_batch)
            idx += 1
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


@LOOPS.register_module()
class ExactResumeIterBasedTrainLoop(IterBasedTrainLoop):
    """:class:`~mmengine.runner.IterBasedTrainLoop` that calls
    :data:`BEFORE_FETCH` before fetching each batch, so a resumed run (which
    draws the batches already trained from the data loader first, as
    upstream does) loads the following batches with the same random state
    as the uninterrupted run.  Arguments as the upstream loop."""

    def run(self):
        self.runner.call_hook('before_train')
        # as upstream: the whole training is one big epoch
        self.runner.call_hook('before_train_epoch')
        if self._iter > 0:
            _info(f'Resuming at iteration {self._iter}: drawing the batches '
                  'already trained from the data loader without training on '
                  'them.')
            for _ in range(self._iter):
                next(self.dataloader_iterator)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.runner.call_hook(BEFORE_FETCH, batch_idx=self._iter)
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)

            self._decide_current_val_interval()
            if (self.runner.val_loop is not None
                    and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0
                         or self._iter == self._max_iters)):
                self.runner.val_loop.run()

        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model


def exact_resume_loop_cfg(train_cfg: Optional[dict]) -> Optional[dict]:
    """``train_cfg`` with mmengine's epoch/iteration loop replaced by the
    matching loop here; any other loop type is returned unchanged."""
    if not train_cfg:
        return train_cfg
    cfg = train_cfg.copy()
    loop = cfg.get('type', None)
    if loop is None:
        if 'by_epoch' not in cfg:
            return train_cfg  # mmengine reports the problem itself
        loop = 'EpochBasedTrainLoop' if cfg.pop('by_epoch') else \
            'IterBasedTrainLoop'
    if not isinstance(loop, str):
        return train_cfg
    name = loop.split('.')[-1]
    if name in EXACT_RESUME_LOOPS:
        cfg['type'] = EXACT_RESUME_LOOPS[name]
        return cfg
    return train_cfg
