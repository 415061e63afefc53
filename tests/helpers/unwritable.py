"""A folder in which this process cannot create files (what a tool must
refuse as an output folder), also when the tests run as root."""
import os
import os.path as osp
import tempfile

import pytest


def can_write(folder: str) -> bool:
    """Whether a file can really be created in ``folder``."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def unwritable_folder(tmp_path) -> str:
    """``tmp_path/read_only`` (mode 0o555); as root, who ignores modes,
    sysfs (``/sys``, where nobody creates files); else the test is skipped.
    """
    folder = osp.join(str(tmp_path), 'read_only')
    os.makedirs(folder)
    os.chmod(folder, 0o555)
    if not can_write(folder):
        return folder
    if osp.isdir('/sys') and not can_write('/sys'):
        return '/sys'
    pytest.skip('no folder this process cannot write (root without sysfs)')
