"""Non-finite weights are never checkpointed: NonFiniteLossHook checks every
floating parameter and buffer (on every rank) before a checkpoint is written,
which catches what a finite loss hides (a NaN gradient, a NaN buffer)."""
import glob
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub

import nan_state_hooks  # noqa: F401  tests/helpers (registers the hooks)
from child_config import RESNET18_MAXSUP_TINY, write_child_config
from maxsup_mm.engine.hooks import (NonFiniteLossError, NonFiniteLossHook,
                                    NonFiniteWeightsError)
from dist_run import dist_train  # tests/helpers
from tiny_classifier import tiny_runner  # tests/helpers

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
HELPERS = osp.join(ROOT, 'tests', 'helpers')


def _runner(model, last_ckpt=None, **counters):
    """The runner attributes the hook reads: a CheckpointHook saving every
    4 iterations, iteration 7 (0-based) of 12 finishing."""
    from mmengine.hooks import CheckpointHook
    hub = MessageHub.get_instance(f'nonfinite-weights-{id(model)}')
    if last_ckpt:
        hub.update_info('last_ckpt', last_ckpt)
    runner = SimpleNamespace(
        model=model, message_hub=hub, iter=7, max_iters=12, epoch=0,
        hooks=[CheckpointHook(by_epoch=False, interval=4)])
    vars(runner).update(counters)
    return runner


def _nan_model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2),
                                torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        model[1].running_var[1] = float('inf')  # a buffer
        model[0].bias[0] = float('nan')  # a parameter
    return model


def test_non_finite_weights_stop_before_the_checkpoint():
    hook = NonFiniteLossHook()
    finite = torch.nn.Sequential(torch.nn.Linear(3, 2),
                                 torch.nn.BatchNorm1d(2))
    hook.after_train_iter(_runner(finite), 7)  # finite: no error
    runner = _runner(_nan_model(), '/w/iter_4.pth')
    with pytest.raises(NonFiniteWeightsError) as err:
        hook.after_train_iter(runner, 7, outputs=dict(loss=torch.tensor(1.)))
    msg = str(err.value)
    assert isinstance(err.value, NonFiniteLossError)
    assert '\n' not in msg
    assert '0.bias, 1.running_var (2 of 6 tensors)' in msg, msg
    assert 'the checkpoint of iteration 8 was not written' in msg
    assert 'newest checkpoint, /w/iter_4.pth' in msg


def test_non_finite_weights_checked_only_when_a_checkpoint_follows():
    hook = NonFiniteLossHook()
    for it in (0, 1, 2, 4, 6):  # CheckpointHook saves after 3, 7 and 11
        hook.after_train_iter(_runner(_nan_model(), iter=it), it)
    with pytest.raises(NonFiniteWeightsError, match='iteration 12'):
        hook.after_train_iter(_runner(_nan_model(), iter=11), 3)
    # by epoch: after epoch 2 of 3 (interval 2), and after the last one
    from mmengine.hooks import CheckpointHook
    hooks = [CheckpointHook(interval=2)]
    hook.after_train_epoch(_runner(_nan_model(), epoch=0, max_epochs=3,
                                   hooks=hooks))
    for epoch in (1, 2):
        with pytest.raises(NonFiniteWeightsError,
                           match=f'the checkpoint of epoch {epoch + 1} was'):
            hook.after_train_epoch(_runner(_nan_model(), epoch=epoch,
                                           max_epochs=3, hooks=hooks))
    # a best checkpoint follows validation
    hook.after_val_epoch(_runner(_nan_model(), hooks=hooks), dict(acc=1.))
    best = [CheckpointHook(interval=2, save_best='acc')]
    with pytest.raises(NonFiniteWeightsError,
                       match='a best checkpoint was not written'):
        hook.after_val_epoch(_runner(_nan_model(), hooks=best), dict(acc=1.))


def test_non_finite_weights_without_a_checkpoint_say_so():
    with pytest.raises(NonFiniteWeightsError,
                       match='No checkpoint has been written in this run'):
        NonFiniteLossHook().after_train_iter(_runner(_nan_model()), 7)


def _read_last_checkpoint(work):
    with open(osp.join(work, 'last_checkpoint')) as f:
        return f.read().strip()


def _assert_finite(path):
    ckpt = torch.load(path, weights_only=True)
    bad = [k for k, v in ckpt['state_dict'].items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, (path, bad)


def test_nan_gradient_with_finite_loss_is_not_checkpointed(imagenet_root,
                                                           tmp_path):
    """Iteration 8's gradient is NaN, its loss finite: the step makes the
    weights NaN just before iter_8.pth would be written."""
    work = str(tmp_path / 'work')
    runner = tiny_runner(
        imagenet_root, work, iters=8,
        default_hooks=dict(checkpoint=dict(by_epoch=False, interval=4)),
        custom_hooks=[dict(type='WeightsOnlyCheckpointHook'),
                      dict(type='NonFiniteLossHook'),
                      dict(type='NaNGradHook', iter=7)])
    with pytest.raises(NonFiniteWeightsError) as err:
        runner.train()
    msg = str(err.value)
    assert 'backbone.conv.weight' in msg, msg
    assert 'the checkpoint of iteration 8 was not written' in msg, msg
    assert f'newest checkpoint, {osp.join(work, "iter_4.pth")}' in msg
    assert not osp.exists(osp.join(work, 'iter_8.pth'))
    assert _read_last_checkpoint(work) == osp.join(work, 'iter_4.pth')
    _assert_finite(osp.join(work, 'iter_4.pth'))


# --------------------------------------------------------------------------
# two gloo ranks (torchrun through tools/dist_train.sh)
# --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('fault, ranks, names', [
    # DDP averages rank 1's NaN gradient into every rank's weights
    ('NaNGradHook', '0, 1', 'backbone.conv1.weight (1 of'),
    # a per-rank buffer (broadcast_buffers=False): only rank 1 holds NaN,
    # rank 0's own state (what it would write) is finite
    ('NaNBufferHook', '1', 'bn1.running_var (1 of')])
def test_dist_non_finite_weights_stop_every_rank_before_checkpoint(
        imagenet_root, tmp_path, fault, ranks, names):
    cfg = write_child_config(
        tmp_path / 'cfg.py', RESNET18_MAXSUP_TINY, imagenet_root,
        "custom_imports = dict(imports=['maxsup_mm', 'nan_state_hooks'], "
        "allow_failed_imports=False)\n"
        "train_cfg = dict(max_epochs=1)\n"
        "param_scheduler = dict(T_max=1)\n"
        "default_hooks = dict(checkpoint=dict(by_epoch=False, interval=2))\n"
        # 2 ranks x 4 iterations: iteration 3 (0-based) ends with iter_4.pth
        f"custom_hooks = [dict(type='{fault}', iter=3, rank=1)]\n")
    work = str(tmp_path / 'work')
    proc = dist_train(cfg, work, pythonpath=HELPERS)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert not osp.exists(osp.join(work, 'iter_4.pth')), out[-3000:]
    assert sorted(map(osp.basename, glob.glob(osp.join(work, "*.pth")))) \
        == ['iter_2.pth'], out[-3000:]
    _assert_finite(osp.join(work, 'iter_2.pth'))
    assert _read_last_checkpoint(work) == osp.join(work, 'iter_2.pth')
    # both ranks stop, each with one line naming the diverged rank(s) and
    # the newest checkpoint; the rank(s) holding NaN name the tensors
    errors = [line for line in out.splitlines()
              if 'NonFiniteWeightsError: ' in line]
    assert len(errors) == 2, out[-3000:]
    for line in errors:
        assert f'NaN or infinity on rank {ranks}: ' in line, line
        assert 'the checkpoint of iteration 4 was not written' in line, line
        assert f'newest checkpoint, {osp.join(work, "iter_2.pth")}' \
            in line, line
    for rank in map(int, ranks.split(', ')):
        assert any(f"rank {rank}'s non-finite tensors: " in line and
                   names in line for line in errors), errors
