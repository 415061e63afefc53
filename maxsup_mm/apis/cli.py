"""What every command-line tool shares: where a config is, which errors are
the user's, and how they end (one line).

* :func:`resolve_config` finds a config given on a command line from any
  working directory: a file, one of this project's ``configs/`` (with or
  without the leading ``configs/``; :func:`maxsup_mm.config_path`), or
  ``PACKAGE::PATH`` inside an installed OpenMMLab package, as mmengine
  resolves ``_base_`` (``mmpretrain::resnet/resnet50_8xb32_in1k.py``).
* :data:`USER_ERRORS` are the exceptions a user causes (a missing or bad
  file, a bad value); tools end them with ``<prog>: error:`` and
  :func:`one_line_error`, and keep tracebacks for everything else (bugs).
* :func:`check_writable` refuses an output path before any work is done.
"""
import importlib.util
import os
import os.path as osp
import re
import tempfile

from maxsup_mm.utils import config_path, config_root

__all__ = ['USER_ERRORS', 'resolve_config', 'one_line_error',
           'check_writable']

#: the exceptions a user causes: a bad value or file (CheckpointError,
#: ConversionError and the datasets' errors are ValueError /
#: FileNotFoundError subclasses), a path that cannot be read or written
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError,
               NotADirectoryError, PermissionError, FileExistsError)

#: what torch's DataLoader puts before a worker's re-raised exception
_WORKER = re.compile(r'^Caught \w+ in .*\.\nOriginal Traceback', re.S)
_TRACEBACK = 'Traceback (most recent call last):'
#: the exception line of a traceback: ``module.Type: message``
_EXCEPTION_LINE = re.compile(r'^[A-Za-z_][\w.]*: ')


def _package_config(config: str) -> str:
    """``PACKAGE::PATH``: the file in the installed package's configs."""
    from mmengine.config.utils import MODULE2PACKAGE
    scope, _, rel = config.partition('::')
    if scope not in MODULE2PACKAGE or not rel or '::' in rel:
        raise FileNotFoundError(
            f'config {config}: unknown package {scope!r} before "::" (known: '
            f'{", ".join(sorted(MODULE2PACKAGE))}); give PACKAGE::PATH, e.g. '
            'mmpretrain::resnet/resnet50_8xb32_in1k.py, or a config file')
    spec = importlib.util.find_spec(scope)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f'config {config}: {scope} is not installed; install '
            f'{MODULE2PACKAGE[scope]} or give a config file')
    # where mmengine finds the _base_ of another package
    # (mmengine.config.utils._get_external_cfg_base_path)
    root = osp.join(osp.dirname(spec.origin), '.mim', 'configs')
    path = osp.join(root, rel)
    if osp.isfile(path):
        return path
    raise FileNotFoundError(f'config not found: {config} (tried {path}); '
                            f'give a config of {root}')


def resolve_config(config: str) -> str:
    """The file of a config given on a command line, from any directory.

    Args:
        config (str): in this order: ``PACKAGE::PATH`` (an installed
            OpenMMLab package's config, e.g.
            ``'mmpretrain::resnet/resnet50_8xb32_in1k.py'``); a file
            (relative to the working directory, or absolute); one of this
            project's configs, with or without the leading ``configs/``
            (``'configs/deit-small_maxsup.py'``), found by
            :func:`maxsup_mm.config_path` in the checkout or the installed
            package, whatever the working directory.

    Returns:
        str: the absolute path of the config file.

    Raises:
        FileNotFoundError: none of these; the one-line message lists what
            was tried.
    """
    config = os.fspath(config)
    if '::' in config:
        return _package_config(config)
    if osp.isfile(config):
        return osp.abspath(config)
    try:
        return osp.abspath(config_path(config))
    except FileNotFoundError:
        pass
    tried = [osp.abspath(config)]
    try:
        tried.append(f"{config} among maxsup-mm's configs in "
                     f'{config_root()}')
    except FileNotFoundError as err:
        tried.append(str(err))
    raise FileNotFoundError(
        f'config not found: {config} (tried {"; ".join(tried)}); give a '
        'config file, one of configs/ of maxsup-mm or PACKAGE::PATH (e.g. '
        'mmpretrain::resnet/resnet50_8xb32_in1k.py)')


def one_line_error(err: BaseException) -> str:
    """The message of a user error as one line.

    An exception that torch's DataLoader re-raised from a worker (same type,
    message ``"Caught X in DataLoader worker process N.\\nOriginal
    Traceback ..."``) is reduced to the original exception's message: the
    traceback's last lines, without the exception type.  Line breaks inside
    a message become spaces.

    Args:
        err (BaseException): the exception.

    Returns:
        str: one line.
    """
    text = str(err)
    if _WORKER.match(text):
        # the last traceback (a chained one comes after its cause); its
        # frames are indented, the exception that ends it is not
        lines = text.rsplit(_TRACEBACK, 1)[-1].splitlines()
        start = next((i for i, line in enumerate(lines)
                      if line.strip() and not line[0].isspace()), None)
        if start is not None:
            text = _EXCEPTION_LINE.sub('', '\n'.join(lines[start:]), count=1)
    return ' '.join(text.split())


def check_writable(path: str, option: str, folder: bool = False) -> str:
    """Refuse an output path that cannot be written, before any work.

    A path that does not exist yet is fine if the nearest existing folder
    above it is a writable folder (the tools create what is missing).
    Writability is tried (a temporary file is created and removed), so
    read-only file systems, ACLs and root are judged right.

    Args:
        path (str): the output file (or folder, with ``folder=True``).
        option (str): how the user gave it (``'DST'``, ``'--work-dir'``),
            for the message.
        folder (bool): ``path`` is a folder, not a file.

    Returns:
        str: ``path``.

    Raises:
        ValueError: a file where a folder is needed or the other way round,
            or a folder that cannot be written; one line saying what to do.
    """
    path = os.fspath(path)
    if folder and osp.exists(path) and not osp.isdir(path):
        raise ValueError(f'{option} {path} is a file, not a folder; give a '
                         'folder')
    if not folder and osp.isdir(path):
        raise ValueError(f'{option} {path} is a folder; give the path of '
                         'the file to write (in it, or elsewhere)')
    existing = osp.abspath(path) if folder else osp.dirname(
        osp.abspath(path))
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        raise ValueError(f'{option} {path}: {existing} is a file, not a '
                         f'folder; give a path whose folders are folders')
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(
            f'{option} {path}: cannot write in {existing} '
            f'({err.strerror or err}); give a path in a writable folder'
        ) from None
    return path
