"""A checkpoint whose unpickling would write a file: every tool must refuse it."""
import os.path as osp

import torch


class _WritesFile:
    """Unpickling calls ``exec``, which creates ``self.marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f'open({self.marker!r}, "w").write("pwned")', ))


def write_malicious_checkpoint(path: str, marker: str,
                               state_dict: dict = None) -> str:
    """Save a checkpoint that looks normal but carries a payload.

    Args:
        path (str): where to write it.
        marker (str): the file the payload would create; it must not exist
            after a tool has been given the checkpoint.
        state_dict (dict, optional): weights to put beside the payload, so
            the file would otherwise be a valid checkpoint.
    """
    assert not osp.exists(marker)
    torch.save({'state_dict': state_dict or {}, 'meta': _WritesFile(marker)},
               path)
    return path
