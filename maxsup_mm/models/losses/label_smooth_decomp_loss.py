"""Label smoothing split into its components (MaxSup paper, Table 1)."""
import torch
from mmpretrain.registry import MODELS

from .base import AlphaMixin, BaseClsLoss
from .functional import LS_COMPONENTS, label_smooth_decomp_cross_entropy


@MODELS.register_module()
class LabelSmoothDecompLoss(AlphaMixin, BaseClsLoss):
    r"""Cross-entropy plus one component of the label-smoothing term.

    Label smoothing adds :math:`\alpha(z_{gt} - \bar z)` to CE (eq. (4)),
    which splits (eq. (5)) into a *regularization* part over the logits
    below :math:`z_{gt}` and an *error-enhancement* part over those above it.
    Each ``component`` is CE plus one term (Table 1):

    ========================= =============================================
    ``'full'``                :math:`\alpha(z_{gt} - \bar z)`: exactly LS,
                              ``F.cross_entropy(label_smoothing=alpha)``
    ``'regularization'``      :math:`\frac{\alpha}{M}\sum_{z_m<z_{gt}}
                              (z_{gt}-z_m)`, 0 if ``M = 0``
    ``'error_enhancement'``   :math:`\frac{\alpha}{N}\sum_{z_n>z_{gt}}
                              (z_{gt}-z_n)`, 0 if ``N = 0``
    ``'error_enhancement_max'`` :math:`\alpha(z_{gt} - z_{max})`
    ========================= =============================================

    ``'full'`` also accepts soft targets (Mixup / CutMix): :math:`z_{gt}`
    becomes :math:`\sum_k y_k z_k`, which is exactly CE on the smoothed target
    :math:`(1-\alpha)y + \alpha/K`.  The other components are defined by which
    logits lie above or below the ground-truth logit and need hard labels.

    Args:
        alpha (float): weight of the term; ``>= 0``. Defaults to 0.1.
        component (str): one of ``'full'``, ``'regularization'``,
            ``'error_enhancement'``, ``'error_enhancement_max'``.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): weight of the loss. Defaults to 1.0.
    """

    def __init__(self,
                 alpha: float = 0.1,
                 component: str = 'full',
                 reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        if component not in LS_COMPONENTS:
            raise ValueError(f'LabelSmoothDecompLoss: unknown component '
                             f'{component!r}; choose one of '
                             f'{sorted(LS_COMPONENTS)}')
        self.alpha = alpha
        self.component = component
        self.accepts_soft_target = LS_COMPONENTS[component][1]
        self.soft_target_reason = (
            f'component {component!r} compares the other logits with the '
            'single ground-truth logit, which a soft (Mixup/CutMix) target '
            "does not define; use component='full' or disable batch mixing")

    term_name = 'ls_term'

    def loss_per_sample(self, cls_score: torch.Tensor,
                        label: torch.Tensor) -> torch.Tensor:
        return label_smooth_decomp_cross_entropy(cls_score, label, self.alpha,
                                                 self.component)

    def loss_and_term(self, cls_score: torch.Tensor, label: torch.Tensor,
                      reduction: str = 'none'):
        loss, term = label_smooth_decomp_cross_entropy(
            cls_score, label, self.alpha, self.component, return_term=True)
        return loss, term, self.alpha

    def extra_repr(self) -> str:
        return f'alpha={self.alpha}, component={self.component!r}'
