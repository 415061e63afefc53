"""Online Label Smoothing: dtypes, non-finite rows, the class count, and
both releases' first-epoch matrix and never-correct classes.

Oracles: torch's softmax / cross-entropy, and a per-sample transcription of
Zhang et al.'s released training script (cifar/scripts/
train_cifar_all_methods.py: ``update_loss_lams``, ``soft_cross_entropy`` and
the end-of-epoch update), written here independently of the code under test.
"""
import pytest
import torch
import torch.nn.functional as F

from maxsup_mm.models.losses import OnlineLabelSmoothLoss

K = 4


def _batch(seed=0, n=24):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, K, generator=g) * 2
    labels = logits.argmax(1)
    labels[::3] = torch.randint(0, K, (len(labels[::3]), ), generator=g)
    labels[labels == 3] = 2  # class 3 never appears: never correct
    return logits, labels


def _ols(**kwargs):
    loss = OnlineLabelSmoothLoss(num_classes=K, **kwargs).train()
    loss.hook_attached = True
    return loss


class ZhangReleaseOLS:
    """Zhang et al.'s released OLS, per sample (rows = classes)."""

    def __init__(self, init):
        self.matrix = init.clone()

    def loss(self, logits, target):
        soft = torch.stack([self.matrix[t] for t in target])
        ce = F.cross_entropy(logits, target)
        soft_ce = (-F.log_softmax(logits, 1) * soft).sum() / len(target)
        return 0.5 * ce + 0.5 * soft_ce

    def epoch(self, batches):
        lams, cnt = torch.zeros(K, K, dtype=torch.float64), torch.zeros(K)
        for logits, target in batches:
            probs = torch.softmax(logits.double(), 1)
            for k in range(len(target)):
                if target[k] != probs[k].argmax():
                    continue
                lams[target[k]] += probs[k]
                cnt[target[k]] += 1
        for c in range(K):
            self.matrix[c] = 1. / K if cnt[c] < 0.5 else lams[c] / cnt[c]


def test_zhang_release_reproduced_with_zeros_init_and_uniform_fallback():
    batches = [_batch(seed) for seed in range(3)]
    ours = _ols(init='zeros', never_correct='uniform')
    ref = ZhangReleaseOLS(torch.zeros(K, K, dtype=torch.float64))
    for epoch in range(3):
        for logits, labels in batches:
            torch.testing.assert_close(ours(logits, labels),
                                       ref.loss(logits, labels).float())
        ref.epoch(batches)
        ours.epoch_update()
        torch.testing.assert_close(ours.supervise.t(), ref.matrix.float())
    # class 3 was never correct: the release's uniform 1/K soft label
    torch.testing.assert_close(ours.supervise[:, 3], torch.full((K, ), 0.25))


def test_first_epoch_with_zeros_init_is_half_cross_entropy():
    logits, labels = _batch()
    ours = _ols(init='zeros')
    torch.testing.assert_close(ours(logits, labels),
                               0.5 * F.cross_entropy(logits, labels))


def test_uniform_init_is_release_fine_grained_start():
    logits, labels = _batch()
    ours = _ols(init='uniform', alpha=0.0)
    torch.testing.assert_close(
        ours(logits, labels),
        F.cross_entropy(logits, labels, label_smoothing=1.0))


@pytest.mark.parametrize('never_correct, expected', [
    ('keep', None), ('uniform', 0.25), ('zeros', 0.0)])
def test_never_correct_class_choices(never_correct, expected):
    logits, labels = _batch()
    ours = _ols(never_correct=never_correct)
    before = ours.supervise[:, 3].clone()
    ours(logits, labels)
    ours.epoch_update()
    column = ours.supervise[:, 3]
    if expected is None:
        torch.testing.assert_close(column, before)
    else:
        torch.testing.assert_close(column, torch.full((K, ), expected))


def test_double_module_and_logits():
    logits, labels = _batch()
    ours = _ols().double()
    loss = ours(logits.double(), labels)
    assert loss.dtype == torch.float64
    ours.epoch_update()
    probs = torch.softmax(logits.double(), 1)
    correct = probs.argmax(1) == labels
    for c in range(3):
        sel = correct & (labels == c)
        assert sel.any()
        torch.testing.assert_close(ours.supervise[:, c], probs[sel].mean(0))


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_rows_never_count_as_correct(bad):
    logits, labels = _batch()
    poisoned = logits.clone()
    poisoned[0] = bad  # argmax of an all-NaN row is 0
    labels = labels.clone()
    labels[0] = 0
    ours = _ols()
    ours(poisoned, labels)
    ours.epoch_update()
    assert torch.isfinite(ours.supervise).all()
    probs = torch.softmax(logits, 1)
    correct = probs.argmax(1) == labels
    correct[0] = False
    for c in range(3):
        sel = correct & (labels == c)
        torch.testing.assert_close(ours.supervise[:, c], probs[sel].mean(0))


@pytest.mark.parametrize('train', [True, False])
def test_num_classes_must_match_logits(train):
    logits, labels = _batch()
    ours = OnlineLabelSmoothLoss(num_classes=5).train(train)
    ours.hook_attached = True
    with pytest.raises(ValueError, match=r'num_classes=5 but the logits have '
                       r'4 classes'):
        ours(logits, labels)


@pytest.mark.parametrize('kwargs, match', [
    (dict(init='ls'), 'init must be one of'),
    (dict(never_correct='previous'), 'never_correct must be one of'),
])
def test_bad_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OnlineLabelSmoothLoss(num_classes=K, **kwargs)
