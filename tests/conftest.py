"""Shared fixtures: generated data in real on-disk formats, once per session."""
import os
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
HELPERS = osp.join(ROOT, 'tests', 'helpers')  # fault hooks, malicious pickle
# the tools/analysis scripts import their entry (``analyze``) from their own
# folder, which is on sys.path when they run as scripts
ANALYSIS_TOOLS = osp.join(ROOT, 'tools', 'analysis')
for path in (HELPERS, ROOT, ANALYSIS_TOOLS):
    if path not in sys.path:
        sys.path.insert(0, path)

os.environ.setdefault('OMP_NUM_THREADS', '2')


@pytest.fixture(scope='session')
def imagenet_root(tmp_path_factory):
    """A 4-class ImageNet-layout folder with train/val splits (32x32 JPEGs)."""
    from maxsup_mm.datasets import write_imagenet_folder
    root = str(tmp_path_factory.mktemp('imagenet'))
    return write_imagenet_folder(root, num_classes=4, per_class=(8, 4),
                                 size=32)


@pytest.fixture(scope='module', autouse=True)
def _restore_default_scope():
    """Each test module starts with the OpenMMLab default scope it would have
    when run alone: runners and ``register_all_modules`` make their scope
    (``mmpretrain`` or ``mmseg``) the process-wide default, which would
    otherwise redirect the next module's ``MODELS.build`` calls."""
    from mmengine.registry import DefaultScope
    before = list(DefaultScope._instance_dict)
    yield
    for name in list(DefaultScope._instance_dict):
        if name not in before:
            del DefaultScope._instance_dict[name]
