"""The loss family against independent oracles (torch, autograd, the paper)."""
import pytest
import torch
import torch.nn.functional as F

from maxsup_mm.models.losses import (ConfidencePenaltyLoss,
                                     LabelSmoothDecompLoss, LogitPenaltyLoss,
                                     MaxSupLoss, OnlineLabelSmoothLoss,
                                     maxsup_cross_entropy)

DT = torch.float64


def _data(n=16, k=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=DT) * 3
    labels = torch.randint(0, k, (n,), generator=g)
    return logits, labels


def _mixup_target(labels, k, lam=0.7, seed=1):
    """What mmpretrain's Mixup makes: lam*onehot(y) + (1-lam)*onehot(y[perm])."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    onehot = F.one_hot(labels, k).double()
    return lam * onehot + (1 - lam) * onehot[perm]


def _manual_soft_ce(logits, target):
    """-sum_k y_k log(exp z_k / sum_j exp z_j), written out element by element."""
    out = []
    for z, y in zip(logits.tolist(), target.tolist()):
        m = max(z)
        lse = m + torch.log(torch.tensor(sum(torch.exp(torch.tensor(v - m)).item() for v in z))).item()
        out.append(-sum(yk * (zk - lse) for zk, yk in zip(z, y)))
    return torch.tensor(out, dtype=DT)


# --------------------------------------------------------------------------
# Label smoothing, 'full' == torch's own label_smoothing
# --------------------------------------------------------------------------
@pytest.mark.parametrize('alpha', [0.0, 0.1, 0.35])
def test_ls_full_equals_torch_label_smoothing(alpha):
    logits, labels = _data()
    loss = LabelSmoothDecompLoss(alpha=alpha, component='full')(logits, labels)
    expected = F.cross_entropy(logits, labels, label_smoothing=alpha)
    torch.testing.assert_close(loss, expected)


def test_ls_full_soft_target_equals_ce_on_smoothed_target():
    logits, labels = _data()
    k, alpha = logits.shape[1], 0.2
    target = _mixup_target(labels, k)
    loss = LabelSmoothDecompLoss(alpha=alpha)(logits, target,
                                              reduction_override='none')
    smoothed = (1 - alpha) * target + alpha / k
    torch.testing.assert_close(loss, _manual_soft_ce(logits, smoothed))
    # and torch agrees for probability targets too
    torch.testing.assert_close(
        loss, F.cross_entropy(logits, target, label_smoothing=alpha,
                              reduction='none'))


# --------------------------------------------------------------------------
# MaxSup
# --------------------------------------------------------------------------
def test_maxsup_value_is_ce_plus_gap():
    logits, labels = _data()
    alpha = 0.15
    loss = MaxSupLoss(alpha=alpha)(logits, labels, reduction_override='none')
    expected = F.cross_entropy(logits, labels, reduction='none') + alpha * (
        logits.max(1).values - logits.mean(1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize('soft', [False, True])
def test_maxsup_gradient_matches_eq9(soft):
    logits, labels = _data(n=12, k=9, seed=3)
    k, alpha = logits.shape[1], 0.2
    target = _mixup_target(labels, k) if soft else labels
    z = logits.clone().requires_grad_(True)
    MaxSupLoss(alpha=alpha, reduction='sum')(z, target).backward()
    # CE gradient: softmax - target; eq. (9): alpha(1-1/K) on argmax, -alpha/K else
    y = target if soft else F.one_hot(labels, k).double()
    eq9 = torch.full_like(logits, -alpha / k)
    eq9[torch.arange(len(logits)), logits.argmax(1)] = alpha * (1 - 1 / k)
    expected = torch.softmax(logits, 1) - y + eq9
    torch.testing.assert_close(z.grad, expected)


def test_maxsup_soft_target_ce_part_is_hand_written_sum():
    logits, labels = _data()
    target = _mixup_target(labels, logits.shape[1])
    alpha = 0.1
    loss = maxsup_cross_entropy(logits, target, alpha)
    expected = _manual_soft_ce(logits, target) + alpha * (
        logits.max(1).values - logits.mean(1))
    torch.testing.assert_close(loss, expected)


def test_maxsup_equals_ls_when_prediction_is_correct_and_differs_otherwise():
    logits = torch.tensor([[1.0, 4.0, 2.0], [1.0, 4.0, 2.0]])
    labels = torch.tensor([1, 2])  # first correct, second wrong
    ms = MaxSupLoss(alpha=0.1)(logits, labels, reduction_override='none')
    ls = F.cross_entropy(logits, labels, label_smoothing=0.1, reduction='none')
    torch.testing.assert_close(ms[0], ls[0])
    assert ms[1] > ls[1]


def test_maxsup_segmentation_shape_and_ignore_index():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=g, dtype=DT)
    target = torch.randint(0, 5, (2, 3, 4), generator=g)
    target[0, 0, :2] = 255
    loss = maxsup_cross_entropy(logits, target, 0.1, ignore_index=255)
    assert loss.shape == (2, 3, 4)
    assert (loss[0, 0, :2] == 0).all()
    flat = logits.permute(0, 2, 3, 1)[1, 2, 3]
    expected = F.cross_entropy(flat[None], target[1, 2, 3][None])[()] + 0.1 * (
        flat.max() - flat.mean())
    torch.testing.assert_close(loss[1, 2, 3], expected)


# --------------------------------------------------------------------------
# The decomposition of LS on a hand-worked 3-class example (eq. 5, Table 1)
# --------------------------------------------------------------------------
Z = torch.tensor([[1.0, 4.0, 2.0], [1.0, 4.0, 2.0]], dtype=DT)
Y = torch.tensor([2, 1])  # wrong (z_gt=2 < z_max=4), correct (z_gt=4)
CE = F.cross_entropy(Z, Y, reduction='none')
HAND = {
    # z_gt - mean: 2-7/3, 4-7/3
    'full': [-1 / 3, 5 / 3],
    # mean gap to the logits below z_gt: (2-1)/1 ; ((4-1)+(4-2))/2
    'regularization': [1.0, 2.5],
    # mean gap to the logits above z_gt: (2-4)/1 ; none -> 0
    'error_enhancement': [-2.0, 0.0],
    # z_gt - z_max
    'error_enhancement_max': [-2.0, 0.0],
}


@pytest.mark.parametrize('component', sorted(HAND))
def test_decomposition_terms_hand_worked(component):
    alpha = 0.5
    loss = LabelSmoothDecompLoss(alpha=alpha, component=component)(
        Z, Y, reduction_override='none')
    torch.testing.assert_close(
        loss, CE + alpha * torch.tensor(HAND[component], dtype=DT))


def test_decomposition_recombines_to_ls_eq5():
    """eq. (5): LS term = (M/K)*regularization + (N/K)*error-enhancement."""
    logits, labels = _data(n=64, k=10, seed=5)
    k = logits.shape[1]
    z_gt = logits.gather(1, labels[:, None])
    m = (logits < z_gt).sum(1).double()
    n = (logits > z_gt).sum(1).double()
    ce = F.cross_entropy(logits, labels, reduction='none')

    def term(c):
        return LabelSmoothDecompLoss(alpha=1.0, component=c)(
            logits, labels, reduction_override='none') - ce

    torch.testing.assert_close(
        term('full'), m / k * term('regularization') +
        n / k * term('error_enhancement'))


# --------------------------------------------------------------------------
# Reductions, weight, avg_factor, loss_weight
# --------------------------------------------------------------------------
def test_reductions_weight_avg_factor():
    logits, labels = _data()
    per = F.cross_entropy(logits, labels, reduction='none') + 0.1 * (
        logits.max(1).values - logits.mean(1))
    w = torch.rand(len(labels), generator=torch.Generator().manual_seed(2),
                   dtype=DT)
    loss = MaxSupLoss(alpha=0.1, loss_weight=2.0)
    torch.testing.assert_close(loss(logits, labels), 2 * per.mean())
    torch.testing.assert_close(
        loss(logits, labels, reduction_override='sum'), 2 * per.sum())
    torch.testing.assert_close(
        loss(logits, labels, reduction_override='none'), 2 * per)
    torch.testing.assert_close(loss(logits, labels, weight=w),
                               2 * (per * w).mean())
    torch.testing.assert_close(loss(logits, labels, weight=w, avg_factor=5.0),
                               2 * (per * w).sum() / 5.0)


# --------------------------------------------------------------------------
# Logit / confidence penalty
# --------------------------------------------------------------------------
def test_logit_penalty():
    logits, labels = _data()
    loss = LogitPenaltyLoss(beta=0.01)(logits, labels)
    expected = (F.cross_entropy(logits, labels, reduction='none') +
                0.005 * (logits**2).sum(1)).mean()
    torch.testing.assert_close(loss, expected)


def test_confidence_penalty():
    logits, labels = _data()
    q = torch.softmax(logits, 1)
    entropy = -(q * torch.log(q)).sum(1)
    loss = ConfidencePenaltyLoss(beta=0.3)(logits, labels)
    expected = (F.cross_entropy(logits, labels, reduction='none') -
                0.3 * entropy).mean()
    torch.testing.assert_close(loss, expected)


# --------------------------------------------------------------------------
# Online label smoothing
# --------------------------------------------------------------------------
def test_ols_first_epoch_is_label_smoothing():
    logits, labels = _data(k=5)
    logits = logits.float()
    k, alpha, s = 5, 0.5, 0.1
    ols = OnlineLabelSmoothLoss(num_classes=k, alpha=alpha, smoothing=s).eval()
    expected = alpha * F.cross_entropy(logits, labels) + (1 - alpha) * \
        F.cross_entropy(logits, labels, label_smoothing=s * k / (k - 1))
    torch.testing.assert_close(ols(logits, labels), expected)


def test_ols_epoch_update_uses_correct_predictions_only():
    k = 3
    logits = torch.tensor([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 2.0, 0.0],
                           [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 0, 2, 2])  # rows 0,1 correct (class 0), 3 correct
    ols = OnlineLabelSmoothLoss(num_classes=k, never_correct='keep').train()
    ols.hook_attached = True
    before = ols.supervise.clone()
    ols(logits, labels)
    ols.epoch_update()
    q = torch.softmax(logits, 1)
    torch.testing.assert_close(ols.supervise[:, 0], (q[0] + q[1]) / 2)
    torch.testing.assert_close(ols.supervise[:, 2], q[3])
    # class 1 had no correct sample: keeps its previous column
    torch.testing.assert_close(ols.supervise[:, 1], before[:, 1])
    assert ols.update.abs().sum() == 0 and ols.idx_count.sum() == 0
    # the next loss uses the new columns as soft labels
    expected = 0.5 * F.cross_entropy(logits, labels) + 0.5 * (
        -(ols.supervise.t()[labels] * torch.log_softmax(logits, 1)).sum(1)).mean()
    torch.testing.assert_close(ols.eval()(logits, labels), expected)


def test_ols_buffers_are_in_state_dict():
    ols = OnlineLabelSmoothLoss(num_classes=4)
    assert {'supervise', 'update', 'idx_count'} <= set(ols.state_dict())


def test_ols_warns_without_hook():
    logits, labels = _data(k=5)
    logits = logits.float()
    with pytest.warns(UserWarning, match='OnlineLabelSmoothHook'):
        OnlineLabelSmoothLoss(num_classes=5).train()(logits, labels)


# --------------------------------------------------------------------------
# Bad input gets a clear error
# --------------------------------------------------------------------------
@pytest.mark.parametrize('make, exc, match', [
    (lambda: MaxSupLoss(alpha=-0.1), ValueError, 'alpha must be >= 0'),
    (lambda: LabelSmoothDecompLoss(alpha=-1), ValueError, 'alpha'),
    (lambda: LabelSmoothDecompLoss(component='bogus'), ValueError,
     "unknown component 'bogus'"),
    (lambda: MaxSupLoss(reduction='avg'), ValueError, 'reduction'),
    (lambda: LogitPenaltyLoss(beta=-1), ValueError, 'beta'),
    (lambda: OnlineLabelSmoothLoss(num_classes=1), ValueError, 'num_classes'),
])
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize('loss', [
    MaxSupLoss(), LabelSmoothDecompLoss(component='regularization'),
    LogitPenaltyLoss(), ConfidencePenaltyLoss(),
    OnlineLabelSmoothLoss(num_classes=4).eval()
])
@pytest.mark.parametrize('logits, label, exc, match', [
    (torch.zeros(2, 4, 3), torch.zeros(2, dtype=torch.long), ValueError,
     'expects 2-D logits'),
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), ValueError,
     'expects 2-D logits'),
    (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), ValueError,
     'does not match'),
    (torch.zeros(3, 4), torch.zeros(3, 5), ValueError, 'does not match'),
    (torch.zeros(3, 4), torch.tensor([0, 1, 4]), ValueError,
     r'labels must lie in \[0, 4\)'),
    (torch.zeros(3, 4), torch.tensor([0, -1, 2]), ValueError,
     r'labels must lie in \[0, 4\)'),
    (torch.zeros(3, 4), torch.tensor([0., 1., 2.]), TypeError, 'integer'),
    (torch.zeros(3, 4, dtype=torch.long), torch.tensor([0, 1, 2]), TypeError,
     'floating point'),
])
def test_bad_inputs(loss, logits, label, exc, match):
    with pytest.raises(exc, match=match):
        loss(logits, label)


@pytest.mark.parametrize('component', ['regularization', 'error_enhancement',
                                       'error_enhancement_max'])
def test_soft_target_to_hard_only_component(component):
    logits, labels = _data()
    target = _mixup_target(labels, logits.shape[1])
    with pytest.raises(ValueError, match='needs hard class indices'):
        LabelSmoothDecompLoss(component=component)(logits, target)


def test_alpha_setter_validates():
    loss = MaxSupLoss()
    loss.alpha = 0.2
    assert loss.alpha == 0.2
    with pytest.raises(ValueError):
        loss.alpha = float('nan')


def test_registered_in_mmpretrain():
    from mmpretrain.registry import MODELS
    import maxsup_mm  # noqa: F401
    for name in ['MaxSupLoss', 'LabelSmoothDecompLoss', 'LogitPenaltyLoss',
                 'ConfidencePenaltyLoss', 'OnlineLabelSmoothLoss']:
        assert MODELS.get(name) is not None, name
    loss = MODELS.build(dict(type='MaxSupLoss', alpha=0.3))
    assert isinstance(loss, MaxSupLoss) and loss.alpha == 0.3


# --------------------------------------------------------------------------
# Label dtypes (issue 13.13): any integer class indices, as int64 ones
# --------------------------------------------------------------------------
def _every_loss(k):
    ols = OnlineLabelSmoothLoss(num_classes=k)
    ols.hook_attached = True
    return [MaxSupLoss(alpha=0.2), LabelSmoothDecompLoss(alpha=0.2),
            LabelSmoothDecompLoss(alpha=0.2, component='regularization'),
            LabelSmoothDecompLoss(alpha=0.2, component='error_enhancement'),
            LabelSmoothDecompLoss(alpha=0.2,
                                  component='error_enhancement_max'),
            LogitPenaltyLoss(beta=0.01), ConfidencePenaltyLoss(beta=0.3), ols]


@pytest.mark.parametrize('dtype', [torch.int32, torch.int16, torch.int8,
                                   torch.uint8], ids=str)
@pytest.mark.parametrize('index', range(8))
def test_integer_label_dtypes_equal_int64(dtype, index):
    logits, labels = _data(k=7)
    logits = logits.float()
    for train in (False, True):  # OLS also accumulates in training
        ref_fn, fn = _every_loss(7)[index], _every_loss(7)[index]
        ref_fn.train(train)
        fn.train(train)
        z_ref = logits.clone().requires_grad_(True)
        ref = ref_fn(z_ref, labels)
        ref.backward()
        z = logits.clone().requires_grad_(True)
        out = fn(z, labels.to(dtype))
        out.backward()
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(z.grad, z_ref.grad)
        for a, b in zip(fn.buffers(), ref_fn.buffers()):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('make', [
    lambda: MaxSupLoss(alpha=float('inf')),
    lambda: LabelSmoothDecompLoss(alpha=float('inf')),
    lambda: LogitPenaltyLoss(beta=float('inf')),
    lambda: ConfidencePenaltyLoss(beta=float('inf')),
    lambda: MaxSupLoss(loss_weight=float('nan')),
    lambda: MaxSupLoss(loss_weight=float('inf')),
    lambda: LogitPenaltyLoss(loss_weight=float('nan')),
    lambda: OnlineLabelSmoothLoss(num_classes=4, loss_weight=float('nan')),
])
def test_non_finite_hyperparameters_refused(make):
    with pytest.raises(ValueError, match='finite'):
        make()


def test_alpha_setter_refuses_inf():
    loss = MaxSupLoss()
    with pytest.raises(ValueError, match='finite'):
        loss.alpha = float('inf')
    assert loss.alpha == 0.1


# --------------------------------------------------------------------------
# The parts of the loss for the training log (issue 13.18)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('reduction, use_weight', [('mean', False),
                                                   ('sum', False),
                                                   ('mean', True)])
def test_recorded_terms_against_oracles(reduction, use_weight):
    """The recorded regularizer share and CE part: CE from F.cross_entropy,
    the MaxSup share from the paper's eq. (8), reduced like the loss."""
    from maxsup_mm.ops import max_suppression
    logits, labels = _data(k=9, seed=4)
    w = torch.rand(len(labels), generator=torch.Generator().manual_seed(3),
                   dtype=DT) if use_weight else None
    cases = [
        (MaxSupLoss(alpha=0.15, loss_weight=2.0), 'maxsup_term',
         lambda z: 0.15 * max_suppression(z)),
        (LogitPenaltyLoss(beta=0.01, loss_weight=2.0), 'logit_penalty_term',
         lambda z: 0.005 * z.pow(2).sum(1)),
        (LabelSmoothDecompLoss(alpha=0.2, loss_weight=2.0), 'ls_term',
         lambda z: F.cross_entropy(z, labels, label_smoothing=0.2,
                                   reduction='none') -
         F.cross_entropy(z, labels, reduction='none')),
        (ConfidencePenaltyLoss(beta=0.3, loss_weight=2.0),
         'confidence_penalty_term',
         lambda z: 0.3 * (torch.softmax(z, 1) * torch.log_softmax(z, 1)).sum(
             1)),
    ]

    def reduce(x):
        x = x if w is None else x * w
        return x.sum() if reduction == 'sum' else x.mean()

    for loss_fn, name, share_fn in cases:
        assert loss_fn.term_name == name
        loss_fn.train()
        loss_fn.record_terms = True
        out = loss_fn(logits, labels, weight=w, reduction_override=reduction)
        [(loss, term, coef, lw)] = loss_fn.pop_recorded()
        assert not term.requires_grad and loss_fn.pop_recorded() == []
        share = lw * coef * term
        torch.testing.assert_close(share, 2.0 * reduce(share_fn(logits)))
        torch.testing.assert_close(lw * loss - share, 2.0 * reduce(
            F.cross_entropy(logits, labels, reduction='none')))
        torch.testing.assert_close(lw * loss, out)
        loss_fn.eval()  # nothing is recorded outside training
        loss_fn(logits, labels)
        assert loss_fn.pop_recorded() == []


def test_loss_terms_in_the_training_log(imagenet_root, tmp_path,
                                        monkeypatch):
    """A tiny training run (Mixup/CutMix, MaxSupLoss) with LossTermsHook:
    every iteration's maxsup_term and ce_term reach the log and sum to the
    loss; the hook reads the device once per logging interval (2 iters)."""
    import inspect
    import json
    from tiny_classifier import tiny_runner
    reads = []
    real = torch.Tensor.tolist

    def spy(t):
        if 'loss_terms_hook' in inspect.stack()[1].filename:
            reads.append(t.numel())
        return real(t)

    runner = tiny_runner(imagenet_root, str(tmp_path), iters=6,
                         experiment_name='loss_terms_log',
                         custom_hooks=[dict(type='LossTermsHook')])
    monkeypatch.setattr(torch.Tensor, 'tolist', spy)
    runner.train()
    hub = runner.message_hub
    loss, term, ce = (torch.tensor(hub.get_scalar(f'train/{k}').data[0])
                      for k in ('loss', 'maxsup_term', 'ce_term'))
    assert len(loss) == len(term) == len(ce) == 6
    torch.testing.assert_close(term + ce, loss, rtol=1e-5, atol=1e-6)
    assert (term > 0).all() and (ce > 0).all()
    assert reads == [4, 4, 4], reads  # (loss, term) x 2 iterations, 3 times
    logged = [json.loads(line) for line in open(next(
        tmp_path.glob('*/vis_data/scalars.json')))]
    assert all('maxsup_term' in r and 'ce_term' in r for r in logged)


def test_avg_factor_without_weight_and_through_the_head():
    """mmpretrain's heads pass avg_factor=batch size: the op then reduces
    in place; any other avg_factor divides the sum, as mmpretrain does."""
    from mmpretrain.models.heads import LinearClsHead
    from mmpretrain.structures import DataSample
    logits, labels = _data()
    per = F.cross_entropy(logits, labels, reduction='none') + 0.1 * (
        logits.max(1).values - logits.mean(1))
    loss = MaxSupLoss(alpha=0.1, loss_weight=2.0)
    torch.testing.assert_close(loss(logits, labels, avg_factor=16),
                               2 * per.mean())
    torch.testing.assert_close(loss(logits, labels, avg_factor=5.0),
                               2 * per.sum() / 5)
    torch.testing.assert_close(
        loss(logits, labels, avg_factor=torch.tensor(4.0, dtype=DT)),
        2 * per.sum() / 4)
    head = LinearClsHead(num_classes=7, in_channels=3,
                         loss=dict(type='MaxSupLoss', alpha=0.1))
    feats = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    samples = [DataSample().set_gt_label(int(y)) for y in labels]
    out = head.loss((feats, ), samples)['loss']
    z = head.fc(feats)
    expected = (F.cross_entropy(z, labels, reduction='none') + 0.1 * (
        z.max(1).values - z.mean(1))).mean()
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------
# Mixed precision (issue 18.9): a float32 loss, as F.cross_entropy gives
# --------------------------------------------------------------------------
def _low_precision_cases():
    """(name, context, logits dtype): autocast on the CPU, plain bf16/fp16."""
    import contextlib
    return [('autocast-bf16', lambda: torch.autocast('cpu',
                                                     dtype=torch.bfloat16),
             torch.bfloat16),
            ('bf16', contextlib.nullcontext, torch.bfloat16),
            ('fp16', contextlib.nullcontext, torch.float16)]


@pytest.mark.parametrize('case', _low_precision_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize('soft', [False, True], ids=['hard', 'soft'])
def test_maxsup_loss_and_head_in_low_precision(case, soft):
    """MaxSupLoss and mmpretrain's LinearClsHead with it: the loss is
    float32 and equals the naive loss in float64 on the same (rounded)
    logits, with loss_weight and the head's avg_factor applied; the logits'
    gradient keeps their dtype."""
    from mmpretrain.models.heads import LinearClsHead
    from mmpretrain.structures import DataSample
    from maxsup_mm.ops import maxsup_cross_entropy_reference as ref
    name, context, dtype = case
    logits, labels = _data(n=16, k=7)
    target = _mixup_target(labels, 7).float() if soft else labels
    t64 = target.double() if soft else target
    z = logits.to(dtype).requires_grad_(True)
    with context():
        out = MaxSupLoss(alpha=0.2, loss_weight=2.0)(z, target)
    assert out.dtype == torch.float32
    expected = 2.0 * ref(z.detach().double(), t64, 0.2).mean()
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=0)
    out.backward()
    assert z.grad.dtype == dtype
    head = LinearClsHead(num_classes=7, in_channels=3,
                         loss=dict(type='MaxSupLoss', alpha=0.2))
    feats = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    if name != 'autocast-bf16':  # a model converted to bf16 / fp16
        head, feats = head.to(dtype), feats.to(dtype)
    samples = [DataSample().set_gt_score(y) if soft else
               DataSample().set_gt_label(int(y)) for y in target]
    with context():
        out = head.loss((feats, ), samples)['loss']
        z = head.fc(feats)
    assert z.dtype == dtype and out.dtype == torch.float32
    torch.testing.assert_close(
        out.double(), ref(z.detach().double(), t64, 0.2).mean(), rtol=1e-6,
        atol=0)


# --------------------------------------------------------------------------
# Empty batches, soft-target and alpha checks (issue 18.14)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('index', range(8))
@pytest.mark.parametrize('kwargs', [{}, dict(avg_factor=0),
                                    dict(weight=torch.ones(0))], ids=str)
def test_empty_batch_mean_is_zero_with_zero_gradient(index, kwargs):
    """N = 0 with reduction 'mean' (also with mmpretrain's avg_factor = N
    and a weight): 0, not NaN, in the graph, with a zero gradient.
    (mmpretrain's CrossEntropyLoss gives NaN, its LabelSmoothLoss raises:
    upstream defines nothing, so the sum over no sample, 0.)"""
    loss_fn = _every_loss(7)[index]
    for soft in (False, True):
        if soft and not loss_fn.accepts_soft_target:
            continue
        z = torch.zeros(0, 7, requires_grad=True)
        y = torch.zeros(0, 7) if soft else torch.zeros(0, dtype=torch.long)
        out = loss_fn(z, y, **kwargs)
        assert out.shape == () and out.requires_grad
        assert out.item() == 0, (type(loss_fn).__name__, soft, out)
        out.backward()
        assert z.grad is not None and z.grad.shape == (0, 7)


@pytest.mark.parametrize('index', range(8))
def test_soft_target_must_be_a_distribution(index):
    """Every loss that takes soft targets refuses rows that do not sum to
    1 or that have a negative entry (a device-side assert: on the CPU a
    RuntimeError at once); Mixup targets pass."""
    loss_fn = _every_loss(7)[index]
    if not loss_fn.accepts_soft_target:
        pytest.skip('hard labels only')
    logits, labels = _data(k=7)
    good = _mixup_target(labels, 7)
    twice = good * 2
    negative = good.clone()
    negative[0, :2] += torch.tensor([-0.5, 0.5], dtype=DT)
    for bad in (twice, negative):
        with pytest.raises(RuntimeError, match='sum to 1'):
            loss_fn(logits, bad)
    assert torch.isfinite(loss_fn(logits, good))


def test_one_alpha_check_for_the_op_and_the_losses():
    """alpha (and the other weights) are checked by one function, the op's
    (maxsup_mm.ops.check_nonnegative), which names the value."""
    from maxsup_mm import ops
    from maxsup_mm.models.losses import base
    assert base.check_nonnegative is ops.check_nonnegative
    for make in (lambda a: MaxSupLoss(alpha=a),
                 lambda a: LabelSmoothDecompLoss(alpha=a),
                 lambda a: maxsup_cross_entropy(
                     torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), a)):
        for alpha in (float('nan'), float('inf'), -1):
            with pytest.raises(ValueError, match=f'got {float(alpha)}'):
                make(alpha)


# --------------------------------------------------------------------------
# The registered MaxSupLoss costs what the op costs (issue 18.17): no
# tensor operation of its own on the training path (timing: tools/benchmark)
# --------------------------------------------------------------------------
def _aten_ops(fn):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sorted(e.name for e in prof.events()
                  if e.name.startswith(('aten::', 'maxsup_mm')))


@pytest.mark.parametrize('soft', [False, True], ids=['hard', 'soft'])
def test_maxsup_loss_runs_only_the_ops_tensor_operations(soft):
    """Forward and backward of MaxSupLoss (default loss_weight, the
    head's avg_factor = N) run exactly the tensor operations of the op with
    reduction='mean': no label check, product or reduction of its own."""
    from maxsup_mm import ops
    logits, labels = _data(n=64, k=10)
    z = logits.float().requires_grad_(True)
    y = _mixup_target(labels, 10).float() if soft else labels
    loss_fn = MaxSupLoss(alpha=0.1)

    def op():
        z.grad = None
        ops.maxsup_cross_entropy(z, y, 0.1, reduction='mean').backward()

    def module():
        z.grad = None
        loss_fn(z, y, avg_factor=64).backward()

    op(), module()  # warm
    want = _aten_ops(op)
    assert _aten_ops(module) == want
    torch.testing.assert_close(loss_fn(z, y, avg_factor=64),
                               ops.maxsup_cross_entropy(z, y, 0.1,
                                                        reduction='mean'),
                               rtol=0, atol=0)
