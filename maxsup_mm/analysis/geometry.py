"""Geometry of penultimate features: class separation and template planes.

Class separation follows Kornblith et al., "Why do better loss functions lead
to less transferable features?" (NeurIPS 2021), which the MaxSup paper uses in
Tables 2 and 9.  With the cosine distance ``d(x, y) = 1 - cos(x, y)``::

    d_within = 1/K sum_k  mean_{m != n in class k} d(x_km, x_kn)
    d_total  = 1/K^2 sum_{j,k} mean_{(j,m) != (k,n)} d(x_jm, x_kn)
    R^2      = 1 - d_within / d_total

Kornblith et al. average the within-class distances **per class and then over
classes** (every class weighs 1/K, every class pair 1/K^2).  Their sums also
run over the ``m == n`` self-pairs, whose distance is 0; by default we leave
self-pairs out (``include_self=False``), so ``d_within`` is the mean distance
between two *different* samples of a class, which does not depend on the
sample size.  The two conventions differ by the factor ``(N_k - 1) / N_k`` on
each class's within-class mean (< 0.1% for ImageNet's ~1300 images per class,
~3% for 36 images per class); ``include_self=True`` reproduces Kornblith et
al.'s formula literally.

The values are exact and need no pairwise distance matrix: with unit vectors
``u_i = x_i / |x_i|`` and class sums ``s_k = sum_{i in k} u_i``, the sum of
cosines over the ordered pairs of classes ``j, k`` is ``s_j . s_k`` (self-pairs
contribute ``|u_i|^2``), so the computation is one pass over the features in
row chunks, ``O(N D)`` time and ``O(K D)`` memory: ~25 s on one CPU core for
ImageNet's 1.28M x 2048 train features (measured: 2.0 s per 100k rows), not
much more than estimating from 200k random pairs took (~10 s), so there is
no sampled estimator.
"""
import warnings
from typing import Dict, Sequence

import numpy as np
import scipy.sparse

__all__ = ['class_separation', 'template_plane_basis',
           'project_to_template_plane', 'select_confused_classes']

#: float64 elements held at a time (rows x D), which bounds the temporary
#: memory to ~64 MiB whatever N is
_CHUNK_ELEMENTS = 1 << 23


def _check_features(features, labels):
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f'features must be a 2-D (N, D) array, got shape '
                         f'{features.shape}')
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f'labels must be a 1-D array of length N='
                         f'{features.shape[0]}, got shape {labels.shape}')
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f'labels must be integers, got dtype {labels.dtype}')
    if not np.all(np.isfinite(features)):
        raise ValueError('features contain NaN or Inf values')
    return features, labels


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float64."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _class_sums(features, inverse, num_classes):
    """Per-class sums of unit vectors and of their squared norms (chunked;
    a sparse class-indicator product, much faster than ``np.add.at``)."""
    dim = features.shape[1]
    sums = np.zeros((num_classes, dim), dtype=np.float64)
    sq = np.zeros(num_classes, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(int(dim), 1))
    for start in range(0, features.shape[0], step):
        u = _unit_rows(features[start:start + step])
        idx = inverse[start:start + step]
        members = scipy.sparse.csr_matrix(
            (np.ones(len(idx)), (idx, np.arange(len(idx)))),
            shape=(num_classes, len(idx)))
        sums += members @ u
        sq += np.bincount(idx, weights=(u * u).sum(axis=1),
                          minlength=num_classes)
    return sums, sq


def _separation(features, inverse, counts, include_self):
    """``(d_within, d_total)`` with every class weighing 1/K."""
    num_classes = len(counts)
    sums, sq = _class_sums(features, inverse, num_classes)
    counts = counts.astype(np.float64)
    gram = sums @ sums.T                     # sum of cosines per class pair
    self_sum = np.diag(gram).copy()          # includes the self-pairs
    if include_self:
        n_pairs = counts * counts
    else:
        self_sum -= sq                       # drop cos(u_i, u_i) = |u_i|^2
        n_pairs = counts * (counts - 1)
    valid = n_pairs > 0
    within_k = 1.0 - self_sum[valid] / n_pairs[valid]
    block = 1.0 - gram / np.outer(counts, counts)
    diag = np.full(num_classes, np.nan)
    diag[valid] = within_k
    np.fill_diagonal(block, diag)
    # a class with one sample has no distinct pair: it then weighs on the
    # off-diagonal blocks only
    mask = np.ones_like(block, dtype=bool)
    mask[np.diag_indices(num_classes)] = valid
    return float(within_k.mean()), float(block[mask].mean())


def class_separation(features, labels,
                     include_self: bool = False) -> Dict[str, float]:
    r"""Class separation of features (Kornblith et al., 2021).

    With the cosine distance :math:`d(x, y) = 1 - \cos(x, y)`:
    ``d_within`` is the mean distance between two samples of the same class,
    averaged **per class, then over the classes** (each class weighs 1/K, as
    in Kornblith et al.); ``d_total`` the mean distance between two samples
    of any classes, averaged over the :math:`K^2` ordered class pairs; and
    :math:`R^2 = 1 - d_{within} / d_{total}`.  Self-pairs are left out
    unless ``include_self=True`` (Kornblith et al.'s literal formula, which
    counts the zero self-distances; see the module docstring).  Exact, in
    one ``O(N D)`` pass.

    Samples whose feature vector is zero have cosine 0 (distance 1) to
    every other sample.

    Args:
        features (array-like): ``(N, D)`` penultimate-layer features.
        labels (array-like): ``(N,)`` integer class labels.
        include_self (bool): count the ``m == n`` self-pairs (distance 0).

    Returns:
        dict: ``d_within``, ``d_total``, ``r2``, ``num_samples`` and
        ``num_classes``.
    """
    features, labels = _check_features(features, labels)
    if features.shape[0] < 2:
        raise ValueError('class_separation needs at least 2 samples')
    classes, inverse, counts = np.unique(labels, return_inverse=True,
                                         return_counts=True)
    inverse = inverse.reshape(-1)
    if not include_self and not np.any(counts >= 2):
        raise ValueError('no class has two samples: d_within is undefined')
    if not include_self and np.any(counts < 2):
        warnings.warn(f'{int(np.sum(counts < 2))} class(es) with a single '
                      'sample are left out of d_within')
    d_within, d_total = _separation(features, inverse, counts, include_self)
    r2 = 1.0 - d_within / d_total if d_total > 0 else float('nan')
    return dict(num_samples=int(features.shape[0]),
                num_classes=int(len(classes)), d_within=d_within,
                d_total=d_total, r2=float(r2))


# ---------------------------------------------------------------------------
# Mueller et al. (2019): projection onto the plane of three class templates
# ---------------------------------------------------------------------------
def template_plane_basis(templates) -> np.ndarray:
    """Orthonormal basis of the plane through three class templates.

    Müller, Kornblith and Hinton, "When does label smoothing help?" (2019):
    the templates are the rows ``w_a, w_b, w_c`` of the final linear layer;
    the plane through them is spanned by ``w_b - w_a`` and ``w_c - w_a``.

    Args:
        templates (array-like): ``(3, D)`` template vectors.

    Returns:
        np.ndarray: ``(D, 2)`` matrix with orthonormal columns.
    """
    t = np.asarray(templates, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != 3:
        raise ValueError(f'templates must have shape (3, D), got {t.shape}')
    span = np.stack([t[1] - t[0], t[2] - t[0]], axis=1)
    q, r = np.linalg.qr(span)
    if abs(r[1, 1]) < 1e-12 * max(abs(r[0, 0]), 1e-300):
        raise ValueError('the three templates are collinear: they span no '
                         'plane')
    # fix the signs so that the first axis points from w_a to w_b
    return q * np.sign(np.diag(r))[None, :]


def project_to_template_plane(features, weight, classes: Sequence[int]):
    """Project features onto the plane of three class templates.

    Coordinates are ``B^T (x - w_a)`` with ``B`` from
    :func:`template_plane_basis`: the orthogonal projection of ``x`` onto
    the plane, expressed in the plane's own 2-D frame with ``w_a`` at the
    origin.

    Args:
        features (array-like): ``(N, D)`` penultimate activations.
        weight (array-like): ``(K, D)`` weight of the final linear layer.
        classes (Sequence[int]): the three class indices ``(a, b, c)``.

    Returns:
        dict: ``coords`` ``(N, 2)``, ``templates`` ``(3, 2)`` (the
        templates' own coordinates) and ``basis`` ``(D, 2)``.
    """
    classes = [int(c) for c in classes]
    weight = np.asarray(weight, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    if len(classes) != 3 or len(set(classes)) != 3:
        raise ValueError(f'classes must be three different indices, got '
                         f'{classes}')
    if weight.ndim != 2 or features.ndim != 2 or \
            weight.shape[1] != features.shape[1]:
        raise ValueError(f'weight (K, D) and features (N, D) must share D, '
                         f'got {weight.shape} and {features.shape}')
    if max(classes) >= weight.shape[0] or min(classes) < 0:
        raise ValueError(f'classes {classes} out of range for '
                         f'{weight.shape[0]} templates')
    templates = weight[classes]
    basis = template_plane_basis(templates)
    origin = templates[0]
    return dict(coords=(features - origin) @ basis,
                templates=(templates - origin) @ basis, basis=basis)


def select_confused_classes(confusion, num: int = 3) -> list:
    """The class most often misclassified and the classes it is taken for.

    Appendix G's "confusion" criterion: pick the class with the most errors,
    then the classes it is most often predicted as (ties: lowest index).
    Falls back to the most frequent classes when there are too few errors.

    Args:
        confusion (array-like): ``(K, K)`` confusion counts (rows: labels,
            columns: predictions), e.g. scikit-learn's
            ``confusion_matrix(labels, predictions)`` summed over runs.
        num (int): number of classes to return.

    Returns:
        list[int]: ``num`` distinct class indices.
    """
    conf = np.asarray(confusion)
    num_classes = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] != num_classes:
        raise ValueError(f'confusion must be (K, K), got {conf.shape}')
    if num_classes < num:
        raise ValueError(f'need at least {num} classes, got {num_classes}')
    errors = conf.sum(axis=1) - np.diag(conf)
    chosen = []
    if errors.max() > 0:
        first = int(np.argmax(errors))
        chosen.append(first)
        row = conf[first].astype(np.int64)
        row[first] = -1
        for c in np.argsort(-row, kind='stable'):
            if len(chosen) == num or row[c] <= 0:
                break
            chosen.append(int(c))
    freq = conf.sum(axis=1)
    for c in np.argsort(-freq, kind='stable'):
        if len(chosen) == num:
            break
        if int(c) not in chosen:
            chosen.append(int(c))
    return chosen
