"""Small datasets written in the real on-disk formats (tests, quickstart);
FFCV's evaluation crop; upstream datasets and image loading whose broken
data ends in a one-line :class:`DatasetError` (``CheckedImageNet``,
``CheckedCIFAR10``, ``CheckedCIFAR100``, ``CheckedLoadImageFromFile``)."""
from .checked_cfg import CHECKED_TYPES, use_checked_data
from .cifar import (CIFAR10_LABEL_NAMES, CheckedCIFAR10, CheckedCIFAR100,
                    write_cifar10)
from .digit_scenes import DIGIT_SCENE_CLASSES, write_digit_scenes
from .digits import DIGIT_CLASSES, load_digits_split, write_digits_folder
from .errors import DatasetError
from .imagenet import CheckedImageNet
from .synthetic import write_imagenet_folder
from .synthetic_seg import write_ade20k_folder
from .transforms import CheckedLoadImageFromFile, FFCVCenterCrop

__all__ = [
    'write_imagenet_folder', 'write_ade20k_folder', 'write_digits_folder',
    'load_digits_split', 'DIGIT_CLASSES', 'write_digit_scenes',
    'DIGIT_SCENE_CLASSES', 'FFCVCenterCrop', 'write_cifar10',
    'CIFAR10_LABEL_NAMES', 'DatasetError', 'CheckedImageNet',
    'CheckedCIFAR10', 'CheckedCIFAR100', 'CheckedLoadImageFromFile',
    'CHECKED_TYPES', 'use_checked_data'
]
