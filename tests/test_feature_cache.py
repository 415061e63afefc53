"""The feature cache of :func:`maxsup_mm.analysis.extract_features` is keyed
by the checkpoint's content: a file replaced by another one of the same size
and modification time (``cp -p``, ``touch -r``) is extracted again.

Oracles: ``hashlib.sha256`` over the file's bytes, and an extraction with the
cache switched off (what the cached arrays must equal)."""
import hashlib
import os

import numpy as np
import pytest
import torch

from child_config import VIT_CFG  # tests/helpers
from random_weights import randomize_  # tests/helpers


@pytest.fixture(scope='module')
def vit_cfg(imagenet_root, tmp_path_factory):
    path = tmp_path_factory.mktemp('feature_cache') / 'tiny_vit.py'
    path.write_text(VIT_CFG.format(root=imagenet_root))
    return str(path)


def _save_random_vit(cfg_path, path, seed):
    """An mmpretrain checkpoint of the config's model, random weights."""
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    model = MODELS.build(Config.fromfile(cfg_path).model)
    randomize_(model, seed, img_size=32)
    torch.save({'state_dict': model.state_dict()}, path)


def _extract(cfg, ckpt, cache_dir, **kwargs):
    from maxsup_mm.analysis import extraction
    return extraction.extract_features(cfg, ckpt, split='val',
                                       cache_dir=cache_dir, progress=False,
                                       device='cpu', **kwargs)


def test_replaced_checkpoint_with_same_size_and_mtime_is_extracted_again(
        vit_cfg, tmp_path, monkeypatch):
    from maxsup_mm.analysis import extraction
    ckpt, cache = str(tmp_path / 'model.pth'), str(tmp_path / 'cache')
    _save_random_vit(vit_cfg, ckpt, seed=1)
    first = _extract(vit_cfg, ckpt, cache)
    before = os.stat(ckpt)

    # another checkpoint, same path, same size, same mtime (as `cp -p`)
    _save_random_vit(vit_cfg, ckpt, seed=2)
    os.utime(ckpt, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(ckpt)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size,
                                                  before.st_mtime_ns)
    second = _extract(vit_cfg, ckpt, cache)
    fresh = _extract(vit_cfg, ckpt, cache, cache=False)
    assert np.abs(fresh['features'] - first['features']).max() > 1e-3
    np.testing.assert_array_equal(second['features'], fresh['features'])
    np.testing.assert_array_equal(second['logits'], fresh['logits'])

    # the same file again: read from the cache, no model is built
    def no_model(*args, **kwargs):
        raise AssertionError('the cache should have been used')

    monkeypatch.setattr(extraction, 'build_classifier', no_model)
    third = _extract(vit_cfg, ckpt, cache)
    assert third['cache_path'] == second['cache_path']
    np.testing.assert_array_equal(third['features'], fresh['features'])


def test_file_digest_is_the_sha256_of_the_content(tmp_path):
    from maxsup_mm.analysis.extraction import file_digest
    path = tmp_path / 'blob.bin'
    data = os.urandom(3 * (1 << 20) + 17)  # several read chunks
    path.write_bytes(data)
    assert file_digest(str(path)) == hashlib.sha256(data).hexdigest()
    st = os.stat(path)
    other = bytes(reversed(data))
    path.write_bytes(other)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_digest(str(path)) == hashlib.sha256(other).hexdigest()
