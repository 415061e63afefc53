"""Broken data ends in one line (issue 18 item 13, data part).

mmpretrain's ``ImageNet`` without its annotation files, an image that does
not decode and CIFAR files with a wrong md5 (or none) end in a
:class:`maxsup_mm.datasets.DatasetError` whose message is one line naming
the file or folder and what to do, raised in the main process also when a
DataLoader worker found it; ``tools/train.py`` prints it as
``train.py: error: <message>``.  The checked classes read good data exactly
as the upstream ones do.

Oracles: mmpretrain's own classes (what they read from good data, their
md5 tables and URLs), ``hashlib``, the generated files, the exception
torch's DataLoader re-raises from a worker.
"""
import hashlib
import os
import os.path as osp
import shutil
import subprocess
import sys
import urllib.error

import numpy as np
import pytest

from child_config import (RESNET18_CIFAR_PLAIN,  # tests/helpers
                          write_child_config)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

IMAGENET_FIX = (
    "ImageNet needs the annotation files meta/train.txt and meta/val.txt "
    "(lines '<class folder>/<image> <label>', see mmpretrain's docs: "
    "Prepare ImageNet) or one sub-folder per class in ")
DECODE_FIX = ('cannot decode the image (corrupt or not an image file); '
              'replace the file, or delete it and its line in the annotation '
              'file')
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'


@pytest.fixture
def imagenet(imagenet_root, tmp_path):
    """A copy of the generated 4-class ImageNet folder to break."""
    return shutil.copytree(imagenet_root, str(tmp_path / 'imagenet'))


def _md5(path):
    with open(path, 'rb') as f:
        return hashlib.md5(f.read()).hexdigest()


# ---------------------------------------------------------------------------
# ImageNet without meta/*.txt
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('split', ['train', 'val'])
def test_imagenet_without_meta_is_one_line(imagenet, split):
    from mmpretrain.datasets import ImageNet

    from maxsup_mm.datasets import CheckedImageNet, DatasetError
    shutil.rmtree(osp.join(imagenet, 'meta'))
    # upstream reads the class sub-folders instead and fails on their count
    with pytest.raises(AssertionError):
        ImageNet(data_root=imagenet, split=split, pipeline=[])
    prefix = osp.join(imagenet, split)
    with pytest.raises(DatasetError) as exc:
        CheckedImageNet(data_root=imagenet, split=split, pipeline=[])
    assert str(exc.value) == (
        f'{imagenet}: no meta/{split}.txt, and {prefix} has 4 class '
        f'sub-folders, not 1000; {IMAGENET_FIX}{prefix}')


def test_imagenet_data_root_missing_is_one_line(tmp_path):
    from maxsup_mm.datasets import CheckedImageNet, DatasetError
    missing = str(tmp_path / 'no_imagenet')
    prefix = osp.join(missing, 'val')
    with pytest.raises(DatasetError) as exc:
        CheckedImageNet(data_root=missing, split='val', pipeline=[])
    assert str(exc.value) == (
        f'{missing}: no meta/val.txt, and no folder {prefix}; '
        f'{IMAGENET_FIX}{prefix}')


def test_imagenet_flat_val_folder_without_meta_is_one_line(imagenet):
    """The layout of ImageNet's val tarball: images, no class folders."""
    from maxsup_mm.datasets import CheckedImageNet, DatasetError
    shutil.rmtree(osp.join(imagenet, 'meta'))
    val = osp.join(imagenet, 'val')
    for folder in os.listdir(val):
        for name in os.listdir(osp.join(val, folder)):
            os.rename(osp.join(val, folder, name), osp.join(val, name))
        os.rmdir(osp.join(val, folder))
    with pytest.raises(DatasetError) as exc:
        CheckedImageNet(data_root=imagenet, split='val', pipeline=[])
    assert str(exc.value) == (
        f'{imagenet}: no meta/val.txt, and {val} has 0 class sub-folders, '
        f'not 1000; {IMAGENET_FIX}{val}')


def test_imagenet_missing_ann_file_is_one_line(imagenet):
    from maxsup_mm.datasets import CheckedImageNet, DatasetError
    with pytest.raises(DatasetError) as exc:
        CheckedImageNet(data_root=imagenet, ann_file='meta/nope.txt',
                        data_prefix='train', pipeline=[])
    ann = osp.join(imagenet, 'meta', 'nope.txt')
    assert str(exc.value) == (
        f'{ann}: annotation file not found; give the annotation file of the '
        "data (lines '<class folder>/<image> <label>', see mmpretrain's "
        "docs: Prepare ImageNet), or ann_file='' to read one sub-folder per "
        f'class in {osp.join(imagenet, "train")}')


def test_checked_imagenet_reads_what_upstream_reads(imagenet):
    """With meta/*.txt, and without it when the class folders match the
    classes: the same samples; the images load as upstream loads them."""
    from mmcv.transforms import LoadImageFromFile
    from mmpretrain.datasets import ImageNet

    from maxsup_mm.datasets import CheckedImageNet, CheckedLoadImageFromFile
    pipeline = [dict(type='LoadImageFromFile')]
    for kwargs in (dict(), dict(metainfo=dict(classes=list('abcd')))):
        want = ImageNet(data_root=imagenet, split='val', pipeline=pipeline,
                        serialize_data=False, **kwargs)
        got = CheckedImageNet(data_root=imagenet, split='val',
                              pipeline=pipeline, serialize_data=False,
                              **kwargs)
        assert got.load_data_list() == want.load_data_list()
        assert got.CLASSES == want.CLASSES
        assert type(want.pipeline.transforms[0]) is LoadImageFromFile
        assert type(got.pipeline.transforms[0]) is CheckedLoadImageFromFile
        for i in (0, len(want) - 1):
            assert np.array_equal(got[i]['img'], want[i]['img'])
            assert got[i]['img_shape'] == want[i]['img_shape']
        shutil.rmtree(osp.join(imagenet, 'meta'), ignore_errors=True)


# ---------------------------------------------------------------------------
# images that do not decode
# ---------------------------------------------------------------------------
def _corrupt(path, kind):
    data = open(path, 'rb').read()
    broken = {'empty': b'', 'text': b'not an image\n',
              'random': np.random.default_rng(0).bytes(600),
              'truncated': data[:len(data) // 2]}[kind]
    with open(path, 'wb') as f:
        f.write(broken)


@pytest.mark.parametrize('backend', ['cv2', 'pillow'])
@pytest.mark.parametrize('kind', ['empty', 'text', 'random', 'truncated'])
def test_undecodable_images_are_one_line(imagenet, kind, backend):
    from mmcv.transforms import LoadImageFromFile

    from maxsup_mm.datasets import CheckedLoadImageFromFile, DatasetError
    folder = osp.join(imagenet, 'val', 'n0000002')
    bad = osp.join(folder, sorted(os.listdir(folder))[1])
    _corrupt(bad, kind)
    # upstream: an AssertionError (OpenCV's None), cv2.error or Pillow's
    # OSError, none of them a ValueError or FileNotFoundError
    with pytest.raises(Exception) as upstream:
        LoadImageFromFile(imdecode_backend=backend)({'img_path': bad})
    assert not isinstance(upstream.value, (ValueError, FileNotFoundError))
    with pytest.raises(DatasetError) as exc:
        CheckedLoadImageFromFile(imdecode_backend=backend)({'img_path': bad})
    assert str(exc.value) == f'{bad}: {DECODE_FIX}'


def test_corrupt_image_in_a_dataloader_worker_is_one_line(imagenet):
    """Found by a worker, re-raised by torch in the main process: the same
    type, the message's last line ``DatasetError: <one line>``."""
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader

    from maxsup_mm.datasets import CheckedImageNet, DatasetError
    folder = osp.join(imagenet, 'val', 'n0000002')
    bad = osp.join(folder, sorted(os.listdir(folder))[1])
    _corrupt(bad, 'random')
    dataset = CheckedImageNet(
        data_root=imagenet, split='val',
        pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')])
    # one batch: the worker has nothing else to do when it fails
    loader = DataLoader(dataset, batch_size=len(dataset), num_workers=1,
                        collate_fn=pseudo_collate)
    with pytest.raises(DatasetError) as exc:
        next(iter(loader))
    text = str(exc.value)
    assert 'DataLoader worker process 0' in text, text
    assert text.splitlines()[-1] == \
        f'maxsup_mm.datasets.errors.DatasetError: {bad}: {DECODE_FIX}'


@pytest.mark.parametrize('backend', ['cv2', 'pillow'])
def test_undecodable_image_with_ignore_empty_is_none(imagenet, backend):
    """``ignore_empty=True``: None, as upstream gives when the decoder
    raises (Pillow); upstream asserts when OpenCV returns None instead."""
    from mmcv.transforms import LoadImageFromFile

    from maxsup_mm.datasets import CheckedLoadImageFromFile
    folder = osp.join(imagenet, 'val', 'n0000000')
    bad = osp.join(folder, sorted(os.listdir(folder))[0])
    _corrupt(bad, 'text')
    assert LoadImageFromFile(ignore_empty=True, imdecode_backend='pillow')(
        {'img_path': bad}) is None
    assert CheckedLoadImageFromFile(ignore_empty=True,
                                    imdecode_backend=backend)(
        {'img_path': bad}) is None


@pytest.mark.parametrize('kwargs, part', [
    (dict(imdecode_backend='opencv'), "imdecode_backend 'opencv'"),
    (dict(color_type='colour'), "color_type 'colour'")])
def test_checked_loading_refuses_unknown_settings(kwargs, part):
    from maxsup_mm.datasets import CheckedLoadImageFromFile
    with pytest.raises(ValueError) as exc:
        CheckedLoadImageFromFile(**kwargs)
    assert part in str(exc.value) and '\n' not in str(exc.value)


# ---------------------------------------------------------------------------
# CIFAR files: wrong md5, missing, the download failing
# ---------------------------------------------------------------------------
def test_cifar10_md5_mismatch_is_one_line(tmp_path):
    from mmpretrain.datasets import CIFAR10

    from maxsup_mm.datasets import CheckedCIFAR10, DatasetError, write_cifar10
    root = write_cifar10(str(tmp_path / 'cifar10'), per_class=(1, 1))
    # upstream: the md5 table of the real files, which these differ from
    with pytest.raises(RuntimeError):
        CIFAR10(data_root=root, split='train', download=False)
    first = osp.join(root, 'cifar-10-batches-py', 'data_batch_1')
    with pytest.raises(DatasetError) as exc:
        CheckedCIFAR10(data_root=root, split='train', download=False)
    assert str(exc.value) == (
        f'{first}: md5 mismatch: expected {CIFAR10.train_list[0][1]}, got '
        f'{_md5(first)}; download {CIFAR10_URL} and extract it into {root}, '
        'or set download=True in the dataset config')


def test_cifar100_missing_file_is_one_line(tmp_path):
    from mmpretrain.datasets import CIFAR100

    from maxsup_mm.datasets import CheckedCIFAR100, DatasetError
    root = str(tmp_path / 'cifar100')
    folder = osp.join(root, 'cifar-100-python')
    os.makedirs(folder)
    # 'train' right, 'test' missing
    with open(osp.join(folder, 'train'), 'wb') as f:
        f.write(b'x')
    md5 = hashlib.md5(b'x').hexdigest()
    train = [['train', md5]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CIFAR100, 'train_list', train)
        with pytest.raises(DatasetError) as exc:
            CheckedCIFAR100(data_root=root, split='test', download=False)
    assert str(exc.value) == (
        f'{osp.join(folder, "test")}: not found; download {CIFAR100_URL} '
        f'and extract it into {root}, or set download=True in the dataset '
        'config')


def test_cifar_failed_download_is_one_line(tmp_path, monkeypatch):
    """download=True (the configs' default) without a network."""
    import mmpretrain.datasets.cifar as upstream

    from maxsup_mm.datasets import CheckedCIFAR100, DatasetError

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError('offline')

    monkeypatch.setattr(upstream, 'download_and_extract_archive', offline)
    root = str(tmp_path / 'cifar100')
    folder = osp.join(root, 'cifar-100-python')
    os.makedirs(folder)
    with open(osp.join(folder, 'train'), 'wb') as f:
        f.write(b'not the CIFAR-100 train pickle')
    with pytest.raises(DatasetError) as exc:
        CheckedCIFAR100(data_root=root, split='train')
    train = osp.join(folder, 'train')
    assert str(exc.value) == (
        f'{train}: md5 mismatch: expected '
        f'{upstream.CIFAR100.train_list[0][1]}, got {_md5(train)}; '
        f'downloading {CIFAR100_URL} failed (<urlopen error offline>); '
        f'download it and extract it into {root}')


def test_checked_cifar10_reads_what_upstream_reads(tmp_path, monkeypatch):
    """md5 checks off (as tests/helpers/cifar_md5_off.py): same samples."""
    from mmpretrain.datasets import CIFAR10

    from maxsup_mm.datasets import CheckedCIFAR10, write_cifar10
    for name in ('train_list', 'test_list'):
        monkeypatch.setattr(CIFAR10, name, [[file, None] for file, _ in
                                            getattr(CIFAR10, name)])
    root = write_cifar10(str(tmp_path / 'cifar10'), per_class=(1, 1))
    for split in ('train', 'test'):
        # serialize_data=False: no gc.collect() per dataset (seconds here)
        want = CIFAR10(data_root=root, split=split, download=False,
                       serialize_data=False)
        got = CheckedCIFAR10(data_root=root, split=split, download=False,
                             serialize_data=False)
        assert len(got) == len(want) == 10
        for a, b in zip(got.load_data_list(), want.load_data_list()):
            assert a['gt_label'] == b['gt_label']
            assert np.array_equal(a['img'], b['img'])


# ---------------------------------------------------------------------------
# through tools/train.py: one line on stderr
# ---------------------------------------------------------------------------
#: the child config of the plain 4-class recipe, with mmpretrain's own
#: ``ImageNet``: the tools read it with the checked classes by themselves
CHECKED = (
    "train_dataloader = dict(num_workers={workers}, dataset=dict("
    "type='ImageNet', data_root=data_root))\n"
    "val_dataloader = dict(dataset=dict(type='ImageNet', "
    "data_root=data_root))\n"
    "test_dataloader = val_dataloader\n")
#: the same recipe on mmpretrain's CIFAR10 (10 classes)
CHECKED_CIFAR = (
    "model = dict(head=dict(num_classes=10))\n"
    "data_preprocessor = dict(num_classes=10)\n"
    "train_dataloader = dict(dataset=dict(_delete_=True, "
    "type='CIFAR10', data_root=data_root, split='train', "
    "download=False, pipeline=[dict(type='PackInputs')]))\n"
    "val_dataloader = dict(dataset=dict(_delete_=True, "
    "type='CIFAR10', data_root=data_root, split='test', "
    "download=False, pipeline=[dict(type='PackInputs')]))\n"
    "test_dataloader = val_dataloader\n")


def _train_error(tmp_path, data_root, extra):
    cfg = write_child_config(tmp_path / 'cfg.py', RESNET18_CIFAR_PLAIN,
                             data_root, extra)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', cfg, '--work-dir',
         str(tmp_path / 'work')], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_train_tool_says_missing_meta_in_one_line(imagenet, tmp_path):
    shutil.rmtree(osp.join(imagenet, 'meta'))
    prefix = osp.join(imagenet, 'train')
    assert _train_error(tmp_path, imagenet, CHECKED.format(workers=0)) == (
        f'train.py: error: {imagenet}: no meta/train.txt, and {prefix} has 4 '
        f'class sub-folders, not 1000; {IMAGENET_FIX}{prefix}')


@pytest.mark.slow
def test_train_tool_says_a_corrupt_image_in_one_line(imagenet, tmp_path):
    """Found by a DataLoader worker (num_workers=1)."""
    folder = osp.join(imagenet, 'train', 'n0000001')
    bad = osp.join(folder, sorted(os.listdir(folder))[3])
    _corrupt(bad, 'random')
    assert _train_error(tmp_path, imagenet, CHECKED.format(workers=1)) == (
        f'train.py: error: {bad}: {DECODE_FIX}')


@pytest.mark.slow
def test_train_tool_says_a_cifar_md5_mismatch_in_one_line(tmp_path):
    from mmpretrain.datasets import CIFAR10

    from maxsup_mm.datasets import write_cifar10
    root = write_cifar10(str(tmp_path / 'cifar10'), per_class=(1, 1))
    first = osp.join(root, 'cifar-10-batches-py', 'data_batch_1')
    assert _train_error(tmp_path, root, CHECKED_CIFAR) == (
        f'train.py: error: {first}: md5 mismatch: expected '
        f'{CIFAR10.train_list[0][1]}, got {_md5(first)}; download '
        f'{CIFAR10_URL} and extract it into {root}, or set download=True in '
        'the dataset config')
