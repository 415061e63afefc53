"""Exact resume of the training loops (maxsup_mm.engine.loops), on a toy
model whose every batch and every random draw is recorded.

The uninterrupted run writes a checkpoint every 4 iterations (6 iterations
an epoch, so some land mid-epoch and one on an epoch's last batch); a fresh
runner resumed from each of them must see the same batches, the same data
augmentation draws (main process or data workers) and the same model-side
draws as the uninterrupted run, iteration by iteration, and train the same
number of iterations.  mmengine's own loops are the negative control.
"""
import os.path as osp
import random

import numpy as np
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import maxsup_mm  # noqa: F401  (registers the loops and hooks)
from log_capture import log_messages  # tests/helpers

ITERS_PER_EPOCH = 6  # 24 samples, batch 4
EPOCHS = 3


class RandomAugmentDataset(Dataset):
    """Sample ``i`` plus one draw of each generator an augmentation uses."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        return dict(x=torch.tensor([float(i), np.random.rand(),
                                    random.random(),
                                    float(torch.rand(()))]))


class ToyModel(BaseModel):
    """A linear loss with a model-side random draw (like dropout/Mixup)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))

    def forward(self, x, data_samples=None, mode='loss'):
        x = torch.stack(list(x))
        noise = torch.rand(())
        return dict(loss=(x @ self.w).mean() * 1e-3 + noise * 0)


class Recorder(Hook):
    """iteration -> (batch, model-side draw) seen by the training step."""
    priority = 'LOWEST'  # after ReseedHook's re-seeding

    def __init__(self):
        self.seen = {}
        self.lrs = {}  # iteration -> the learning rate it trains with

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        state = torch.random.get_rng_state()
        draw = float(torch.rand(()))  # what the model would draw now
        torch.random.set_rng_state(state)
        self.seen[runner.iter] = (torch.stack(data_batch['x']).tolist(),
                                  draw, batch_idx)
        self.lrs[runner.iter] = runner.optim_wrapper.param_groups[0]['lr']


def make_runner(work_dir, name, loop, workers=0, persistent=False,
                resume_from=None, sampler='DefaultSampler',
                param_scheduler=None):
    recorder = Recorder()
    if loop.startswith('ExactResumeEpoch') or loop == 'EpochBasedTrainLoop':
        train_cfg = dict(type=loop, max_epochs=EPOCHS)
    else:
        train_cfg = dict(type=loop, max_iters=EPOCHS * ITERS_PER_EPOCH)
    runner = Runner(
        model=ToyModel(),
        work_dir=work_dir,
        experiment_name=name,
        train_dataloader=dict(
            dataset=RandomAugmentDataset(),
            sampler=dict(type=sampler, shuffle=True),
            batch_size=4, num_workers=workers,
            persistent_workers=persistent),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        param_scheduler=param_scheduler,
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', by_epoch=False,
                            interval=4, max_keep_ckpts=-1),
            logger=dict(type='LoggerHook', interval=100)),
        custom_hooks=[dict(type='WeightsOnlyCheckpointHook'),
                      dict(type='ReseedHook'), recorder],
        randomness=dict(seed=0),
        resume=resume_from is not None,
        load_from=resume_from,
        default_scope='mmengine',
        log_level='WARNING')
    return runner, recorder


def train(runner):
    """``runner.train()``, then stop persistent data workers now: left to
    the garbage collector, their shutdown can wait seconds on join time-outs
    in the middle of a later test."""
    try:
        runner.train()
    finally:
        iterator = getattr(runner.train_dataloader, '_iterator', None)
        if iterator is not None:
            iterator._shutdown_workers()


def run_recorders(tmp_path, loop, **kwargs):
    """The recorders of the uninterrupted run and of a resumed run from each
    checkpoint (step -> recorder)."""
    work = str(tmp_path / 'full')
    runner, full = make_runner(work, f'full-{tmp_path.name}', loop, **kwargs)
    train(runner)
    resumed = {}
    for step in (8, 12, 16):
        runner, rec = make_runner(
            str(tmp_path / f'from{step}'), f'from{step}-{tmp_path.name}',
            loop, resume_from=osp.join(work, f'iter_{step}.pth'), **kwargs)
        train(runner)
        resumed[step] = rec
    return full, resumed


def run(tmp_path, loop, **kwargs):
    """The uninterrupted run, and a resumed run from each checkpoint."""
    full, resumed = run_recorders(tmp_path, loop, **kwargs)
    return full.seen, {step: rec.seen for step, rec in resumed.items()}


@pytest.mark.parametrize('workers', [0, 2])
def test_epoch_loop_resumes_mid_epoch_exactly(tmp_path, workers):
    full, resumed = run(tmp_path, 'ExactResumeEpochBasedTrainLoop',
                        workers=workers)
    assert sorted(full) == list(range(EPOCHS * ITERS_PER_EPOCH))
    for step, seen in resumed.items():
        # exactly the iterations the checkpoint had not trained ...
        assert sorted(seen) == list(range(step, EPOCHS * ITERS_PER_EPOCH))
        for it, value in seen.items():  # ... with the same batches and draws
            assert value == full[it], (step, it)


def test_mmengine_epoch_loop_repeats_batches(tmp_path):
    """The negative control: mmengine's loop restarts the epoch."""
    full, resumed = run(tmp_path, 'EpochBasedTrainLoop')
    assert len(resumed[8]) == EPOCHS * ITERS_PER_EPOCH - 6  # not 18 - 8
    assert any(value != full.get(it) for it, value in resumed[8].items())


@pytest.mark.parametrize('workers, persistent', [(0, False), (2, True)])
def test_iteration_loop_resumes_exactly(tmp_path, workers, persistent):
    full, resumed = run(tmp_path, 'ExactResumeIterBasedTrainLoop',
                        workers=workers, persistent=persistent,
                        sampler='InfiniteSampler')
    assert sorted(full) == list(range(EPOCHS * ITERS_PER_EPOCH))
    for step, seen in resumed.items():
        assert sorted(seen) == list(range(step, EPOCHS * ITERS_PER_EPOCH))
        for it, value in seen.items():
            assert value == full[it], (step, it)


def test_persistent_workers_resume_warns(tmp_path):
    """What a checkpoint cannot hold is said, not silently wrong."""
    from mmengine.logging import MMLogger
    work = str(tmp_path / 'full')
    runner, _ = make_runner(work, f'pw-full-{tmp_path.name}',
                            'ExactResumeEpochBasedTrainLoop', workers=1,
                            persistent=True)
    train(runner)
    runner, _ = make_runner(str(tmp_path / 'resumed'),
                            f'pw-resumed-{tmp_path.name}',
                            'ExactResumeEpochBasedTrainLoop', workers=1,
                            persistent=True,
                            resume_from=osp.join(work, 'iter_8.pth'))
    with log_messages(MMLogger.get_current_instance()) as messages:
        train(runner)
    assert any('persistent_workers=True' in m for m in messages)


@pytest.mark.parametrize('by_epoch, milestones', [(False, [10, 14]),
                                                  (True, [2])])
def test_resume_keeps_multistep_milestones(tmp_path, by_epoch, milestones):
    """MultiStep's milestones (a Counter) survive the checkpoint: a resumed
    run decays the learning rate where the uninterrupted run does."""
    loop = ('ExactResumeEpochBasedTrainLoop' if by_epoch
            else 'ExactResumeIterBasedTrainLoop')
    scheduler = dict(type='MultiStepLR', milestones=milestones, gamma=0.1,
                     by_epoch=by_epoch)
    full, resumed = run_recorders(
        tmp_path, loop, param_scheduler=scheduler,
        sampler='DefaultSampler' if by_epoch else 'InfiniteSampler')
    # the closed form: 0.1 x 0.1 per milestone reached
    at = np.arange(EPOCHS * ITERS_PER_EPOCH)
    step = at // ITERS_PER_EPOCH if by_epoch else at
    expected = 0.1 * 0.1**np.searchsorted(milestones, step, side='right')
    np.testing.assert_allclose([full.lrs[i] for i in at], expected)
    for start, rec in resumed.items():
        assert sorted(rec.lrs) == list(range(start, len(at)))
        np.testing.assert_allclose([rec.lrs[i] for i in sorted(rec.lrs)],
                                   expected[start:], err_msg=f'from {start}')
