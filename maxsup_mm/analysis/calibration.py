"""Calibration: expected calibration error and reliability-diagram bins.

Guo et al. (2017): split the max-probability confidences into ``M``
equal-width bins ``B_m = ((m-1)/M, m/M]`` and compare, in each bin, the
accuracy with the mean confidence::

    ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|
"""
from typing import Dict

import numpy as np
import scipy.special

__all__ = ['softmax', 'reliability_bins', 'confidence_bins',
           'expected_calibration_error', 'binned_calibration_error']


def softmax(logits, axis: int = -1) -> np.ndarray:
    """Softmax of logits along ``axis``, float64
    (:func:`scipy.special.softmax`, whose own default axis is all axes)."""
    return scipy.special.softmax(np.asarray(logits, dtype=np.float64),
                                 axis=axis)


def _check_probs(probs, labels):
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f'probs must be a 2-D (N, K) array, got shape '
                         f'{probs.shape}')
    if labels.shape != (probs.shape[0], ):
        raise ValueError(f'labels must have shape ({probs.shape[0]},), got '
                         f'{labels.shape}')
    if probs.shape[0] == 0:
        raise ValueError('probs is empty')
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f'labels must be integers, got dtype {labels.dtype}')
    if np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0,
                                            atol=1e-4):
        raise ValueError('probs must be probabilities (non-negative rows '
                         'summing to 1); pass softmax(logits) for logits')
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f'labels must lie in [0, {probs.shape[1]})')
    return probs, labels


def confidence_bins(confidences, correct, n_bins: int = 15
                    ) -> Dict[str, np.ndarray]:
    """Per-bin counts, accuracy and mean confidence.

    Bin ``m`` holds the confidences in ``(m / n_bins, (m + 1) / n_bins]``
    (a confidence of 0 goes to the first bin).

    Args:
        confidences (array-like): ``(N,)`` top-1 probabilities in [0, 1].
        correct (array-like): ``(N,)`` whether each top-1 prediction is
            right.
        n_bins (int): number of equal-width bins on ``[0, 1]``.

    Returns:
        dict: ``edges`` ``(n_bins + 1,)``, ``counts``, ``accuracy`` and
        ``confidence`` ``(n_bins,)`` (NaN for empty bins).
    """
    if int(n_bins) < 1:
        raise ValueError(f'n_bins must be >= 1, got {n_bins}')
    n_bins = int(n_bins)
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != correct.shape:
        raise ValueError(f'{conf.size} confidences for {correct.size} '
                         'correctness flags')
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid='ignore', divide='ignore'):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / counts
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
    return dict(edges=edges, counts=counts, accuracy=acc,
                confidence=mean_conf)


def binned_calibration_error(bins: Dict[str, np.ndarray]) -> float:
    """``sum_m |B_m| / N * |acc(B_m) - conf(B_m)|`` of
    :func:`confidence_bins`' output."""
    counts = bins['counts']
    if counts.sum() == 0:
        raise ValueError('no samples: the calibration error is undefined')
    filled = counts > 0
    gaps = np.abs(bins['accuracy'][filled] - bins['confidence'][filled])
    return float(np.sum(counts[filled] * gaps) / counts.sum())


def reliability_bins(probs, labels, n_bins: int = 15) -> Dict[str, np.ndarray]:
    """Per-bin counts, accuracy and mean confidence of the top-1 prediction.

    Args:
        probs (array-like): ``(N, K)`` predicted probabilities.
        labels (array-like): ``(N,)`` integer labels.
        n_bins (int): number of equal-width confidence bins on ``[0, 1]``.

    Returns:
        dict: see :func:`confidence_bins`.
    """
    if int(n_bins) < 1:
        raise ValueError(f'n_bins must be >= 1, got {n_bins}')
    probs, labels = _check_probs(probs, labels)
    return confidence_bins(probs.max(axis=1), probs.argmax(axis=1) == labels,
                           n_bins)


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 prediction (Guo et al. 2017).

    ``n_bins`` equal-width bins over the max-probability confidence; each
    bin's ``|accuracy - mean confidence|`` is weighted by its share of the
    samples.

    Args:
        probs (array-like): ``(N, K)`` predicted probabilities (use
            :func:`softmax` on logits).
        labels (array-like): ``(N,)`` integer labels.
        n_bins (int): number of bins. Defaults to 15.

    Returns:
        float: the ECE, in ``[0, 1]``.
    """
    return binned_calibration_error(reliability_bins(probs, labels, n_bins))
