""""Digit scenes": a small real-data segmentation task in ADE20K's layout.

Each scene is a dark canvas divided into a grid of cells (2x2 for the
default 32x32 canvas and 2x up-scaled digits); a few real 8x8 handwritten
digits (scikit-learn's ``load_digits``) fill random cells.  Every pixel of a
digit's cell is labelled with the digit's class, every other pixel is
background.  Files follow ADE20K (``images/{training,validation}/*.jpg``,
``annotations/{training,validation}/*.png``) and its label convention, so
mmseg's ordinary loading (``reduce_zero_label=True``) applies:

=================  =======================  =========================
annotation value   meaning                  training label
=================  =======================  =========================
0                  (unused: ignored)         255
1                  background                0
2 .. 11            digit 0 .. 9              1 .. 10
=================  =======================  =========================
"""
import os
import os.path as osp
from typing import Tuple

import numpy as np
from PIL import Image

from maxsup_mm.fileio import atomic_write_json

DIGIT_SCENE_CLASSES = ('background', ) + tuple(f'digit {i}'
                                               for i in range(10))


def _paste(rng, canvas, ann, digit, label, scale, placed):
    """Paste one up-scaled digit into a free cell of the canvas grid."""
    size = digit.shape[0] * scale
    h, w = canvas.shape
    free = [(y, x) for y in range(0, h - size + 1, size)
            for x in range(0, w - size + 1, size) if (y, x) not in placed]
    if not free:
        return
    y, x = free[int(rng.integers(len(free)))]
    canvas[y:y + size, x:x + size] = np.kron(
        digit, np.ones((scale, scale), dtype=np.uint8))
    ann[y:y + size, x:x + size] = label + 2  # the digit's cell
    placed.append((y, x))


def write_digit_scenes(root: str,
                       images: np.ndarray,
                       labels: np.ndarray,
                       num_scenes: Tuple[int, int] = (240, 60),
                       canvas: int = 32,
                       scale: int = 2,
                       digits_per_scene: Tuple[int, int] = (1, 3),
                       seed: int = 0) -> str:
    """Write digit scenes in ADE20K layout (idempotent).

    The digits are shuffled and split in two disjoint parts (2/3 for
    training scenes, the rest for validation scenes), so validation digits
    are never seen in fine-tuning.

    Args:
        root (str): output folder; ``root/meta.json`` marks it complete.
        images (np.ndarray): ``(n, 8, 8)`` uint8 digit images.
        labels (np.ndarray): ``(n,)`` digit classes.
        num_scenes (tuple[int, int]): training and validation scenes.
        canvas (int): canvas side in pixels.
        scale (int): nearest-neighbour up-scaling of each digit.
        digits_per_scene (tuple[int, int]): min and max digits per scene
            (at most the number of grid cells).
        seed (int): random seed.

    Returns:
        str: ``root``.
    """
    marker = osp.join(root, 'meta.json')
    if osp.exists(marker):
        return root
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError('images must be (n, h, w) with one label each')
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    cut = (2 * len(images)) // 3
    pools = {'training': order[:cut], 'validation': order[cut:]}
    prefix = {'training': 'ADE_train', 'validation': 'ADE_val'}
    for (split, pool), count in zip(pools.items(), num_scenes):
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
        for i in range(count):
            img = np.zeros((canvas, canvas), dtype=np.uint8)
            ann = np.ones((canvas, canvas), dtype=np.uint8)
            placed = []
            k = int(rng.integers(digits_per_scene[0], digits_per_scene[1] + 1))
            for j in rng.choice(pool, size=k, replace=False):
                _paste(rng, img, ann, images[j], int(labels[j]), scale, placed)
            name = f'{prefix[split]}_{i:08d}'
            Image.fromarray(np.stack([img] * 3, -1)).save(
                osp.join(root, 'images', split, name + '.jpg'), quality=95)
            Image.fromarray(ann).save(
                osp.join(root, 'annotations', split, name + '.png'))
    atomic_write_json(marker, dict(classes=DIGIT_SCENE_CLASSES,
                                   num_scenes=num_scenes, canvas=canvas,
                                   seed=seed))
    return root
