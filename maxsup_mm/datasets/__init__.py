"""Small datasets written in the real on-disk formats (tests, quickstart)."""
from .synthetic import write_imagenet_folder

__all__ = ['write_imagenet_folder']
