"""MaxSup as an mmseg pixel loss, against a hand-written per-pixel oracle."""
import math

import pytest
import torch

import maxsup_mm  # noqa: F401  (registers MaxSupLoss in mmseg's MODELS)
from maxsup_mm.models.losses.pixel_maxsup_loss import PixelMaxSupLoss

IGNORE = 255


def oracle(logits, label, alpha, ignore_index, avg_non_ignore,
           class_weight=None):
    """Mean of the per-pixel MaxSup loss written out with Python scalars.

    Per pixel (paper eq. (8)): -log softmax(z)_y + alpha*(max z - mean z),
    times the class weight; ignored pixels add 0 to the sum and count 0 in
    the denominator (avg_non_ignore=True) or, as in mmseg's
    CrossEntropyLoss, 1 (False) - class_weight[ignore_index] with class
    weights when the ignored label is a class index.
    """
    n, k, h, w = logits.shape
    total, denom = 0.0, 0.0
    for b in range(n):
        for i in range(h):
            for j in range(w):
                y = int(label[b, i, j])
                if y == ignore_index:
                    if not avg_non_ignore:
                        denom += class_weight[y] if (
                            class_weight is not None and 0 <= y < k) else 1.0
                    continue
                z = [float(logits[b, c, i, j]) for c in range(k)]
                zmax = max(z)
                lse = zmax + math.log(sum(math.exp(v - zmax) for v in z))
                loss = (lse - z[y]) + alpha * (zmax - sum(z) / k)
                cw = 1.0 if class_weight is None else class_weight[y]
                total += cw * loss
                denom += cw
    return total / denom


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64) * 3
    label = torch.randint(0, 5, (2, 3, 4), generator=g)
    label[0, 0, :] = IGNORE
    label[1, 2, 1] = IGNORE
    return logits, label


@pytest.mark.parametrize('avg_non_ignore', [False, True])
@pytest.mark.parametrize('alpha', [0.0, 0.1, 0.7])
def test_pixel_maxsup_matches_oracle(batch, alpha, avg_non_ignore):
    logits, label = batch
    loss_fn = PixelMaxSupLoss(alpha=alpha, avg_non_ignore=avg_non_ignore)
    got = loss_fn(logits, label, ignore_index=IGNORE)
    want = oracle(logits, label, alpha, IGNORE, avg_non_ignore)
    # rel 1e-7: mmseg's mean is sum / (n + float32 eps)
    assert got.item() == pytest.approx(want, rel=1e-7)


def test_avg_non_ignore_changes_only_the_denominator(batch):
    logits, label = batch
    valid = int((label != IGNORE).sum())
    a = PixelMaxSupLoss(avg_non_ignore=False)(logits, label,
                                              ignore_index=IGNORE)
    b = PixelMaxSupLoss(avg_non_ignore=True)(logits, label,
                                             ignore_index=IGNORE)
    assert valid < label.numel()
    assert (a * label.numel()).item() == pytest.approx((b * valid).item())


@pytest.mark.parametrize('avg_non_ignore', [False, True])
def test_class_weight_and_loss_weight(batch, avg_non_ignore):
    logits, label = batch
    cw = [0.5, 1.0, 2.0, 0.25, 3.0]
    loss_fn = PixelMaxSupLoss(alpha=0.2, class_weight=cw, loss_weight=0.4,
                              avg_non_ignore=avg_non_ignore)
    got = loss_fn(logits, label, ignore_index=IGNORE)
    want = 0.4 * oracle(logits, label, 0.2, IGNORE, avg_non_ignore, cw)
    assert got.item() == pytest.approx(want, rel=1e-7)


def test_alpha_zero_is_mmseg_cross_entropy(batch):
    """With alpha=0 it is mmseg's CrossEntropyLoss (an independent impl.)."""
    from mmseg.models.losses import CrossEntropyLoss
    logits, label = batch
    for avg_non_ignore in (False, True):
        ce = CrossEntropyLoss(avg_non_ignore=avg_non_ignore)(
            logits, label, ignore_index=IGNORE)
        ms = PixelMaxSupLoss(alpha=0.0, avg_non_ignore=avg_non_ignore)(
            logits, label, ignore_index=IGNORE)
        assert ms.item() == pytest.approx(ce.item(), rel=1e-12)


def test_gradient_matches_oracle_and_ignored_pixels_get_none(batch):
    logits, label = batch
    x = logits.clone().requires_grad_(True)
    PixelMaxSupLoss(alpha=0.3, avg_non_ignore=True)(
        x, label, ignore_index=IGNORE).backward()
    # eq. (9) + CE gradient, per valid pixel: softmax - onehot
    # + alpha*(onehot(argmax) - 1/K), divided by the number of valid pixels
    valid = label != IGNORE
    k = logits.shape[1]
    safe = label.masked_fill(~valid, 0)
    onehot = torch.nn.functional.one_hot(safe, k).permute(0, 3, 1, 2)
    top = torch.nn.functional.one_hot(logits.argmax(1), k).permute(0, 3, 1, 2)
    want = logits.softmax(1) - onehot + 0.3 * (top - 1.0 / k)
    want = want * valid.unsqueeze(1) / valid.sum()
    assert torch.allclose(x.grad, want, atol=1e-12)
    assert x.grad.permute(0, 2, 3, 1)[~valid].abs().max() == 0


def test_reductions_weight_and_avg_factor(batch):
    logits, label = batch
    loss_fn = PixelMaxSupLoss(alpha=0.1)
    per_pixel = loss_fn(logits, label, ignore_index=IGNORE,
                        reduction_override='none')
    assert per_pixel.shape == label.shape
    assert per_pixel[label == IGNORE].abs().max() == 0
    total = loss_fn(logits, label, ignore_index=IGNORE,
                    reduction_override='sum')
    assert total.item() == pytest.approx(per_pixel.sum().item())
    weight = torch.rand(label.shape, dtype=torch.float64)
    got = loss_fn(logits, label, weight=weight, avg_factor=7.0,
                  ignore_index=IGNORE)
    assert got.item() == pytest.approx((per_pixel * weight).sum().item() / 7,
                                       rel=1e-6)


def test_all_ignored_gives_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2)
    label = torch.full((1, 2, 2), IGNORE)
    for avg_non_ignore in (False, True):
        out = PixelMaxSupLoss(avg_non_ignore=avg_non_ignore)(
            logits, label, ignore_index=IGNORE)
        assert torch.isfinite(out) and out.item() == 0


def test_built_from_mmseg_registry_with_loss_name():
    from mmseg.registry import MODELS
    loss = MODELS.build(dict(type='mmseg.MaxSupLoss', alpha=0.2,
                             loss_name='loss_maxsup'))
    assert isinstance(loss, PixelMaxSupLoss)
    assert loss.loss_name == 'loss_maxsup' and loss.alpha == 0.2
    assert getattr(loss, 'alpha_schedulable', False)


def test_decode_head_uses_it(batch):
    """An mmseg decode head reports it under loss_name and back-propagates."""
    from mmseg.models.decode_heads import FCNHead
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    torch.manual_seed(0)
    head = FCNHead(in_channels=8, channels=8, num_convs=1, num_classes=5,
                   loss_decode=dict(type='MaxSupLoss', alpha=0.1,
                                    loss_name='loss_maxsup'))
    feats = [torch.randn(2, 8, 4, 4)]
    samples = []
    for b in range(2):
        sample = SegDataSample()
        seg = torch.randint(0, 5, (1, 8, 8))
        seg[:, 0] = IGNORE
        sample.gt_sem_seg = PixelData(data=seg)
        sample.set_metainfo(dict(img_shape=(8, 8), pad_shape=(8, 8)))
        samples.append(sample)
    losses = head.loss(feats, samples, train_cfg=dict())
    assert set(losses) == {'loss_maxsup', 'acc_seg'}
    losses['loss_maxsup'].backward()
    assert head.conv_seg.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('kwargs, error', [
    (dict(loss_name='maxsup'), ValueError),
    (dict(alpha=-0.1), ValueError),
    (dict(reduction='avg'), ValueError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        PixelMaxSupLoss(**kwargs)


def test_bad_inputs(batch):
    logits, label = batch
    loss_fn = PixelMaxSupLoss()
    bad = label.clone()
    bad[0, 1, 1] = 7  # neither a class of 5 nor the ignore index
    with pytest.raises(ValueError, match=r'\[0, 5\)'):
        loss_fn(logits, bad, ignore_index=IGNORE)
    with pytest.raises(ValueError, match='does not match'):
        loss_fn(logits, label[:, :2], ignore_index=IGNORE)
    with pytest.raises(TypeError, match='integer'):
        loss_fn(logits, label.double(), ignore_index=IGNORE)


# --------------------------------------------------------------------------
# class_weight and ignored pixels average like mmseg (issue 13.12)
# --------------------------------------------------------------------------
def test_class_weight_averages_like_mmseg_cross_entropy(batch):
    """mmseg's CrossEntropyLoss is the oracle (alpha = 0): with class
    weights the mean divides by the pixels' summed class weights.  mmseg
    1.2.2 can only be run with an ignore_index that is a class index (255
    fails inside it with an IndexError), so class 2 is ignored here."""
    from mmseg.models.losses import CrossEntropyLoss
    logits, label = batch
    label = label.masked_fill(label == IGNORE, 2)
    cw = [0.5, 1.0, 4.0, 0.25, 3.0]
    for avg_non_ignore in (False, True):
        ce = CrossEntropyLoss(class_weight=cw, avg_non_ignore=avg_non_ignore)(
            logits, label, ignore_index=2)
        ms = PixelMaxSupLoss(alpha=0.0, class_weight=cw,
                             avg_non_ignore=avg_non_ignore)(
                                 logits, label, ignore_index=2)
        assert ms.item() == pytest.approx(ce.item(), rel=1e-12)
        # and with MaxSup on, the hand-written per-pixel oracle
        ms = PixelMaxSupLoss(alpha=0.3, class_weight=cw,
                             avg_non_ignore=avg_non_ignore)(
                                 logits, label, ignore_index=2)
        want = oracle(logits, label, 0.3, 2, avg_non_ignore, cw)
        assert ms.item() == pytest.approx(want, rel=1e-7)


def test_short_class_weight_and_bad_weight_shape_are_clear_errors(batch):
    logits, label = batch
    with pytest.raises(ValueError, match='class_weight has 3 entries but '
                       'the logits have 5 classes'):
        PixelMaxSupLoss(class_weight=[1., 2., 3.])(logits, label,
                                                    ignore_index=IGNORE)
    loss_fn = PixelMaxSupLoss()
    for shape in [(2, 3), (2, 3, 5), (3, 3, 4), (2, 1, 3, 4)]:
        with pytest.raises(ValueError, match='weight of shape'):
            loss_fn(logits, label, weight=torch.ones(shape),
                    ignore_index=IGNORE)
    # a weight that broadcasts (as mmseg allows) equals the expanded one
    w = torch.rand(2, 1, 4, dtype=torch.float64)
    torch.testing.assert_close(
        loss_fn(logits, label, weight=w, ignore_index=IGNORE),
        loss_fn(logits, label, weight=w.expand(2, 3, 4), ignore_index=IGNORE))
    with pytest.raises(ValueError, match='finite'):
        PixelMaxSupLoss(class_weight=[1.0, float('nan')])
    with pytest.raises(ValueError, match='finite'):
        PixelMaxSupLoss(alpha=float('inf'))
    with pytest.raises(ValueError, match='finite'):
        PixelMaxSupLoss(loss_weight=float('nan'))


@pytest.mark.parametrize('dtype', [torch.int32, torch.uint8], ids=str)
def test_integer_label_dtypes(batch, dtype):
    logits, label = batch
    for cw in (None, [0.5, 1.0, 2.0, 0.25, 3.0]):
        loss_fn = PixelMaxSupLoss(alpha=0.2, class_weight=cw,
                                  avg_non_ignore=True)
        torch.testing.assert_close(
            loss_fn(logits, label.to(dtype), ignore_index=IGNORE),
            loss_fn(logits, label, ignore_index=IGNORE))


# --------------------------------------------------------------------------
# Empty crops and mixed precision (issue 18.14, 18.9)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(0, 5, 3, 4), (2, 5, 0, 4)], ids=str)
@pytest.mark.parametrize('kwargs, call', [
    ({}, {}), (dict(avg_non_ignore=True), {}),
    (dict(class_weight=[1.0, 2.0, 1.0, 1.0, 0.5]), {}),
    ({}, dict(weight='ones')), ({}, dict(avg_factor=0.0))], ids=str)
def test_empty_crop_mean_is_zero_like_mmseg(shape, kwargs, call):
    """No pixel at all: mmseg's CrossEntropyLoss (the oracle, alpha = 0)
    gives 0 (with class_weight and N = 0 it fails; there the sum over no
    pixel, 0, is the expected value); so does the MaxSup pixel loss (any
    alpha), in the graph, with a zero gradient."""
    from mmseg.models.losses import CrossEntropyLoss
    label = torch.zeros(shape[:1] + shape[2:], dtype=torch.long)
    if call.get('weight') == 'ones':
        call = dict(weight=torch.ones(label.shape))
    for alpha in (0.0, 0.2):
        z = torch.randn(shape, requires_grad=True)
        out = PixelMaxSupLoss(alpha=alpha, **kwargs)(
            z, label, ignore_index=IGNORE, **call)
        try:
            ce = CrossEntropyLoss(**kwargs)(z, label, ignore_index=IGNORE,
                                            **call).item()
        except RuntimeError:  # mmseg 1.2.2, class_weight and N = 0: torch.
            ce = 0.0  # stack of no tensor; undefined upstream, so the sum
        assert ce == 0 and out.item() == 0, (out, ce)
        out.backward()
        assert z.grad.shape == z.shape


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize('kwargs', [{}, dict(avg_non_ignore=True),
                                    dict(class_weight=[0.5, 1.0, 4.0, 0.25,
                                                       3.0])], ids=str)
def test_low_precision_logits_give_a_float32_loss(batch, dtype, kwargs):
    """bf16 / fp16 logits (a decode head under autocast): a float32 loss,
    the float64 oracle's value on the same rounded logits to float32
    precision, and a gradient in the logits' dtype."""
    logits, label = batch
    z = logits.to(dtype).requires_grad_(True)
    out = PixelMaxSupLoss(alpha=0.3, **kwargs)(z, label, ignore_index=IGNORE)
    assert out.dtype == torch.float32
    want = oracle(z.detach().double(), label, 0.3, IGNORE,
                  kwargs.get('avg_non_ignore', False),
                  kwargs.get('class_weight'))
    assert out.item() == pytest.approx(want, rel=1e-6)
    out.backward()
    assert z.grad.dtype == dtype
