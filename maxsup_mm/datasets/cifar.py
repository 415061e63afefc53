"""A small CIFAR-10 in the real on-disk format (tests, smoke runs).

``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5``,
``test_batch`` and ``batches.meta``: pickles (protocol 2, as the Python 2
originals) of ``{'batch_label', 'labels', 'data', 'filenames'}`` where
``data`` is ``uint8 (N, 3072)``, each row the red, green and blue 32x32
planes in row-major order -- what mmpretrain's ``CIFAR10`` and torchvision
read. The files differ from the real ones, so mmpretrain's md5 checks must be
switched off to read them (see ``tests/helpers/cifar_md5_off.py``).

:class:`CheckedCIFAR10` and :class:`CheckedCIFAR100` are mmpretrain's
``CIFAR10`` / ``CIFAR100`` whose missing files or md5 mismatches (found by
upstream's check, which then downloads with ``download=True`` or raises)
end in a one-line :class:`~maxsup_mm.datasets.errors.DatasetError` naming
the file, the md5s, and where to download the data.
"""
import os
import os.path as osp
import pickle
from typing import Optional, Sequence

import numpy as np
from mmengine.fileio import exists, join_path
from mmpretrain.datasets import CIFAR10, CIFAR100
from mmpretrain.datasets.utils import calculate_md5
from mmpretrain.registry import DATASETS

from .errors import DatasetError
from .synthetic import _class_image

__all__ = ['write_cifar10', 'CIFAR10_LABEL_NAMES', 'cifar_file_problem',
           'CheckedCIFAR10', 'CheckedCIFAR100']

CIFAR10_LABEL_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer',
                       'dog', 'frog', 'horse', 'ship', 'truck')


def _dump(obj, path):
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: str, per_class: Sequence[int] = (5, 3),
                  seed: int = 0) -> str:
    """Write ``root/cifar-10-batches-py/`` with learnable 32x32 images.

    Args:
        root (str): the dataset root (mmpretrain's ``data_root``).
        per_class (Sequence[int]): images per class in the train split
            (spread over the five train batches) and in the test split.
        seed (int): random seed.

    Returns:
        str: ``root``.
    """
    rng = np.random.default_rng(seed)
    folder = osp.join(root, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)

    def split(count):
        labels = [c for _ in range(count) for c in range(10)]
        imgs = [_class_image(rng, c, 10, 32) for c in labels]
        data = np.stack([im.transpose(2, 0, 1).reshape(-1) for im in imgs])
        return data.astype(np.uint8), labels

    data, labels = split(per_class[0])
    for b in range(5):
        rows = list(range(b, len(labels), 5))
        _dump({'batch_label': f'training batch {b + 1} of 5',
               'labels': [labels[i] for i in rows], 'data': data[rows],
               'filenames': [f'train_{i:05d}.png' for i in rows]},
              osp.join(folder, f'data_batch_{b + 1}'))
    data, labels = split(per_class[1])
    _dump({'batch_label': 'testing batch 1 of 1', 'labels': labels,
           'data': data,
           'filenames': [f'test_{i:05d}.png' for i in range(len(labels))]},
          osp.join(folder, 'test_batch'))
    _dump({'label_names': list(CIFAR10_LABEL_NAMES),
           'num_cases_per_batch': int(np.ceil(10 * per_class[0] / 5)),
           'num_vis': 3072}, osp.join(folder, 'batches.meta'))
    return root


def cifar_file_problem(folder: str, files: Sequence) -> Optional[str]:
    """The first of ``files`` that is missing or has another md5.

    Args:
        folder (str): the folder of the files (``cifar-10-batches-py``).
        files (Sequence): ``[name, md5]`` pairs (md5 None: not checked), as
            mmpretrain's ``train_list`` / ``test_list``.

    Returns:
        str | None: ``'PATH: not found'``, ``'PATH: md5 mismatch: expected
        X, got Y'``, or None when every file is there and right.
    """
    for name, md5 in files:
        path = join_path(folder, name)
        if not exists(path):
            return f'{path}: not found'
        if md5 is not None:
            got = calculate_md5(path)
            if got != md5:
                return f'{path}: md5 mismatch: expected {md5}, got {got}'
    return None


class _CheckedFiles:
    """``load_data_list`` of mmpretrain's CIFAR datasets, whose failures on
    missing or corrupt files become one-line :class:`DatasetError`."""

    def load_data_list(self):
        try:
            return super().load_data_list()
        except (RuntimeError, AssertionError, OSError) as err:
            root = self.data_prefix['root']
            problem = cifar_file_problem(join_path(root, self.base_folder),
                                         self.train_list + self.test_list)
            if problem is None:  # not the files: upstream's error
                raise
            root = root.rstrip('/') or root
            if not self.download:
                fix = (f'download {self.url} and extract it into {root}, or '
                       'set download=True in the dataset config')
            else:  # upstream tried to download
                fix = (f'downloading {self.url} failed '
                       f'({" ".join(str(err).split())}); download it and '
                       f'extract it into {root}')
            raise DatasetError(f'{problem}; {fix}') from None


@DATASETS.register_module()
class CheckedCIFAR10(_CheckedFiles, CIFAR10):
    """mmpretrain's ``CIFAR10`` whose missing or corrupt files end in one
    line (:class:`DatasetError`); same arguments and samples."""


@DATASETS.register_module()
class CheckedCIFAR100(_CheckedFiles, CIFAR100):
    """mmpretrain's ``CIFAR100`` whose missing or corrupt files end in one
    line (:class:`DatasetError`); same arguments and samples."""
