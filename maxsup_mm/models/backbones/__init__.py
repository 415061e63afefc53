"""Backbones (registered in mmpretrain MODELS; ``ResNetBlurPool`` also in
mmseg's)."""
from .mobilenet_v2_cifar import MobileNetV2_CIFAR
from .resnet_blurpool import (BlurPoolConv2d, ResNetBlurPool,
                              SegResNetBlurPool, apply_blurpool_, blur_filter)

__all__ = ['MobileNetV2_CIFAR', 'ResNetBlurPool', 'SegResNetBlurPool',
           'BlurPoolConv2d', 'apply_blurpool_', 'blur_filter']
