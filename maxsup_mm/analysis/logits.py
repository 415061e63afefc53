"""Logit statistics: z_gt, z_max, the logit range and the error gap.

Section 4.2 / Figure 2 of the MaxSup paper compares the logit distributions
of the regularizers; Section 3.1 explains LS's *error enhancement*: when a
sample is misclassified, LS pushes ``z_gt`` down and widens the gap
``z_max - z_gt`` to the wrong top-1 logit.  These functions measure both.
"""
from typing import Dict

import numpy as np

__all__ = ['logit_components', 'logit_statistics']


def logit_components(logits, labels) -> Dict[str, np.ndarray]:
    """Per-sample logit quantities.

    Args:
        logits (array-like): ``(N, K)`` logits.
        labels (array-like): ``(N,)`` integer labels.

    Returns:
        dict of ``(N,)`` arrays: ``z_gt`` (ground-truth logit), ``z_max``
        (top-1 logit), ``z_mean`` (mean logit), ``range``
        (``z_max - z_min``), ``gap`` (``z_max - z_gt``, 0 when correct)
        and ``correct`` (bool: top-1 prediction equals the label).
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if z.ndim != 2:
        raise ValueError(f'logits must be a 2-D (N, K) array, got shape '
                         f'{z.shape}')
    if labels.shape != (z.shape[0], ):
        raise ValueError(f'labels must have shape ({z.shape[0]},), got '
                         f'{labels.shape}')
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f'labels must be integers, got dtype {labels.dtype}')
    if z.shape[0] and (labels.min() < 0 or labels.max() >= z.shape[1]):
        raise ValueError(f'labels must lie in [0, {z.shape[1]})')
    z_gt = z[np.arange(z.shape[0]), labels]
    z_max = z.max(axis=1)
    return dict(z_gt=z_gt, z_max=z_max, z_mean=z.mean(axis=1),
                range=z_max - z.min(axis=1), gap=z_max - z_gt,
                correct=z.argmax(axis=1) == labels)


def _stats(x: np.ndarray, prefix: str) -> Dict[str, float]:
    if x.size == 0:
        return {f'{prefix}_mean': float('nan'), f'{prefix}_std': float('nan'),
                f'{prefix}_median': float('nan')}
    return {f'{prefix}_mean': float(x.mean()),
            f'{prefix}_std': float(x.std()),
            f'{prefix}_median': float(np.median(x))}


def logit_statistics(logits, labels) -> Dict[str, float]:
    """Summary of the logit distribution of a model on a data split.

    Args:
        logits (array-like): ``(N, K)`` logits.
        labels (array-like): ``(N,)`` integer labels.

    Returns:
        dict: ``accuracy``; mean / std / median of ``z_gt``, ``z_max`` and
        ``range`` (all samples); ``num_errors`` and the mean / std / median of
        the error gap ``z_max - z_gt`` over the misclassified samples
        (``error_gap_*``, NaN when there are no errors); and the mean L2 norm
        of the logit vectors (``logit_norm_mean``).
    """
    comp = logit_components(logits, labels)
    wrong = ~comp['correct']
    out = dict(num_samples=int(comp['z_gt'].size),
               accuracy=float(comp['correct'].mean()),
               num_errors=int(wrong.sum()))
    for key in ('z_gt', 'z_max', 'range'):
        out.update(_stats(comp[key], key))
    out.update(_stats(comp['gap'][wrong], 'error_gap'))
    out['logit_norm_mean'] = float(
        np.linalg.norm(np.asarray(logits, dtype=np.float64), axis=1).mean())
    return out
