"""The command-line tools on the checkpoints users have, and on bad ones.

* A checkpoint written by plain ``Runner.from_cfg(cfg).train()`` (an upstream
  mmpretrain config: no maxsup_mm hook, so its message hub holds mmengine
  ``HistoryBuffer`` objects that torch's own ``weights_only`` loading refuses)
  is tested, resumed, converted and analysed.
* A malicious pickle is refused by every tool, with one line naming the
  global and the file and a non-zero exit code, without running its payload,
  also with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
* ``tools/test.py`` never scores a half-loaded or non-finite model, and its
  ``--out`` / ``--out-item`` / ``--show-dir`` follow mmpretrain's.
* ``extract_features.py --out`` never returns another checkpoint's features.
* Output files are replaced atomically: no fixed temporary name a symlink
  could redirect, normal permissions, nothing left behind after SIGTERM /
  SIGINT.

Oracles: upstream mmpretrain (its ``Accuracy`` metric against the dumped
predictions), torch's own strict ``load_state_dict`` semantics (which keys a
model has), the file system.
"""
import glob
import json
import os
import os.path as osp
import pickle
import signal
import stat
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from child_config import (RESNET18_CIFAR_PLAIN,  # tests/helpers
                          write_child_config)
from load_tool import load_tool  # tests/helpers
from malicious import write_malicious_checkpoint  # tests/helpers

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_CFG = osp.join(ROOT, 'configs', 'quickstart',
                   'upernet_resnet18-tiny_1xb8-digit-scenes-32x32.py')
ANALYSIS_TOOLS = ('calibration', 'class_separation', 'compare',
                  'extract_features', 'feature_projection', 'gradcam',
                  'linear_probe', 'logit_stats')

#: mmengine's Runner, exactly as a user of mmpretrain alone would start it
TRAIN_PLAIN = """
import sys
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.utils import register_all_modules
register_all_modules()
cfg = Config.fromfile(sys.argv[1])
cfg.work_dir = sys.argv[2]
Runner.from_cfg(cfg).train()
"""


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT, **extra)


def _run(args, timeout=600, **env):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def _write(path, text):
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ''


@pytest.fixture(scope='module')
def plain(imagenet_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('plain')
    # an upstream mmpretrain config: no custom_imports, no maxsup_mm hook
    cfg = write_child_config(tmp / 'plain_resnet18_cifar.py',
                             RESNET18_CIFAR_PLAIN, imagenet_root)
    work = str(tmp / 'work')
    proc = _run(['-c', TRAIN_PLAIN, cfg, work])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ckpt = osp.join(work, 'epoch_1.pth')
    # what makes it "plain": torch's own safe loading refuses its message hub
    code = 'import sys, torch; torch.load(sys.argv[1], weights_only=True)'
    refused = _run(['-c', code, ckpt])
    assert refused.returncode != 0 and 'HistoryBuffer' in refused.stderr
    return SimpleNamespace(cfg=cfg, ckpt=ckpt, tmp=tmp, root=imagenet_root)


@pytest.fixture(scope='module')
def state_dict(plain):
    from maxsup_mm.checkpoint import load_checkpoint
    return load_checkpoint(plain.ckpt)['state_dict']


@pytest.fixture
def evil(plain, state_dict, tmp_path):
    """A checkpoint with the plain run's weights and a payload."""
    marker = str(tmp_path / 'payload_ran')
    path = write_malicious_checkpoint(str(tmp_path / 'evil.pth'), marker,
                                      dict(state_dict))
    yield SimpleNamespace(path=path, marker=marker)
    assert not osp.exists(marker), 'the payload ran'


def _variant(plain, name, text):
    """A config derived from the plain one."""
    return _write(plain.tmp / f'{name}.py',
                  f"_base_ = {plain.cfg!r}\n{text}\n")


def _test_tool(*argv):
    """``tools/test.py`` in this process; unique experiment and visualizer
    names keep the runners' loggers, scopes and visualizers apart (mmengine
    reuses instances by name within a process)."""
    argv = list(argv)
    if '--cfg-options' not in argv:
        argv.append('--cfg-options')
    at = argv.index('--cfg-options') + 1
    name = f'tools_test_{time.time_ns()}'
    argv[at:at] = [f'experiment_name={name}', f'visualizer.name={name}',
                   'log_level=WARNING']
    return load_tool('test.py').main(argv)


# ---------------------------------------------------------------------------
# issue 12 item 1: plain Runner checkpoints load everywhere; malicious
# pickles are refused everywhere (issue 13 item 5: whatever the environment)
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_test_tool_scores_a_plain_runner_checkpoint(plain, tmp_path):
    out = str(tmp_path / 'metrics.json')
    proc = _run(['tools/test.py', plain.cfg, plain.ckpt, '--work-dir',
                 str(tmp_path / 'work'), '--out', out],
                TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(out))
    assert 0 <= metrics['accuracy/top1'] <= 100
    # printed rounded (issue 13 item 15)
    top1 = f"{metrics['accuracy/top1']:.2f}"
    assert f'[test] accuracy/top1: {top1}\n' in proc.stdout


@pytest.mark.slow
def test_train_resumes_a_plain_runner_checkpoint(plain, tmp_path):
    work = str(tmp_path / 'work')
    proc = _run(['tools/train.py', plain.cfg, '--work-dir', work, '--resume',
                 plain.ckpt, '--cfg-options', 'train_cfg.max_epochs=2'],
                TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'resumed epoch: 1' in proc.stdout + proc.stderr
    assert osp.isfile(osp.join(work, 'epoch_2.pth'))
    assert not osp.exists(osp.join(work, 'epoch_1.pth'))


@pytest.mark.slow
def test_converter_converts_a_plain_runner_checkpoint(plain, state_dict,
                                                      tmp_path):
    tool = load_tool('model_converters/mmpretrain2mmseg.py')
    dst = str(tmp_path / 'backbone.pth')
    old = os.umask(0o022)
    try:
        assert tool.main([plain.ckpt, dst, '--config', SEG_CFG]) == 0
    finally:
        os.umask(old)
    # a normal file, not mkstemp's 0600 (issue 13 item 6)
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o644
    converted = torch.load(dst, weights_only=True)['state_dict']
    assert set(converted) == {k[len('backbone.'):] for k in state_dict
                              if k.startswith('backbone.')}
    assert torch.equal(converted['conv1.weight'],
                       state_dict['backbone.conv1.weight'])


@pytest.mark.slow
def test_analysis_tools_read_a_plain_runner_checkpoint(plain, tmp_path):
    out = str(tmp_path / 'feats.npz')
    feats = load_tool('analysis/extract_features.py').main(
        [plain.cfg, plain.ckpt, '--out', out, '--device', 'cpu', '--quiet'])
    assert feats['features'].shape == (16, 128)
    report = load_tool('analysis/class_separation.py').main(
        [plain.cfg, plain.ckpt, '--out', str(tmp_path / 'sep'), '--device',
         'cpu', '--quiet', '--cache-dir', str(tmp_path / 'cache')])
    assert osp.isfile(report)


def _refusal_ok(stderr, evil):
    last = _last_line(stderr)
    assert 'builtins.exec' in last and evil.path in last, stderr[-2000:]
    assert 'Traceback' not in stderr, stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize('tool', ['test', 'train', 'convert', 'compare'])
def test_every_tool_refuses_a_malicious_checkpoint(plain, evil, tool,
                                                   tmp_path):
    args = {
        'test': ['tools/test.py', plain.cfg, evil.path, '--work-dir',
                 str(tmp_path)],
        'train': ['tools/train.py', plain.cfg, '--work-dir', str(tmp_path),
                  '--resume', evil.path],
        'convert': ['tools/model_converters/mmpretrain2mmseg.py', evil.path,
                    str(tmp_path / 'out.pth'), '--config', SEG_CFG],
        'compare': ['tools/analysis/compare.py', f'{plain.cfg}:{evil.path}',
                    '--out', str(tmp_path / 'cmp'), '--device', 'cpu'],
    }[tool]
    proc = _run(args, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    assert proc.returncode not in (0, None)
    _refusal_ok(proc.stderr, evil)
    assert not osp.exists(tmp_path / 'out.pth')


@pytest.mark.slow
@pytest.mark.parametrize('tool', ANALYSIS_TOOLS)
def test_every_analysis_tool_refuses_a_malicious_checkpoint(
        plain, evil, tool, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    run = [f'{plain.cfg}:{evil.path}'] if tool == 'compare' else \
        [plain.cfg, evil.path]
    out = str(tmp_path / ('f.npz' if tool == 'extract_features' else 'o'))
    with pytest.raises(SystemExit) as exc:
        load_tool(f'analysis/{tool}.py').main(
            run + ['--out', out, '--device', 'cpu', '--quiet'])
    message = str(exc.value.code)
    assert 'error:' in message and 'builtins.exec' in message
    assert evil.path in message and '\n' not in message
    assert not osp.exists(osp.join(out, 'report.md'))
    assert tool != 'extract_features' or not osp.exists(out)


# ---------------------------------------------------------------------------
# issue 13 item 3: no score of a half-loaded model; item 7: nor of NaNs
# ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('variant, expect', [
    ('other depth', ['missing', 'backbone.layer1.2.conv1.weight']),
    ('other num_classes', ['with another shape', 'head.fc.weight (4, 128) '
                           'in the checkpoint vs (5, 128) in the model']),
])
def test_test_tool_refuses_a_checkpoint_of_another_model(
        plain, variant, expect, tmp_path, capsys):
    text = {'other depth': "model = dict(backbone=dict(depth=34))",
            'other num_classes': "model = dict(head=dict(num_classes=5))\n"
            "data_preprocessor = dict(num_classes=5)"}[variant]
    cfg = _variant(plain, variant.replace(' ', '_'), text)
    with pytest.raises(SystemExit) as exc:
        _test_tool(cfg, plain.ckpt, '--work-dir', str(tmp_path))
    message = str(exc.value.code)
    assert message.startswith('test.py: error: ') and '\n' not in message
    assert plain.ckpt in message and '--non-strict' in message
    for part in expect:
        assert part in message, message
    # explicitly relaxed: scores the partly loaded model and says so
    with pytest.warns(UserWarning, match='does not fit the model'):
        metrics = _test_tool(cfg, plain.ckpt, '--work-dir', str(tmp_path),
                             '--non-strict')
    assert 'accuracy/top1' in metrics


@pytest.mark.slow
def test_test_tool_refuses_a_classifier_in_a_seg_config(plain, seg,
                                                        tmp_path):
    with pytest.raises(SystemExit) as exc:
        _test_tool(SEG_CFG, plain.ckpt, '--work-dir', str(tmp_path),
                   '--cfg-options', *seg.options)
    message = str(exc.value.code)
    assert 'missing (decode_head.' in message
    assert 'unexpected (head.fc.weight, head.fc.bias)' in message


@pytest.mark.slow
def test_test_tool_refuses_non_finite_weights(plain, state_dict, tmp_path):
    sd = dict(state_dict)
    sd['backbone.layer2.0.conv1.weight'] = sd[
        'backbone.layer2.0.conv1.weight'].clone()
    sd['backbone.layer2.0.conv1.weight'][0, 0, 0, 0] = float('nan')
    sd['head.fc.bias'] = torch.full_like(sd['head.fc.bias'], float('inf'))
    bad = str(tmp_path / 'nan.pth')
    torch.save({'state_dict': sd}, bad)
    for extra in ([], ['--non-strict']):
        with pytest.raises(SystemExit) as exc:
            _test_tool(plain.cfg, bad, '--work-dir', str(tmp_path), *extra)
        message = str(exc.value.code)
        assert '2 tensor(s) hold NaN or infinity' in message
        assert 'backbone.layer2.0.conv1.weight, head.fc.bias' in message


@pytest.mark.slow
def test_missing_checkpoint_is_one_line(plain, tmp_path):
    with pytest.raises(SystemExit, match='checkpoint not found: .*nope.pth'):
        _test_tool(plain.cfg, str(tmp_path / 'nope.pth'))


# ---------------------------------------------------------------------------
# issue 13 item 15: --out / --out-item / --show-dir as mmpretrain's test.py
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_out_dumps_predictions_as_mmpretrain(plain, tmp_path):
    preds = str(tmp_path / 'preds.pkl')
    metrics = _test_tool(plain.cfg, plain.ckpt, '--out', preds,
                         '--work-dir', str(tmp_path / 'w'))
    with open(preds, 'rb') as f:
        samples = pickle.load(f)
    assert len(samples) == 16
    assert {'pred_label', 'pred_score', 'gt_label'} <= set(samples[0])
    # the oracle: mmpretrain's Accuracy on the same run
    hits = [int(s['pred_label']) == int(s['gt_label']) for s in samples]
    assert 100 * np.mean(hits) == pytest.approx(metrics['accuracy/top1'])

    # --out-item metrics: the metrics in the file's format
    yml = str(tmp_path / 'metrics.yaml')
    _test_tool(plain.cfg, plain.ckpt, '--out', yml, '--out-item', 'metrics',
               '--work-dir', str(tmp_path / 'w'))
    import mmengine
    assert mmengine.load(yml) == pytest.approx(
        {k: float(v) for k, v in metrics.items()})


@pytest.mark.slow
@pytest.mark.parametrize('argv, message', [
    (['--out-item', 'pred'], '--out-item needs --out'),
    (['--out', 'x.json', '--out-item', 'pred'], 'dumped as a pickle'),
    (['--out', 'x.txt'], 'written as .json, .yaml or .pkl'),
])
def test_out_errors(plain, argv, message, tmp_path):
    argv = [str(tmp_path / a) if a.startswith('x.') else a for a in argv]
    with pytest.raises(SystemExit, match=message):
        _test_tool(plain.cfg, plain.ckpt, *argv)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_show_dir_saves_painted_predictions(plain, tmp_path):
    show = tmp_path / 'show'
    _test_tool(plain.cfg, plain.ckpt, '--show-dir', str(show), '--work-dir',
               str(tmp_path / 'w'))
    assert len(glob.glob(str(show / '**' / '*.png'), recursive=True)) == 16


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    """Digit scenes and a checkpoint of the quickstart UperNet config."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    from maxsup_mm.apis import register_all
    from maxsup_mm.datasets import load_digits_split, write_digit_scenes
    tmp = tmp_path_factory.mktemp('seg')
    images, labels = load_digits_split()['test']
    root = write_digit_scenes(str(tmp / 'scenes'), images, labels,
                              num_scenes=(4, 3))
    cfg = Config.fromfile(SEG_CFG)
    register_all(cfg)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    ckpt = str(tmp / 'upernet.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    options = [f'{s}_dataloader.dataset.data_root={root}'
               for s in ('train', 'val', 'test')]
    return SimpleNamespace(ckpt=ckpt, options=options, tmp=tmp)


@pytest.mark.slow
def test_seg_out_and_show_dir(seg, tmp_path):
    preds = str(tmp_path / 'preds.pkl')
    show = tmp_path / 'show'
    metrics = _test_tool(SEG_CFG, seg.ckpt, '--out', preds, '--show-dir',
                         str(show), '--work-dir', str(tmp_path / 'w'),
                         '--cfg-options', *seg.options)
    assert 'mIoU' in metrics
    with open(preds, 'rb') as f:
        samples = pickle.load(f)
    assert len(samples) == 3
    assert samples[0]['pred_sem_seg']['data'].shape == (1, 32, 32)
    assert 'seg_logits' not in samples[0]
    assert len(glob.glob(str(show / '**' / '*.png'), recursive=True)) == 3


# ---------------------------------------------------------------------------
# issue 13 item 4: --out of extract_features.py is not a blind cache
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_extract_features_out_is_rewritten_for_another_checkpoint(
        plain, state_dict, tmp_path, capsys):
    sd = dict(state_dict)
    sd['head.fc.weight'] = sd['head.fc.weight'] * -2.0
    other = str(tmp_path / 'other.pth')
    torch.save({'state_dict': sd}, other)
    tool = load_tool('analysis/extract_features.py')
    out = str(tmp_path / 'features.npz')
    first = tool.main([plain.cfg, plain.ckpt, '--out', out, '--quiet',
                       '--device', 'cpu'])
    second = tool.main([plain.cfg, other, '--out', out, '--quiet',
                        '--device', 'cpu'])
    assert 'extracting again' in capsys.readouterr().err
    np.testing.assert_allclose(second['logits'] - second['bias'],
                               -2 * (first['logits'] - first['bias']),
                               rtol=1e-4, atol=1e-5)
    with np.load(out) as data:
        np.testing.assert_array_equal(data['logits'], second['logits'])
    # the same checkpoint again: read back, not recomputed
    third = tool.main([plain.cfg, other, '--out', out, '--quiet'])
    assert 'extracting again' not in capsys.readouterr().err
    np.testing.assert_array_equal(third['logits'], second['logits'])
    # another split is another key as well
    train = tool.main([plain.cfg, other, '--out', out, '--quiet', '--split',
                       'train', '--device', 'cpu'])
    assert train['features'].shape == (32, 128)


# ---------------------------------------------------------------------------
# issue 13 item 6: no fixed temporary names; nothing left after a kill
# ---------------------------------------------------------------------------
def _trap(path):
    """A symlink at the old fixed temporary name of ``path``."""
    victim = path + '.victim'
    with open(victim, 'w') as f:
        f.write('keep')
    os.symlink(victim, path + '.tmp')
    return victim


def test_writers_do_not_follow_symlinks(tmp_path):
    from tools.quickstart_study import StudySettings, write_report
    from maxsup_mm.datasets import (load_digits_split, write_digit_scenes,
                                    write_digits_folder)
    digits = str(tmp_path / 'digits')
    os.makedirs(digits)
    victims = [_trap(osp.join(digits, 'split.json'))]
    write_digits_folder(digits)
    scenes = str(tmp_path / 'scenes')
    os.makedirs(scenes)
    victims.append(_trap(osp.join(scenes, 'meta.json')))
    images, labels = load_digits_split()['test']
    write_digit_scenes(scenes, images, labels, num_scenes=(2, 1))
    work = str(tmp_path / 'study')
    os.makedirs(work)
    victims.append(_trap(osp.join(work, 'report.md')))
    settings = StudySettings(work_dir=work, seeds=(0, ))
    write_report(settings, [], osp.join(work, 'analysis', 'report.md'), 1.0)
    for victim in victims:
        assert open(victim).read() == 'keep', victim
    assert json.load(open(osp.join(digits, 'split.json')))['counts']
    assert json.load(open(osp.join(scenes, 'meta.json')))['num_scenes'] \
        == [2, 1]
    assert open(osp.join(work, 'report.md')).read().startswith('# MaxSup')


@pytest.mark.slow
def test_feature_cache_and_report_do_not_follow_symlinks(plain, tmp_path):
    out = str(tmp_path / 'f.npz')
    victim = out + '.tmp.npz.victim'
    with open(victim, 'w') as f:
        f.write('keep')
    os.symlink(victim, out + '.tmp.npz')
    load_tool('analysis/extract_features.py').main(
        [plain.cfg, plain.ckpt, '--out', out, '--device', 'cpu', '--quiet'])
    assert open(victim, 'rb').read() == b'keep'
    report_dir = tmp_path / 'report'
    os.makedirs(report_dir)
    victims = [_trap(str(report_dir / name))
               for name in ('report.md', 'metrics.json')]
    # a report or metrics file that is a symlink is replaced, not followed
    for name in ('report.md', 'metrics.json'):
        target = str(report_dir / name) + '.victim2'
        with open(target, 'w') as f:
            f.write('keep')
        os.symlink(target, str(report_dir / name))
        victims.append(target)
    load_tool('analysis/calibration.py').main(
        [plain.cfg, plain.ckpt, '--out', str(report_dir), '--device', 'cpu',
         '--quiet', '--cache-dir', str(tmp_path / 'cache')])
    for victim in victims:
        assert open(victim, 'rb').read() == b'keep', victim
    assert not osp.islink(report_dir / 'report.md')
    assert 'ECE' in open(report_dir / 'report.md').read()


#: runs the converter CLI with a torch.save that writes half, then waits
SLOW_CONVERT = """
import runpy, sys, time, torch
real_save = torch.save
def slow_save(obj, f, *args, **kwargs):
    f.write(b'partial')
    f.flush()
    print('WRITING', flush=True)
    time.sleep(60)
    real_save(obj, f, *args, **kwargs)
torch.save = slow_save
sys.argv = ['mmpretrain2mmseg.py'] + sys.argv[1:]
runpy.run_path('tools/model_converters/mmpretrain2mmseg.py',
               run_name='__main__')
"""


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_converter_killed_while_writing_leaves_nothing(plain, tmp_path, sig):
    dst = str(tmp_path / 'out' / 'backbone.pth')
    proc = subprocess.Popen(
        [sys.executable, '-c', SLOW_CONVERT, plain.ckpt, dst, '--config',
         SEG_CFG], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        line = ''
        deadline = time.time() + 300
        while 'WRITING' not in line and time.time() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert 'WRITING' in line, proc.stderr.read()[-3000:]
        assert glob.glob(osp.join(osp.dirname(dst), '.*.tmp'))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err[-3000:]
    assert 'interrupted' in _last_line(err) and 'Traceback' not in err
    assert os.listdir(osp.dirname(dst)) == []


# ---------------------------------------------------------------------------
# issue 13 item 16: the probe's hold-out on small splits; --holdout
# ---------------------------------------------------------------------------
def test_linear_probe_on_a_small_split():
    from maxsup_mm.analysis.probe import linear_probe
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 2)      # 20 samples, 10 classes
    x = rng.normal(size=(20, 5)) + labels[:, None]
    out = linear_probe(x, labels, x, labels, Cs=(0.1, 1.0))
    assert out['num_holdout'] == 10 and 0 <= out['accuracy'] <= 1
    from maxsup_mm.analysis.probe import stratified_holdout
    fit, held = stratified_holdout(labels, 0.2, seed=0)
    assert set(labels[fit]) == set(labels[held]) == set(range(10))
    assert sorted(np.concatenate([fit, held])) == list(range(20))
    # 25% of 8 samples per class: 2 held out per class
    fit, held = stratified_holdout(np.repeat(np.arange(3), 8), 0.25)
    assert len(held) == 6 and len(fit) == 18
    with pytest.raises(ValueError, match=r'1 of its 3 classes have a single '
                       r'sample \(e.g. class 2\)'):
        linear_probe(x[:5], np.array([0, 0, 1, 1, 2]), x, labels)


@pytest.mark.slow
def test_linear_probe_tool_holdout(plain, tmp_path):
    report = load_tool('analysis/linear_probe.py').main(
        [plain.cfg, plain.ckpt, '--out', str(tmp_path / 'p'), '--device',
         'cpu', '--quiet', '--holdout', '0.5', '--cache-dir',
         str(tmp_path / 'c')])
    metrics = json.load(open(tmp_path / 'p' / 'metrics.json'))
    probe = metrics[0]['metrics']['probe']
    assert probe['num_train'] == 32 and probe['num_holdout'] == 16
    assert 'held-out 50% of it' in open(report).read()
