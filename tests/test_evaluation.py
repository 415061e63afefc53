"""``maxsup_mm.evaluation``: ECE as a validation metric.

Oracles: a constructed set whose ECE is known in closed form, a hand-written
loop over the bins, the offline analysis function, and mmpretrain's own
``Accuracy`` and ``predict`` in a real validation loop.
"""
import numpy as np
import pytest
import torch

from maxsup_mm.analysis import expected_calibration_error
from maxsup_mm.evaluation import ExpectedCalibrationError
from child_config import (CUSTOM_IMPORTS,  # tests/helpers
                          RESNET18_CIFAR_PLAIN, write_child_config)

#: the tests' 4-class CIFAR-stem ResNet-18, batches of 5, with our ECE
TINY_EXTRA = CUSTOM_IMPORTS + """
val_dataloader = dict(batch_size=5, dataset=dict(data_root=data_root))
val_evaluator = [dict(type='Accuracy', topk=(1, )),
                 dict(type='ExpectedCalibrationError', n_bins=15)]
"""


def _hand_ece(probs, labels, n_bins):
    """Guo et al.'s ECE, written out: bins (m/M, (m+1)/M], 0 in the first."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        inside = [i for i, c in enumerate(conf)
                  if lo < c <= hi or (m == 0 and c == 0)]
        if inside:
            acc = np.mean([correct[i] for i in inside])
            mean_conf = np.mean([conf[i] for i in inside])
            total += len(inside) / len(conf) * abs(acc - mean_conf)
    return total


def _evaluate(metric, probs, labels, batch=7):
    for start in range(0, len(labels), batch):
        metric.process(None, [
            dict(pred_score=torch.as_tensor(p, dtype=torch.float32),
                 gt_label=torch.tensor([int(y)]))
            for p, y in zip(probs[start:start + batch],
                            labels[start:start + batch])])
    return metric.evaluate(len(labels))


def test_ece_metric_closed_form():
    # 40% of samples at confidence 0.95 with accuracy 0.8 (gap 0.15), 60% at
    # 0.55 with accuracy 0.3 (gap 0.25): ECE = 0.4 * 0.15 + 0.6 * 0.25
    probs, labels = [], []
    for conf, n, right in ((0.95, 40, 32), (0.55, 60, 18)):
        for i in range(n):
            probs.append([conf, 1 - conf])
            labels.append(0 if i < right else 1)
    out = _evaluate(ExpectedCalibrationError(), np.array(probs),
                    np.array(labels))
    assert out == {'calibration/ece': pytest.approx(21.0, abs=1e-4)}


@pytest.mark.parametrize('n_bins', [1, 10, 15])
def test_ece_metric_matches_the_analysis_and_a_hand_loop(n_bins):
    rng = np.random.default_rng(n_bins)
    logits = rng.normal(size=(203, 6)) * 3
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    labels = rng.integers(0, 6, 203)
    metric = ExpectedCalibrationError(n_bins=n_bins, prefix='val')
    out = _evaluate(metric, probs, labels)
    hand = 100 * _hand_ece(probs.astype(np.float32).astype(np.float64),
                           labels, n_bins)
    assert hand > 1.0  # a miscalibrated model: the test can fail
    assert out['val/ece'] == pytest.approx(hand, abs=1e-4)
    assert out['val/ece'] == pytest.approx(
        100 * expected_calibration_error(probs, labels, n_bins), abs=1e-4)


def test_ece_metric_errors():
    with pytest.raises(ValueError, match='n_bins'):
        ExpectedCalibrationError(n_bins=0)
    with pytest.raises(ValueError, match='pred_score'):
        ExpectedCalibrationError().process(
            None, [dict(pred_label=torch.tensor([0]),
                        gt_label=torch.tensor([0]))])


def test_ece_in_an_mmpretrain_validation_loop(imagenet_root, tmp_path):
    """``val_evaluator`` with Accuracy + ECE through mmengine's Runner: the
    logged numbers against mmpretrain's own predictions of the same model
    and data, scored by hand."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.runner import Runner
    cfg = Config.fromfile(write_child_config(
        tmp_path / 'tiny.py', RESNET18_CIFAR_PLAIN, imagenet_root,
        TINY_EXTRA))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.val_cfg = dict()
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper',
                'param_scheduler', 'test_dataloader', 'test_cfg',
                'test_evaluator'):
        cfg.pop(key, None)
    torch.manual_seed(0)
    runner = Runner.from_cfg(cfg)
    metrics = runner.val()
    model = runner.model.eval()
    dataset = runner.val_dataloader.dataset
    with torch.no_grad():
        data = model.data_preprocessor(
            pseudo_collate([dataset[i] for i in range(len(dataset))]), False)
        preds = model.predict(data['inputs'], data['data_samples'])
    probs = np.stack([p.pred_score.numpy() for p in preds]).astype(
        np.float64)
    labels = np.array([int(p.gt_label) for p in preds])
    assert len(labels) == 16
    assert metrics['accuracy/top1'] == pytest.approx(
        100 * np.mean(probs.argmax(1) == labels))
    assert metrics['calibration/ece'] == pytest.approx(
        100 * _hand_ece(probs, labels, 15), abs=1e-4)
    assert metrics['calibration/ece'] > 0
