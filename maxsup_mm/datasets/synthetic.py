"""Generated classification data in mmpretrain's on-disk formats.

Tests and smoke runs use these instead of ImageNet: the files are real JPEG
or PNG images in the ImageNet folder layout that ``ImageNet`` /
``CustomDataset`` read, so the upstream loading pipeline runs unchanged.
"""
import os
import os.path as osp
from typing import Sequence

import numpy as np
from PIL import Image


def _class_image(rng: np.random.Generator, cls: int, num_classes: int,
                 size: int) -> np.ndarray:
    """A learnable image: a class-specific colour and stripe frequency."""
    hue = np.array([(37 * cls) % 256, (91 * cls + 60) % 256,
                    (151 * cls + 120) % 256], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    stripes = np.sin(2 * np.pi * (cls % 4 + 1) * (xx if cls % 2 else yy))
    img = hue[None, None] * (0.6 + 0.4 * stripes[..., None])
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_imagenet_folder(root: str,
                          num_classes: int = 4,
                          per_class: Sequence[int] = (6, 2),
                          splits: Sequence[str] = ('train', 'val'),
                          size: int = 32,
                          seed: int = 0,
                          ext: str = 'JPEG') -> str:
    """Write ``root/<split>/<class>/<image>`` folders plus ``meta/*.txt``.

    The layout is ImageNet's: one sub-folder per class (``n0000000``, ...)
    under each split, and an annotation file ``meta/<split>.txt`` with lines
    ``<class>/<image> <label>`` (what ``ImageNet(ann_file=...)`` reads; a
    ``CustomDataset`` without ``ann_file`` reads the folders).

    Args:
        root (str): output folder.
        num_classes (int): number of classes.
        per_class (Sequence[int]): images per class for each split.
        splits (Sequence[str]): split names.
        size (int): image side in pixels.
        seed (int): random seed.
        ext (str): image file extension.

    Returns:
        str: ``root``.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    classes = [f'n{c:07d}' for c in range(num_classes)]
    for split, count in zip(splits, per_class):
        lines = []
        for cls, name in enumerate(classes):
            folder = osp.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                fname = f'{name}_{i:04d}.{ext}'
                Image.fromarray(_class_image(rng, cls, num_classes,
                                             size)).save(osp.join(folder, fname))
                lines.append(f'{name}/{fname} {cls}')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return root
