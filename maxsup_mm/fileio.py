"""The one atomic-write helper of maxsup_mm.

A result file (report, metrics, split, feature cache, converted checkpoint)
is either complete or absent: it is written to a *unique* temporary file in
the target's folder (``tempfile.mkstemp``: never a fixed name that a symlink
could redirect) and moved over the target with :func:`os.replace`.  The
temporary file is removed on any exception, ``KeyboardInterrupt`` and
``SystemExit`` included, and the result gets the permissions a plain
``open(path, 'w')`` would give (``0o666`` minus the umask), not ``mkstemp``'s
``0o600``.
"""
import contextlib
import json
import os
import os.path as osp
import signal
import tempfile
import threading
from typing import IO, Any, Callable, Iterator

__all__ = ['atomic_write', 'atomic_save', 'atomic_write_text',
           'atomic_write_json', 'exit_on_sigterm']


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.',
                               suffix='.tmp', dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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
