"""Classification heads (registered in mmpretrain MODELS).

Zipf's label smoothing needs dense (per-location) predictions, which only a
head can compute; Online Label Smoothing needs no head (see
:class:`~maxsup_mm.models.losses.OnlineLabelSmoothLoss`).
"""
from .zipf_heads import (ZipfLinearClsHead, ZipfLossMixin,
                         ZipfVisionTransformerClsHead)

__all__ = ['ZipfLossMixin', 'ZipfLinearClsHead',
           'ZipfVisionTransformerClsHead']
