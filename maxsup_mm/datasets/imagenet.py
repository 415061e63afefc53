"""mmpretrain's ``ImageNet`` that ends missing annotations in one line.

Without ``meta/<split>.txt`` mmpretrain's ``ImageNet`` reads the class
sub-folders of the split instead, and fails with an ``AssertionError``
(their number is not the 1000 classes: ImageNet's flat ``val/``, a subset),
a ``RuntimeError`` (no images) or a ``FileNotFoundError`` (no folder), with
a traceback.  :class:`CheckedImageNet` raises a one-line
:class:`~maxsup_mm.datasets.errors.DatasetError` instead, naming the data
root, the missing file and what is wrong with the folders, and names an
image it cannot decode (:class:`~.transforms.CheckedLoadImageFromFile`).
"""
from typing import Optional, Sequence, Tuple

from mmengine import fileio
from mmpretrain.datasets import ImageNet
from mmpretrain.datasets.custom import find_folders
from mmpretrain.registry import DATASETS

from .errors import DatasetError
from .transforms import check_image_loading

__all__ = ['CheckedImageNet', 'folder_problem']

#: what an annotation file holds, and where mmpretrain documents it
ANN_FORMAT = ("lines '<class folder>/<image> <label>', see mmpretrain's "
              'docs: Prepare ImageNet')


def folder_problem(prefix: str, num_classes: Optional[int],
                   extensions: Tuple[str, ...]) -> str:
    """Why the class sub-folders of ``prefix`` do not make a dataset.

    Args:
        prefix (str): the split's image folder.
        num_classes (int, optional): the number of classes (one sub-folder
            each), or None for a folder of unlabelled images.
        extensions (tuple[str]): the image extensions read.

    Returns:
        str: ``'no folder PREFIX'``, ``'PREFIX has K class sub-folders, not
        N'`` or ``'no images (EXTS) in PREFIX'``.
    """
    if not fileio.isdir(prefix):
        return f'no folder {prefix}'
    if num_classes is not None:
        found = len(find_folders(prefix)[0])
        if found != num_classes:
            return (f'{prefix} has {found} class sub-folders, not '
                    f'{num_classes}')
    return f'no images ({", ".join(sorted(extensions))}) in {prefix}'


@DATASETS.register_module()
class CheckedImageNet(ImageNet):
    """mmpretrain's ``ImageNet`` whose broken data ends in one line.

    Same arguments and samples as ``ImageNet``; its pipeline's
    ``LoadImageFromFile`` steps become ``CheckedLoadImageFromFile`` (same
    arguments).  Raises :class:`DatasetError` for a missing ``ann_file``,
    for a split without ``meta/<split>.txt`` whose sub-folders do not hold
    one folder per class, and (in the pipeline) for an image that does not
    decode.
    """

    def __init__(self,
                 data_root: str = '',
                 split: str = '',
                 data_prefix='',
                 ann_file: str = '',
                 metainfo: Optional[dict] = None,
                 pipeline: Sequence = (),
                 **kwargs):
        self._split = split  # the base class reads the data in __init__
        super().__init__(data_root, split, data_prefix, ann_file, metainfo,
                         pipeline=check_image_loading(pipeline), **kwargs)

    def load_data_list(self):
        if self.ann_file and not fileio.exists(self.ann_file):
            raise DatasetError(
                f'{self.ann_file}: annotation file not found; give the '
                f"annotation file of the data ({ANN_FORMAT}), or ann_file='' "
                f'to read one sub-folder per class in {self.img_prefix}')
        return super().load_data_list()

    def _find_samples(self):
        """Upstream's reading of the sub-folders (no ``ann_file``)."""
        try:
            return super()._find_samples()
        except (AssertionError, RuntimeError, FileNotFoundError,
                NotADirectoryError):
            prefix = self.img_prefix
            classes = self.CLASSES if self.with_label else None
            problem = folder_problem(
                prefix, None if classes is None else len(classes),
                self.extensions)
            missing = (f'no meta/{self._split}.txt' if self._split else
                       'no ann_file')
            raise DatasetError(
                f'{self.data_root or prefix}: {missing}, and {problem}; '
                'ImageNet needs the annotation files meta/train.txt and '
                f'meta/val.txt ({ANN_FORMAT}) or one sub-folder per class in '
                f'{prefix}') from None
