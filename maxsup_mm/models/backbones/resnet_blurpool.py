"""ResNet with BlurPool on its strided convolutions (the authors' ResNet-50).

The paper's ImageNet ResNet-50s (Table 4; released as
``zhouyuxuanyx/MaxSup-Regularized-ResNet50`` on Hugging Face: baseline, LS
and MaxSup) were trained by the authors' ``Conv/ffcv`` code, which takes
``torchvision.models.resnet50`` and applies anti-aliasing ("BlurPool",
Zhang, *Making Convolutional Networks Shift-Invariant Again*, ICML 2019, in
the form of the FFCV ImageNet example, ``use_blurpool = 1``):

    every ``nn.Conv2d`` with stride > 1 and at least 16 input channels is
    replaced by a module that first blurs its input with the depthwise 3x3
    filter ``[1, 2, 1]^T [1, 2, 1] / 16`` (stride 1, zero padding 1) and then
    applies the original convolution, kept as its ``conv`` attribute.

The wrapped convolution's weights therefore live under ``<name>.conv.weight``
and the fixed filter under the buffer ``<name>.blur_filter`` of shape
``(C, 1, 3, 3)``.  Without the blur the same weights compute a different
network, so converted checkpoints must run on this backbone.

:func:`apply_blurpool_` is the one implementation of the rule; the two
registered classes are thin wrappers that apply it to mmpretrain's and
mmseg's ``ResNet`` (``style='pytorch'``: the stride sits on the 3x3 ``conv2``
of a bottleneck, as in torchvision), so that their state-dict keys map 1:1
from torchvision's.  In a torchvision-layout ResNet-50 the rule wraps the
``conv2`` and ``downsample.0`` of the first block of ``layer2``-``layer4``;
the 7x7 stem convolution (3 input channels) is left alone.
"""
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.models.backbones import ResNet as _ClsResNet
from mmpretrain.registry import MODELS
from mmseg.models.backbones import ResNet as _SegResNet
from mmseg.registry import MODELS as SEG_MODELS

__all__ = ['blur_filter', 'BlurPoolConv2d', 'apply_blurpool_',
           'ResNetBlurPool', 'SegResNetBlurPool']

#: the rule's threshold: convolutions with fewer input channels are kept
BLURPOOL_MIN_CHANNELS = 16


def blur_filter(channels: int) -> torch.Tensor:
    """Depthwise blur ``[1, 2, 1]^T [1, 2, 1] / 16``, shape (C, 1, 3, 3)."""
    taps = torch.tensor([1., 2., 1.])
    kernel = torch.outer(taps, taps) / 16.
    return kernel.expand(channels, 1, 3, 3).contiguous()


class BlurPoolConv2d(nn.Module):
    """Blur (depthwise 3x3, stride 1, padding 1), then the wrapped conv.

    Args:
        conv (nn.Conv2d): the strided convolution to anti-alias; kept as
            ``self.conv`` (its parameters keep their names under ``conv.``).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.register_buffer('blur_filter', blur_filter(conv.in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.blur_filter.to(x.dtype), stride=1, padding=1,
                     groups=self.conv.in_channels)
        return self.conv(x)


def apply_blurpool_(module: nn.Module,
                    min_channels: int = BLURPOOL_MIN_CHANNELS,
                    prefix: str = '') -> List[str]:
    """Wrap every strided ``nn.Conv2d`` with ``>= min_channels`` inputs.

    In place, depth first, as the authors' ``Net._apply_blurpool``; a
    :class:`BlurPoolConv2d` already in place is left as it is (applying the
    rule twice changes nothing).

    Args:
        module (nn.Module): the network to modify.
        min_channels (int): the input-channel threshold. Defaults to 16.
        prefix (str): name of ``module`` (for the returned names).

    Returns:
        list[str]: the qualified names of the wrapped convolutions.
    """
    wrapped = []
    for name, child in module.named_children():
        full = f'{prefix}{name}'
        if isinstance(child, BlurPoolConv2d):
            continue
        if (isinstance(child, nn.Conv2d) and max(child.stride) > 1
                and child.in_channels >= min_channels):
            setattr(module, name, BlurPoolConv2d(child))
            wrapped.append(full)
        else:
            wrapped += apply_blurpool_(child, min_channels, full + '.')
    return wrapped


@MODELS.register_module()
class ResNetBlurPool(_ClsResNet):
    """mmpretrain ``ResNet`` with the BlurPool rule (see the module doc).

    Use it where the authors' FFCV ResNet-50 weights are loaded, e.g.
    ``backbone=dict(type='ResNetBlurPool', depth=50)``
    (``configs/released/resnet50-blurpool_official_in1k.py``).

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        blur_min_channels (int): input-channel threshold of the rule.
            Defaults to 16 (the authors').
        **kwargs: the other arguments of mmpretrain's ``ResNet``
            (``style='pytorch'``, the default, is what torchvision and the
            released weights use).

    Attributes:
        blurred (list[str]): the names of the wrapped convolutions.
    """

    def __init__(self, depth: int, blur_min_channels: int =
                 BLURPOOL_MIN_CHANNELS, **kwargs):
        super().__init__(depth, **kwargs)
        self.blurred = apply_blurpool_(self, blur_min_channels)


@SEG_MODELS.register_module(name='ResNetBlurPool')
class SegResNetBlurPool(_SegResNet):
    """mmseg ``ResNet`` with the BlurPool rule, registered in mmseg's MODELS
    as ``ResNetBlurPool`` (``configs/upernet/upernet_r50-blurpool_*``).

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        blur_min_channels (int): input-channel threshold. Defaults to 16.
        **kwargs: the other arguments of mmseg's ``ResNet``. The rule
            follows the strides the network is built with: UperNet's
            ``strides=(1, 2, 2, 2)`` give the pretraining layout; a dilated
            variant has fewer strided convolutions and does not fit the
            pretrained keys.
    """

    def __init__(self, depth: int, blur_min_channels: int =
                 BLURPOOL_MIN_CHANNELS, **kwargs):
        super().__init__(depth, **kwargs)
        self.blurred = apply_blurpool_(self, blur_min_channels)
