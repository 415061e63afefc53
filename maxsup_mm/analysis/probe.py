"""Linear probe on frozen features (the protocol of Table 3).

Kornblith et al. (2019, 2021) and the MaxSup paper evaluate transfer with an
L2-regularised multinomial logistic regression trained on the frozen
penultimate features of a downstream train split; the regularisation strength
is chosen on a held-out part of the train split, the classifier is refit on
the whole train split and scored on the test split.
"""
import warnings
from contextlib import nullcontext
from typing import Dict, Optional, Sequence, Union

import numpy as np

__all__ = ['linear_probe', 'stratified_holdout', 'DEFAULT_CS']

#: inverse regularisation strengths tried (scikit-learn's ``C``)
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 4, 9))


def _fit(x, y, c, max_iter, seed):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # lbfgs with the default L2 penalty is multinomial for K > 2 classes
    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConvergenceWarning)
        clf.fit(x, y)
    return clf


def stratified_holdout(labels, holdout: float = 0.2, seed: int = 0):
    """Split sample indices into a fit part and a held-out part, per class.

    Every class keeps at least one sample on each side: a class with ``n``
    samples puts ``round(holdout * n)``, clipped to ``[1, n - 1]``, of them
    (drawn with ``seed``) in the held-out part.

    Args:
        labels (array-like): ``(N,)`` class labels.
        holdout (float): fraction held out, in ``(0, 1)``.
        seed (int): seed of the draw.

    Returns:
        tuple: sorted ``(fit_indices, holdout_indices)``.

    Raises:
        ValueError: a class with fewer than two samples (it cannot be on
            both sides), naming it.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    small = classes[counts < 2]
    if len(small):
        raise ValueError(
            f'linear probe: the train split is too small to hold out a part '
            f'for choosing C: {len(small)} of its {len(classes)} classes '
            f'have a single sample (e.g. class {small[0]}), and every class '
            f'needs one sample to fit and one to score ({len(labels)} '
            'samples in all); use a larger train split')
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c, n in zip(classes, counts):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = int(np.clip(np.rint(holdout * n), 1, n - 1))
        held.append(rows[:k])
        fit.append(rows[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def linear_probe(train_features,
                 train_labels,
                 test_features,
                 test_labels,
                 Cs: Optional[Sequence[float]] = None,
                 holdout: float = 0.2,
                 standardize: bool = True,
                 max_iter: int = 1000,
                 seed: int = 0,
                 blas_threads: Union[int, str, None] = 'auto'
                 ) -> Dict[str, object]:
    """L2-regularised multinomial logistic regression on frozen features.

    Each ``C`` in ``Cs`` is fit on ``1 - holdout`` of the train split and
    scored on the held-out rest (:func:`stratified_holdout`: every class on
    both sides, so every class needs two train samples); the best ``C``
    (ties: the strongest regularisation) is refit on the whole train split
    and scored on the test split.

    Args:
        train_features (array-like): ``(N, D)`` features of the train split.
        train_labels (array-like): ``(N,)`` labels of the train split.
        test_features (array-like): ``(M, D)`` features of the test split.
        test_labels (array-like): ``(M,)`` labels of the test split.
        Cs (Sequence[float], optional): inverse regularisation strengths
            to try. Defaults to :data:`DEFAULT_CS` (1e-4 ... 1e4).
        holdout (float): fraction of the train split held out to choose C.
        standardize (bool): z-score the features with the train split's
            mean and standard deviation (helps lbfgs converge; the scale of
            ``C`` then refers to standardised features).
        max_iter (int): lbfgs iterations.
        seed (int): seed of the held-out split.
        blas_threads (int | str | None): BLAS threads during the fits.
            ``'auto'``: 1 for small problems (``N * D < 2**24``), where
            threaded BLAS only costs time (on a loaded machine lbfgs runs
            ~100x slower with 2 threads than with 1), else unchanged;
            ``None``: unchanged.

    Returns:
        dict: ``accuracy`` (test split), ``C`` (chosen),
        ``holdout_accuracy`` (``{C: accuracy}``), ``train_accuracy``,
        ``num_train``, ``num_test``, ``num_holdout`` and ``not_converged``
        (the Cs whose held-out fit hit ``max_iter``).
    """
    xtr = np.asarray(train_features, dtype=np.float64)
    ytr = np.asarray(train_labels)
    xte = np.asarray(test_features, dtype=np.float64)
    yte = np.asarray(test_labels)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f'features must be (N, D) and (M, D) arrays with '
                         f'the same D, got {xtr.shape} and {xte.shape}')
    if ytr.shape != (xtr.shape[0], ) or yte.shape != (xte.shape[0], ):
        raise ValueError('labels must be 1-D and match the feature rows')
    if len(np.unique(ytr)) < 2:
        raise ValueError('the train split needs at least two classes')
    if not 0 < holdout < 1:
        raise ValueError(f'holdout must be in (0, 1), got {holdout}')
    Cs = tuple(DEFAULT_CS if Cs is None else Cs)
    if not Cs or min(Cs) <= 0:
        raise ValueError(f'Cs must be positive numbers, got {Cs}')

    if blas_threads == 'auto':
        blas_threads = 1 if xtr.size < 2**24 else None
    if blas_threads is None:
        limit = nullcontext()
    else:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(int(blas_threads), user_api='blas')
    with limit:
        return _probe(xtr, ytr, xte, yte, Cs, holdout, standardize,
                      max_iter, seed)


def _probe(xtr, ytr, xte, yte, Cs, holdout, standardize, max_iter, seed):
    from sklearn.preprocessing import StandardScaler

    fit_idx, val_idx = stratified_holdout(ytr, holdout, seed)

    def scaled(fit_rows, *others):
        if not standardize:
            return (fit_rows, ) + others
        scaler = StandardScaler().fit(fit_rows)
        return tuple(scaler.transform(a) for a in (fit_rows, ) + others)

    xf, xv = scaled(xtr[fit_idx], xtr[val_idx])
    scores, not_converged = {}, []
    for c in sorted(Cs):
        clf = _fit(xf, ytr[fit_idx], c, max_iter, seed)
        scores[float(c)] = float((clf.predict(xv) == ytr[val_idx]).mean())
        if np.max(clf.n_iter_) >= max_iter:
            not_converged.append(float(c))
    best = max(scores.values())
    best_c = min(c for c, s in scores.items() if s == best)
    xall, xtest = scaled(xtr, xte)
    clf = _fit(xall, ytr, best_c, max_iter, seed)
    return dict(accuracy=float((clf.predict(xtest) == yte).mean()),
                C=best_c, holdout_accuracy=scores,
                train_accuracy=float((clf.predict(xall) == ytr).mean()),
                num_train=int(len(ytr)), num_test=int(len(yte)),
                num_holdout=int(len(val_idx)), not_converged=not_converged)
