"""Max Suppression regularization (MaxSup) as an mmpretrain loss."""
import torch
from mmpretrain.registry import MODELS

from .base import AlphaMixin, BaseClsLoss
from .functional import maxsup_cross_entropy


@MODELS.register_module()
class MaxSupLoss(AlphaMixin, BaseClsLoss):
    r"""Cross-entropy with Max Suppression regularization (MaxSup).

    MaxSup (Zhou et al., 2025, eq. (8)) penalizes the top-1 logit instead of
    the ground-truth logit that label smoothing penalizes:

    .. math::
        L = H(y, q) + \alpha \Big(z_{max} - \frac{1}{K}\sum_{k=1}^K z_k\Big)

    with gradient (eq. (9)) :math:`\alpha(1 - 1/K)` on the arg-max logit and
    :math:`-\alpha/K` on the others, added to the CE gradient
    :math:`q - y`.  Label smoothing instead adds
    :math:`\alpha(z_{gt} - \bar z)`, which also pushes :math:`z_{gt}` down
    when the prediction is wrong ("error enhancement").

    With soft targets (Mixup / CutMix), the CE part is
    :math:`-\sum_k y_k \log q_k` and the MaxSup term is unchanged.

    Computed by the fused op (:func:`maxsup_mm.ops.maxsup_cross_entropy`):
    ``reduction='mean'`` / ``'sum'`` (without ``weight`` / ``avg_factor``)
    reduces inside the op, which also checks the labels (a soft target must
    be a distribution: a device-side assert) and returns a float32 loss for
    bf16 / fp16 logits (as ``F.cross_entropy`` under autocast); on the
    training path (``loss_weight=1``, no ``weight``, the heads'
    ``avg_factor = N``) this class adds no tensor operation of its own.  With
    :class:`~maxsup_mm.engine.hooks.LossTermsHook` the training log shows
    ``maxsup_term`` (:math:`\alpha (z_{max} - \bar z)` times
    ``loss_weight``, reduced like the loss) and ``ce_term`` (the rest).

    Example:
        >>> loss = dict(type='MaxSupLoss', alpha=0.1)

    Args:
        alpha (float): weight of the MaxSup term; ``>= 0``. Defaults to 0.1.
            :class:`~maxsup_mm.engine.hooks.AlphaScheduleHook` can raise it
            during training (the paper: 0.1 -> 0.2, Table 8).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
            Defaults to ``'mean'``.
        loss_weight (float): weight of the loss. Defaults to 1.0.
    """

    term_name = 'maxsup_term'
    kernel_checks_labels = True  # the fused op refuses bad labels on device
    reduces_itself = True  # 'mean' / 'sum' inside the op: no extra node

    def __init__(self,
                 alpha: float = 0.1,
                 reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        self.alpha = alpha

    def loss_per_sample(self, cls_score: torch.Tensor,
                        label: torch.Tensor) -> torch.Tensor:
        return maxsup_cross_entropy(cls_score, label, self.alpha)

    def loss_and_term(self, cls_score: torch.Tensor, label: torch.Tensor,
                      reduction: str = 'none'):
        loss, gap = maxsup_cross_entropy(cls_score, label, self.alpha,
                                         reduction=reduction, return_gap=True)
        return loss, gap, self.alpha

    def extra_repr(self) -> str:
        return f'alpha={self.alpha}, reduction={self.reduction!r}, ' \
               f'loss_weight={self.loss_weight}'
