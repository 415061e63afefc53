"""Hooks, registered in mmengine's root HOOKS: every OpenMMLab scope finds them."""
from .alpha_schedule_hook import AlphaScheduleHook, scheduled_alpha
from .checkpoint_safety_hook import (WeightsOnlyCheckpointHook, decode_safe,
                                     encode_safe)
from .loss_terms_hook import LossTermsHook
from .non_finite_loss_hook import (NonFiniteLossError, NonFiniteLossHook,
                                   NonFiniteWeightsError)
from .online_label_smooth_hook import OnlineLabelSmoothHook
from .reseed_hook import ReseedHook

__all__ = [
    'AlphaScheduleHook', 'scheduled_alpha', 'WeightsOnlyCheckpointHook',
    'encode_safe', 'decode_safe', 'NonFiniteLossHook', 'NonFiniteLossError',
    'NonFiniteWeightsError',
    'OnlineLabelSmoothHook', 'ReseedHook', 'LossTermsHook'
]
