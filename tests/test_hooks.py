"""Hooks and distributed statistics, checked against closed-form answers."""
import io
import os
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from mmengine.logging import HistoryBuffer, MessageHub

from maxsup_mm.engine.hooks import (AlphaScheduleHook, NonFiniteLossError,
                                    NonFiniteLossHook, decode_safe,
                                    encode_safe, scheduled_alpha)
from maxsup_mm.models.losses import (LabelSmoothDecompLoss, MaxSupLoss,
                                     OnlineLabelSmoothLoss)
from log_capture import log_messages  # tests/helpers


@pytest.mark.parametrize('t, expected', [(0, 0.1), (150, 0.15), (300, 0.2),
                                         (400, 0.2)])
def test_scheduled_alpha_is_table8_line(t, expected):
    # Table 8's formula as printed: t / T
    assert scheduled_alpha(0.1, 0.2, t, 300, end_inclusive=False) == \
        pytest.approx(expected)


@pytest.mark.parametrize('t, expected', [(0, 0.1), (1, 0.1 + 0.1 / 299),
                                         (299, 0.2), (400, 0.2)])
def test_scheduled_alpha_default_is_authors_code(t, expected):
    # DeiT engine.py of the authors: lam = 0.1 + epoch*0.1/299 (300 epochs)
    assert scheduled_alpha(0.1, 0.2, t, 300) == pytest.approx(expected)
    assert scheduled_alpha(0.1, 0.2, t, 300) == \
        pytest.approx(0.1 + min(t, 299) * 0.1 / 299)


def test_scheduled_alpha_one_step_schedule_is_start():
    assert scheduled_alpha(0.1, 0.2, 0, 1) == 0.1
    assert scheduled_alpha(0.1, 0.2, 0, 1, end_inclusive=False) == 0.1


class _Runner:
    """The runner attributes AlphaScheduleHook reads."""

    def __init__(self, model, epoch, max_epochs=10, iters_per_epoch=5,
                 train_loop=None):
        self.model, self.epoch, self.max_epochs = model, epoch, max_epochs
        self.iter = epoch * iters_per_epoch
        self.max_iters = max_epochs * iters_per_epoch
        self.train_loop = train_loop
        self.message_hub = MessageHub.get_instance('alpha-test')


def _schedulable_model():
    return torch.nn.ModuleDict(dict(a=MaxSupLoss(), b=LabelSmoothDecompLoss(),
                                    c=torch.nn.Linear(2, 2)))


def test_alpha_schedule_hook_sets_every_schedulable_loss():
    model = _schedulable_model()
    hook = AlphaScheduleHook(start=0.1, end=0.2)
    runner = _Runner(model, epoch=4)
    hook.before_train(runner)
    hook.before_train_iter(runner, 0)
    expected = 0.1 + 0.1 * 4 / 9  # epoch 4 of 10: t / (T - 1)
    assert model['a'].alpha == pytest.approx(expected)
    assert model['b'].alpha == pytest.approx(expected)
    assert runner.message_hub.get_scalar('train/alpha').current() == \
        pytest.approx(expected)


@pytest.mark.parametrize('by_epoch', [True, False])
@pytest.mark.parametrize('end_inclusive', [True, False])
def test_alpha_schedule_over_a_whole_run_matches_closed_form(
        by_epoch, end_inclusive):
    """Every iteration of a 4-epoch x 3-iteration run, against the closed
    form; the first step trains with start, the last with end (authors) or
    start + (end - start)(T - 1)/T (Table 8 as printed)."""
    model = _schedulable_model()
    start, end, epochs, per_epoch = 0.05, 0.25, 4, 3
    hook = AlphaScheduleHook(start=start, end=end, by_epoch=by_epoch,
                             end_inclusive=end_inclusive)
    runner = _Runner(model, 0, max_epochs=epochs, iters_per_epoch=per_epoch)
    hook.before_train(runner)
    seen = []
    for it in range(epochs * per_epoch):
        runner.epoch, runner.iter = it // per_epoch, it
        hook.before_train_iter(runner, it % per_epoch)
        seen.append(model['a'].alpha)
    t = np.arange(epochs * per_epoch)
    if by_epoch:
        t, total = t // per_epoch, epochs
    else:
        total = epochs * per_epoch
    span = total - 1 if end_inclusive else total
    np.testing.assert_allclose(seen, start + (end - start) * t / span)
    assert seen[0] == pytest.approx(start)
    assert (seen[-1] == pytest.approx(end)) is end_inclusive


def test_alpha_schedule_resumed_mid_schedule_continues_it():
    """A hook built fresh after a resume (the runner's counters restored)
    sets what the uninterrupted run had at that point."""
    model = _schedulable_model()
    runner = _Runner(model, epoch=0, max_epochs=6)
    full = AlphaScheduleHook()
    full.before_train(runner)
    values = {}
    for epoch in range(6):
        runner.epoch, runner.iter = epoch, epoch * 5
        full.before_train_iter(runner, 0)
        values[epoch] = model['a'].alpha
    resumed_model = _schedulable_model()
    resumed = _Runner(resumed_model, epoch=3, max_epochs=6)
    hook = AlphaScheduleHook()
    hook.before_train_iter(resumed, 0)  # before_train is implied
    assert resumed_model['a'].alpha == values[3]
    assert values[5] == pytest.approx(0.2)


def test_alpha_schedule_by_epoch_follows_iterations_of_iter_loop():
    """On an iteration-based loop (every mmseg config) mmengine reports
    max_epochs=1: by_epoch=True follows the iterations and says so once."""
    from mmengine.logging import MMLogger
    from mmengine.runner import IterBasedTrainLoop

    class _IterLoop(IterBasedTrainLoop):
        def __init__(self):  # only its type matters here
            pass

    model = _schedulable_model()
    runner = _Runner(model, epoch=0, max_epochs=1, iters_per_epoch=9,
                     train_loop=_IterLoop())
    logger = MMLogger.get_instance('alpha-iter-test')  # the current logger
    with log_messages(logger) as messages:
        hook = AlphaScheduleHook(start=0.1, end=0.2)  # by_epoch=True
        hook.before_train(runner)
        alphas = []
        for it in range(9):
            runner.iter = it
            hook.before_train_iter(runner, it)
            alphas.append(model['a'].alpha)
    np.testing.assert_allclose(alphas, 0.1 + 0.1 * np.arange(9) / 8)
    assert sum('follows the iterations' in m for m in messages) == 1


def test_alpha_schedule_hook_without_losses_fails_clearly():
    with pytest.raises(RuntimeError, match='found no loss'):
        AlphaScheduleHook().before_train(_Runner(torch.nn.Linear(2, 2), 0))


def test_non_finite_loss_message_names_newest_checkpoint_or_none():
    hook = NonFiniteLossHook()
    hub = MessageHub.get_instance('non-finite-test')
    runner = SimpleNamespace(iter=2, epoch=0, message_hub=hub,
                             hooks=[])  # no CheckpointHook
    hook.after_train_iter(runner, 2, outputs=dict(loss=torch.tensor(1.5)))
    nan = dict(loss=torch.tensor(float('nan')), loss_cls=torch.tensor(1.0))
    with pytest.raises(NonFiniteLossError) as err:
        hook.after_train_iter(runner, 2, outputs=nan)
    msg = str(err.value)
    assert 'at iteration 3 (epoch 1, batch 3)' in msg
    assert 'No checkpoint has been written in this run yet' in msg
    assert 'intact' not in msg and '--resume' not in msg
    hub.update_info('last_ckpt', '/work/epoch_4.pth')  # as CheckpointHook
    with pytest.raises(NonFiniteLossError,
                       match=r'newest checkpoint, /work/epoch_4.pth'):
        hook.after_train_iter(runner, 2, outputs=nan)


@pytest.fixture
def plain_weights_only():
    """torch's weights_only unpickler without the allowlist that
    ``import maxsup_mm`` registers (what plain torch / other tools see)."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.add_safe_globals(saved)


def test_message_hub_roundtrip_under_weights_only(plain_weights_only):
    hub = MessageHub('ckpt-test')
    for i in range(5):
        hub.update_scalar('train/loss', float(i) * 0.5)
    hub.update_info('extra', np.arange(3))
    hub.update_info('count', np.int64(7))
    state = {'message_hub': hub.state_dict(),
             'meta': {'seed': np.int32(3), 'ratio': np.float64(0.25)}}
    raw = io.BytesIO()
    torch.save(state, raw)
    # the problem this solves: torch's own allowlist refuses the raw state
    # (a fresh interpreter: `import maxsup_mm` extends the allowlist here)
    code = ('import io, sys, torch; '
            'torch.load(io.BytesIO(sys.stdin.buffer.read()), '
            'weights_only=True)')
    proc = subprocess.run([sys.executable, '-c', code], input=raw.getvalue(),
                          capture_output=True)
    assert proc.returncode != 0 and b'HistoryBuffer' in proc.stderr
    buf = io.BytesIO()
    torch.save(encode_safe(state), buf)
    buf.seek(0)
    loaded = decode_safe(torch.load(buf, weights_only=True))
    restored = MessageHub('ckpt-test-2')
    restored.load_state_dict(loaded['message_hub'])
    history = restored.get_scalar('train/loss')
    assert isinstance(history, HistoryBuffer)
    np.testing.assert_array_equal(history.data[0], [0, 0.5, 1, 1.5, 2])
    np.testing.assert_array_equal(restored.get_info('extra'), np.arange(3))
    assert loaded['meta'] == {'seed': 3, 'ratio': 0.25}


# --------------------------------------------------------------------------
# OLS statistics summed across two gloo ranks
# --------------------------------------------------------------------------
K = 4


def _rank_data(rank):
    g = torch.Generator().manual_seed(100 + rank)
    logits = torch.randn(32, K, generator=g) * 2
    labels = logits.argmax(1)  # every sample correct ...
    labels[::3] = torch.randint(0, K, (len(labels[::3]), ), generator=g)
    return logits, labels


def _ols_worker(rank, world, init_file, out_dir):
    dist.init_process_group('gloo', init_method=f'file://{init_file}',
                            rank=rank, world_size=world)
    loss = OnlineLabelSmoothLoss(num_classes=K).train()
    loss.hook_attached = True
    logits, labels = _rank_data(rank)
    loss(logits, labels)
    loss.epoch_update()
    torch.save(loss.supervise, os.path.join(out_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ols_matrices_identical_across_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ols_worker, args=(2, os.path.join(tmp, 'init'), tmp),
                 nprocs=2, join=True)
        m0 = torch.load(os.path.join(tmp, 'rank0.pt'))
        m1 = torch.load(os.path.join(tmp, 'rank1.pt'))
    assert torch.equal(m0, m1)
    # oracle: per class, the mean softmax over the correct samples of both ranks
    logits = torch.cat([_rank_data(r)[0] for r in range(2)])
    labels = torch.cat([_rank_data(r)[1] for r in range(2)])
    probs = F.softmax(logits, 1)
    correct = probs.argmax(1) == labels
    for c in range(K):
        sel = correct & (labels == c)
        assert sel.any()
        torch.testing.assert_close(m0[:, c], probs[sel].mean(0))


# --------------------------------------------------------------------------
# OLS statistics across a mid-epoch checkpoint under DDP
# --------------------------------------------------------------------------
def _ols_resume_worker(rank, world, init_file, out_dir):
    from maxsup_mm.engine.hooks import OnlineLabelSmoothHook
    dist.init_process_group('gloo', init_method=f'file://{init_file}',
                            rank=rank, world_size=world)
    logits, labels = _rank_data(rank)
    first, rest = slice(0, 12), slice(12, None)

    def ols():
        loss = OnlineLabelSmoothLoss(num_classes=K).train()
        loss.hook_attached = True
        return loss

    # uninterrupted: part of the epoch, a mid-epoch checkpoint, the rest
    full = ols()
    full(logits[first], labels[first])
    full.consolidate_statistics()  # OnlineLabelSmoothHook, before the save
    ckpt = os.path.join(out_dir, 'mid_epoch.pt')
    if rank == 0:  # only rank 0 writes the checkpoint
        torch.save(full.state_dict(), ckpt)
    dist.barrier()
    full(logits[rest], labels[rest])
    full.epoch_update()
    # resumed: every rank loads rank 0's checkpoint, then trains the rest
    resumed = ols()
    checkpoint = {'state_dict': torch.load(ckpt)}
    OnlineLabelSmoothHook().after_load_checkpoint(None, checkpoint)
    resumed.load_state_dict(checkpoint['state_dict'])
    resumed(logits[rest], labels[rest])
    resumed.epoch_update()
    torch.save(dict(full=full.supervise, resumed=resumed.supervise),
               os.path.join(out_dir, f'resume{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ols_mid_epoch_checkpoint_resumes_exactly_under_ddp():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ols_resume_worker, args=(2, os.path.join(tmp, 'init'), tmp),
                 nprocs=2, join=True)
        out = [torch.load(os.path.join(tmp, f'resume{r}.pt'))
               for r in range(2)]
    for rank in range(2):
        assert torch.equal(out[rank]['resumed'], out[rank]['full'])
    # and the matrix is the one of the whole epoch on both ranks
    logits = torch.cat([_rank_data(r)[0] for r in range(2)])
    labels = torch.cat([_rank_data(r)[1] for r in range(2)])
    probs = F.softmax(logits, 1)
    correct = probs.argmax(1) == labels
    for c in range(K):
        sel = correct & (labels == c)
        torch.testing.assert_close(out[1]['full'][:, c], probs[sel].mean(0))


def test_ols_hook_knows_when_an_iteration_checkpoint_follows():
    from mmengine.hooks import CheckpointHook

    from maxsup_mm.engine.hooks import OnlineLabelSmoothHook
    follows = OnlineLabelSmoothHook.checkpoint_follows
    every4 = CheckpointHook(by_epoch=False, interval=4)
    runner = SimpleNamespace(hooks=[every4], iter=3, max_iters=10)
    assert follows(runner)  # iteration 4
    runner.iter = 4
    assert not follows(runner)
    runner.iter = 9  # the last iteration: save_last
    assert follows(runner)
    runner.hooks = [CheckpointHook(by_epoch=True, interval=1)]
    runner.iter = 3
    assert not follows(runner)


# --------------------------------------------------------------------------
# every scheduler state through encode_safe -> weights_only -> decode_safe
# --------------------------------------------------------------------------
def _assert_same_tree(got, expected, where='state'):
    """Equal values of the same types, recursively (``==`` alone would take
    a plain dict for a Counter and a Counter of pairs for nothing)."""
    assert type(got) is type(expected), \
        f'{where}: {type(got).__name__} != {type(expected).__name__}'
    if isinstance(expected, dict):
        assert list(got) == list(expected), f'{where}: keys'
        for key in expected:
            _assert_same_tree(got[key], expected[key], f'{where}[{key!r}]')
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), f'{where}: length'
        for i, (a, b) in enumerate(zip(got, expected)):
            _assert_same_tree(a, b, f'{where}[{i}]')
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected), where
    elif isinstance(expected, float) and np.isnan(expected):
        assert np.isnan(got), where
    else:
        assert got == expected, where


def _weights_only_roundtrip(obj):
    """encode_safe -> torch.save -> torch.load(weights_only=True) ->
    decode_safe, as a checkpoint travels."""
    buf = io.BytesIO()
    torch.save(encode_safe(obj), buf)
    buf.seek(0)
    return decode_safe(torch.load(buf, weights_only=True))


def test_encode_safe_keeps_counter_ordereddict_defaultdict(plain_weights_only):
    from collections import Counter, OrderedDict, defaultdict
    state = {'milestones': Counter([30, 60, 80, 60]),
             'order': OrderedDict([('b', 1), ('a', [Counter('xyx')])]),
             'lists': defaultdict(list, {'k': [1, 2]}),
             'none': defaultdict(None, {1: 2.5}),
             'nested': [OrderedDict(z=Counter({(1, 2): 3}))]}
    loaded = _weights_only_roundtrip(state)
    _assert_same_tree(loaded, state)
    assert loaded['milestones'] == Counter({30: 1, 60: 2, 80: 1})
    assert loaded['lists'].default_factory is list
    assert loaded['none'].default_factory is None
    # what torch loads from a checkpoint written without encode_safe
    # (mmengine's own hook): decoding keeps the types
    _assert_same_tree(decode_safe(state), state)


def test_encode_safe_refuses_defaultdict_it_cannot_restore():
    from collections import defaultdict
    with pytest.raises(TypeError, match='default_factory'):
        encode_safe({'d': defaultdict(lambda: 0)})


def test_decode_safe_restores_only_known_functions():
    from mmengine.optim.scheduler.param_scheduler import \
        OneCycleParamScheduler
    encoded = encode_safe({'f': OneCycleParamScheduler._annealing_cos})
    assert decode_safe(encoded)['f'] is OneCycleParamScheduler._annealing_cos
    forged = {k: dict(v) for k, v in encoded.items()}
    forged['f']['name'] = 'os.system'
    with pytest.raises(ValueError, match="unknown function 'os.system'"):
        decode_safe(forged)
    assert encode_safe({'g': print}) == {'g': print}  # left to torch.load


def _mmengine_scheduler_kwargs(name):
    """Arguments for each mmengine scheduler (by its family name)."""
    family = name
    for suffix in ('ParamScheduler', 'Momentum', 'LR'):
        if family.endswith(suffix):
            family = family[:-len(suffix)]
            break
    kwargs = dict(
        Constant=dict(factor=0.5, end=3),
        CosineAnnealing=dict(T_max=5),
        CosineRestart=dict(periods=[3, 4], restart_weights=[1, 0.5],
                           eta_min=0.0),
        Exponential=dict(gamma=0.8),
        Linear=dict(start_factor=0.2, end=4),
        MultiStep=dict(milestones=[2, 4, 4], gamma=0.1),
        OneCycle=dict(eta_max=0.5, total_steps=20),
        Poly=dict(power=2.0, eta_min=0.001, end=9),
        ReduceOnPlateau=dict(monitor='loss', factor=0.5, patience=1),
        Step=dict(step_size=2, gamma=0.5))[family]
    if name.endswith('ParamScheduler'):
        kwargs['param_name'] = 'lr'
    if name == 'OneCycleParamScheduler':  # OneCycleLR: the default, cos
        kwargs['anneal_strategy'] = 'linear'
    return kwargs


def _torch_scheduler(name, optimizer):
    import torch.optim.lr_scheduler as L

    def make(cls_name):
        return getattr(L, cls_name)(optimizer, **dict(
            LambdaLR=dict(lr_lambda=lambda e: 0.9**e),
            MultiplicativeLR=dict(lr_lambda=lambda e: 0.95),
            StepLR=dict(step_size=2, gamma=0.5),
            MultiStepLR=dict(milestones=[2, 4, 4], gamma=0.1),
            ConstantLR=dict(factor=0.5, total_iters=3),
            LinearLR=dict(start_factor=0.2, total_iters=4),
            ExponentialLR=dict(gamma=0.8),
            PolynomialLR=dict(total_iters=8, power=2.0),
            CosineAnnealingLR=dict(T_max=5),
            ReduceLROnPlateau=dict(factor=0.5, patience=1),
            CyclicLR=dict(base_lr=0.01, max_lr=0.1, step_size_up=2),
            CosineAnnealingWarmRestarts=dict(T_0=3),
            OneCycleLR=dict(max_lr=0.5, total_steps=20))[cls_name])

    if name == 'SequentialLR':
        return L.SequentialLR(optimizer, [make('ConstantLR'),
                                          make('MultiStepLR')],
                              milestones=[3])
    if name == 'ChainedScheduler':
        return L.ChainedScheduler([make('StepLR'), make('MultiStepLR')],
                                  optimizer=optimizer)
    return make(name)


def _torch_scheduler_names():
    import inspect

    import torch.optim.lr_scheduler as L
    return sorted(
        n for n, c in vars(L).items()
        if inspect.isclass(c) and c.__module__ == L.__name__
        and not n.startswith('_') and n != 'LRScheduler'
        and issubclass(c, (L.LRScheduler, L.ReduceLROnPlateau)))


def _mmengine_scheduler_names():
    from mmengine.registry import PARAM_SCHEDULERS
    return sorted(PARAM_SCHEDULERS.module_dict)


def _build_scheduler(source, name):
    """A fresh SGD (lr 0.1, momentum 0.9) and the scheduler ``name``."""
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    if source == 'torch':
        return optimizer, _torch_scheduler(name, optimizer)
    from mmengine.registry import PARAM_SCHEDULERS
    return optimizer, PARAM_SCHEDULERS.get(name)(
        optimizer, **_mmengine_scheduler_kwargs(name))


def _step(scheduler, i):
    """One scheduler step; plateau schedulers get a loss that stalls."""
    if type(scheduler).__name__.startswith('ReduceOnPlateau'):
        scheduler.step(dict(loss=1.0 if i > 1 else 2.0 - i))
    elif type(scheduler).__name__ == 'ReduceLROnPlateau':
        scheduler.step(1.0 if i > 1 else 2.0 - i)
    else:
        scheduler.step()


def _values(optimizer):
    return [(g['lr'], g.get('momentum')) for g in optimizer.param_groups]


@pytest.mark.parametrize(
    'source, name',
    [('torch', n) for n in _torch_scheduler_names()] +
    [('mmengine', n) for n in _mmengine_scheduler_names()])
def test_scheduler_state_roundtrip_is_exact(plain_weights_only, source, name):
    """A checkpointed scheduler (with its optimizer) loads back to the same
    state (types included: MultiStep's milestones are a Counter) and
    schedules the same values as the one that was never saved."""
    optimizer, scheduler = _build_scheduler(source, name)
    for i in range(5):
        optimizer.step()
        _step(scheduler, i)
    state = scheduler.state_dict()
    loaded = _weights_only_roundtrip(
        dict(optimizer=optimizer.state_dict(), scheduler=state))
    _assert_same_tree(loaded['scheduler'], state)
    optimizer2, scheduler2 = _build_scheduler(source, name)
    optimizer2.load_state_dict(loaded['optimizer'])
    scheduler2.load_state_dict(loaded['scheduler'])
    assert _values(optimizer2) == _values(optimizer)
    for i in range(5, 14):  # the oracle: the scheduler that went on
        optimizer.step()
        optimizer2.step()
        _step(scheduler, i)
        _step(scheduler2, i)
        assert _values(optimizer2) == _values(optimizer), (name, i)


def test_scheduler_roundtrip_covers_every_scheduler():
    """The list above is upstream's: a new scheduler needs arguments."""
    assert 'MultiStepParamScheduler' in _mmengine_scheduler_names()
    assert {'MultiStepLR', 'OneCycleLR', 'CosineRestartLR',
            'ReduceOnPlateauLR', 'StepMomentum'} <= set(
                _mmengine_scheduler_names())
    assert {'SequentialLR', 'ChainedScheduler', 'CyclicLR',
            'ReduceLROnPlateau'} <= set(_torch_scheduler_names())
