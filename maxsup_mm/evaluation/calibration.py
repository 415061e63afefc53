"""Expected calibration error as a validation metric.

Guo et al. (2017), with the binning of
:func:`maxsup_mm.analysis.expected_calibration_error`: ``n_bins``
equal-width bins ``(m / M, (m + 1) / M]`` over the top-1 probability, each
bin's ``|accuracy - mean confidence|`` weighted by its share of the samples.
Each sample keeps only its top-1 probability and whether the top-1 class is
right, so collecting the results over GPUs costs two numbers per image, not
a row of class scores.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmpretrain.registry import METRICS

from maxsup_mm.analysis.calibration import (binned_calibration_error,
                                            confidence_bins)

__all__ = ['ExpectedCalibrationError']


@METRICS.register_module()
class ExpectedCalibrationError(BaseMetric):
    """Expected calibration error (%) of a classifier's ``pred_score``.

    Config::

        val_evaluator = [dict(type='Accuracy', topk=(1, )),
                         dict(type='ExpectedCalibrationError', n_bins=15)]

    logs ``calibration/ece`` (in %, like ``accuracy/top1``) next to the
    accuracy.  The scores are the head's softmax probabilities
    (``pred_score`` of mmpretrain's ``ClsHead.predict``).

    Args:
        n_bins (int): equal-width confidence bins. Defaults to 15.
        collect_device (str): ``'cpu'`` or ``'gpu'``, where the results
            of the ranks are gathered.
        prefix (str, optional): metric name prefix; default
            ``'calibration'``.
    """
    default_prefix: Optional[str] = 'calibration'

    def __init__(self, n_bins: int = 15, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if int(n_bins) != n_bins or n_bins < 1:
            raise ValueError(f'n_bins must be a positive integer, got '
                             f'{n_bins!r}')
        self.n_bins = int(n_bins)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep ``(top-1 probability, top-1 is right)`` of each sample."""
        if not data_samples:
            return
        if any('pred_score' not in s for s in data_samples):
            raise ValueError('ExpectedCalibrationError needs the predicted '
                             'probabilities (pred_score) of a classification '
                             'head')
        scores = torch.stack([s['pred_score'] for s in data_samples])
        labels = torch.stack([s['gt_label'].reshape(-1)[0]
                              for s in data_samples])
        conf, pred = scores.float().max(dim=1)
        correct = (pred == labels.to(pred.device)).cpu().tolist()
        self.results.extend(zip(conf.cpu().tolist(), correct))

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        conf = np.array([r[0] for r in results], dtype=np.float64)
        correct = np.array([r[1] for r in results], dtype=np.float64)
        bins = confidence_bins(conf, correct, self.n_bins)
        return dict(ece=100.0 * binned_calibration_error(bins))
