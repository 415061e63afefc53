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

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG = osp.join(ROOT, 'tests', 'data', 'configs', 'resnet18_maxsup_tiny.py')
HELPERS = osp.join(ROOT, 'tests', 'helpers')  # fault-injection hooks
ITERS_PER_EPOCH = 8  # 32 training images, batch 4


def write_cfg(path, data_root, extra=''):
    with open(path, 'w') as f:
        f.write(f"_base_ = {CFG!r}\n"
                f"data_root = {data_root!r}\n"
                "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
                "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
                "test_dataloader = val_dataloader\n" + extra)
    return str(path)


def run_tool(*args, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([ROOT, HELPERS]))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def train_losses(work_dir):
    """iteration -> (loss, alpha) from every run's vis_data/scalars.json."""
    out = {}
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                          'scalars.json'))):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if 'loss' in rec and 'lr' in rec:
                    out[rec['iter']] = (rec['loss'], rec.get('alpha'))
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
        assert alpha == pytest.approx(0.1 + 0.1 * epoch / 3), it
        assert loss == loss and loss > 0
    # the head really trains with MaxSupLoss and the augments
    cfg_dump = glob.glob(osp.join(work, '*', 'vis_data', 'config.py'))
    text = open(cfg_dump[0]).read()
    assert "type='MaxSupLoss'" in text and "type='CutMix'" in text


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
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT='29517',
               PYTHON=sys.executable)
    proc = subprocess.run(['bash', 'tools/dist_train.sh', cfg, '2',
                           '--work-dir', work], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = glob.glob(osp.join(work, '*', '*.log'))
    text = open(logs[0]).read()
    assert 'Distributed training: True' in text
    assert 'GPU number: 2' in text  # mmengine's name for the world size
    # each of the two ranks trains on half of the 32 images: 4 iterations
    assert 'Epoch(train) [1][4/4]' in text
    ckpt = torch.load(osp.join(work, 'epoch_1.pth'), weights_only=True)
    matrix = ckpt['state_dict']['head.loss_module.supervise']
    torch.testing.assert_close(matrix.sum(0), torch.ones(4))
