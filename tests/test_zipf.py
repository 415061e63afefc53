"""Zipf's label smoothing: the label function, the KL term and both heads.

Oracles: the hand-worked example of shared/notes/zipf-ls.md (closed form),
SciPy's ``rankdata(method='min')``, ``F.kl_div`` on explicitly sliced
tensors, ``F.conv2d`` (the dense classifier as a 1x1 convolution), the
closed-form gradient of the KL term and ``F.cross_entropy``.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from maxsup_mm.models.losses.functional import (min_rank, zipf_kl_term,
                                                zipf_soft_label, zipf_votes)


# ---------------------------------------------------------------------------
# the label function
# ---------------------------------------------------------------------------
def test_hand_worked_example():
    """K=5, target 0, votes (3,2,2,0,0) -> (1/2,1/2,1/4,1/4)/1.5."""
    votes = torch.tensor([[3., 2., 2., 0., 0.]])
    label = zipf_soft_label(votes, torch.tensor([0]))
    expected = torch.tensor([[0., 1 / 2, 1 / 2, 1 / 4, 1 / 4]]) / 1.5
    torch.testing.assert_close(label, expected)
    assert torch.equal(min_rank(votes), torch.tensor([[1, 2, 2, 4, 4]]))


def test_target_not_top_voted():
    """The target keeps its rank slot: votes (0,5,1,1), target 0 -> ranks
    of classes 1..3 are (1, 2, 2), label (1, 1/2, 1/2) / 2."""
    label = zipf_soft_label(torch.tensor([[0., 5., 1., 1.]]),
                            torch.tensor([0]))
    torch.testing.assert_close(label, torch.tensor([[0., .5, .25, .25]]))


def test_min_rank_matches_scipy():
    gen = torch.Generator().manual_seed(0)
    votes = torch.randint(0, 4, (50, 17), generator=gen).float()  # many ties
    expected = rankdata(-votes.numpy(), method='min', axis=1)
    assert np.array_equal(min_rank(votes).numpy(), expected)


@pytest.mark.parametrize('power', [1.0, 0.5, 2.0])
def test_label_matches_rank_formula(power):
    gen = torch.Generator().manual_seed(1)
    votes = torch.randint(0, 6, (20, 10), generator=gen).float()
    target = torch.randint(0, 10, (20,), generator=gen)
    label = zipf_soft_label(votes, target, power).numpy()
    for i in range(20):
        mass = rankdata(-votes[i].numpy(), method='min') ** -power
        mass[target[i]] = 0
        np.testing.assert_allclose(label[i], mass / mass.sum(), rtol=1e-6)


def test_all_votes_on_target_give_uniform_label():
    votes = torch.tensor([[7., 0., 0., 0.], [0., 0., 9., 0.]])
    label = zipf_soft_label(votes, torch.tensor([0, 2]))
    torch.testing.assert_close(
        label, torch.tensor([[0., 1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 0,
                                                         1 / 3]]))


def test_label_has_no_gradient():
    votes = torch.rand(3, 5, requires_grad=True)
    label = zipf_soft_label(votes, torch.tensor([0, 1, 2]))
    assert not label.requires_grad


def test_label_input_errors():
    with pytest.raises(ValueError, match='votes must be'):
        zipf_soft_label(torch.rand(5), torch.tensor([0]))
    with pytest.raises(ValueError, match='integer class'):
        zipf_soft_label(torch.rand(2, 5), torch.tensor([0., 1.]))


def test_votes_count_argmax_per_location():
    gen = torch.Generator().manual_seed(2)
    dense = torch.randn(4, 6, 9, generator=gen)
    votes = zipf_votes(dense)
    for i in range(4):
        counts = np.bincount(dense[i].argmax(0).numpy(), minlength=6)
        assert np.array_equal(votes[i].numpy(), counts)
    assert torch.equal(votes.sum(1), torch.full((4,), 9.))


# ---------------------------------------------------------------------------
# the KL term
# ---------------------------------------------------------------------------
def _kl_oracle(logits, target, label):
    out = []
    for z, y, p in zip(logits, target, label):
        rest = torch.cat([z[:y], z[y + 1:]])
        p_rest = torch.cat([p[:y], p[y + 1:]])
        out.append(F.kl_div(F.log_softmax(rest, 0), p_rest, reduction='sum'))
    return torch.stack(out)


def test_kl_matches_sliced_oracle_and_gradient():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 7, generator=gen, dtype=torch.float64,
                         requires_grad=True)
    target = torch.randint(0, 7, (6,), generator=gen)
    votes = torch.randint(0, 5, (6, 7), generator=gen).double()
    label = zipf_soft_label(votes, target).double()
    kl = zipf_kl_term(logits, target, label)
    torch.testing.assert_close(kl, _kl_oracle(logits, target, label))
    assert (kl >= 0).all()
    # closed form: d KL / d z_k = q_k - p_k off the target, 0 on it
    kl.sum().backward()
    keep = torch.ones_like(label, dtype=torch.bool)
    keep[torch.arange(6), target] = False
    q = F.softmax(logits.detach().masked_fill(~keep, float('-inf')), dim=1)
    torch.testing.assert_close(logits.grad, (q - label) * keep)


def test_kl_is_zero_when_prediction_equals_label():
    label = torch.tensor([[0., .5, .25, .25]])
    logits = torch.tensor([[5.0, np.log(.5), np.log(.25), np.log(.25)]])
    kl = zipf_kl_term(logits.float(), torch.tensor([0]), label)
    torch.testing.assert_close(kl, torch.zeros(1), atol=1e-6, rtol=0)


def test_kl_in_float32_for_half_logits():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 9, generator=gen) * 4
    target = torch.tensor([0, 3, 8, 2])
    label = zipf_soft_label(torch.randint(0, 5, (4, 9), generator=gen).float(),
                            target)
    half = zipf_kl_term(logits.bfloat16(), target, label)
    assert half.dtype == torch.float32
    torch.testing.assert_close(
        half, _kl_oracle(logits.bfloat16().float(), target, label))


# ---------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------
def _samples(labels=None, scores=None):
    from mmpretrain.structures import DataSample
    if scores is not None:
        return [DataSample().set_gt_score(s) for s in scores]
    return [DataSample().set_gt_label(int(y)) for y in labels]


def _cnn_head(**kwargs):
    from mmpretrain.registry import MODELS
    import maxsup_mm  # noqa: F401
    kwargs.setdefault('zipf_weight', 0.3)
    head = MODELS.build(
        dict(type='ZipfLinearClsHead', num_classes=6, in_channels=8,
             **kwargs))
    head.init_weights()
    torch.nn.init.normal_(head.fc.weight)
    return head


@pytest.mark.parametrize('upsample', [None, 'bilinear', 'bicubic', 'nearest'])
def test_cnn_head_loss_matches_oracle(upsample):
    gen = torch.Generator().manual_seed(4)
    head = _cnn_head(dense_upsample=upsample)
    fmap = torch.randn(5, 8, 3, 3, generator=gen)
    labels = torch.randint(0, 6, (5,), generator=gen)
    losses = head.loss((fmap, ), _samples(labels))
    # oracle: the fc as a 1x1 convolution over the (upsampled) map
    weight = head.fc.weight[:, :, None, None]
    # the authors' order: upsample the feature map, then classify
    x = fmap if upsample is None else F.interpolate(
        fmap, scale_factor=2, mode=upsample,
        align_corners=None if upsample == 'nearest' else False)
    dense = F.conv2d(x, weight, head.fc.bias).flatten(2)
    logits = F.conv2d(fmap, weight, head.fc.bias).mean(dim=(2, 3))
    torch.testing.assert_close(head((fmap, )), logits)
    expected = []
    for i in range(5):
        counts = np.bincount(dense[i].argmax(0).numpy(), minlength=6)
        mass = rankdata(-counts, method='min') ** -1.0
        mass[labels[i]] = 0
        expected.append(torch.tensor(mass / mass.sum(), dtype=torch.float32))
    kl = _kl_oracle(logits, labels, torch.stack(expected))
    torch.testing.assert_close(losses['loss_cls'],
                               F.cross_entropy(logits, labels))
    torch.testing.assert_close(losses['loss_zipf'], 0.3 * kl.mean())


def test_cnn_head_soft_target_uses_argmax():
    gen = torch.Generator().manual_seed(5)
    head = _cnn_head(loss=dict(type='CrossEntropyLoss', use_soft=True))
    fmap = torch.randn(4, 8, 2, 2, generator=gen)
    scores = torch.softmax(torch.randn(4, 6, generator=gen) * 3, 1)
    soft = head.loss((fmap, ), _samples(scores=scores))
    one_hot = F.one_hot(scores.argmax(1), 6).float()
    hard = head.loss((fmap, ), _samples(scores=one_hot))
    torch.testing.assert_close(soft['loss_zipf'], hard['loss_zipf'])
    logits = head((fmap, ))
    torch.testing.assert_close(
        soft['loss_cls'], -(scores * F.log_softmax(logits, 1)).sum(1).mean())


def test_cnn_head_needs_unpooled_map():
    head = _cnn_head()
    with pytest.raises(ValueError, match='neck=None'):
        head.loss((torch.randn(2, 8), ), _samples([0, 1]))
    with pytest.raises(ValueError, match='dense_upsample'):
        _cnn_head(dense_upsample='cubic')
    with pytest.raises(ValueError, match='zipf_weight'):
        _cnn_head(zipf_weight=-1.)


def test_head_training_accuracy_and_soft_target_error():
    """``cal_acc`` adds the top-k training accuracy (as mmpretrain's heads
    log it) next to the two loss terms; with soft targets it is an error.
    mmpretrain's ``Accuracy.calculate`` (what ``ClsHead._get_loss`` uses)
    counts a top-k hit only where that score is above its threshold 0 (the
    heads pass raw logits), so the oracle does too."""
    torch.manual_seed(0)  # the head's initial weights
    gen = torch.Generator().manual_seed(7)
    head = _cnn_head(cal_acc=True, topk=(1, 2))
    fmap = torch.randn(6, 8, 2, 2, generator=gen)
    labels = torch.randint(0, 6, (6,), generator=gen)
    losses = head.loss((fmap, ), _samples(labels))
    assert set(losses) == {'loss_cls', 'loss_zipf', 'accuracy_top-1',
                           'accuracy_top-2'}
    logits = head((fmap, ))
    for k in (1, 2):
        top = logits.topk(k, dim=1)
        hits = ((top.indices == labels[:, None]) & (top.values > 0)).any(1)
        acc = losses[f'accuracy_top-{k}']  # [value at threshold 0]
        acc = acc[0] if isinstance(acc, (list, tuple)) else acc
        torch.testing.assert_close(acc.reshape(()), 100 * hits.float().mean())
    torch.testing.assert_close(losses['loss_cls'],
                               F.cross_entropy(logits, labels))
    scores = torch.softmax(torch.randn(6, 6, generator=gen), 1)
    with pytest.raises(ValueError, match='cal_acc'):
        head.loss((fmap, ), _samples(scores=scores))


def _vit_head(**kwargs):
    from mmpretrain.registry import MODELS
    import maxsup_mm  # noqa: F401
    head = MODELS.build(
        dict(type='ZipfVisionTransformerClsHead', num_classes=6,
             in_channels=8, zipf_weight=0.5, **kwargs))
    head.init_weights()
    for p in head.parameters():
        torch.nn.init.normal_(p)
    return head


@pytest.mark.parametrize('hidden_dim', [None, 5])
def test_vit_head_loss_matches_oracle(hidden_dim):
    gen = torch.Generator().manual_seed(6)
    head = _vit_head(hidden_dim=hidden_dim)
    tokens = torch.randn(3, 1 + 16, 8, generator=gen)
    labels = torch.tensor([0, 3, 5])
    losses = head.loss((tokens, ), _samples(labels))

    def classify(x):  # an independent copy of the classifier
        if hidden_dim is not None:
            x = torch.tanh(x @ head.layers.pre_logits.weight.T +
                           head.layers.pre_logits.bias)
        return x @ head.layers.head.weight.T + head.layers.head.bias

    logits = classify(tokens[:, 0])
    torch.testing.assert_close(head((tokens, )), logits)
    torch.testing.assert_close(head((tokens[:, 0], )), logits)
    expected = []
    for i in range(3):
        counts = np.bincount(
            classify(tokens[i, 1:]).argmax(1).detach().numpy(), minlength=6)
        mass = rankdata(-counts, method='min') ** -1.0
        mass[labels[i]] = 0
        expected.append(torch.tensor(mass / mass.sum(), dtype=torch.float32))
    kl = _kl_oracle(logits, labels, torch.stack(expected))
    torch.testing.assert_close(losses['loss_cls'],
                               F.cross_entropy(logits, labels))
    torch.testing.assert_close(losses['loss_zipf'], 0.5 * kl.mean())


def test_vit_head_needs_patch_tokens():
    head = _vit_head()
    with pytest.raises(ValueError, match="out_type='raw'"):
        head.loss((torch.randn(2, 8), ), _samples([0, 1]))


@pytest.fixture
def one_thread():
    """2-image-scale CPU work: one intra-op thread is faster on a shared
    2-core machine (speed only; no result depends on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(model, inputs, labels, steps=8, lr=0.05):
    """A few SGD steps through the mmpretrain model; return the losses."""
    from mmengine.optim import OptimWrapper
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=lr,
                                           momentum=0.9))
    history = []
    for _ in range(steps):
        data = dict(inputs=inputs, data_samples=_samples(labels))
        log_vars = model.train_step(data, wrapper)
        history.append({k: float(v.detach()) for k, v in log_vars.items()})
    return history


def _check_training(history):
    for record in history:
        assert np.isfinite(record['loss']) and record['loss_zipf'] > 0
        assert record['loss'] == pytest.approx(record['loss_cls'] +
                                               record['loss_zipf'])
    total = [r['loss'] for r in history]  # log_vars['loss'] is the sum
    assert total[-1] < total[0]


def test_cnn_head_trains(one_thread):
    from mmpretrain.registry import MODELS
    import maxsup_mm  # noqa: F401
    torch.manual_seed(0)
    model = MODELS.build(
        dict(type='ImageClassifier',
             backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=16,
                           base_channels=16),
             neck=None,
             head=dict(type='ZipfLinearClsHead', num_classes=10,
                       in_channels=128, zipf_weight=0.1,
                       dense_upsample='bilinear'),
             data_preprocessor=dict(num_classes=10, mean=[127.5] * 3,
                                    std=[64.] * 3)))
    model.init_weights()
    inputs = torch.randint(0, 255, (8, 3, 16, 16), dtype=torch.uint8)
    history = _train(model, inputs.float(), torch.arange(8) % 10)
    _check_training(history)


def test_vit_head_trains(one_thread):
    from mmpretrain.registry import MODELS
    import maxsup_mm  # noqa: F401
    torch.manual_seed(0)
    model = MODELS.build(
        dict(type='ImageClassifier',
             backbone=dict(
                 type='VisionTransformer',
                 arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                           feedforward_channels=64),
                 img_size=32, patch_size=8, out_type='raw'),
             neck=None,
             head=dict(type='ZipfVisionTransformerClsHead', num_classes=10,
                       in_channels=32, zipf_weight=0.1),
             data_preprocessor=dict(num_classes=10, mean=[127.5] * 3,
                                    std=[64.] * 3)))
    model.init_weights()
    inputs = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    history = _train(model, inputs.float(), torch.arange(8) % 10, lr=0.02)
    _check_training(history)
