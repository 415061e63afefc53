"""Packaging: one source of pinned versions, configs installed with the
package, ``maxsup_mm`` usable without a source checkout.

Oracles: ``packaging.requirements.Requirement`` (pip's own parser) for the
requirements files, the files of ``configs/`` byte for byte, and the closed
form of the MaxSup loss for the installed copy.
"""
import os
import os.path as osp
import runpy
import shutil
import subprocess
import sys
import textwrap

import pytest
from packaging.requirements import Requirement

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
REQS = osp.join(ROOT, 'requirements')
#: installed apart by tools/setup_env.sh (mmcv built with ops, --no-deps)
APART = {'mmcv', 'mmpretrain', 'mmsegmentation'}


def _requirements(path):
    """The requirement lines of a file, parsed by pip's own parser."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                out.append(Requirement(line))
    return out


def _pin(reqs, name):
    (req, ) = [r for r in reqs if r.name == name]
    (spec, ) = req.specifier
    assert spec.operator == '==', req
    return spec.version


# ---------------------------------------------------------------------------
# config_path: the one config resolver
# ---------------------------------------------------------------------------
def test_config_path_finds_our_configs(tmp_path, monkeypatch):
    from maxsup_mm import config_path
    monkeypatch.chdir(tmp_path)  # names of ours work from anywhere
    expected = osp.join(ROOT, 'configs', 'released',
                        'deit-small_official_in1k.py')
    assert config_path('released/deit-small_official_in1k.py') == expected
    assert config_path('configs/released/deit-small_official_in1k.py') \
        == expected
    # a file that exists is the user's: returned as given
    own = tmp_path / 'configs' / 'released' / 'deit-small_official_in1k.py'
    own.parent.mkdir(parents=True)
    own.write_text('x = 1\n')
    assert config_path('configs/released/deit-small_official_in1k.py') \
        == 'configs/released/deit-small_official_in1k.py'
    # upstream configs are mmengine's to resolve
    assert config_path('mmpretrain::resnet/resnet50_8xb32_in1k.py') \
        == 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
    with pytest.raises(FileNotFoundError, match='released/nope.py'):
        config_path('released/nope.py')
    # nothing outside the config folder
    with pytest.raises(FileNotFoundError):
        config_path('../setup.py')


def test_every_config_name_the_code_uses_resolves():
    """RELEASED_CONFIGS and the quickstart's configs are found by the
    resolver (what a wheel install relies on)."""
    from maxsup_mm import config_path
    from maxsup_mm.converters import RELEASED_CONFIGS
    from tools.quickstart_study import CLS_CONFIGS, SEG_CONFIG
    for name in [*RELEASED_CONFIGS.values(), *CLS_CONFIGS.values(),
                 SEG_CONFIG]:
        assert osp.isfile(config_path(name)), name


# ---------------------------------------------------------------------------
# pins: requirements/ is read by setup.py and by tools/setup_env.sh
# ---------------------------------------------------------------------------
def test_setup_reads_its_requirements_from_requirements_dir(monkeypatch):
    import setuptools
    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kw: captured.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(osp.join(ROOT, 'setup.py'), run_name='__main__')
    runtime = _requirements(osp.join(REQS, 'runtime.txt'))
    tests = _requirements(osp.join(REQS, 'tests.txt'))
    assert [Requirement(r) for r in captured['install_requires']] == runtime
    assert [Requirement(r) for r in captured['extras_require']['tests']] \
        == tests
    names = [r.name.lower() for r in runtime + tests]
    assert len(names) == len(set(names)), 'a package listed twice'
    # the versions this code base is tested with are pinned exactly
    for name in ('torch', 'torchvision', 'mmengine', 'mmcv', 'mmpretrain',
                 'mmsegmentation'):
        _pin(runtime, name)


def _print_pins(root):
    out = subprocess.run(
        ['bash', osp.join(root, 'tools', 'setup_env.sh'), '--print-pins'],
        capture_output=True, text=True, timeout=60)
    return out


def test_setup_env_takes_its_versions_from_requirements():
    out = _print_pins(ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    got = dict(line.split(' ', 1) for line in lines
               if not line.startswith('pip '))
    runtime = _requirements(osp.join(REQS, 'runtime.txt'))
    for name in ('torch', 'torchvision', 'mmcv', 'mmpretrain',
                 'mmsegmentation'):
        assert got[name] == _pin(runtime, name), name
    # pip -r gets everything else of runtime.txt, and tests.txt
    pip = [Requirement(line[4:]) for line in lines if line.startswith('pip ')]
    assert pip == [r for r in runtime if r.name not in APART] + \
        _requirements(osp.join(REQS, 'tests.txt'))
    # no version of a pinned package is written in the script itself
    script = open(osp.join(ROOT, 'tools', 'setup_env.sh')).read()
    code = '\n'.join(line.split('#', 1)[0] for line in script.splitlines())
    for name in ('torch', 'torchvision', 'mmengine', 'mmcv', 'mmpretrain',
                 'mmsegmentation'):
        assert _pin(runtime, name) not in code, name


def _copy_env_script(dst):
    os.makedirs(osp.join(dst, 'tools'))
    shutil.copy(osp.join(ROOT, 'tools', 'setup_env.sh'),
                osp.join(dst, 'tools'))
    shutil.copy(osp.join(ROOT, 'setup.py'), dst)
    shutil.copytree(REQS, osp.join(dst, 'requirements'))
    return dst


def test_setup_env_stamp_follows_requirements(tmp_path):
    """A changed requirements file re-runs the set-up (new stamp); a
    missing pin stops it with one clear line."""
    root = _copy_env_script(str(tmp_path / 'repo'))
    stamp = dict(line.split(' ', 1) for line in
                 _print_pins(root).stdout.splitlines())['stamp']
    runtime = osp.join(root, 'requirements', 'runtime.txt')
    text = open(runtime).read()
    with open(runtime, 'w') as f:
        f.write(text.replace('\nrich\n', '\nrich>=13\n'))
    changed = dict(line.split(' ', 1) for line in
                   _print_pins(root).stdout.splitlines())['stamp']
    assert changed != stamp
    with open(runtime, 'w') as f:
        f.write('\n'.join(line for line in text.splitlines()
                          if not line.startswith('mmcv==')))
    out = _print_pins(root)
    assert out.returncode != 0
    assert 'requirements/runtime.txt pins no mmcv==VERSION' in out.stderr
    assert 'Traceback' not in out.stderr


# ---------------------------------------------------------------------------
# a wheel: importable and complete without the source checkout
# ---------------------------------------------------------------------------
INSTALLED_CHECK = textwrap.dedent('''
    import os.path as osp, sys
    site, root = sys.argv[1], sys.argv[2]
    sys.path.insert(0, site)
    assert not any(osp.realpath(p or '.') == root for p in sys.path), sys.path
    import torch
    import torch.nn.functional as F
    import maxsup_mm
    from maxsup_mm.converters import RELEASED_CONFIGS
    from mmengine.config import Config
    assert maxsup_mm.__file__.startswith(site), maxsup_mm.__file__
    configs = osp.join(site, 'maxsup_mm', '.mim', 'configs')
    for name in list(RELEASED_CONFIGS.values()) + [
            'quickstart/resnet18-tiny_1xb64-15e-maxsup_digits.py']:
        path = maxsup_mm.config_path(name)
        assert path.startswith(configs), path
        print('config', osp.relpath(path, configs))
    cfg = Config.fromfile(maxsup_mm.config_path(
        'quickstart/resnet18-tiny_1xb64-15e-maxsup_digits.py'))
    print('loss', cfg.model.head.loss.type)
    z = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.3, -0.2]])
    y = torch.tensor([0, 2])
    loss = maxsup_mm.MaxSupLoss(alpha=0.1)(z, y)
    oracle = F.cross_entropy(z, y) + 0.1 * (z.max(1).values - z.mean(1)).mean()
    assert torch.allclose(loss, oracle), (loss, oracle)
    print('ok')
''')


@pytest.mark.slow
def test_wheel_installs_configs_and_works_without_checkout(tmp_path):
    """Build a wheel of a copy of the sources (offline: no build isolation,
    no index), install it into a folder and use it with the checkout off
    ``sys.path``: configs resolve inside the installed package."""
    import importlib.util
    if importlib.util.find_spec('setuptools') is None:
        pytest.skip('setuptools (the build backend) is not installed')
    src = str(tmp_path / 'src')
    os.makedirs(src)
    for name in ('setup.py', 'MANIFEST.in', 'README.md'):
        shutil.copy(osp.join(ROOT, name), src)
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '_lib', '*.so')
    for name in ('requirements', 'configs', 'maxsup_mm'):
        shutil.copytree(osp.join(ROOT, name), osp.join(src, name),
                        ignore=ignore)
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check']
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    built = subprocess.run(
        pip + ['wheel', '--no-deps', '--no-build-isolation', '--no-index',
               '-q', '-w', str(tmp_path / 'dist'), src],
        capture_output=True, text=True, timeout=300, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel, ) = os.listdir(tmp_path / 'dist')
    site = str(tmp_path / 'site')
    installed = subprocess.run(
        pip + ['install', '--no-deps', '--no-index', '-q', '--target', site,
               str(tmp_path / 'dist' / wheel)],
        capture_output=True, text=True, timeout=300, env=env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    # every config, byte for byte
    copied = osp.join(site, 'maxsup_mm', '.mim', 'configs')
    for dirpath, _, files in os.walk(osp.join(ROOT, 'configs')):
        for name in files:
            if name.endswith('.py'):
                rel = osp.relpath(osp.join(dirpath, name),
                                  osp.join(ROOT, 'configs'))
                with open(osp.join(dirpath, name), 'rb') as a, \
                        open(osp.join(copied, rel), 'rb') as b:
                    assert a.read() == b.read(), rel
    # the kernel's sources travel with the package, tools/ and tests/ do not
    assert osp.isfile(osp.join(site, 'maxsup_mm', 'ops', 'csrc',
                               'maxsup_cpu.cpp'))
    assert not osp.exists(osp.join(site, 'tools'))
    assert not osp.exists(osp.join(site, 'tests'))
    # the wheel's dependencies are requirements/runtime.txt
    (info, ) = [d for d in os.listdir(site) if d.endswith('.dist-info')]
    with open(osp.join(site, info, 'METADATA')) as f:
        deps = [Requirement(line.split(':', 1)[1].strip()) for line in f
                if line.startswith('Requires-Dist:')]
    assert [d for d in deps if d.marker is None] == \
        _requirements(osp.join(REQS, 'runtime.txt'))
    run = subprocess.run(
        [sys.executable, '-c', INSTALLED_CHECK, site, osp.realpath(ROOT)],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
        env=dict(env, OMP_NUM_THREADS='1'))
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'config released/deit-small_official_in1k.py' in run.stdout
    assert 'loss MaxSupLoss' in run.stdout and 'ok' in run.stdout
