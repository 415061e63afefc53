"""The atomic-write helper (maxsup_mm.fileio) and its users' temporary
files: no process-wide umask change, no symlink followed."""
import os
import stat

import pytest

from maxsup_mm.fileio import atomic_write, atomic_write_text


def _plain_open_mode(path):
    """The oracle: what ``open(path, 'w')`` gives under the current umask."""
    with open(path, 'w'):
        pass
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize('mask', [0o022, 0o027, 0o077, 0o002])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, mask):
    old = os.umask(mask)
    try:
        expected = _plain_open_mode(tmp_path / 'plain.txt')
        atomic_write_text(str(tmp_path / 'out.txt'), 'x')
        with atomic_write(str(tmp_path / 'out.bin'), 'wb') as f:
            f.write(b'x')
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / 'out.txt').st_mode) == expected
    assert stat.S_IMODE(os.stat(tmp_path / 'out.bin').st_mode) == expected


def test_atomic_write_never_touches_the_process_umask(tmp_path, monkeypatch):
    """The umask is process-wide: setting it to 0 even briefly lets another
    thread create a world-writable file."""
    calls = []
    real = os.umask

    def spy(mask):
        calls.append(mask)
        return real(mask)

    monkeypatch.setattr(os, 'umask', spy)
    atomic_write_text(str(tmp_path / 'a.txt'), 'x')
    with atomic_write(str(tmp_path / 'b.bin'), 'wb') as f:
        f.write(b'x')
    assert calls == []


def test_atomic_write_temporary_names_are_fresh_and_not_followed(tmp_path):
    """A symlink planted at any name in the folder is never written
    through, and a failed write leaves nothing behind."""
    victim = tmp_path / 'victim'
    victim.write_text('keep')
    target = tmp_path / 'out.txt'
    for name in ('.out.txt.tmp', 'out.txt.tmp', f'out.txt.tmp{os.getpid()}'):
        os.symlink(victim, tmp_path / name)
    atomic_write_text(str(target), 'new')
    assert target.read_text() == 'new' and victim.read_text() == 'keep'
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError):
        with atomic_write(str(tmp_path / 'fail.txt')) as f:
            f.write('partial')
            raise RuntimeError('boom')
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_kernel_build_does_not_follow_a_planted_symlink(tmp_path, monkeypatch):
    """ops/build.py installs the compiled library through the atomic-write
    helper: a symlink at its old temporary name ``target.tmp<PID>`` must not
    redirect the copy (it used ``shutil.copyfile``, which follows it)."""
    import torch.utils.cpp_extension as cpp_extension

    from maxsup_mm.ops import build
    monkeypatch.setenv('MAXSUP_MM_KERNEL_DIR', str(tmp_path / 'lib'))
    payload = b'\x7fELF fake kernel'

    def fake_load(name, build_directory, **kwargs):
        with open(os.path.join(build_directory, f'{name}.so'), 'wb') as f:
            f.write(payload)

    monkeypatch.setattr(cpp_extension, 'load', fake_load)
    target = build.kernel_path()
    os.makedirs(os.path.dirname(target))
    victim = tmp_path / 'victim'
    victim.write_bytes(b'keep')
    os.symlink(victim, target + f'.tmp{os.getpid()}')
    assert build.build(force=True) == target
    assert victim.read_bytes() == b'keep'
    with open(target, 'rb') as f:
        assert f.read() == payload
    assert not os.path.islink(target)
