"""maxsup_mm: Max Suppression regularization (MaxSup) for OpenMMLab.

``import maxsup_mm`` registers the losses, heads, hooks and metrics in
mmpretrain's registries (and mmseg's, where mmsegmentation is installed), and makes
mmengine load checkpoints (local files and every URL scheme) through :func:`maxsup_mm.checkpoint.load_checkpoint`
(``weights_only=True`` with an allowlist of benign types).  From an upstream
config::

    custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)

The configs of this project are installed with the package (wheels) or read
from the source checkout: :func:`config_path` finds them
(``maxsup_mm.config_path('released/deit-small_official_in1k.py')``).
"""
from .checkpoint import install_mmengine_loader

# safe checkpoint loading for our tools and for upstream ones that import us
install_mmengine_loader()

from . import datasets, engine, evaluation, models  # noqa: F401,E402
from .models.losses import MaxSupLoss, maxsup_cross_entropy  # noqa: F401,E402
from .utils import config_path  # noqa: F401,E402

__version__ = '0.1.0'
