"""Pure functions of ``(logits, target)`` for the label-smoothing family.

Every function here returns the **unreduced** loss (one value per sample, or
per pixel for ``(N, K, *spatial)`` logits) and is written next to the equation
of the MaxSup paper (Zhou et al., "MaxSup: Overcoming Representation Collapse
in Label Smoothing", 2025; see ``shared/paper``) that it implements.  The
registered loss classes in this package are thin wrappers around them.

Notation: ``z`` are the logits of one sample (``K`` classes), ``z_gt`` the
logit of the ground-truth class, ``z_max = max_k z_k`` and
``z_mean = (1/K) sum_k z_k``.  A *hard* target is an integer tensor of class
indices with the logits' shape minus the class dimension; a *soft* target is a
float tensor with the logits' shape whose rows sum to one (what mmpretrain's
Mixup / CutMix produce).
"""

import torch
import torch.nn.functional as F

from maxsup_mm import ops
# the naive oracle and the CE / MaxSup terms it is made of live beside the
# fused op (maxsup_mm.ops.reference): ops never imports this package
from maxsup_mm.ops.reference import (cross_entropy, is_soft_target,
                                     max_suppression,
                                     maxsup_cross_entropy_reference,
                                     soft_cross_entropy)

__all__ = [
    'is_soft_target', 'soft_cross_entropy', 'cross_entropy',
    'max_suppression', 'maxsup_cross_entropy',
    'maxsup_cross_entropy_reference', 'label_smoothing_term',
    'ls_regularization_term', 'ls_error_enhancement_term',
    'ls_error_enhancement_max_term', 'LS_COMPONENTS',
    'label_smooth_decomp_cross_entropy', 'logit_penalty_cross_entropy',
    'confidence_penalty_cross_entropy'
]


def _gt_logit(logits: torch.Tensor, target: torch.Tensor,
              ignore_index: int) -> torch.Tensor:
    """``z_gt``; for soft targets the target-weighted logit sum_k y_k z_k."""
    if is_soft_target(logits, target):
        return (target * logits).sum(dim=1)
    index = target.long().masked_fill(target == ignore_index, 0).unsqueeze(1)
    return logits.gather(1, index).squeeze(1)


# ---------------------------------------------------------------------------
# MaxSup, eq. (8)-(9): max_suppression (eq. 8) and the naive
# maxsup_cross_entropy_reference are in maxsup_mm.ops.reference
# ---------------------------------------------------------------------------
def maxsup_cross_entropy(logits: torch.Tensor,
                         target: torch.Tensor,
                         alpha: float = 0.1,
                         ignore_index: int = -100,
                         reduction: str = 'none',
                         return_gap: bool = False,
                         backend=None):
    r"""Cross-entropy with Max Suppression, eq. (6) with eq. (8).

    .. math::
        L = H(y, q) + \alpha \Big(z_{max} - \frac{1}{K}\sum_k z_k\Big)

    With a soft target (Mixup / CutMix) the CE part is
    :math:`-\sum_k y_k \log q_k` and the MaxSup term is unchanged.  Ignored
    positions of a hard target (``ignore_index``) contribute 0.  Computed by
    the fused op :func:`maxsup_mm.ops.maxsup_cross_entropy` (one read of the
    logits forward, one backward, gradient eq. (9) in closed form); same
    values and gradients as
    :func:`~maxsup_mm.ops.reference.maxsup_cross_entropy_reference`.

    Args:
        logits (Tensor): ``(N, K)`` or ``(N, K, *spatial)`` logits.
        target (Tensor): class indices ``(N, *spatial)`` or a soft target
            with the logits' shape.
        alpha (float): weight of the MaxSup term. Defaults to 0.1.
        ignore_index (int): hard-target value to ignore. Defaults to -100.
        reduction (str): ``'none'``, ``'mean'`` (over all positions) or
            ``'sum'``, done inside the op. Defaults to ``'none'``.
        return_gap (bool): also return the detached MaxSup term
            :math:`z_{max} - \bar z`, reduced the same way.
        backend (str, optional): see :data:`maxsup_mm.ops.BACKENDS`.

    Returns:
        Tensor: the loss per sample (per pixel), shape ``(N, *spatial)``
        (or reduced); ``(loss, gap)`` with ``return_gap``.
    """
    return ops.maxsup_cross_entropy(logits, target, alpha, ignore_index,
                                    reduction, backend, return_gap)


# ---------------------------------------------------------------------------
# Label smoothing and its decomposition, eq. (2)-(5) and Table 1
# ---------------------------------------------------------------------------
def label_smoothing_term(logits: torch.Tensor,
                         target: torch.Tensor) -> torch.Tensor:
    r"""LS at the logit level, eq. (4): :math:`z_{gt} - \bar z`.

    ``H(y, q) + alpha * label_smoothing_term`` equals, exactly, CE on the
    smoothed target :math:`(1-\alpha) y + \alpha / K` (eq. (1)-(2)); for a soft
    target :math:`z_{gt}` becomes :math:`\sum_k y_k z_k`, which is again exact
    because the identity is linear in ``y``.
    """
    return _gt_logit(logits, target, -100) - logits.mean(dim=1)


def _masked_mean_gap(logits: torch.Tensor, z_gt: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """mean over masked k of (z_gt - z_k); 0 where the mask is empty."""
    count = mask.sum(dim=1)
    gap = ((z_gt.unsqueeze(1) - logits) * mask).sum(dim=1)
    return torch.where(count > 0, gap / count.clamp(min=1),
                       torch.zeros_like(gap))


def ls_regularization_term(logits: torch.Tensor,
                           target: torch.Tensor) -> torch.Tensor:
    r"""The "regularization" component of LS as Table 1 (row 3) trains it.

    :math:`\frac{1}{M}\sum_{z_m < z_{gt}} (z_{gt} - z_m)`: the *mean* gap
    between the ground-truth logit and the ``M`` logits strictly below it
    (Corollary 3.4's ``M``); 0 if none.  Table 1 multiplies it by
    :math:`\alpha`, i.e. its row 3 is :math:`\frac{\alpha}{M}\sum`.

    This is *not* eq. (5)'s regularization part, which has
    :math:`\frac{\alpha}{K}` in front of the same sum (so that the two parts of
    eq. (5) add up to LS, eq. (4)); the two differ by the factor
    :math:`K / M`.  Table 1's normalisation is used because the accuracy it
    reports for this row (75.98) was trained with it.
    """
    z_gt = _gt_logit(logits, target, -100)
    return _masked_mean_gap(logits, z_gt, logits < z_gt.unsqueeze(1))


def ls_error_enhancement_term(logits: torch.Tensor,
                              target: torch.Tensor) -> torch.Tensor:
    r"""The "error-enhancement" component of LS as Table 1 (row 4) trains it.

    :math:`\frac{1}{N}\sum_{z_n > z_{gt}} (z_{gt} - z_n)`: the *mean* gap to
    the ``N`` logits strictly above the ground truth (Corollary 3.4's ``N``;
    :math:`\le 0`, 0 if the prediction is correct).  Minimising it pushes
    :math:`z_{gt}` further down.  Table 1's row 4 is
    :math:`\frac{\alpha}{N}\sum`.

    This is *not* eq. (5)'s error-enhancement part, which has
    :math:`\frac{\alpha}{K}` in front of the same sum; the two differ by the
    factor :math:`K / N` (for one logit above :math:`z_{gt}`, Table 1 weighs
    its gap by :math:`\alpha`, eq. (5) by :math:`\alpha / K`).  Table 1's
    normalisation is used because the accuracy it reports for this row
    (73.63) was trained with it.
    """
    z_gt = _gt_logit(logits, target, -100)
    return _masked_mean_gap(logits, z_gt, logits > z_gt.unsqueeze(1))


def ls_error_enhancement_max_term(logits: torch.Tensor,
                                  target: torch.Tensor) -> torch.Tensor:
    r"""Error enhancement against the top-1 logit, Table 1, row 5.

    :math:`z_{gt} - z_{max}` (:math:`\le 0`, 0 when the prediction is correct).
    """
    return _gt_logit(logits, target, -100) - logits.max(dim=1).values


#: ``component`` name -> (term, whether it accepts soft targets)
LS_COMPONENTS = {
    'full': (label_smoothing_term, True),
    'regularization': (ls_regularization_term, False),
    'error_enhancement': (ls_error_enhancement_term, False),
    'error_enhancement_max': (ls_error_enhancement_max_term, False),
}


def label_smooth_decomp_cross_entropy(logits: torch.Tensor,
                                      target: torch.Tensor,
                                      alpha: float = 0.1,
                                      component: str = 'full',
                                      return_term: bool = False):
    """``H(y, q) + alpha * term``, one of the LS components of Table 1.

    Args:
        logits (Tensor): ``(N, K)`` logits.
        target (Tensor): ``(N,)`` class indices, or ``(N, K)`` soft target
            (only for ``component='full'``).
        alpha (float): weight of the term.
        component (str): a key of :data:`LS_COMPONENTS`.
        return_term (bool): also return ``term`` (detached).
    """
    term = LS_COMPONENTS[component][0](logits, target)
    loss = cross_entropy(logits, target) + alpha * term
    return (loss, term.detach()) if return_term else loss


# ---------------------------------------------------------------------------
# Other logit regularizers compared in the paper
# ---------------------------------------------------------------------------
def logit_penalty_cross_entropy(logits: torch.Tensor,
                                target: torch.Tensor,
                                beta: float = 2e-3,
                                return_term: bool = False):
    r"""Logit Penalty (Dauphin & Cubuk, 2021): :math:`H(y,q) + \beta\|z\|^2/2`.

    ``return_term``: also return :math:`\|z\|^2/2` (detached).
    """
    term = logits.pow(2).sum(1) / 2
    loss = cross_entropy(logits, target) + beta * term
    return (loss, term.detach()) if return_term else loss


def confidence_penalty_cross_entropy(logits: torch.Tensor,
                                     target: torch.Tensor,
                                     beta: float = 0.1,
                                     return_term: bool = False):
    r"""Confidence Penalty (Pereyra et al., 2017): :math:`H(y,q) - \beta H(q)`.

    :math:`H(q) = -\sum_k q_k \log q_k` is the entropy of the prediction.
    ``return_term``: also return :math:`-H(q)` (detached; the loss is
    :math:`H(y, q) + \beta \cdot (-H(q))`).
    """
    log_q = F.log_softmax(logits, dim=1)
    neg_entropy = (log_q.exp() * log_q).sum(dim=1)
    loss = cross_entropy(logits, target) + beta * neg_entropy
    return (loss, neg_entropy.detach()) if return_term else loss


# ---------------------------------------------------------------------------
# Zipf's label smoothing (Liang et al., ECCV 2022), compared in Tables 4, 5, 7
# ---------------------------------------------------------------------------
def zipf_votes(dense_logits: torch.Tensor) -> torch.Tensor:
    """Per-image vote counts of dense (per-location) predictions.

    Every location votes for its arg-max class (step 2 of Zipf-LS).

    Args:
        dense_logits (Tensor): ``(N, K, P)`` logits of ``P`` locations
            (feature-map positions or patch tokens) of each image.

    Returns:
        Tensor: ``(N, K)`` float counts; each row sums to ``P``.
    """
    if dense_logits.dim() != 3:
        raise ValueError('zipf_votes: expects dense logits (N, K, P), got '
                         f'shape {tuple(dense_logits.shape)}')
    num, num_classes, _ = dense_logits.shape
    winners = dense_logits.argmax(dim=1)  # (N, P)
    votes = dense_logits.new_zeros(num, num_classes, dtype=torch.float32)
    return votes.scatter_add_(1, winners,
                              torch.ones_like(winners, dtype=votes.dtype))


def min_rank(scores: torch.Tensor) -> torch.Tensor:
    """Rank every row in descending order, ties sharing the smallest rank.

    ``rank_k = 1 + #{j: scores_j > scores_k}``, i.e. SciPy's
    ``rankdata(-scores, method='min')`` row by row, computed with a sort and
    a batched binary search (no ``K x K`` comparison matrix).

    Args:
        scores (Tensor): ``(N, K)``.

    Returns:
        Tensor: ``(N, K)`` int64 ranks in ``[1, K]``.
    """
    ascending = scores.sort(dim=1).values.contiguous()
    not_greater = torch.searchsorted(ascending, scores.contiguous(),
                                     right=True)
    return 1 + scores.shape[1] - not_greater


def zipf_soft_label(votes: torch.Tensor,
                    target: torch.Tensor,
                    power: float = 1.0) -> torch.Tensor:
    r"""The Zipf soft label over the non-target classes (Liang et al., 2022).

    Steps 3-4 of Zipf-LS: rank all ``K`` classes of each image by their vote
    count (most votes first, ties share the smallest rank, classes without a
    vote share the last rank), give class :math:`k` the mass
    :math:`(1/r_k)^{power}`, set the target class to 0 and renormalise over
    the remaining ``K - 1`` classes.  Computed without gradient.

    Example (the hand-worked case): ``K = 5``, target 0, votes
    ``(3, 2, 2, 0, 0)`` give ranks ``(1, 2, 2, 4, 4)`` and the label
    ``(0, 1/2, 1/2, 1/4, 1/4) / 1.5``.

    Args:
        votes (Tensor): ``(N, K)`` vote counts (or any per-class scores).
        target (Tensor): ``(N,)`` class indices.
        power (float): the Zipf exponent. Defaults to 1.0.

    Returns:
        Tensor: ``(N, K)`` float label, 0 at the target, rows sum to 1.
    """
    if votes.dim() != 2:
        raise ValueError('zipf_soft_label: votes must be (N, K), got shape '
                         f'{tuple(votes.shape)}')
    if target.shape != votes.shape[:1] or target.is_floating_point():
        raise ValueError('zipf_soft_label: target must be (N,) integer class '
                         f'indices, got {target.dtype} {tuple(target.shape)} '
                         f'for votes {tuple(votes.shape)}')
    if votes.shape[1] < 2:
        raise ValueError('zipf_soft_label: needs at least 2 classes')
    with torch.no_grad():
        mass = min_rank(votes.float()).float().pow(-float(power))
        mass.scatter_(1, target.long().unsqueeze(1), 0.)
        return mass / mass.sum(dim=1, keepdim=True)


def _drop_target(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` -> ``(N, K - 1)``: remove column ``target[i]`` of row i.

    A gather of the columns ``j + (j >= target)``: no boolean indexing, so
    no device-to-host synchronisation on GPUs.
    """
    cols = torch.arange(x.shape[1] - 1, device=x.device).expand(
        x.shape[0], -1)
    cols = cols + (cols >= target.long().unsqueeze(1))
    return x.gather(1, cols)


def zipf_kl_term(logits: torch.Tensor, target: torch.Tensor,
                 zipf_label: torch.Tensor) -> torch.Tensor:
    r"""The Zipf-LS term :math:`KL(p_{zipf} \| softmax(z_{\setminus y}))`.

    The target logit is removed and the softmax is taken over the ``K - 1``
    non-target logits; the Zipf label (from :func:`zipf_soft_label`) is
    compared with it.  Zipf-LS trains with :math:`CE + \lambda \cdot` this.

    Args:
        logits (Tensor): ``(N, K)`` image-level logits.
        target (Tensor): ``(N,)`` class indices.
        zipf_label (Tensor): ``(N, K)`` label, 0 at the target.

    Returns:
        Tensor: ``(N,)`` KL divergence per sample (>= 0), in float32 (or
        float64 for float64 logits).
    """
    if logits.dim() != 2 or zipf_label.shape != logits.shape:
        raise ValueError('zipf_kl_term: expects (N, K) logits and label of '
                         f'the same shape, got {tuple(logits.shape)} and '
                         f'{tuple(zipf_label.shape)}')
    # float32 at least: the term is also computed under mixed precision
    log_q = F.log_softmax(
        _drop_target(logits, target).to(torch.promote_types(
            logits.dtype, torch.float32)), dim=1)
    p = _drop_target(zipf_label.to(log_q.dtype), target)
    return (torch.xlogy(p, p) - p * log_q).sum(dim=1)


__all__ += ['zipf_votes', 'min_rank', 'zipf_soft_label', 'zipf_kl_term']
