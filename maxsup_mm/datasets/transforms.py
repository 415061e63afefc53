"""Transforms: FFCV's ImageNet evaluation crop, and image loading that
names an image it cannot decode.

:class:`CheckedLoadImageFromFile` is mmcv's ``LoadImageFromFile`` whose
undecodable images (corrupt, truncated, empty, not an image: OpenCV returns
``None``, Pillow raises) end in a one-line
:class:`~maxsup_mm.datasets.errors.DatasetError` naming the file, instead of
an ``AssertionError``, ``cv2.error`` or ``OSError`` with a traceback;
:func:`check_image_loading` puts it in place of ``LoadImageFromFile`` in a
pipeline (what ``CheckedImageNet`` does).

:class:`FFCVCenterCrop`, FFCV's ImageNet evaluation transform: the authors' ResNet-50s (``Conv/ffcv``) were evaluated on an FFCV copy of
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
from typing import List, Optional, Sequence, Tuple

import mmcv
import numpy as np
from mmcv.image.io import imread_flags, supported_backends
from mmcv.transforms import BaseTransform, LoadImageFromFile
from mmengine import fileio
from mmpretrain.registry import TRANSFORMS

from .errors import DatasetError

__all__ = ['ffcv_max_resolution_size', 'ffcv_center_crop_box',
           'FFCVCenterCrop', 'decode_image', 'CheckedLoadImageFromFile',
           'check_image_loading']


def decode_image(content: bytes, path: str, flag: str = 'color',
                 backend: Optional[str] = None) -> np.ndarray:
    """``mmcv.imfrombytes``, or a one-line error naming the file.

    Args:
        content (bytes): the file's bytes.
        path (str): the file, for the message.
        flag (str): ``mmcv.imfrombytes``'s ``flag``.
        backend (str, optional): ``mmcv.imfrombytes``'s ``backend``.

    Returns:
        np.ndarray: the image.

    Raises:
        DatasetError: the bytes do not decode (OpenCV returns ``None``,
            Pillow and the other backends raise).
    """
    try:
        img = mmcv.imfrombytes(content, flag=flag, backend=backend)
    except Exception:  # the decoders' errors on bad bytes vary by backend
        img = None
    if img is None:
        raise DatasetError(
            f'{path}: cannot decode the image (corrupt or not an image '
            'file); replace the file, or delete it and its line in the '
            'annotation file')
    return img


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` that names an image it cannot decode.

    Same arguments and results; an image that does not decode raises a
    one-line :class:`DatasetError` (with ``ignore_empty=True`` the
    transform returns ``None``, as upstream), and an unknown
    ``imdecode_backend`` or ``color_type`` is refused when the transform is
    built (mmcv fails on the first image).  Files that cannot be read raise
    what ``mmengine.fileio.get`` raises (``FileNotFoundError`` ...).

    **Required Keys:** ``img_path``. **Added Keys:** ``img``,
    ``img_shape``, ``ori_shape``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        backend = self.imdecode_backend
        if backend is not None and backend not in supported_backends:
            raise ValueError(
                f'{type(self).__name__}: unknown imdecode_backend '
                f'{backend!r}; give one of {", ".join(supported_backends)}')
        if isinstance(self.color_type, str) and \
                self.color_type not in imread_flags:
            raise ValueError(
                f'{type(self).__name__}: unknown color_type '
                f'{self.color_type!r}; give one of {", ".join(imread_flags)}')

    def _get(self, filename: str) -> bytes:
        if self.file_client_args is not None:
            return fileio.FileClient.infer_client(
                self.file_client_args, filename).get(filename)
        return fileio.get(filename, backend_args=self.backend_args)

    def transform(self, results: dict) -> Optional[dict]:
        filename = results['img_path']
        try:
            img = decode_image(self._get(filename), filename,
                               self.color_type, self.imdecode_backend)
        except Exception:
            if self.ignore_empty:
                return None
            raise
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results


def check_image_loading(pipeline: Sequence) -> List:
    """``pipeline`` with each ``LoadImageFromFile`` step (a config dict)
    replaced by :class:`CheckedLoadImageFromFile` with the same arguments.

    Args:
        pipeline (Sequence): transform configs (or built transforms, kept).

    Returns:
        list: the new pipeline.
    """
    return [dict(step, type=CheckedLoadImageFromFile)
            if isinstance(step, dict)
            and step.get('type') in ('LoadImageFromFile', LoadImageFromFile)
            else step for step in pipeline]


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
