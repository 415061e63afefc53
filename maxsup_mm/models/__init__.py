"""Models: losses (and heads) registered in mmpretrain's MODELS."""
from .backbones import *  # noqa: F401,F403
from .heads import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
