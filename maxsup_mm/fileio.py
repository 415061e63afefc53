"""The one atomic-write helper of maxsup_mm.

A result file (report, metrics, split, feature cache, converted checkpoint,
compiled kernel) is either complete or absent: it is written to a *unique*
temporary file in the target's folder and moved over the target with
:func:`os.replace`.  The temporary file is created with
``os.open(O_CREAT | O_EXCL | O_NOFOLLOW, 0o666)`` under a random name: it
never follows or reuses an existing path (a planted symlink), and the kernel
applies the umask, so the result gets the permissions a plain
``open(path, 'w')`` would give (``0o666`` minus the umask) without this
process ever changing its umask (which is process-wide: another thread
would create its files with the changed mask).  The temporary file is removed
on any exception, ``KeyboardInterrupt`` and ``SystemExit`` included.

Imports only the standard library (torch lazily), so :mod:`maxsup_mm.ops`
may use it.
"""
import contextlib
import json
import os
import os.path as osp
import secrets
import signal
import threading
from typing import IO, Any, Callable, Iterator

__all__ = ['atomic_write', 'atomic_save', 'atomic_write_text',
           'atomic_write_json', 'exit_on_sigterm']

_TEMP_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL
               | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0)
               | getattr(os, 'O_BINARY', 0))


def _create_temp(folder: str, name: str):
    """``(fd, path)`` of a new file ``.<name>.<random>.tmp`` in ``folder``,
    mode ``0o666`` minus the umask (applied by the kernel)."""
    for _ in range(100):
        path = osp.join(folder, f'.{name}.{secrets.token_hex(6)}.tmp')
        try:
            return os.open(path, _TEMP_FLAGS, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f'no free temporary file name in {folder}')


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'w', **open_kwargs) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the block ends.

    Example:
        >>> with atomic_write('report.md') as f:
        ...     f.write('# Report\\n')

    Args:
        path (str): the target file; its folder is created if needed.
        mode (str): ``'w'`` (text) or ``'wb'`` (binary).
        **open_kwargs: passed to :func:`os.fdopen` (e.g. ``encoding``).
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_temp(folder, osp.basename(path))
    try:
        if mode == 'w':
            open_kwargs.setdefault('encoding', 'utf-8')
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_save(obj: Any, path: str,
                save: Callable[[Any, IO], None] = None) -> None:
    """``torch.save(obj, path)`` (or ``save(obj, file)``), atomically."""
    if save is None:
        import torch
        save = torch.save
    with atomic_write(path, 'wb') as f:
        save(obj, f)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_write(path, 'w') as f:
        f.write(text)


def atomic_write_json(path: str, obj: Any, **dump_kwargs) -> None:
    """``json.dump(obj)`` to ``path`` atomically (indent 2 by default)."""
    dump_kwargs.setdefault('indent', 2)
    with atomic_write(path, 'w') as f:
        json.dump(obj, f, **dump_kwargs)
        f.write('\n')


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit(143)`` (command-line tools call this).

    Python's default for SIGTERM ends the process at once, so the cleanup of
    :func:`atomic_write` (removing its temporary file) would not run; as an
    exception it does, like ``KeyboardInterrupt`` for SIGINT.  Only the main
    thread can install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
