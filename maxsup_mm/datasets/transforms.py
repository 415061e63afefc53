"""FFCV's ImageNet evaluation transform as an mmpretrain transform.

The authors' ResNet-50s (``Conv/ffcv``) were evaluated on an FFCV copy of
ImageNet-val: ``write_imagenet.py`` stores each image after shrinking it so
that its longer side is at most ``max_resolution`` (500 px, OpenCV
``INTER_AREA``), and the validation loader decodes it with
``CenterCropRGBImageDecoder((256, 256), ratio=224/256)``: a centre square of
side ``int(ratio * min(h, w))`` at offsets ``((h - c) // 2, (w - c) // 2)``,
resized to 256 x 256 with ``INTER_AREA``.  mmpretrain has no transform that
crops a ratio of the image with these offsets and this interpolation
(``EfficientNetCenterCrop`` rounds the offsets and takes the ratio from an
integer padding), hence :class:`FFCVCenterCrop`.

Not reproduced: the writer's ``proportion`` mode stores about half of the
images as JPEG (quality 90) instead of raw pixels; which ones is random.
"""
from typing import Optional, Tuple

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS

__all__ = ['ffcv_max_resolution_size', 'ffcv_center_crop_box',
           'FFCVCenterCrop']


def ffcv_max_resolution_size(height: int, width: int,
                             max_resolution: int) -> Optional[Tuple[int,
                                                                    int]]:
    """``(width, height)`` FFCV's writer shrinks an image to, or ``None``.

    ``ffcv.fields.rgb_image.resizer``: scale by ``max_resolution / max(w, h)``
    when that is below 1, truncating the new sizes to integers.
    """
    size = np.array([width, height])
    ratio = max_resolution / size.max()
    if ratio >= 1:
        return None
    new_w, new_h = (ratio * size).astype(int)
    return int(new_w), int(new_h)


def ffcv_center_crop_box(height: int, width: int,
                         ratio: float) -> Tuple[int, int, int]:
    """``(top, left, side)`` of FFCV's ``get_center_crop``."""
    side = int(ratio * min(height, width))
    return (height - side) // 2, (width - side) // 2, side


@TRANSFORMS.register_module()
class FFCVCenterCrop(BaseTransform):
    """Centre crop of a ratio of the shorter side, resized to a square.

    The evaluation transform of FFCV's ``CenterCropRGBImageDecoder`` (and,
    with ``max_resolution``, the size limit FFCV's dataset writer applied
    before).  Put it after ``LoadImageFromFile`` in place of
    ``ResizeEdge`` + ``CenterCrop``.

    **Required Keys:** ``img``. **Modified Keys:** ``img``, ``img_shape``.

    Args:
        scale (int): output side (FFCV ``val_resolution``). Defaults to 256.
        crop_ratio (float): side of the crop over the shorter image side.
            Defaults to 224 / 256 (FFCV ``DEFAULT_CROP_RATIO``).
        max_resolution (int, optional): first shrink the image so that its
            longer side is at most this (the ``max_resolution`` the FFCV
            dataset was written with; the authors' files say 500).
            Defaults to None (no shrinking).
        interpolation (str): ``mmcv.imresize`` interpolation for both
            resizes. Defaults to ``'area'`` (OpenCV ``INTER_AREA``, FFCV's).
    """

    def __init__(self,
                 scale: int = 256,
                 crop_ratio: float = 224 / 256,
                 max_resolution: Optional[int] = None,
                 interpolation: str = 'area'):
        if not 0 < crop_ratio <= 1:
            raise ValueError(f'FFCVCenterCrop: crop_ratio must lie in (0, 1], '
                             f'got {crop_ratio}')
        if int(scale) != scale or scale <= 0:
            raise ValueError(f'FFCVCenterCrop: scale must be a positive '
                             f'integer, got {scale!r}')
        self.scale = int(scale)
        self.crop_ratio = crop_ratio
        self.max_resolution = max_resolution
        self.interpolation = interpolation

    def transform(self, results: dict) -> dict:
        img = results['img']
        if self.max_resolution is not None:
            size = ffcv_max_resolution_size(img.shape[0], img.shape[1],
                                            self.max_resolution)
            if size is not None:
                img = mmcv.imresize(img, size,
                                    interpolation=self.interpolation,
                                    backend='cv2')
        top, left, side = ffcv_center_crop_box(img.shape[0], img.shape[1],
                                               self.crop_ratio)
        crop = np.ascontiguousarray(img[top:top + side, left:left + side])
        img = mmcv.imresize(crop, (self.scale, self.scale),
                            interpolation=self.interpolation, backend='cv2')
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(scale={self.scale}, '
                f'crop_ratio={self.crop_ratio}, max_resolution='
                f'{self.max_resolution}, interpolation={self.interpolation})')
