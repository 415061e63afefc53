"""End-to-end training through our tools: MaxSup + Mixup/CutMix + alpha
schedule on generated ImageNet-layout data; exact resume after a SIGKILL;
weights_only checkpoints; NaN stop; distributed CPU training (gloo)."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from child_config import (RESNET18_MAXSUP_TINY,  # tests/helpers
                          write_child_config)
from load_tool import load_tool  # tests/helpers
from dist_run import dist_train, free_port  # tests/helpers

# every test trains or runs a tool in a subprocess (minutes): slow
pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG = RESNET18_MAXSUP_TINY
HELPERS = osp.join(ROOT, 'tests', 'helpers')  # fault-injection hooks
ITERS_PER_EPOCH = 8  # 32 training images, batch 4


def write_cfg(path, data_root, extra=''):
    return write_child_config(path, CFG, data_root, extra)


def run_tool(*args, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([ROOT, HELPERS]))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_losses(work_dir):
    """One dict per run (oldest first): iteration -> (loss, alpha), from each
    run's vis_data/scalars.json."""
    runs = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                          'scalars.json'))):
        out = {}
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if 'loss' in rec and 'lr' in rec:
                    out[rec['iter']] = (rec['loss'], rec.get('alpha'))
        runs.append(out)
    return runs


def train_losses(work_dir):
    """iteration -> (loss, alpha) over every run in ``work_dir``."""
    out = {}
    for run in run_losses(work_dir):
        out.update(run)
    return out


@pytest.fixture(scope='module')
def uninterrupted(imagenet_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('full')
    cfg = write_cfg(tmp / 'cfg.py', imagenet_root)
    work = str(tmp / 'work')
    proc = run_tool('tools/train.py', cfg, '--work-dir', work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, work


def test_train_maxsup_mixup_alpha_schedule(uninterrupted):
    _, work = uninterrupted
    losses = train_losses(work)
    assert sorted(losses) == list(range(1, 3 * ITERS_PER_EPOCH + 1))
    for it, (loss, alpha) in losses.items():
        epoch = (it - 1) // ITERS_PER_EPOCH
        # the authors' schedule: 0.1 in the first epoch, 0.2 in the last
        assert alpha == pytest.approx(0.1 + 0.1 * epoch / 2), it
        assert loss == loss and loss > 0
    # the head really trains with MaxSupLoss and the augments
    cfg_dump = glob.glob(osp.join(work, '*', 'vis_data', 'config.py'))
    text = open(cfg_dump[0]).read()
    assert "type='MaxSupLoss'" in text and "type='CutMix'" in text


def test_train_logs_ce_part_and_maxsup_term(uninterrupted):
    """tools/train.py adds LossTermsHook: every logged iteration shows the
    regularizer's share and the rest, which sum to the logged loss (the
    logger interval is 1 here, so the windows are single iterations)."""
    _, work = uninterrupted
    path = glob.glob(osp.join(work, '*', 'vis_data', 'scalars.json'))[0]
    records = [json.loads(line) for line in open(path)]
    logged = [r for r in records if 'loss' in r and 'lr' in r]
    assert len(logged) == 3 * ITERS_PER_EPOCH
    for rec in logged:
        assert rec['maxsup_term'] > 0  # alpha * (z_max - mean z) >= 0
        assert rec['ce_term'] + rec['maxsup_term'] == pytest.approx(
            rec['loss'], rel=1e-3, abs=1e-3)


def test_checkpoints_load_with_weights_only(uninterrupted):
    _, work = uninterrupted
    ckpts = sorted(glob.glob(osp.join(work, 'epoch_*.pth')))
    assert len(ckpts) == 3
    for path in ckpts:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        assert {'state_dict', 'optimizer', 'message_hub', 'meta'} <= set(ckpt)


def test_resume_after_kill_reproduces_uninterrupted_run(uninterrupted,
                                                        imagenet_root,
                                                        tmp_path):
    _, full_work = uninterrupted
    cfg = write_cfg(
        tmp_path / 'cfg.py', imagenet_root,
        "custom_imports = dict(imports=['maxsup_mm', "
        "'fault_hooks'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2),"
        " dict(type='KillAfterEpochHook', epoch=1)]\n")
    work = str(tmp_path / 'work')
    killed = run_tool('tools/train.py', cfg, '--work-dir', work)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert osp.exists(osp.join(work, 'epoch_1.pth'))
    assert not osp.exists(osp.join(work, 'epoch_2.pth'))

    # resume the same config without the kill hook
    resume_cfg = write_cfg(tmp_path / 'resume_cfg.py', imagenet_root)
    resumed = run_tool('tools/train.py', resume_cfg, '--work-dir', work,
                       '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed epoch: 1' in resumed.stdout + resumed.stderr

    expected, got = train_losses(full_work), train_losses(work)
    after = [it for it in expected if it > ITERS_PER_EPOCH]
    assert after and all(it in got for it in after)
    for it in after:
        assert got[it] == expected[it], f'iteration {it}'
    # the part before the kill matched as well
    for it in range(1, ITERS_PER_EPOCH + 1):
        assert got[it] == expected[it]


FAULTS = ("custom_imports = dict(imports=['maxsup_mm', 'fault_hooks'], "
          "allow_failed_imports=False)\n")
ITER_CKPT = ("default_hooks = dict(checkpoint=dict(by_epoch=False, "
             "interval=4))\n")


def test_mid_epoch_resume_reproduces_uninterrupted_run(uninterrupted,
                                                       imagenet_root,
                                                       tmp_path):
    """Iteration-interval checkpoints in an epoch loop: --resume from a
    mid-epoch checkpoint skips the batches of that epoch already trained (same
    shuffle order, same per-iteration seeds), so every later loss equals the
    uninterrupted run's and the run has the same number of iterations."""
    _, full_work = uninterrupted
    cfg = write_cfg(
        tmp_path / 'cfg.py', imagenet_root, FAULTS + ITER_CKPT +
        "custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2),"
        " dict(type='KillAfterIterHook', iter=14)]\n")
    work = str(tmp_path / 'work')
    killed = run_tool('tools/train.py', cfg, '--work-dir', work)
    assert killed.returncode == -9, killed.stderr[-3000:]
    with open(osp.join(work, 'last_checkpoint')) as f:
        # batch 4 of 8 of epoch 2; iterations 13 and 14 are lost
        assert f.read().strip().endswith('iter_12.pth')

    resume_cfg = write_cfg(tmp_path / 'resume_cfg.py', imagenet_root,
                           ITER_CKPT)
    resumed = run_tool('tools/train.py', resume_cfg, '--work-dir', work,
                       '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed epoch: 1, iter: 12' in resumed.stdout + resumed.stderr

    expected = train_losses(full_work)
    before, after = run_losses(work)
    assert sorted(before) == list(range(1, 15))
    # no extra iterations: the resumed run trains exactly 13..24
    assert sorted(after) == list(range(13, 3 * ITERS_PER_EPOCH + 1))
    for run in (before, after):
        for it, value in run.items():
            assert value == expected[it], f'iteration {it}'


ITER_LOOP = (
    "train_dataloader = dict(sampler=dict(type='InfiniteSampler', "
    "shuffle=True), dataset=dict(data_root=data_root))\n"
    "train_cfg = dict(_delete_=True, by_epoch=False, max_iters=12, "
    "val_interval=12)\n"
    "param_scheduler = dict(_delete_=True, type='CosineAnnealingLR', "
    "T_max=12, by_epoch=False)\n"
    "log_processor = dict(by_epoch=False)\n" + ITER_CKPT)


def test_iteration_loop_resume_reproduces_uninterrupted_run(imagenet_root,
                                                            tmp_path):
    """An iteration-based loop (as every mmseg config) resumes exactly too,
    and AlphaScheduleHook(by_epoch=True) follows its iterations."""
    full_work = str(tmp_path / 'full')
    full = run_tool('tools/train.py',
                    write_cfg(tmp_path / 'full.py', imagenet_root, ITER_LOOP),
                    '--work-dir', full_work)
    assert full.returncode == 0, full.stderr[-3000:]
    said = (full.stdout + full.stderr).count('alpha follows the iterations')
    assert said == 1, said
    expected = train_losses(full_work)
    assert sorted(expected) == list(range(1, 13))
    for it, (loss, alpha) in expected.items():
        # the authors' schedule: start at iteration 1, end at the last one
        assert alpha == pytest.approx(0.1 + 0.1 * (it - 1) / 11), it

    cfg = write_cfg(
        tmp_path / 'cfg.py', imagenet_root, ITER_LOOP + FAULTS +
        "custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2),"
        " dict(type='KillAfterIterHook', iter=6)]\n")
    work = str(tmp_path / 'work')
    killed = run_tool('tools/train.py', cfg, '--work-dir', work)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_tool('tools/train.py',
                       write_cfg(tmp_path / 'resume.py', imagenet_root,
                                 ITER_LOOP),
                       '--work-dir', work, '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    before, after = run_losses(work)
    assert sorted(after) == list(range(5, 13))  # from iter_4.pth
    for run in (before, after):
        for it, value in run.items():
            assert value == expected[it], f'iteration {it}'


def test_non_finite_loss_stops_and_keeps_last_checkpoint(imagenet_root,
                                                         tmp_path):
    poison_iter = ITERS_PER_EPOCH + 2  # 0-based: during epoch 2
    cfg = write_cfg(
        tmp_path / 'cfg.py', imagenet_root,
        "custom_imports = dict(imports=['maxsup_mm', "
        "'fault_hooks'], allow_failed_imports=False)\n"
        f"custom_hooks = [dict(type='PoisonWeightsHook', iter={poison_iter})]\n")
    work = str(tmp_path / 'work')
    proc = run_tool('tools/train.py', cfg, '--work-dir', work)
    assert proc.returncode != 0
    assert f'at iteration {poison_iter + 1}' in proc.stderr
    assert 'NonFiniteLossError' in proc.stderr
    # names the checkpoint to resume from
    assert 'epoch_1.pth' in proc.stderr.split('NonFiniteLossError')[-1]
    assert not osp.exists(osp.join(work, 'epoch_2.pth'))
    ckpt = torch.load(osp.join(work, 'epoch_1.pth'), weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values()
               if v.is_floating_point())
    with open(osp.join(work, 'last_checkpoint')) as f:
        assert f.read().strip().endswith('epoch_1.pth')


def test_tools_test_evaluates_checkpoint(uninterrupted, tmp_path):
    cfg, work = uninterrupted
    out = str(tmp_path / 'metrics.json')
    proc = run_tool('tools/test.py', cfg, osp.join(work, 'epoch_3.pth'),
                    '--work-dir', str(tmp_path / 'test'), '--out', out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(out))
    assert 0 <= metrics['accuracy/top1'] <= 100


def test_dist_train_two_cpu_processes(imagenet_root, tmp_path):
    cfg = write_cfg(
        tmp_path / 'cfg.py', imagenet_root,
        "train_cfg = dict(max_epochs=1)\n"
        "param_scheduler = dict(T_max=1)\n"
        "model = dict(head=dict(loss=dict(_delete_=True, "
        "type='OnlineLabelSmoothLoss', num_classes=4)))\n"
        "custom_hooks = [dict(type='OnlineLabelSmoothHook')]\n")
    work = str(tmp_path / 'work')
    proc = dist_train(cfg, work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = glob.glob(osp.join(work, '*', '*.log'))
    text = open(logs[0]).read()
    assert 'Distributed training: True' in text
    assert 'GPU number: 2' in text  # mmengine's name for the world size
    # each of the two ranks trains on half of the 32 images: 4 iterations
    assert 'Epoch(train) [1][4/4]' in text
    ckpt = torch.load(osp.join(work, 'epoch_1.pth'), weights_only=True)
    matrix = ckpt['state_dict']['head.loss_module.supervise']
    # each column is a distribution, or zeros for a class that was never
    # classified correctly (never_correct='zeros', the authors' default)
    sums = matrix.sum(0)
    assert (torch.isclose(sums, torch.ones(4)) | (sums == 0)).all(), sums

    # distributed evaluation (2 gloo ranks, each half of the val set)
    # predicts what a single process predicts, sample by sample
    import pickle
    preds = {}
    for name, command in (
            ('dist', ['bash', 'tools/dist_test.sh', cfg,
                      osp.join(work, 'epoch_1.pth'), '2']),
            ('single', [sys.executable, 'tools/test.py', cfg,
                        osp.join(work, 'epoch_1.pth')])):
        out = str(tmp_path / f'{name}.pkl')
        env = dict(os.environ, OMP_NUM_THREADS='1', PORT=free_port(),
                   PYTHON=sys.executable)
        proc = subprocess.run(
            command + ['--work-dir', str(tmp_path / name), '--out', out],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(out, 'rb') as f:
            preds[name] = {p['sample_idx']: p['pred_score']
                           for p in pickle.load(f)}
    assert sorted(preds['dist']) == list(range(16))
    for idx, score in preds['single'].items():
        torch.testing.assert_close(preds['dist'][idx], score)


def test_dist_nan_on_one_rank_stops_every_rank_before_checkpoint(
        imagenet_root, tmp_path):
    """Rank 1 diverges at the last iteration of epoch 2; its NaN gradient
    reaches rank 0's weights through DDP.  Every rank must stop before the
    epoch-end checkpoint: epoch_1.pth stays the newest (and finite)."""
    cfg = write_cfg(
        tmp_path / 'cfg.py', imagenet_root, FAULTS +
        "train_cfg = dict(max_epochs=2)\n"
        "param_scheduler = dict(T_max=2)\n"
        # 2 ranks x 4 iterations per epoch: 0-based iteration 7 ends epoch 2
        "custom_hooks = [dict(type='PoisonWeightsHook', iter=7, rank=1)]\n")
    work = str(tmp_path / 'work')
    proc = dist_train(cfg, work, pythonpath=HELPERS)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert not osp.exists(osp.join(work, 'epoch_2.pth'))
    for path in glob.glob(osp.join(work, 'epoch_*.pth')):
        ckpt = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all()
                   for v in ckpt['state_dict'].values()
                   if v.is_floating_point()), path
    with open(osp.join(work, 'last_checkpoint')) as f:
        assert f.read().strip().endswith('epoch_1.pth')
    # both ranks stop and say which rank diverged, where, and what to resume
    errors = [line for line in out.splitlines()
              if 'NonFiniteLossError: ' in line]
    assert len(errors) == 2, out[-3000:]
    for line in errors:
        assert 'on rank 1' in line and 'at iteration 8' in line, line
        assert 'epoch_1.pth' in line, line


def test_train_and_test_tools_end_their_process_group(imagenet_root, tmp_path,
                                                      monkeypatch):
    """A gloo group left to the interpreter's exit can abort a rank whose
    run succeeded (SIGABRT, 'terminate called without an active
    exception'); torchrun then fails the job.  Both tools end the group."""
    import torch.distributed as dist
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1',
                           LOCAL_WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=free_port()).items():
        monkeypatch.setenv(key, value)
    cfg = write_cfg(tmp_path / 'cfg.py', imagenet_root,
                    "train_cfg = dict(max_epochs=1)\n"
                    "param_scheduler = dict(T_max=1)\n")
    work = str(tmp_path / 'work')
    try:
        load_tool('train.py').main([cfg, '--work-dir', work,
                                  '--launcher', 'pytorch'])
        assert not dist.is_initialized()
        metrics = load_tool('test.py').main(
            [cfg, osp.join(work, 'epoch_1.pth'), '--work-dir',
             str(tmp_path / 'test'), '--launcher', 'pytorch'])
        assert not dist.is_initialized()
        assert 0 <= metrics['accuracy/top1'] <= 100
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
