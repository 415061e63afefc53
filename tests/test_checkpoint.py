"""The shared safe checkpoint loader and the atomic-write helper."""
import argparse
import io
import os
import os.path as osp
import pathlib
import stat
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn

from maxsup_mm.checkpoint import (CheckpointError, check_finite,
                                  load_checkpoint, non_finite_tensors)
from maxsup_mm.fileio import atomic_save, atomic_write, atomic_write_text
from forged_numpy import numpy1_names, rewrite_pickle  # tests/helpers
from malicious import write_malicious_checkpoint
from numpy_exact import assert_same

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


class _ToyModel(nn.Module):
    """A BaseModel-free model for mmengine's Runner (no mmpretrain)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.fc(inputs)
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, labels))
        return logits

    def train_step(self, data, optim_wrapper):
        inputs, labels = data
        losses = self(torch.stack(inputs), torch.stack(labels), mode='loss')
        optim_wrapper.update_params(losses['loss'])
        return {k: v.detach() for k, v in losses.items()}


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint from plain ``Runner(...).train()``: no maxsup_mm hook."""
    from mmengine.runner import Runner
    work = str(tmp_path_factory.mktemp('plain_runner'))
    data = [(torch.randn(4), torch.tensor(i % 2)) for i in range(8)]
    runner = Runner(
        model=_ToyModel(), work_dir=work,
        train_dataloader=dict(dataset=data, batch_size=4,
                              sampler=dict(type='DefaultSampler',
                                           shuffle=False),
                              collate_fn=dict(type='pseudo_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=1)),
        default_scope='mmengine')
    runner.train()
    path = osp.join(work, 'epoch_1.pth')
    assert osp.isfile(path)
    return path


def test_plain_runner_checkpoint_is_refused_by_torch_but_loads_here(
        runner_checkpoint):
    """The message hub holds HistoryBuffer + numpy: torch's own allowlist
    refuses it (the bug), ours loads it with the values intact."""
    code = ('import torch,sys; torch.load(sys.argv[1], weights_only=True)')
    proc = subprocess.run([sys.executable, '-c', code, runner_checkpoint],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and 'HistoryBuffer' in proc.stderr
    ckpt = load_checkpoint(runner_checkpoint)
    buffers = ckpt['message_hub']['log_scalars']
    from mmengine.logging import HistoryBuffer
    assert isinstance(buffers['train/loss'], HistoryBuffer)
    assert np.isfinite(buffers['train/loss'].mean())
    assert set(ckpt['state_dict']) == {'fc.weight', 'fc.bias'}


def test_runner_checkpoint_loads_exactly_under_numpy_1_and_2_names(
        runner_checkpoint, tmp_path):
    """mmengine's own save (numpy 2.x module names) and the same file as
    numpy 1.x writes it (``numpy.core.multiarray``) load bit for bit as
    an unrestricted ``torch.load`` of our own trusted file does (the
    oracle): HistoryBuffer arrays, numpy scalars, tensors."""
    with open(runner_checkpoint, 'rb') as f:
        data = f.read()
    assert b'numpy._core.multiarray' in data or \
        b'numpy.core.multiarray' in data
    oracle = torch.load(runner_checkpoint, weights_only=False)
    assert oracle['message_hub']['log_scalars'], 'no numpy data to check'
    old = tmp_path / 'numpy1.pth'
    old.write_bytes(numpy1_names(data))
    assert b'numpy._core' not in old.read_bytes()
    for path in (runner_checkpoint, str(old)):
        assert_same(load_checkpoint(path), oracle)


def test_mmengine_loader_uses_the_safe_loader(runner_checkpoint, tmp_path,
                                              monkeypatch):
    """``import maxsup_mm`` makes mmengine's own loading safe, even when the
    environment asks torch to load unsafely."""
    import maxsup_mm  # noqa: F401
    from mmengine.runner.checkpoint import _load_checkpoint
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    assert 'state_dict' in _load_checkpoint(runner_checkpoint)
    marker = str(tmp_path / 'payload_ran')
    evil = write_malicious_checkpoint(str(tmp_path / 'evil.pth'), marker)
    with pytest.raises(CheckpointError) as err:
        _load_checkpoint(evil)
    assert not osp.exists(marker)
    message = str(err.value)
    assert 'builtins.exec' in message and evil in message
    assert '\n' not in message and '\x1b' not in message


@pytest.mark.slow
def test_malicious_checkpoint_is_refused_in_a_fresh_process(tmp_path):
    """Same, through a new interpreter with the environment override set."""
    marker = str(tmp_path / 'payload_ran')
    evil = write_malicious_checkpoint(str(tmp_path / 'evil.pth'), marker)
    code = ('import sys; sys.path.insert(0, sys.argv[2]); '
            'from maxsup_mm.checkpoint import load_checkpoint; '
            'load_checkpoint(sys.argv[1])')
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    proc = subprocess.run([sys.executable, '-c', code, evil, ROOT],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert 'CheckpointError' in proc.stderr and 'builtins.exec' in proc.stderr
    assert not osp.exists(marker)


def test_getattr_is_admitted_only_for_history_buffer_statistics(tmp_path):
    from mmengine.logging import HistoryBuffer

    class Reach:
        def __init__(self, obj, name):
            self.obj, self.name = obj, name

        def __reduce__(self):
            return (getattr, (self.obj, self.name))

    ok = tmp_path / 'ok.pth'
    torch.save({'m': Reach(HistoryBuffer, 'mean')}, ok)
    assert load_checkpoint(str(ok))['m'] is HistoryBuffer.mean
    for obj, name in ((HistoryBuffer, '__init__'), (HistoryBuffer,
                                                    '__class__'),
                      (argparse.Namespace, '__init__')):
        bad = tmp_path / f'bad_{name}.pth'
        torch.save({'m': Reach(obj, name)}, bad)
        with pytest.raises(CheckpointError, match=f"getattr.*'{name}'"):
            load_checkpoint(str(bad))


def test_deit_and_lightning_containers_load(tmp_path, monkeypatch):
    """DeiT's ``args`` (Namespace with paths), numpy scalars and Lightning's
    ``AttributeDict`` (pickled under Lightning's module name, loaded as a
    plain dict) load without Lightning installed."""
    sd = {'w': torch.ones(2)}
    deit = tmp_path / 'deit.pth'
    torch.save({'model': sd, 'model_ema': sd, 'epoch': 299,
                'args': argparse.Namespace(
                    output_dir=pathlib.Path('/out'), lr=5e-4,
                    smoothing=0.1, seed=np.int64(0))}, deit)
    ckpt = load_checkpoint(str(deit))
    assert ckpt['args'].output_dir == pathlib.PurePosixPath('/out')
    assert torch.equal(ckpt['model']['w'], sd['w'])

    module = types.ModuleType('lightning_fabric.utilities.data')

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = module.__name__
    AttributeDict.__qualname__ = 'AttributeDict'
    module.AttributeDict = AttributeDict
    for name in ('lightning_fabric', 'lightning_fabric.utilities'):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    lightning = tmp_path / 'lightning.pth'
    torch.save({'state_dict': {'model.' + k: v for k, v in sd.items()},
                'hyper_parameters': AttributeDict(lr=0.5, arch='resnet50'),
                'pytorch-lightning_version': '2.1.0', 'global_step': 10,
                'loops': {'fit_loop': {'epoch_progress': {'total': 3}}}},
               lightning)
    for name in ('lightning_fabric', 'lightning_fabric.utilities',
                 module.__name__):
        monkeypatch.delitem(sys.modules, name)
    ckpt = load_checkpoint(str(lightning))
    assert ckpt['hyper_parameters'] == {'lr': 0.5, 'arch': 'resnet50'}


def test_truncated_and_missing_files(runner_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / 'nope.pth'))
    data = open(runner_checkpoint, 'rb').read()
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt') as err:
        load_checkpoint(str(cut))
    assert '\n' not in str(err.value)


def test_safetensors_files_load_by_content(tmp_path, monkeypatch):
    """timm's Hugging Face hub weights (``model.safetensors``): recognised
    from the header, not the name; mmengine's loading (``init_cfg=
    Pretrained``, ``load_from``) reads them through the same loader."""
    from safetensors.torch import save_file
    import maxsup_mm  # noqa: F401
    from mmengine.runner.checkpoint import _load_checkpoint
    sd = {'patch_embed.proj.weight': torch.randn(8, 3, 4, 4),
          'cls_token': torch.randn(1, 1, 8),
          'head.weight': torch.randn(10, 8).to(torch.bfloat16),
          'steps': torch.arange(5)}
    for name in ('model.safetensors', 'renamed.pth'):
        path = str(tmp_path / name)
        save_file(sd, path, metadata={'format': 'pt'})
        for loaded in (load_checkpoint(path), _load_checkpoint(path)):
            assert set(loaded) == set(sd)
            for key, value in sd.items():
                assert loaded[key].dtype == value.dtype
                assert torch.equal(loaded[key], value), key
    # a torch.save file is still read by torch, however it is named
    torch.save(sd, str(tmp_path / 'weights.safetensors'))
    assert torch.equal(load_checkpoint(str(tmp_path / 'weights.safetensors'))[
        'cls_token'], sd['cls_token'])
    # truncated: one line, the format named
    data = open(path, 'rb').read()
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(data[:len(data) - 7])
    with pytest.raises(CheckpointError, match='safetensors') as err:
        load_checkpoint(str(cut))
    assert 'truncated or corrupt' in str(err.value)
    assert '\n' not in str(err.value)


def test_check_finite_names_the_tensors():
    sd = {'a': torch.ones(3), 'b': torch.tensor([1., float('nan')]),
          'c': torch.tensor([float('inf')]), 'n': torch.tensor([1, 2])}
    assert non_finite_tensors(sd) == ['b', 'c']
    with pytest.raises(CheckpointError, match='2 tensor.*b, c'):
        check_finite(sd, 'x.pth')
    check_finite({'a': torch.ones(1)}, 'x.pth')


def _member_offset(path: str, member: str) -> int:
    """Where ``member``'s data starts in the zip file ``path``."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    with open(path, 'rb') as f:
        f.seek(info.header_offset)
        header = f.read(30)
    assert header[:4] == b'PK\x03\x04'
    names = int.from_bytes(header[26:28], 'little')
    extra = int.from_bytes(header[28:30], 'little')
    return info.header_offset + 30 + names + extra


def test_a_flipped_bit_is_refused(tmp_path):
    """torch's zip reader does not check CRCs: one flipped bit in a
    tensor's data loads as another weight there (the oracle: plain
    torch.load).  Ours names the damaged member; the intact file loads."""
    sd = {'fc.weight': torch.arange(1000.), 'fc.bias': torch.ones(3)}
    path = str(tmp_path / 'ok.pth')
    torch.save({'state_dict': sd}, path)
    assert torch.equal(load_checkpoint(path)['state_dict']['fc.weight'],
                       sd['fc.weight'])
    with zipfile.ZipFile(path) as archive:
        member = next(n for n in archive.namelist()
                      if n.endswith('/data/0'))
    data = bytearray(open(path, 'rb').read())
    data[_member_offset(path, member) + 2001] ^= 0x10
    bad = tmp_path / 'flipped.pth'
    bad.write_bytes(bytes(data))
    plain = torch.load(str(bad), weights_only=True)['state_dict']
    assert not torch.equal(plain['fc.weight'], sd['fc.weight'])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(bad))
    message = str(err.value)
    assert message.startswith(f'{bad}: damaged: member {member} fails its '
                              'CRC-32 check')
    assert '\n' not in message


def _with_pickle(tmp_path, name: str, pkl: bytes) -> str:
    """A torch zip checkpoint whose ``data.pkl`` is ``pkl``."""
    buf = io.BytesIO()
    torch.save({'x': 1}, buf)
    path = tmp_path / name
    path.write_bytes(rewrite_pickle(buf.getvalue(), lambda _: pkl))
    return str(path)


@pytest.mark.parametrize('name,pkl', [
    # REDUCE of a tensor rebuild function with the wrong argument types
    ('wrong_args', b'\x80\x02ctorch._utils\n_rebuild_tensor_v2\n'
     b'K\x01K\x02\x86R.'),
    # APPEND with an empty stack
    ('stack_underflow', b'\x80\x02a.'),
    # NEWOBJ of a deeply nested list: torch's message reprs it
    ('deep_repr', b'\x80\x02' + b']' * 50000 + b'a' * 49999 + b')\x81.'),
    # a list nested 50000 deep: no tool can walk it
    ('deep_list', b'\x80\x02' + b']' * 50000 + b'a' * 49999 + b'.'),
])
def test_reader_errors_are_one_line(tmp_path, name, pkl):
    path = _with_pickle(tmp_path, f'{name}.pth', pkl)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f'{path}: ')
    assert '\n' not in str(err.value)


def test_finiteness_of_broadcast_and_overlapping_views(tmp_path):
    """A stride-0 tensor of 2**40 elements (one stored value) is checked
    without materialising it, also after a save/load; overlapping and
    strided views agree with torch.isfinite on the materialised view."""
    nan = float('nan')
    huge = {'ok': torch.zeros(1).expand(2 ** 40),
            'bad': torch.tensor([nan]).expand(2 ** 40),
            'bad2d': torch.tensor([[1.], [nan], [2.]]).expand(3, 2 ** 39)}
    path = str(tmp_path / 'huge.pth')
    torch.save(huge, path)
    assert os.path.getsize(path) < 1 << 20
    for sd in (huge, load_checkpoint(path)):
        assert non_finite_tensors(sd) == ['bad', 'bad2d']
        with pytest.raises(CheckpointError, match='2 tensor.*bad, bad2d'):
            check_finite(sd, 'huge.pth')
    base = torch.arange(12.)
    base[9] = nan
    views = {'overlap': base.as_strided((4, 4), (2, 1)),
             'overlap_ok': base.as_strided((3, 3), (1, 1)),
             'gaps_skip_nan': base.as_strided((3, ), (4, )),
             'gaps_hit_nan': base.as_strided((2, ), (9, )),
             'offset': base.as_strided((2, 2), (0, 1), 9),
             'empty': base.as_strided((0, 5), (1, 1))}
    oracle = [k for k, v in views.items()
              if not bool(torch.isfinite(v.contiguous()).all())]
    assert oracle == ['overlap', 'gaps_hit_nan', 'offset']
    assert non_finite_tensors(views) == oracle


def test_meta_and_sparse_tensors(tmp_path):
    """Meta tensors hold no data: one line at load time and in
    check_finite.  Sparse tensors are checked through their values
    (oracle: torch.isfinite of the dense tensor)."""
    path = str(tmp_path / 'meta.pth')
    torch.save({'state_dict': {'w': torch.empty(3, device='meta')}}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(
        f'{path}: holds meta tensors (no data): state_dict.w')
    with pytest.raises(CheckpointError,
                       match=r'^x\.pth: holds meta tensors \(no data\): w'):
        check_finite({'w': torch.empty(2, device='meta')}, 'x.pth')
    nan = float('nan')
    dense = {'coo_bad': torch.tensor([[0., nan], [1., 0.]]),
             'coo_ok': torch.tensor([[0., 2.], [1., 0.]]),
             'csr_bad': torch.tensor([[0., 2.], [float('inf'), 0.]]),
             'csr_ok': torch.tensor([[0., 2.], [1., 0.]])}
    sd = {k: v.to_sparse() if k.startswith('coo') else v.to_sparse_csr()
          for k, v in dense.items()}
    oracle = [k for k, v in dense.items() if not bool(
        torch.isfinite(v).all())]
    assert oracle == ['coo_bad', 'csr_bad']
    sparse_path = str(tmp_path / 'sparse.pth')
    torch.save(sd, sparse_path)
    for state in (sd, load_checkpoint(sparse_path)):
        assert non_finite_tensors(state) == oracle


def test_atomic_write_permissions_symlinks_and_cleanup(tmp_path):
    target = tmp_path / 'report.md'
    old = os.umask(0o022)
    try:
        atomic_write_text(str(target), 'hello')
    finally:
        os.umask(old)
    assert target.read_text() == 'hello'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    # a symlink at the old fixed temporary name is not followed
    victim = tmp_path / 'victim.txt'
    victim.write_text('keep')
    os.symlink(victim, str(target) + '.tmp')
    atomic_write_text(str(target), 'again')
    assert victim.read_text() == 'keep' and target.read_text() == 'again'
    # an exception (or KeyboardInterrupt) leaves neither temp nor target
    fresh = tmp_path / 'sub' / 'x.pth'
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(str(fresh), 'wb') as f:
            f.write(b'partial')
            raise KeyboardInterrupt
    assert not fresh.exists()
    assert [p.name for p in (tmp_path / 'sub').iterdir()] == []
    atomic_save({'w': torch.ones(1)}, str(fresh))
    assert torch.equal(load_checkpoint(str(fresh))['w'], torch.ones(1))
