"""MobileNetV2 with a CIFAR stem (32x32 inputs)."""
from mmpretrain.models.backbones import MobileNetV2
from mmpretrain.registry import MODELS


@MODELS.register_module()
class MobileNetV2_CIFAR(MobileNetV2):
    """MobileNetV2 for 32x32 images, as CIFAR papers use it.

    mmpretrain's :class:`~mmpretrain.models.backbones.MobileNetV2` is the
    ImageNet network (total stride 32: a 32x32 image ends as a 1x1 map).  The
    CIFAR variant (the widely used ``kuangliu/pytorch-cifar`` definition,
    which the OLS and Zipf-LS releases also use) makes the first convolution
    and the first block of the second stage stride 1, so the total stride is
    8 and the last map is 4x4, the same as ``ResNet_CIFAR``.  Everything
    else (widths, expansion ratios, the 1280-channel last conv) is unchanged.

    Args:
        **kwargs: the arguments of mmpretrain's ``MobileNetV2``.
    """

    # expand_ratio, channel, num_blocks, stride (stage 2: 2 -> 1)
    arch_settings = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2],
                     [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                     [6, 320, 1, 1]]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv1.conv.stride = (1, 1)  # the stem: stride 2 -> 1
