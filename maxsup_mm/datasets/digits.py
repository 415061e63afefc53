"""The real 8x8 handwritten digits bundled with scikit-learn, on disk.

``sklearn.datasets.load_digits`` ships 1,797 grey-scale 8x8 images of the
digits 0-9 (UCI ML hand-written digits).  :func:`write_digits_folder` writes
them once, with a fixed stratified train/val/test split, in the folder layout
that mmpretrain's ``CustomDataset`` reads (``<split>/<class>/<image>.png``),
so the quickstart trains through the ordinary mmpretrain pipeline.
"""
import os
import os.path as osp
from typing import Dict, Sequence

import numpy as np
from PIL import Image

from maxsup_mm.fileio import atomic_write_json

DIGIT_CLASSES = tuple(str(i) for i in range(10))


def load_digits_split(fractions: Sequence[float] = (0.6, 0.15, 0.25),
                      seed: int = 0) -> Dict[str, tuple]:
    """Split the digits per class with a fixed seed.

    Args:
        fractions (Sequence[float]): train, val, test fractions.
        seed (int): seed of the split.

    Returns:
        dict: split name -> ``(images uint8 (n, 8, 8), labels (n,))``.
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * (255. / 16.)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    parts = {'train': [], 'val': [], 'test': []}
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts['train'].append(idx[:n_train])
        parts['val'].append(idx[n_train:n_train + n_val])
        parts['test'].append(idx[n_train + n_val:])
    return {k: (images[np.concatenate(v)], labels[np.concatenate(v)])
            for k, v in parts.items()}


def write_digits_folder(root: str, seed: int = 0) -> str:
    """Write the digits as PNGs in ``CustomDataset`` layout (idempotent).

    Layout: ``root/{train,val,test}/<digit>/<index>.png`` and
    ``root/split.json`` with the counts.  Does nothing if ``split.json``
    already exists.

    Args:
        root (str): output folder.
        seed (int): seed of the stratified split.

    Returns:
        str: ``root``.
    """
    marker = osp.join(root, 'split.json')
    if osp.exists(marker):
        return root
    counts = {}
    for split, (images, labels) in load_digits_split(seed=seed).items():
        for cls in DIGIT_CLASSES:
            os.makedirs(osp.join(root, split, cls), exist_ok=True)
        for i, (img, label) in enumerate(zip(images, labels)):
            Image.fromarray(img, mode='L').save(
                osp.join(root, split, str(label), f'{i:04d}.png'))
        counts[split] = int(len(labels))
    atomic_write_json(marker, dict(counts=counts, seed=seed,
                                   source='sklearn.datasets.load_digits'))
    return root
