"""Online Label Smoothing: dtypes, non-finite rows, the class count, empty
batches, argument checks, and both releases' first-epoch matrix and
never-correct classes.

Oracles: torch's softmax / cross-entropy, and transcriptions, written here
independently of the code under test, of

* the MaxSup authors' ``OnlineLabelSmoothing`` (the defaults reproduce it):
  github.com/ZhouYuxuanYX/Maximum-Suppression-Regularization, commit
  5b7c0db7b845140345044ecff4d8f9e27b0d92f2, ``Conv/ffcv/losses.py``;
* Zhang et al.'s released training script: github.com/zhangchbin/
  OnlineLabelSmoothing, commit 7eaf70c8da7c68ba2170cbd88e0d918e86fa3f14,
  ``cifar/scripts/train_cifar_all_methods.py`` (``update_loss_lams``,
  ``soft_cross_entropy`` and the end-of-epoch update, lines 466-471).
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


def _never_correct_batch(seed=0, n=24):
    """Class 3 labels some samples, but none of them is classified as 3."""
    logits, labels = _batch(seed, n)
    wrong = (torch.arange(n) % 4 == 1) & (logits.argmax(1) != 3)
    return logits, torch.where(wrong, 3, labels)


class AuthorsReleaseOLS:
    """The MaxSup authors' ``OnlineLabelSmoothing`` (``Conv/ffcv/losses.py``
    at commit 5b7c0db, see the module docstring), line by line, in float64;
    columns = classes.  Left out: ``_convert_one_hot_to_label`` (lines
    151-168: it tests whether the *logits'* rows sum to 1, which random
    logits never do, so hard labels pass through unchanged)."""

    def __init__(self, alpha=0.5, n_classes=K, smoothing=0.1):
        self.a = alpha
        # lines 122-125: the first epoch's matrix is label smoothing
        self.supervise = torch.full((n_classes, n_classes),
                                    smoothing / (n_classes - 1),
                                    dtype=torch.float64)
        self.supervise.fill_diagonal_(1 - smoothing)
        # lines 127-129
        self.update = torch.zeros_like(self.supervise)
        self.idx_count = torch.zeros(n_classes, dtype=torch.float64)

    def forward(self, y_h, y):
        """Lines 144-149 and 181-187 (``forward`` and ``soft_loss``)."""
        y_h = y_h.double()
        hard_loss = F.cross_entropy(y_h, y)  # nn.CrossEntropyLoss()
        y_h = y_h.log_softmax(dim=-1)
        self.step(y_h.exp(), y)
        true_dist = torch.index_select(self.supervise, 1, y).swapaxes(-1, -2)
        soft_loss = torch.mean(torch.sum(-true_dist * y_h, dim=-1))
        return self.a * hard_loss + (1 - self.a) * soft_loss

    def step(self, y_h, y):
        """Lines 208-215."""
        y_h_idx = y_h.argmax(dim=-1)
        mask = torch.eq(y_h_idx, y)
        y_h_c = y_h[mask]
        y_h_idx_c = y_h_idx[mask]
        self.update.index_add_(1, y_h_idx_c, y_h_c.swapaxes(-1, -2))
        self.idx_count.index_add_(
            0, y_h_idx_c, torch.ones_like(y_h_idx_c, dtype=torch.float64))

    def next_epoch(self):
        """Lines 217-231: a class without a correct sample keeps a zero
        column (its ``update`` column is 0, divided by a count set to 1)."""
        self.idx_count[torch.eq(self.idx_count, 0)] = 1
        self.update /= self.idx_count
        self.supervise = self.update
        self.update = self.update.clone().zero_()
        self.idx_count.zero_()


def test_defaults_reproduce_maxsup_authors_release():
    batches = [_never_correct_batch(seed) for seed in range(3)]
    # the data: class 3 is a label but never correct; 0-2 are correct
    labels, preds = (torch.cat([b[i] for b in batches]) for i in (1, 0))
    preds = preds.argmax(1)
    assert (labels == 3).sum() >= 6 and not (preds[labels == 3] == 3).any()
    for c in range(3):
        assert (preds[labels == c] == c).any()
    ours = _ols()
    ref = AuthorsReleaseOLS()
    torch.testing.assert_close(ours.supervise, ref.supervise.float())
    for epoch in range(3):
        for logits, labels in batches:
            torch.testing.assert_close(ours(logits, labels),
                                       ref.forward(logits, labels).float())
        ref.next_epoch()
        ours.epoch_update()
        torch.testing.assert_close(ours.supervise, ref.supervise.float())
    # class 3 was never correct: a zero column, no soft term for it
    torch.testing.assert_close(ours.supervise[:, 3], torch.zeros(K))


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


@pytest.mark.parametrize('name, value, match', [
    ('alpha', float('nan'), 'got nan'),
    ('alpha', float('inf'), 'got inf'),
    ('alpha', -0.5, r'must lie in \[0, 1\], got -0.5'),
    ('alpha', 1.5, r'must lie in \[0, 1\], got 1.5'),
    ('smoothing', float('nan'), 'got nan'),
    ('smoothing', -0.1, r'must lie in \[0, 1\], got -0.1'),
    ('smoothing', 2.0, r'must lie in \[0, 1\], got 2.0'),
])
def test_bad_numbers_fail_at_construction_in_one_line(name, value, match):
    """One line naming the loss, the argument and its value."""
    with pytest.raises(ValueError,
                       match=f'^OnlineLabelSmoothLoss: {name} .*{match}$'):
        OnlineLabelSmoothLoss(num_classes=K, **{name: value})


@pytest.mark.parametrize('value', [True, '0.5', None])
def test_alpha_must_be_a_number(value):
    with pytest.raises(TypeError, match='^OnlineLabelSmoothLoss: alpha must '
                       f'be a number, got {type(value).__name__}$'):
        OnlineLabelSmoothLoss(num_classes=K, alpha=value)


@pytest.mark.parametrize('soft', [False, True])
def test_empty_batch_mean_is_zero_not_nan(soft):
    """The mean over no samples is 0 (issue 18, item 14; mmpretrain's
    CrossEntropyLoss gives NaN), keeps the graph, and adds no statistics."""
    logits = torch.zeros(0, K, requires_grad=True)
    labels = torch.zeros(0, K) if soft else torch.zeros(0, dtype=torch.long)
    ours = _ols(reduction='mean')
    loss = ours(logits, labels)
    assert loss.shape == () and loss.requires_grad
    torch.testing.assert_close(loss.detach(), torch.tensor(0.))
    loss.backward()
    assert logits.grad.shape == (0, K)
    assert not ours.idx_count.any() and not ours.update.any()


@pytest.mark.parametrize('never_correct', ['keep', 'uniform', 'zeros'])
def test_training_step_and_epoch_update_read_no_device_value(never_correct):
    """Meta tensors have no values: a host read (``.item()``, ``bool()``,
    ``nonzero()``, boolean-mask indexing) raises on them."""
    ours = _ols(never_correct=never_correct).to('meta')
    logits = torch.empty(8, K, device='meta', requires_grad=True)
    labels = torch.empty(8, dtype=torch.long, device='meta')
    ours(logits, labels).backward()
    ours.epoch_update()
    assert ours.supervise.device.type == 'meta'
