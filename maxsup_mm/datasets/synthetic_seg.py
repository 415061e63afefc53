"""Generated segmentation data in ADE20K's on-disk layout.

Tests and smoke runs use this instead of ADEChallengeData2016: the files are
real JPEG images and single-channel PNG annotations under the folders that
mmseg's ``ADE20KDataset`` reads (``configs/_base_/datasets/ade20k.py``)::

    root/images/training/ADE_train_00000000.jpg
    root/annotations/training/ADE_train_00000000.png
    root/images/validation/ADE_val_00000000.jpg
    root/annotations/validation/ADE_val_00000000.png

Annotation values follow ADE20K: ``0`` is "other" (not one of the 150
classes) and ``1..150`` are the classes.  ``ADE20KDataset`` loads them with
``reduce_zero_label=True``, so in training ``0`` becomes the ignore index
``255`` and class ``c`` becomes label ``c - 1`` (``0..149``).
"""
import os
import os.path as osp
from typing import Sequence, Tuple, Union

import numpy as np
from PIL import Image

#: ADE20K's number of classes (annotation values 1..150; 0 is "other")
ADE20K_NUM_CLASSES = 150

_SPLITS = (('training', 'train'), ('validation', 'val'))


def class_colour(cls: int) -> np.ndarray:
    """A fixed, well-separated RGB colour for annotation value ``cls``."""
    return np.array([(53 * cls + 17) % 256, (97 * cls + 101) % 256,
                     (193 * cls + 29) % 256], dtype=np.float32)


def _scene(rng: np.random.Generator, size: Tuple[int, int],
           classes: Sequence[int], other_frac: float):
    """One image and its ADE20K annotation: rectangles of a few classes."""
    h, w = size
    ann = np.full((h, w), classes[0], dtype=np.uint8)
    for cls in rng.choice(classes, size=3):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        y1 = y0 + rng.integers(h // 4, h // 2 + 1)
        x1 = x0 + rng.integers(w // 4, w // 2 + 1)
        ann[y0:y1, x0:x1] = cls
    if other_frac > 0:  # a band of "other" (0) pixels, ignored in training
        band = max(1, int(round(h * other_frac)))
        y0 = int(rng.integers(0, h - band + 1))
        ann[y0:y0 + band, :] = 0
    img = np.stack([class_colour(int(c)) for c in range(256)])[ann]
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), ann


def write_ade20k_folder(root: str,
                        num_images: Sequence[int] = (4, 2),
                        size: Union[int, Tuple[int, int]] = 64,
                        classes: Sequence[int] = (1, 2, 3, 5, 8, 13, 150),
                        other_frac: float = 0.1,
                        seed: int = 0) -> str:
    """Write a small dataset in the ADE20K (ADEChallengeData2016) layout.

    Each image shows a background class and three rectangles of classes
    drawn from ``classes``, every class painted in its own colour plus noise
    (so a model can learn it), and a horizontal band of annotation value 0
    ("other"), which ``ADE20KDataset`` maps to the ignore index 255.

    Args:
        root (str): output folder (the ``data_root`` of the configs).
        num_images (Sequence[int]): number of ``(training, validation)``
            images.
        size (int | tuple[int, int]): image ``(height, width)``.
        classes (Sequence[int]): ADE20K annotation values to use, each in
            ``1..150``.
        other_frac (float): height of the band of "other" pixels, as a
            fraction of the image height; 0 for none.
        seed (int): random seed.

    Returns:
        str: ``root``.

    Raises:
        ValueError: a class outside ``1..150``, a bad size or fraction.
    """
    if len(num_images) != 2 or min(num_images) < 0:
        raise ValueError('num_images must be (num_training, num_validation) '
                         f'with non-negative counts, got {num_images!r}')
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or min(size) < 4:
        raise ValueError(f'size must be >= 4 pixels per side, got {size!r}')
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 1 <= c <= ADE20K_NUM_CLASSES]
    if not classes or bad:
        raise ValueError('classes must be non-empty ADE20K annotation values '
                         f'in 1..{ADE20K_NUM_CLASSES} (0 is "other"), got '
                         f'{bad or classes}')
    if not 0 <= other_frac < 1:
        raise ValueError(f'other_frac must lie in [0, 1), got {other_frac}')
    rng = np.random.default_rng(seed)
    for (split, tag), count in zip(_SPLITS, num_images):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(count):
            img, ann = _scene(rng, size, classes, other_frac)
            name = f'ADE_{tag}_{i:08d}'
            Image.fromarray(img).save(osp.join(img_dir, name + '.jpg'),
                                      quality=95)
            Image.fromarray(ann).save(osp.join(ann_dir, name + '.png'))
    return root
