"""Logit Penalty and Confidence Penalty, the other regularizers compared."""
import torch
from mmpretrain.registry import MODELS

from .base import BaseClsLoss, check_nonnegative
from .functional import (confidence_penalty_cross_entropy,
                         logit_penalty_cross_entropy)


@MODELS.register_module()
class LogitPenaltyLoss(BaseClsLoss):
    r"""CE plus an L2 penalty on the logits (Dauphin & Cubuk, 2021).

    .. math:: L = H(y, q) + \frac{\beta}{2}\|z\|_2^2

    Args:
        beta (float): penalty weight; ``>= 0``. Defaults to 2e-3.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): weight of the loss. Defaults to 1.0.
    """

    def __init__(self, beta: float = 2e-3, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        self.beta = check_nonnegative('beta', beta)

    term_name = 'logit_penalty_term'

    def loss_per_sample(self, cls_score: torch.Tensor,
                        label: torch.Tensor) -> torch.Tensor:
        return logit_penalty_cross_entropy(cls_score, label, self.beta)

    def loss_and_term(self, cls_score: torch.Tensor, label: torch.Tensor,
                      reduction: str = 'none'):
        loss, term = logit_penalty_cross_entropy(cls_score, label, self.beta,
                                                 return_term=True)
        return loss, term, self.beta


@MODELS.register_module()
class ConfidencePenaltyLoss(BaseClsLoss):
    r"""CE minus the prediction entropy (Pereyra et al., 2017).

    .. math:: L = H(y, q) - \beta H(q), \quad H(q) = -\sum_k q_k \log q_k

    Args:
        beta (float): weight of the entropy bonus; ``>= 0``. Defaults to 0.1.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): weight of the loss. Defaults to 1.0.
    """

    def __init__(self, beta: float = 0.1, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        self.beta = check_nonnegative('beta', beta)

    term_name = 'confidence_penalty_term'

    def loss_per_sample(self, cls_score: torch.Tensor,
                        label: torch.Tensor) -> torch.Tensor:
        return confidence_penalty_cross_entropy(cls_score, label, self.beta)

    def loss_and_term(self, cls_score: torch.Tensor, label: torch.Tensor,
                      reduction: str = 'none'):
        loss, term = confidence_penalty_cross_entropy(
            cls_score, label, self.beta, return_term=True)
        return loss, term, self.beta
