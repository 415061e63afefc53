"""Metrics a validation / test loop logs (mmengine ``BaseMetric`` s
registered in mmpretrain's ``METRICS``).

- :class:`ExpectedCalibrationError` -- ECE of the top-1 prediction
  (``val_evaluator = [dict(type='Accuracy', topk=(1, )),
  dict(type='ExpectedCalibrationError', n_bins=15)]``), the number
  :func:`maxsup_mm.analysis.expected_calibration_error` computes offline.
"""
from .calibration import ExpectedCalibrationError

__all__ = ['ExpectedCalibrationError']
