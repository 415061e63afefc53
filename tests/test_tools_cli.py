"""What every tool shares (issue 18 items 11 and 13): configs from any
working directory (``configs/...``, ``PACKAGE::PATH``), and user errors
that end in one line.

Oracles: mmengine's own resolution of ``PACKAGE::PATH`` for ``_base_``
(``Config._get_cfg_path``) and its hub (``mmengine.hub.get_config``); the
checkout's files; the exception a DataLoader worker raised; the file system.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from load_tool import load_tool  # tests/helpers
from dist_run import free_port  # tests/helpers
from unwritable import unwritable_folder  # tests/helpers

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
R18 = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
DIGITS_CFG = 'configs/quickstart/resnet18-tiny_1xb64-15e_digits.py'
SEG_CFG = 'configs/quickstart/upernet_resnet18-tiny_1xb8-digit-scenes-32x32.py'


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)


# ---------------------------------------------------------------------------
# resolve_config
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('config', [
    R18, 'mmseg::_base_/models/upernet_r50.py',
    'mmpretrain::_base_/default_runtime.py'])
def test_package_configs_resolve_as_mmengine_resolves_base(config):
    from mmengine.config import Config

    from maxsup_mm.apis import resolve_config
    want, _ = Config._get_cfg_path(config, '')
    assert resolve_config(config) == want and osp.isfile(want)


def test_our_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    from maxsup_mm.apis import resolve_config
    monkeypatch.chdir(tmp_path)
    want = osp.join(ROOT, 'configs', 'deit-small_maxsup.py')
    assert resolve_config('configs/deit-small_maxsup.py') == want
    assert resolve_config('deit-small_maxsup.py') == want
    # a file of the working directory wins, made absolute
    os.makedirs('configs')
    with open('configs/deit-small_maxsup.py', 'w') as f:
        f.write('x = 1\n')
    assert resolve_config('configs/deit-small_maxsup.py') == str(
        tmp_path / 'configs' / 'deit-small_maxsup.py')


@pytest.mark.parametrize('config, parts', [
    ('foo::x.py', ["unknown package 'foo'", 'mmpretrain', 'mmseg']),
    ('mmpretrain::resnet/nope.py', [
        osp.join('mmpretrain', '.mim', 'configs', 'resnet', 'nope.py')]),
    ('configs/nope.py', [osp.join('{cwd}', 'configs', 'nope.py'),
                         osp.join(ROOT, 'configs')]),
])
def test_unknown_configs_are_one_line_naming_what_was_tried(
        config, parts, tmp_path, monkeypatch):
    from maxsup_mm.apis import resolve_config
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as exc:
        resolve_config(config)
    message = str(exc.value)
    assert '\n' not in message and config in message
    for part in parts:
        assert part.format(cwd=tmp_path) in message, message


#: a config argument per tool (the converters take it as --config):
#: tool -> (script, argv of (config, tmp_path, checkpoint))
TOOLS = {
    'train': ('train.py', lambda c, t, k: [c, '--work-dir', str(t / 'w')]),
    'test': ('test.py', lambda c, t, k: [c, k, '--work-dir', str(t / 'w')]),
    'extract_features': ('analysis/extract_features.py',
                         lambda c, t, k: [c, k, '--out', str(t / 'f.npz')]),
    'external2mmpretrain': ('model_converters/external2mmpretrain.py',
                            lambda c, t, k: [k, str(t / 'o.pth'),
                                             '--config', c]),
    'mmpretrain2mmseg': ('model_converters/mmpretrain2mmseg.py',
                         lambda c, t, k: [k, str(t / 'o.pth'), '--config',
                                          c]),
}


@pytest.mark.parametrize('tool', list(TOOLS))
@pytest.mark.parametrize('config, part', [
    ('foo::x.py', "unknown package 'foo'"),
    ('configs/nope.py', 'config not found: configs/nope.py')])
def test_every_tool_says_an_unknown_config_in_one_line(
        tool, config, part, tmp_path, capsys):
    script, argv = TOOLS[tool]
    ckpt = str(tmp_path / 'x.pth')
    torch.save({'state_dict': {}}, ckpt)
    try:
        code = load_tool(script).main(argv(config, tmp_path, ckpt))
    except SystemExit as exc:
        code, message = 1, str(exc.code)
    else:
        message = capsys.readouterr().err.strip()
    assert code == 1 and 'error: ' in message, message
    assert part in message and '\n' not in message, message
    assert 'Traceback' not in capsys.readouterr().err


@pytest.fixture(scope='module')
def r18(imagenet_root, tmp_path_factory):
    """Random weights of mmpretrain's ResNet-18 ImageNet classifier, and
    --cfg-options that shrink its test to the generated 4-class folder."""
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    import mmpretrain.models  # noqa: F401
    cfg = get_config(R18)  # upstream's own resolution (the oracle)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
    tmp = tmp_path_factory.mktemp('r18')
    ckpt = str(tmp / 'r18.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    options = [f'test_dataloader.dataset.data_root={imagenet_root}',
               'test_dataloader.batch_size=8',
               'test_dataloader.num_workers=0']
    # the file itself, for the tests of other things than the resolution
    file, _ = Config._get_cfg_path(R18, '')
    return SimpleNamespace(cfg=cfg, file=file, ckpt=ckpt, options=options,
                           root=imagenet_root)


def _test_tool(*argv):
    """tools/test.py in this process, with unique runner names."""
    import time
    argv = list(argv)
    at = argv.index('--cfg-options') + 1
    name = f'cli_test_{time.time_ns()}'
    argv[at:at] = [f'experiment_name={name}', f'visualizer.name={name}',
                   'log_level=WARNING']
    return load_tool('test.py').main(argv)


@pytest.mark.slow
def test_test_tool_evaluates_a_package_config(r18, tmp_path):
    """What external2mmpretrain prints for torchvision weights:
    ``tools/test.py mmpretrain::resnet/... CKPT``."""
    from mmengine.config import Config
    work = tmp_path / 'work'
    metrics = _test_tool(R18, r18.ckpt, '--work-dir', str(work),
                         '--cfg-options', *r18.options)
    assert 0 <= metrics['accuracy/top1'] <= 100
    # the config mmengine's hub gives for the same name was the one used
    dumped = Config.fromfile(str(work / 'resnet18_8xb32_in1k.py'))
    assert dumped.model.to_dict() == r18.cfg.model.to_dict()


@pytest.mark.slow
def test_a_data_loader_worker_error_is_one_line(r18, tmp_path):
    """A missing image found by a DataLoader worker: torch re-raises it as
    "Caught FileNotFoundError in DataLoader worker process 0. Original
    Traceback ..."; the tool prints the original message only."""
    root = str(tmp_path / 'imagenet')
    shutil.copytree(r18.root, root)
    gone = sorted(os.listdir(osp.join(root, 'val')))[0]
    image = sorted(os.listdir(osp.join(root, 'val', gone)))[0]
    os.remove(osp.join(root, 'val', gone, image))
    with pytest.raises(SystemExit) as exc:
        _test_tool(r18.file, r18.ckpt, '--work-dir', str(tmp_path / 'w'),
                   '--cfg-options',
                   f'test_dataloader.dataset.data_root={root}',
                   'test_dataloader.batch_size=8',
                   'test_dataloader.num_workers=1')
    message = str(exc.value.code)
    assert message.startswith('test.py: error: '), message
    assert '\n' not in message and 'Traceback' not in message, message
    assert 'DataLoader worker' not in message, message
    assert osp.join(root, 'val', gone, image) in message, message


@pytest.mark.slow
def test_train_tool_says_a_missing_data_root_in_one_line(r18, tmp_path):
    missing = str(tmp_path / 'no_data')
    import time
    name = f'cli_train_{time.time_ns()}'
    with pytest.raises(SystemExit) as exc:
        load_tool('train.py').main([
            r18.file, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
            f'train_dataloader.dataset.data_root={missing}',
            f'experiment_name={name}', f'visualizer.name={name}',
            'log_level=WARNING'])
    message = str(exc.value.code)
    assert message.startswith('train.py: error: '), message
    assert '\n' not in message and missing in message, message


def test_one_line_error_of_a_data_loader_worker():
    """The oracle: the exception the worker raised (its type and message)."""
    from torch.utils.data import DataLoader, Dataset

    from maxsup_mm.apis import one_line_error

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, idx):
            try:
                raise KeyError('inner')
            except KeyError:  # a chained traceback before the last one
                raise FileNotFoundError(
                    'data/x.png: missing\n  (the data folder?)') from None

    with pytest.raises(FileNotFoundError) as exc:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert 'DataLoader worker process 0' in str(exc.value)
    assert one_line_error(exc.value) == \
        'data/x.png: missing (the data folder?)'
    # an exception raised here: its message, on one line
    assert one_line_error(ValueError('a\n  hint: b')) == 'a hint: b'
    assert one_line_error(ValueError('Caught x: y')) == 'Caught x: y'


# ---------------------------------------------------------------------------
# configs/... from another working directory: train.py, test.py,
# dist_test.sh
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_tools_take_our_configs_from_another_directory(tmp_path):
    from maxsup_mm.datasets import write_digits_folder
    data = write_digits_folder(str(tmp_path / 'digits'))
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    roots = [f'{s}_dataloader.dataset.data_root={data}'
             for s in ('train', 'val', 'test')]
    python = [sys.executable, osp.join(ROOT, 'tools', 'train.py')]
    proc = subprocess.run(
        python + [DIGITS_CFG, '--work-dir', 'w', '--cfg-options', *roots,
                  'train_cfg.max_epochs=1', 'train_cfg.val_interval=1'],
        cwd=str(elsewhere), env=_env(), capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = elsewhere / 'w' / 'epoch_1.pth'
    assert ckpt.is_file()
    runs = {
        'test.py': [sys.executable, osp.join(ROOT, 'tools', 'test.py'),
                    DIGITS_CFG, 'w/epoch_1.pth'],
        'dist_test.sh': ['bash', osp.join(ROOT, 'tools', 'dist_test.sh'),
                         DIGITS_CFG, 'w/epoch_1.pth', '1'],
    }
    for name, command in runs.items():
        env = dict(_env(), PYTHON=sys.executable, PORT=free_port())
        proc = subprocess.run(
            command + ['--work-dir', f'test_{name}', '--cfg-options',
                       *roots],
            cwd=str(elsewhere), env=env, capture_output=True, text=True,
            timeout=900)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        assert '[test] accuracy/top1: ' in proc.stdout, name


# ---------------------------------------------------------------------------
# the converters: DST a folder, not writable, under a file
# ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    """A torchvision ResNet-18 state dict (external2mmpretrain's SRC) and
    an mmpretrain classifier checkpoint (mmpretrain2mmseg's SRC)."""
    import torchvision
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    import mmpretrain.models  # noqa: F401
    tmp = tmp_path_factory.mktemp('src')
    torch.manual_seed(0)
    tv = str(tmp / 'resnet18_tv.pth')
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tv)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='ResNet', depth=18),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=10,
                      in_channels=512)))
    cls = str(tmp / 'resnet18_cls.pth')
    torch.save({'state_dict': model.state_dict()}, cls)
    return {'external2mmpretrain': tv, 'mmpretrain2mmseg': cls}


def _dst(case, tmp_path):
    if case == 'a folder':
        return str(tmp_path), str(tmp_path)
    if case == 'under a file':
        blocker = tmp_path / 'file'
        blocker.write_text('x')
        return str(blocker / 'sub' / 'out.pth'), str(blocker)
    folder = unwritable_folder(tmp_path)
    return osp.join(folder, 'out.pth'), folder


@pytest.mark.parametrize('tool', ['external2mmpretrain', 'mmpretrain2mmseg'])
@pytest.mark.parametrize('case', ['a folder', 'not writable', 'under a file'])
def test_converters_refuse_a_bad_dst_in_one_line(sources, tool, case,
                                                 tmp_path, capsys):
    dst, named = _dst(case, tmp_path)
    before = sorted(os.listdir(tmp_path))
    code = load_tool(f'model_converters/{tool}.py').main(
        [sources[tool], dst])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert err.startswith(f'{tool}: error: DST {dst}') and '\n' not in err
    assert named in err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_check_writable(tmp_path):
    from maxsup_mm.apis import check_writable
    new = str(tmp_path / 'a' / 'b' / 'out.pth')
    assert check_writable(new, 'DST') == new
    assert not osp.exists(tmp_path / 'a')  # checked, not created
    assert check_writable(str(tmp_path / 'w'), '--work-dir', folder=True)
    (tmp_path / 'f').write_text('x')
    with pytest.raises(ValueError, match='is a file, not a folder'):
        check_writable(str(tmp_path / 'f'), '--work-dir', folder=True)
