"""The one exception of broken data: :class:`DatasetError`.

Raised by the checked datasets and transforms of this package
(``CheckedImageNet``, ``CheckedCIFAR10`` / ``CheckedCIFAR100``,
``CheckedLoadImageFromFile``) with a one-line message: the file or folder,
what is wrong with it, and what to do.  It is a ``ValueError``, so the tools
end it with ``<prog>: error: <message>`` (also when a DataLoader worker
raised it: torch re-raises it in the main process with the same type).
"""

__all__ = ['DatasetError']


class DatasetError(ValueError):
    """Broken or missing data; the message is one line naming the file or
    folder and what to do."""
