"""maxsup_mm: Max Suppression regularization (MaxSup) for OpenMMLab.

``import maxsup_mm`` registers the losses, heads and hooks in mmpretrain's
registries (and mmseg's, where mmsegmentation is installed).  From an
upstream config::

    custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
"""
from . import engine, models  # noqa: F401
from .models.losses import MaxSupLoss, maxsup_cross_entropy  # noqa: F401

__version__ = '0.1.0'
