"""The label-smoothing family of losses (registered in mmpretrain MODELS)."""
from .base import AlphaMixin, BaseClsLoss, check_cls_inputs
from .functional import (confidence_penalty_cross_entropy, cross_entropy,
                         label_smooth_decomp_cross_entropy,
                         label_smoothing_term, logit_penalty_cross_entropy,
                         ls_error_enhancement_max_term,
                         ls_error_enhancement_term, ls_regularization_term,
                         max_suppression, maxsup_cross_entropy,
                         maxsup_cross_entropy_reference, soft_cross_entropy)
from .label_smooth_decomp_loss import LabelSmoothDecompLoss
from .maxsup_loss import MaxSupLoss
from .online_label_smooth_loss import OnlineLabelSmoothLoss
from .penalty_losses import ConfidencePenaltyLoss, LogitPenaltyLoss
from .pixel_maxsup_loss import PixelMaxSupLoss  # noqa: F401 (mmseg MODELS)

__all__ = [
    'AlphaMixin', 'BaseClsLoss', 'check_cls_inputs', 'MaxSupLoss',
    'LabelSmoothDecompLoss', 'OnlineLabelSmoothLoss', 'LogitPenaltyLoss',
    'ConfidencePenaltyLoss', 'maxsup_cross_entropy',
    'maxsup_cross_entropy_reference', 'max_suppression', 'cross_entropy',
    'soft_cross_entropy', 'label_smoothing_term', 'ls_regularization_term',
    'ls_error_enhancement_term', 'ls_error_enhancement_max_term',
    'label_smooth_decomp_cross_entropy', 'logit_penalty_cross_entropy',
    'confidence_penalty_cross_entropy'
]
