"""The safe loader against crafted checkpoints: numpy state that numpy would
trust (forged dtype flags, object fields), the process-wide allowlist, and
every URL scheme of mmengine's CheckpointLoader."""
import io
import json
import os
import os.path as osp
import pickle
import shutil
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from maxsup_mm.checkpoint import (CheckpointError, load_checkpoint,
                                  safe_global_names)
from forged_numpy import forged_cases, write_forged_checkpoints  # helpers
from malicious import write_malicious_checkpoint
from numpy_exact import assert_same

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# ---------------------------------------------------------------------------
# numpy: plain numeric data only; the allowlist stays inside our loads
# ---------------------------------------------------------------------------
_WORKER = r'''
import gc, json, pickle, sys
import torch
def allowlist():
    return {e[1] if isinstance(e, tuple) else
            f'{e.__module__}.{e.__qualname__}'
            for e in torch.serialization.get_safe_globals()}
before = allowlist()
import maxsup_mm
from maxsup_mm.checkpoint import CheckpointError, load_checkpoint
after_import = allowlist()
report = dict(added_by_import=sorted(after_import - before), ours={},
              plain={})
for name, path in json.loads(sys.argv[1]).items():
    print('loading', name, flush=True)  # the last one names a crash
    try:
        report['ours'][name] = 'LOADED ' + repr(load_checkpoint(path))[:300]
    except CheckpointError as err:
        report['ours'][name] = str(err)
    gc.collect()
    try:
        loaded = torch.load(path, weights_only=True)
        report['plain'][name] = 'LOADED ' + repr(loaded)[:300]
    except pickle.UnpicklingError:
        report['plain'][name] = 'refused'
    gc.collect()
report['changed_by_loads'] = sorted(allowlist() ^ after_import)
print('REPORT ' + json.dumps(report), flush=True)
'''


@pytest.fixture(scope='module')
def forged_report(tmp_path_factory):
    """Every forged file loaded in a fresh interpreter (a segfault shows as
    its exit status, not as a crashed pytest)."""
    paths = write_forged_checkpoints(str(tmp_path_factory.mktemp('forged')))
    proc = subprocess.run(
        [sys.executable, '-c', _WORKER, json.dumps(paths)], cwd=ROOT,
        capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines()
             if line.startswith('REPORT ')]
    report = json.loads(lines[-1][7:]) if lines else None
    return paths, proc, report


def _crash(proc) -> str:
    return (f'rc={proc.returncode}; stdout tail: {proc.stdout[-300:]!r}; '
            f'stderr tail: {proc.stderr[-800:]!r}')


@pytest.mark.slow
def test_forged_numpy_state_is_refused_in_one_line(forged_report):
    """Object / structured / subarray dtypes, forged flags or element size,
    data that does not fit the shape, a fake ndarray class (numpy 2.x and
    1.x module names): each one CheckpointError line, and no crash (numpy
    2.4 segfaults on ``object_field_flags_cleared`` when it trusts it)."""
    paths, proc, report = forged_report
    assert proc.returncode == 0 and report is not None, _crash(proc)
    assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert set(report['ours']) == set(paths)
    for name, message in report['ours'].items():
        assert message.startswith(f'{paths[name]}: refused: '), (name,
                                                                 message)
        assert 'numpy' in message and '\n' not in message, (name, message)


@pytest.mark.slow
def test_import_and_loads_leave_torch_allowlist_alone(forged_report):
    """``import maxsup_mm`` adds nothing of ours to ``get_safe_globals()``
    (only what the torch modules it imports register themselves, e.g.
    ``torch.distributed.tensor.DTensor``) and our loads change nothing: a
    plain ``torch.load(weights_only=True)`` in the same process refuses
    every forged file (torch's own refusal)."""
    paths, proc, report = forged_report
    assert proc.returncode == 0 and report is not None, _crash(proc)
    added = report['added_by_import']
    assert all(n.startswith('torch.') for n in added), added
    assert not set(added) & set(safe_global_names())
    assert report['changed_by_loads'] == []
    assert report['plain'] == {name: 'refused' for name in paths}


def test_our_allowlist_is_not_torch_global_one(tmp_path):
    """In this process too: none of our globals is in torch's process-wide
    allowlist after ``import maxsup_mm`` or a load, so plain torch refuses
    a numpy array that our loader reads."""
    import maxsup_mm  # noqa: F401
    path = str(tmp_path / 'arr.pth')
    torch.save({'a': np.arange(3)}, path)
    for _ in range(2):  # after the import, then after one of our loads
        names = {e[1] if isinstance(e, tuple) else
                 f'{e.__module__}.{e.__qualname__}'
                 for e in torch.serialization.get_safe_globals()}
        assert not names & set(safe_global_names()), names
        with pytest.raises(pickle.UnpicklingError, match='numpy'):
            torch.load(path, weights_only=True)
        assert load_checkpoint(path)['a'].tolist() == [0, 1, 2]


def test_a_global_entry_under_our_names_does_not_win(tmp_path):
    """A process that admitted the real ``numpy.dtype`` and
    ``_reconstruct`` itself still gets the checked stand-ins in our loads
    (and keeps its own entries afterwards)."""
    core = getattr(np, '_core', None) or np.core
    real = [np.dtype, np.ndarray,
            (core.multiarray._reconstruct,
             'numpy._core.multiarray._reconstruct')]
    path = str(tmp_path / 'forged.pth')
    torch.save({'x': forged_cases()['subarray_dtype']}, path)
    saved = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals(real)
    try:
        before = set(torch.serialization.get_safe_globals())
        with pytest.raises(CheckpointError, match='refused: numpy dtype'):
            load_checkpoint(path)
        assert set(torch.serialization.get_safe_globals()) == before
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def _plain_dtypes():
    for code in '?bBhHiIlLqQefdgFDG':
        for order in '<>':
            yield np.dtype(code).newbyteorder(order)


def test_benign_numpy_data_round_trips_bit_exactly(tmp_path):
    """Every plain numeric dtype in both byte orders, as arrays (C and
    Fortran order, 0-d, empty) and scalars, equals numpy's own
    ``pickle.loads`` of the same bytes; a shared array stays shared."""
    rng = np.random.default_rng(0)
    obj = {}
    for dtype in _plain_dtypes():
        def raw(n, dtype=dtype):
            return np.frombuffer(
                rng.integers(0, 256, n * dtype.itemsize, np.uint8).tobytes(),
                dtype)
        obj[dtype.str] = [raw(6).reshape(2, 3),
                          np.asfortranarray(raw(6).reshape(2, 3)),
                          raw(1).reshape(()), raw(0).reshape(0, 4),
                          raw(1)[0], dtype]
    shared = np.arange(4.)
    obj['shared'] = [shared, shared]
    path = str(tmp_path / 'numpy.pth')
    torch.save(obj, path)
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith('/data.pkl')]
        oracle = pickle.loads(archive.read(pkl[0]))
    ours = load_checkpoint(path)
    assert_same(ours, oracle)
    assert ours['shared'][0] is ours['shared'][1]
    assert oracle['shared'][0] is oracle['shared'][1]


# ---------------------------------------------------------------------------
# URL schemes: every one ends in the safe loader
# ---------------------------------------------------------------------------
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch's hub cache in ``tmp_path``; 'downloads' copy local files
    (``hub.serve(url, path)``), and the environment asks torch to load
    unsafely (mmengine's loaders would then run a payload)."""
    import maxsup_mm  # noqa: F401 - installs the loaders
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    served, fetched = {}, []

    def download(url, dst, hash_prefix=None, progress=True):
        fetched.append(url)
        shutil.copyfile(served.get(url, served.get('*')), dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    marker = str(tmp_path / 'payload_ran')
    evil = write_malicious_checkpoint(str(tmp_path / 'evil.pth'), marker,
                                      {'w': torch.ones(2)})
    good = str(tmp_path / 'good.pth')
    torch.save({'state_dict': {'backbone.w': torch.arange(3.)}}, good)
    return types.SimpleNamespace(
        serve=served.__setitem__, fetched=fetched, marker=marker, evil=evil,
        good=good, checkpoints=str(tmp_path / 'hub' / 'checkpoints'))


def _assert_refused(filename, hub):
    from mmengine.runner.checkpoint import _load_checkpoint
    with pytest.raises(CheckpointError) as err:
        _load_checkpoint(filename, map_location='cpu')
    assert not osp.exists(hub.marker), f'{filename}: the payload ran'
    assert 'builtins.exec' in str(err.value)
    assert '\n' not in str(err.value)


def test_every_mmengine_scheme_is_ours():
    """After ``import maxsup_mm`` no scheme of mmengine's CheckpointLoader
    is mmengine's own loader (which calls torch.load unsafely)."""
    import maxsup_mm  # noqa: F401
    from mmengine.runner.checkpoint import CheckpointLoader
    schemes = CheckpointLoader._schemes
    assert {'', 'http://', 'https://', 'torchvision://', 'open-mmlab://',
            'mmcls://', 'pavi://'} <= set(schemes)
    assert {p: f.__module__ for p, f in schemes.items()} == {
        p: 'maxsup_mm.checkpoint' for p in schemes}


def test_a_scheme_without_a_safe_loader_is_refused(monkeypatch, tmp_path):
    """A scheme some other package registered (here one that loads
    unsafely) is refused with one line once the loaders are installed."""
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint
    import maxsup_mm.checkpoint as ckpt
    monkeypatch.setattr(CheckpointLoader, '_schemes',
                        dict(CheckpointLoader._schemes))
    marker = str(tmp_path / 'payload_ran')
    evil = write_malicious_checkpoint(str(tmp_path / 'evil.pth'), marker)
    CheckpointLoader.register_scheme('foo://', force=True)(
        lambda filename, map_location=None: torch.load(
            evil, weights_only=False))
    monkeypatch.setattr(ckpt, '_INSTALLED', [False])
    ckpt.install_mmengine_loader()
    with pytest.raises(CheckpointError,
                       match=r'^foo://x\.pth: maxsup_mm has no safe loader'):
        _load_checkpoint('foo://x.pth')
    assert not osp.exists(marker)


@pytest.mark.parametrize('scheme', ['https', 'http'])
def test_url_checkpoints_load_safely(hub, scheme):
    """A payload served over http(s) never runs; a benign file loads and
    stays in torch's hub cache under the URL's file name, as mmengine (and
    ``torch.hub.load_state_dict_from_url``) keep it."""
    from mmengine.runner.checkpoint import _load_checkpoint
    hub.serve(f'{scheme}://example.com/models/evil.pth', hub.evil)
    _assert_refused(f'{scheme}://example.com/models/evil.pth', hub)
    assert osp.isfile(osp.join(hub.checkpoints, 'evil.pth'))
    url = f'{scheme}://example.com/models/good.pth?download=1'
    hub.serve(url, hub.good)
    ckpt = _load_checkpoint(url, map_location='cpu')
    assert torch.equal(ckpt['state_dict']['backbone.w'], torch.arange(3.))
    with open(osp.join(hub.checkpoints, 'good.pth'), 'rb') as f, \
            open(hub.good, 'rb') as g:
        assert f.read() == g.read()
    # cached: a second load downloads nothing
    _load_checkpoint(url, map_location='cpu')
    assert hub.fetched == [f'{scheme}://example.com/models/evil.pth', url]


def test_legacy_zip_from_a_url(hub, tmp_path):
    """torch hub's legacy format (a zip holding one checkpoint) loads
    through the same safe loader."""
    from mmengine.runner.checkpoint import _load_checkpoint
    for name, src in (('good', hub.good), ('evil', hub.evil)):
        zipped = str(tmp_path / f'{name}.zip')
        with zipfile.ZipFile(zipped, 'w') as archive:
            archive.write(src, f'{name}.pth')
        hub.serve(f'https://example.com/{name}.zip', zipped)
    ckpt = _load_checkpoint('https://example.com/good.zip')
    assert torch.equal(ckpt['state_dict']['backbone.w'], torch.arange(3.))
    _assert_refused('https://example.com/evil.zip', hub)


def _first_url(urls):
    return next((k, v) for k, v in sorted(urls.items())
                if v.startswith('https://'))


def test_name_schemes_resolve_as_mmengine_and_load_safely(hub):
    """torchvision:// (modelzoo://), open-mmlab:// (openmmlab://) and
    mmcls:// resolve to the URL mmengine's own tables give, then load
    safely; mmcls keeps only the backbone, as mmengine does."""
    from mmengine.runner import checkpoint as mm
    hub.serve('*', hub.evil)
    cases = []
    for prefixes, urls in (
            (('torchvision://', 'modelzoo://'), mm.get_torchvision_models()),
            (('open-mmlab://', 'openmmlab://'), mm.get_external_models()),
            (('mmcls://', ), mm.get_mmcls_models())):
        model, url = _first_url(urls)
        cases += [(prefix + model, url) for prefix in prefixes]
    for filename, url in cases:
        for cached in os.listdir(hub.checkpoints) if osp.isdir(
                hub.checkpoints) else ():
            os.remove(osp.join(hub.checkpoints, cached))
        _assert_refused(filename, hub)
        assert hub.fetched[-1] == url, filename
    os.remove(osp.join(hub.checkpoints, osp.basename(url)))
    hub.serve(url, hub.good)
    ckpt = mm._load_checkpoint(cases[-1][0])
    assert list(ckpt['state_dict']) == ['w']


def test_pavi_and_s3_load_safely(hub, monkeypatch):
    """pavi:// (download to a temporary folder) and s3:// / petrel:// (read
    into memory through mmengine's file backend) end in the safe loader."""
    import mmengine.fileio
    from mmengine.runner import checkpoint as mm

    class Model:
        name = 'model.pth'

        def __init__(self, src):
            self.src = src

        def download(self, dst):
            shutil.copyfile(self.src, dst)

    files = {'evil': hub.evil, 'good': hub.good}
    pavi = types.ModuleType('pavi')
    pavi.modelcloud = types.SimpleNamespace(
        get=lambda name: Model(files[name]))
    monkeypatch.setitem(sys.modules, 'pavi', pavi)

    class Backend:
        def get(self, filename):
            with open(files[filename.rsplit('/', 1)[1]], 'rb') as f:
                return f.read()

    for module in (mmengine.fileio, mm):
        monkeypatch.setattr(module, 'get_file_backend',
                            lambda *args, **kwargs: Backend())
    for prefix in ('pavi://', 's3://bucket/', 'petrel://bucket/',
                   'cluster1:s3://bucket/'):
        _assert_refused(prefix + 'evil', hub)
        ckpt = mm._load_checkpoint(prefix + 'good')
        assert torch.equal(ckpt['state_dict']['backbone.w'],
                           torch.arange(3.))


def test_in_memory_checkpoints(tmp_path):
    """``bytes`` and file objects load like the file they hold; the message
    names them."""
    buf = io.BytesIO()
    torch.save({'a': np.arange(3), 'w': torch.ones(2)}, buf)
    for source in (buf.getvalue(), io.BytesIO(buf.getvalue())):
        ckpt = load_checkpoint(source)
        assert ckpt['a'].tolist() == [0, 1, 2]
    marker = str(tmp_path / 'payload_ran')
    evil = write_malicious_checkpoint(str(tmp_path / 'evil.pth'), marker)
    with open(evil, 'rb') as f:
        data = f.read()
    with pytest.raises(CheckpointError, match=r'^s3://b/evil\.pth: refused'):
        load_checkpoint(data, name='s3://b/evil.pth')
    assert not osp.exists(marker)
