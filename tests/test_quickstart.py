"""The main job end to end: ``tools/quickstart.py --fast`` on the real digits."""
import glob
import json
import math
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from tools.quickstart_study import (StudySettings, exceeds_noise, mean_std,
                                    run_study)

SECTIONS = ['# MaxSup quickstart report',
            '## Results (test split, mean ± std over seeds)',
            '## Which differences exceed the seed noise', '## Figures',
            '## Runs']
METRICS = ['top-1 (%)', 'ECE (%)', 'd_within', 'd_total', 'R²',
           'z_max − z_gt on errors', 'transfer mIoU (%)']
NUMBER = re.compile(r'[-+]?(?:\d+\.\d*|\.\d+|\d+|nan|inf)', re.I)


def test_seed_noise_rule():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    diff, se, verdict = exceeds_noise([10, 10.1, 9.9], [5, 5.1, 4.9])
    assert diff == pytest.approx(5) and verdict is True
    assert se == pytest.approx(math.sqrt(0.01 / 3 + 0.01 / 3))
    assert exceeds_noise([1, 2, 3], [1.5, 2.5, 3.5])[2] is False
    assert exceeds_noise([1.0], [2.0])[2] is None


@pytest.fixture(scope='module')
def fast_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('quickstart')
    settings = StudySettings.fast(work_dir=str(tmp / 'work'),
                                  data_dir=str(tmp / 'data'))
    lines = []
    report = run_study(settings, log=lines.append)
    return settings, report, lines


@pytest.mark.slow
def test_fast_report_has_every_section_and_finite_numbers(fast_study):
    settings, report, lines = fast_study
    text = open(report).read()
    for section in SECTIONS:
        assert section in text, section
    results = text.split(SECTIONS[1])[1].split(SECTIONS[2])[0]
    noise = text.split(SECTIONS[2])[1].split(SECTIONS[3])[0]
    for metric in METRICS:
        row = [r for r in results.splitlines() if r.startswith(f'| {metric} |')]
        assert len(row) == 1, metric
        cells = row[0].split('|')[2:-1]
        assert len(cells) == 3  # CE, LS, MaxSup
        for cell in cells:
            values = NUMBER.findall(cell)
            if 'mIoU' in metric:  # one transferred seed per method
                assert cell.strip().endswith('(1 seed)'), cell
            else:
                assert '±' in cell and len(values) == 2, (metric, cell)
            assert all(math.isfinite(float(v)) for v in values), (metric, cell)
        assert any(r.startswith(f'| {metric} | MaxSup − LS |')
                   for r in noise.splitlines()), metric
    for row in noise.splitlines():
        if row.startswith('| ') and ' − ' in row:
            diff, two_se = row.split('|')[3:5]
            assert math.isfinite(float(diff))
            # one transferred seed per method: no noise estimate, no claim
            if 'mIoU' in row:
                assert two_se.strip() == '—' and 'not claimed' in row
            else:
                assert math.isfinite(float(two_se))
    assert 'In plain words:' in text
    for png in re.findall(r'\]\(([^)]+\.png)\)', text):
        assert osp.exists(osp.join(settings.work_dir, png)), png
    assert any('trained MaxSup seed 1' in line for line in lines)


@pytest.mark.slow
def test_fast_study_resumes_without_redoing_runs(fast_study):
    settings, report, _ = fast_study
    lines = []
    assert run_study(settings, log=lines.append) == report
    trained = [line for line in lines if 'trained' in line]
    assert len(trained) == 6
    # finished runs are read back, not trained again: each takes ~0 s
    assert all(line.endswith(': 0s') for line in trained), trained


@pytest.mark.slow
def test_transfer_config_loads_the_converted_backbone(fast_study):
    """The UperNet config of the quickstart really starts from the converted
    digits backbone (every tensor equal), not from a random one."""
    import torch
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from maxsup_mm import config_path
    from tools.quickstart_study import SEG_CONFIG
    settings = fast_study[0]
    register_all_modules()
    converted = osp.join(settings.work_dir, 'seg', 'maxsup_seed0',
                         'backbone_mmseg.pth')
    cfg = Config.fromfile(config_path(SEG_CONFIG))
    cfg.model.backbone.init_cfg.checkpoint = converted
    model = MODELS.build(cfg.model)
    model.init_weights()
    expected = torch.load(converted, weights_only=True)['state_dict']
    got = model.backbone.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


# --------------------------------------------------------------------------
# an interrupted training run of the study resumes from its last epoch
# --------------------------------------------------------------------------
KILL_AFTER_EPOCH_2 = """
import sys
sys.path[:0] = [{helpers!r}, {root!r}]
import fault_hooks  # registers KillAfterEpochHook
from tools.quickstart_study import StudySettings, train_classifier
settings = StudySettings(work_dir={work!r}, epochs=3,
                         extra_cfg=dict(cls={extra!r}))
train_classifier('MaxSup', 0, settings, {data!r})
"""


def _logged(work):
    """iteration -> (loss, alpha), per run in ``work`` (oldest first)."""
    runs = []
    for path in sorted(glob.glob(osp.join(work, '*', 'vis_data',
                                          'scalars.json'))):
        with open(path) as f:
            recs = [json.loads(line) for line in f]
        runs.append({r['iter']: (r['loss'], r['alpha']) for r in recs
                     if 'loss' in r and 'lr' in r})
    return runs


@pytest.mark.slow
def test_killed_study_run_resumes_from_its_last_epoch(tmp_path):
    """The study checkpoints every epoch (keeping the last two): a run
    killed after epoch 2 of 3 trains only epoch 3 when the study runs again,
    exactly as the uninterrupted run did."""
    from tools.quickstart_study import train_classifier
    from maxsup_mm.datasets import write_digits_folder
    helpers = osp.join(osp.dirname(osp.abspath(__file__)), 'helpers')
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    data = write_digits_folder(str(tmp_path / 'digits'))
    log_every_iter = {'default_hooks.logger.interval': 1}

    full = StudySettings(work_dir=str(tmp_path / 'full'), epochs=3,
                         extra_cfg=dict(cls=log_every_iter))
    train_classifier('MaxSup', 0, full, data)
    full_work = osp.join(full.work_dir, 'cls', 'maxsup_seed0')
    # every epoch was checkpointed; only the last two are kept
    assert {'epoch_2.pth', 'epoch_3.pth'} <= set(os.listdir(full_work))
    assert not osp.exists(osp.join(full_work, 'epoch_1.pth'))
    (expected, ) = _logged(full_work)

    work = str(tmp_path / 'killed')
    kill = dict(log_every_iter,
                custom_hooks=[dict(type='AlphaScheduleHook', start=0.1,
                                   end=0.2),
                              dict(type='KillAfterEpochHook', epoch=2)])
    script = KILL_AFTER_EPOCH_2.format(helpers=helpers, root=root, work=work,
                                       extra=kill, data=data)
    # the same number of threads as the in-process runs: another count sums
    # in another order and the losses differ in the last bits
    import torch
    threads = str(torch.get_num_threads())
    killed = subprocess.run([sys.executable, '-c', script],
                            env=dict(os.environ, OMP_NUM_THREADS=threads),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_dir = osp.join(work, 'cls', 'maxsup_seed0')
    assert not osp.exists(osp.join(run_dir, 'done.json'))

    again = StudySettings(work_dir=work, epochs=3,
                          extra_cfg=dict(cls=log_every_iter))
    ckpt = train_classifier('MaxSup', 0, again, data)
    assert ckpt == osp.join(run_dir, 'epoch_3.pth') and osp.exists(ckpt)
    before, after = _logged(run_dir)
    per_epoch = len(expected) // 3
    # the resumed run trained epoch 3 only, and exactly as the full run
    assert sorted(after) == sorted(expected)[2 * per_epoch:]
    for run in (before, after):
        for it, value in run.items():
            assert value == expected[it], it


# --------------------------------------------------------------------------
# issue 18 item 13: the quickstart's refusals are one line, before any work
# --------------------------------------------------------------------------
class _Stop(Exception):
    """Raised instead of training: the study got past its checks."""


def _quickstart(argv, monkeypatch):
    """tools/quickstart.py in this process, training replaced by _Stop."""
    import tools.quickstart_study as study
    from load_tool import load_tool  # tests/helpers

    def stop(*args, **kwargs):
        raise _Stop()

    monkeypatch.setattr(study, 'train_classifier', stop)
    return load_tool('quickstart.py').main(argv)


def _refusal(argv, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        _quickstart(argv, monkeypatch)
    message = str(exc.value.code)
    out, err = capsys.readouterr()
    assert message.startswith('quickstart.py: error: '), message
    assert '\n' not in message and not out and not err, (out, err)
    return message


@pytest.mark.parametrize('option', ['--work-dir', '--data-dir'])
def test_quickstart_refuses_a_file_as_folder(option, tmp_path, monkeypatch,
                                             capsys):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    dirs = {'--work-dir': str(tmp_path / 'work'),
            '--data-dir': str(tmp_path / 'data')}
    for path in (str(blocker), str(blocker / 'sub')):
        dirs[option] = path
        message = _refusal(['--fast', *[a for kv in dirs.items()
                                        for a in kv]], monkeypatch, capsys)
        assert f'{option} {path}' in message and str(blocker) in message
        assert 'is a file, not a folder' in message
    assert sorted(os.listdir(tmp_path)) == ['file']  # nothing written


@pytest.mark.parametrize('option', ['--work-dir', '--data-dir'])
def test_quickstart_refuses_an_unwritable_folder(option, tmp_path,
                                                 monkeypatch, capsys):
    from unwritable import unwritable_folder  # tests/helpers
    folder = unwritable_folder(tmp_path)
    dirs = {'--work-dir': str(tmp_path / 'work'),
            '--data-dir': str(tmp_path / 'data')}
    dirs[option] = osp.join(folder, 'quickstart')
    message = _refusal(['--fast', *[a for kv in dirs.items() for a in kv]],
                       monkeypatch, capsys)
    assert f'{option} {dirs[option]}: cannot write in {folder}' in message
    assert not osp.exists(dirs['--work-dir'])


def test_quickstart_refuses_the_work_dir_of_another_study(tmp_path,
                                                          monkeypatch,
                                                          capsys):
    """A --fast study stopped in its first run, started again without
    --fast in the same work dir: its runs must not be taken as this one's.
    With the same options it goes on (here: to the training, stopped)."""
    work, data = str(tmp_path / 'work'), str(tmp_path / 'data')
    argv = ['--work-dir', work, '--data-dir', data]
    with pytest.raises(_Stop):
        _quickstart(['--fast'] + argv, monkeypatch)
    capsys.readouterr()
    message = _refusal(argv, monkeypatch, capsys)
    assert f'--work-dir {work} holds a study with other settings' in message
    assert 'epochs 2' in message and 'epochs 15' in message
    with pytest.raises(_Stop):
        _quickstart(['--fast'] + argv, monkeypatch)
