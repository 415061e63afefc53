"""Small datasets written in the real on-disk formats (tests, quickstart)."""
from .cifar import CIFAR10_LABEL_NAMES, write_cifar10
from .digit_scenes import DIGIT_SCENE_CLASSES, write_digit_scenes
from .digits import DIGIT_CLASSES, load_digits_split, write_digits_folder
from .synthetic import write_imagenet_folder
from .synthetic_seg import write_ade20k_folder
from .transforms import FFCVCenterCrop

__all__ = [
    'write_imagenet_folder', 'write_ade20k_folder', 'write_digits_folder',
    'load_digits_split', 'DIGIT_CLASSES', 'write_digit_scenes',
    'DIGIT_SCENE_CLASSES', 'FFCVCenterCrop', 'write_cifar10',
    'CIFAR10_LABEL_NAMES'
]
