"""The analysis library against closed-form answers and independent oracles.

No mmpretrain model here (see test_analysis_tools.py for the end-to-end
tools): class separation on constructed features whose distances are known,
the pairwise oracle of scipy, ECE on constructed (mis)calibrated sets, the
linear probe on scikit-learn's digits, hand-computed logit statistics, the
template-plane projection, and Grad-CAM on a network whose answer is known.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from scipy.spatial.distance import cdist

from sklearn.metrics import confusion_matrix

from maxsup_mm.analysis import (class_separation,
                                expected_calibration_error, gradcam_maps,
                                linear_probe, logit_components,
                                logit_statistics, overlay_heatmap,
                                project_to_template_plane,
                                reliability_bins, select_confused_classes,
                                softmax, template_plane_basis,
                                vit_reshape_transform)
from maxsup_mm.analysis import plotting


# ---------------------------------------------------------------------------
# class separation
# ---------------------------------------------------------------------------
def _cone_features(sizes, angles, seed=0):
    """Class k: x = cos(t_k) e_k + sin(t_k) v_i with v_i orthonormal and
    orthogonal to every e_j; each x scaled by a random positive factor.

    Same class: cos = cos^2(t_k), so d = sin^2(t_k). Different classes:
    cos = 0, so d = 1.
    """
    rng = np.random.default_rng(seed)
    k, n = len(sizes), sum(sizes)
    x = np.zeros((n, k + n))
    labels = np.repeat(np.arange(k), sizes)
    for i, c in enumerate(labels):
        x[i, c] = np.cos(angles[c])
        x[i, k + i] = np.sin(angles[c])
    x *= rng.uniform(0.5, 3.0, size=(n, 1))
    return x, labels


SIZES = [5, 7, 9, 11]
ANGLES = np.array([0.3, 0.6, 0.9, 1.2])


def _closed_form(balance, include_self):
    sizes = np.array(SIZES, dtype=float)
    s2 = np.sin(ANGLES)**2
    k, n = len(sizes), sizes.sum()
    if balance == 'class':
        within_k = s2 * ((sizes - 1) / sizes if include_self else 1.0)
        d_within = within_k.mean()
        d_total = (within_k.sum() + k * (k - 1)) / k**2
    else:
        pairs = sizes * (sizes - 1)
        same = (pairs * s2).sum()
        if include_self:
            d_within = same / (sizes**2).sum()
            d_total = (same + n**2 - (sizes**2).sum()) / n**2
        else:
            d_within = same / pairs.sum()
            d_total = (same + n**2 - (sizes**2).sum()) / (n * (n - 1))
    return d_within, d_total, 1 - d_within / d_total


@pytest.mark.parametrize('include_self', [False, True])
def test_class_separation_closed_form(include_self):
    x, y = _cone_features(SIZES, ANGLES)
    d_within, d_total, r2 = _closed_form('class', include_self)
    out = class_separation(x, y, include_self=include_self)
    assert out['d_within'] == pytest.approx(d_within, abs=1e-12)
    assert out['d_total'] == pytest.approx(d_total, abs=1e-12)
    assert out['r2'] == pytest.approx(r2, abs=1e-12)
    assert out['num_classes'] == 4 and out['num_samples'] == sum(SIZES)


def test_class_separation_default_is_kornblith_class_average():
    """Default: per-class means averaged over classes, self-pairs excluded."""
    x, y = _cone_features(SIZES, ANGLES)
    out = class_separation(x, y)
    assert out['d_within'] == pytest.approx(np.mean(np.sin(ANGLES)**2))
    # pair weighting would give a different number with unequal classes
    pair_within = _closed_form('pair', False)[0]
    assert abs(pair_within - out['d_within']) > 1e-3


def test_class_separation_matches_pairwise_oracle():
    """Kornblith et al.'s double sums written out with scipy's cosine."""
    rng = np.random.default_rng(1)
    sizes = [3, 8, 13, 6, 10]
    y = np.repeat(np.arange(len(sizes)), sizes)
    centers = rng.normal(size=(len(sizes), 16))
    x = centers[y] + rng.normal(scale=0.8, size=(len(y), 16))
    d = cdist(x, x, metric='cosine')
    k = len(sizes)
    within = [d[np.ix_(y == c, y == c)] for c in range(k)]
    # literal formula (self-pairs included)
    lit_w = sum(w.sum() / (k * w.shape[0]**2) for w in within)
    lit_t = sum(d[np.ix_(y == a, y == b)].sum() /
                (k * k * sizes[a] * sizes[b])
                for a in range(k) for b in range(k))
    out = class_separation(x, y, include_self=True)
    assert out['d_within'] == pytest.approx(lit_w, rel=1e-10)
    assert out['d_total'] == pytest.approx(lit_t, rel=1e-10)
    # self-pairs excluded
    ex_w = np.mean([w.sum() / (w.shape[0] * (w.shape[0] - 1))
                    for w in within])
    blocks = []
    for a in range(k):
        for b in range(k):
            blk = d[np.ix_(y == a, y == b)]
            # the diagonal of a class's own block holds the self-pairs
            blocks.append(blk.sum() / (blk.size - blk.shape[0]) if a == b
                          else blk.mean())
    out = class_separation(x, y)
    assert out['d_within'] == pytest.approx(ex_w, rel=1e-10)
    assert out['d_total'] == pytest.approx(np.mean(blocks), rel=1e-10)
    assert out['r2'] == pytest.approx(1 - ex_w / np.mean(blocks), rel=1e-10)


def _clusters(n=3000, k=10, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(size=(k, dim))
    return centers[y] + rng.normal(scale=1.0, size=(n, dim)), y


def test_class_separation_chunks_agree():
    """Rows processed in several chunks give the one-chunk answer."""
    from maxsup_mm.analysis import geometry
    x, y = _clusters(n=1000, k=7)
    whole = class_separation(x, y)
    old = geometry._CHUNK_ELEMENTS
    geometry._CHUNK_ELEMENTS = 32 * 37      # 37 rows per chunk
    try:
        chunked = class_separation(x, y)
    finally:
        geometry._CHUNK_ELEMENTS = old
    for key in ('d_within', 'd_total', 'r2'):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-12)


def test_class_separation_input_errors():
    x, y = _clusters(n=50, k=3)
    with pytest.raises(ValueError, match='labels'):
        class_separation(x, y[:-1])
    with pytest.raises(TypeError, match='integers'):
        class_separation(x, y.astype(float))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        class_separation(bad, y)
    with pytest.raises(ValueError, match='two samples'):
        class_separation(x[:3], np.arange(3))


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------
def _binary_set(levels):
    """Binary probabilities: (confidence, n samples, n correct) per level."""
    probs, labels = [], []
    for conf, n, correct in levels:
        for i in range(n):
            probs.append([conf, 1 - conf])
            labels.append(0 if i < correct else 1)
    return np.array(probs), np.array(labels)


def test_ece_zero_when_perfectly_calibrated():
    # 0.55, 0.65, 0.75, 0.85, 0.95 fall in five different 1/15-wide bins
    levels = [(c, 20, int(round(c * 20)))
              for c in (0.55, 0.65, 0.75, 0.85, 0.95)]
    probs, labels = _binary_set(levels)
    assert expected_calibration_error(probs, labels) == pytest.approx(
        0, abs=1e-12)
    # the same with three classes
    p3 = np.stack([probs[:, 0], probs[:, 1] / 2, probs[:, 1] / 2], 1)
    labels3 = np.where(labels == 0, 0, 2)
    assert expected_calibration_error(p3, labels3) == pytest.approx(
        0, abs=1e-12)


def test_ece_known_value_for_miscalibrated_set():
    # 40% of samples at confidence 0.95 with accuracy 0.8 (gap 0.15),
    # 60% at confidence 0.55 with accuracy 0.3 (gap 0.25):
    # ECE = 0.4 * 0.15 + 0.6 * 0.25 = 0.21
    probs, labels = _binary_set([(0.95, 40, 32), (0.55, 60, 18)])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.21)
    # one bin only: ECE = |accuracy - mean confidence| = |0.5 - 0.75|
    probs, labels = _binary_set([(0.75, 10, 5)])
    assert expected_calibration_error(probs, labels, n_bins=1) == \
        pytest.approx(0.25)


def test_reliability_bins_placement():
    # confidence 1.0 -> last bin; 0.5 -> (7/15, 8/15] = bin 7
    probs, labels = _binary_set([(1.0, 3, 3), (0.5, 2, 1)])
    b = reliability_bins(probs, labels, n_bins=15)
    assert b['counts'][14] == 3 and b['counts'][7] == 2
    assert b['counts'].sum() == 5
    assert b['accuracy'][14] == 1.0 and b['accuracy'][7] == 0.5
    assert np.isnan(b['accuracy'][0])
    # bins are (lo, hi]: with 4 bins (exact edges) 0.75 is in (0.5, 0.75]
    probs, labels = _binary_set([(0.75, 1, 1), (0.5, 1, 1)])
    b = reliability_bins(probs, labels, n_bins=4)
    np.testing.assert_array_equal(b['counts'], [0, 1, 1, 0])


def test_ece_rejects_logits():
    with pytest.raises(ValueError, match='softmax'):
        expected_calibration_error(np.array([[2.0, -1.0]]), np.array([0]))
    assert np.allclose(softmax(np.array([[0.0, np.log(3.0)]])),
                       [[0.25, 0.75]])


# ---------------------------------------------------------------------------
# linear probe
# ---------------------------------------------------------------------------
def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    return train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)


def test_linear_probe_digits_raw_pixels():
    xtr, xte, ytr, yte = _digits()
    out = linear_probe(xtr, ytr, xte, yte, Cs=(0.01, 0.1, 1.0, 10.0))
    assert out['accuracy'] > 0.90
    assert out['C'] in (0.01, 0.1, 1.0, 10.0)
    assert set(out['holdout_accuracy']) == {0.01, 0.1, 1.0, 10.0}
    assert out['num_train'] == len(ytr) and out['num_test'] == len(yte)


def test_linear_probe_at_chance_on_shuffled_labels():
    xtr, xte, ytr, yte = _digits()
    rng = np.random.default_rng(0)
    out = linear_probe(xtr, rng.permutation(ytr), xte, yte, Cs=(0.01, 1.0))
    assert out['accuracy'] < 0.25      # 10 classes: chance is 0.1


# ---------------------------------------------------------------------------
# logit statistics
# ---------------------------------------------------------------------------
def test_logit_statistics_by_hand():
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 5.0]])
    labels = np.array([0, 0, 1])
    comp = logit_components(logits, labels)
    np.testing.assert_allclose(comp['z_gt'], [3, 0, 1])
    np.testing.assert_allclose(comp['z_max'], [3, 2, 5])
    np.testing.assert_allclose(comp['range'], [3, 2, 4])
    np.testing.assert_array_equal(comp['correct'], [True, False, False])
    stats = logit_statistics(logits, labels)
    assert stats['accuracy'] == pytest.approx(1 / 3)
    assert stats['num_errors'] == 2
    assert stats['error_gap_mean'] == pytest.approx(3.0)   # (2 + 4) / 2
    assert stats['z_gt_mean'] == pytest.approx(4 / 3)
    assert stats['range_median'] == pytest.approx(3.0)
    assert stats['logit_norm_mean'] == pytest.approx(
        (np.sqrt(10) + np.sqrt(5) + np.sqrt(27)) / 3)


def test_logit_statistics_no_errors():
    stats = logit_statistics(np.eye(3) * 2, np.arange(3))
    assert stats['num_errors'] == 0 and np.isnan(stats['error_gap_mean'])


# ---------------------------------------------------------------------------
# Mueller et al. projection
# ---------------------------------------------------------------------------
def test_template_plane_projection():
    eye = np.eye(5)
    weight = eye[:4]                      # templates e1..e4 (4 classes)
    proj_t = project_to_template_plane(weight[:3], weight, (0, 1, 2))
    basis = proj_t['basis']
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-12)
    t = proj_t['templates']
    np.testing.assert_allclose(t, proj_t['coords'], atol=1e-12)
    np.testing.assert_allclose(t[0], [0, 0], atol=1e-12)
    # the templates form an equilateral triangle of side sqrt(2)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert np.linalg.norm(t[a] - t[b]) == pytest.approx(np.sqrt(2))
    # in-plane points keep their distances; normal components vanish
    rng = np.random.default_rng(0)
    ab = rng.normal(size=(6, 2))
    in_plane = eye[0] + ab[:, :1] * (eye[1] - eye[0]) + \
        ab[:, 1:] * (eye[2] - eye[0])
    normal = (rng.normal(size=(6, 1)) * (eye[0] + eye[1] + eye[2]) +
              rng.normal(size=(6, 1)) * eye[3] +
              rng.normal(size=(6, 1)) * eye[4])
    c_in = project_to_template_plane(in_plane, weight, (0, 1, 2))['coords']
    c_all = project_to_template_plane(in_plane + normal, weight,
                                      (0, 1, 2))['coords']
    np.testing.assert_allclose(c_in, c_all, atol=1e-12)
    np.testing.assert_allclose(cdist(c_in, c_in), cdist(in_plane, in_plane),
                               atol=1e-12)


def test_template_plane_errors():
    with pytest.raises(ValueError, match='collinear'):
        template_plane_basis(np.array([[0, 0.], [1, 1], [2, 2]]))
    with pytest.raises(ValueError, match='three different'):
        project_to_template_plane(np.zeros((2, 3)), np.eye(3), (0, 0, 1))


def test_select_confused_classes():
    conf = np.array([[10, 0, 0, 0, 0],
                     [0, 4, 0, 5, 2],      # class 1: 7 errors, -> 3, 4
                     [1, 0, 9, 0, 0],
                     [0, 1, 0, 8, 0],
                     [0, 0, 0, 0, 10]])
    assert select_confused_classes(conf) == [1, 3, 4]
    # no errors at all: the most frequent classes
    logits = np.eye(4)[[0, 1, 1, 2, 2, 2, 3]]
    labels = np.array([0, 1, 1, 2, 2, 2, 3])
    assert select_confused_classes(
        confusion_matrix(labels, logits.argmax(1))) == [2, 1, 0]


# ---------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------
class _ColourNet(nn.Module):
    """Class 0 = amount of red, class 1 = amount of green (known answer)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 2, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.bias.zero_()
            self.features.weight[0, 0, 1, 1] = 1.0    # red detector
            self.features.weight[1, 1, 1, 1] = 1.0    # green detector
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.act(self.features(x)).mean(dim=(2, 3)))


def _two_object_image():
    """Red square top-right (object), green square bottom-left."""
    img = torch.zeros(1, 3, 32, 32)
    img[0, 0, 3:11, 20:28] = 1.0
    img[0, 1, 21:29, 4:12] = 1.0
    return img


def test_gradcam_peaks_on_the_object_of_the_target_class():
    model = _ColourNet().eval()
    img = _two_object_image()
    maps = gradcam_maps(model, img, targets=[0],
                        target_layers=[model.act])
    assert maps.shape == (1, 32, 32)
    r, c = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert 3 <= r < 11 and 20 <= c < 28          # inside the red square
    assert maps[0, 21:29, 4:12].max() < 0.05      # distractor ignored
    assert maps[0, 3:11, 20:28].mean() > 0.5
    # the other class highlights the other object
    maps1 = gradcam_maps(model, img, targets=[1],
                         target_layers=[model.act])
    r, c = np.unravel_index(np.argmax(maps1[0]), maps1[0].shape)
    assert 21 <= r < 29 and 4 <= c < 12


def test_vit_reshape_transform_token_layout():
    b, h, w, ch = 2, 2, 4, 3
    grid = torch.arange(h * w, dtype=torch.float32)
    r, c = grid // w, grid % w
    tokens = (100 * r + c)[None, :, None].repeat(b, 1, ch)
    extra = torch.full((b, 2, ch), -1.0)            # class + dist tokens
    x = torch.cat([extra, tokens], dim=1)
    out = vit_reshape_transform(x, num_extra_tokens=2, input_hw=(16, 32))
    assert out.shape == (b, ch, h, w)
    expected = 100 * torch.arange(h)[:, None] + torch.arange(w)[None, :]
    assert torch.equal(out[1, 2], expected.float())
    sq = vit_reshape_transform(torch.zeros(1, 1 + 16, 5), 1)
    assert sq.shape == (1, 5, 4, 4)
    with pytest.raises(ValueError, match='grid'):
        vit_reshape_transform(torch.zeros(1, 1 + 15, 5), 1)


def test_overlay_heatmap():
    img = np.zeros((8, 8, 3), np.uint8)
    heat = np.zeros((8, 8))
    heat[0, 0] = 1.0
    ov = overlay_heatmap(img, heat)
    assert ov.shape == (8, 8, 3) and ov.dtype == np.uint8
    assert ov[0, 0, 0] > ov[0, 0, 2]        # hot = red in jet (RGB)
    assert ov[7, 7, 2] > ov[7, 7, 0]        # cold = blue


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------
def _is_png(path):
    with Image.open(path) as im:
        return im.format == 'PNG' and im.size[0] > 50


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    comps, bins = {}, {}
    for name, scale in (('CE', 3.0), ('MaxSup', 1.5)):
        logits = rng.normal(size=(200, 5)) * scale
        labels = rng.integers(0, 5, 200)
        comps[name] = logit_components(logits, labels)
        bins[name] = reliability_bins(softmax(logits), labels)
    save = plotting.save_figure
    assert _is_png(save(plotting.plot_logit_densities(comps),
                        str(tmp_path / 'd.png')))
    assert _is_png(save(plotting.plot_reliability_diagrams(
        bins, {'CE': 0.1, 'MaxSup': 0.05}), str(tmp_path / 'r.png')))
    feats = rng.normal(size=(30, 6))
    labels = np.repeat([0, 1, 2], 10)
    proj = project_to_template_plane(feats, rng.normal(size=(4, 6)),
                                     (0, 1, 2))
    assert _is_png(save(plotting.plot_feature_projection(
        proj, labels, (0, 1, 2), ['a', 'b', 'c', 'd'], 'CE'),
        str(tmp_path / 'p.png')))
    imgs = rng.integers(0, 255, (3, 16, 16, 3)).astype(np.uint8)
    assert _is_png(save(plotting.plot_gradcam_grid(
        imgs, {'CE': imgs, 'MaxSup': imgs}, ['x', 'y', 'z']),
        str(tmp_path / 'g.png')))


def test_figures_need_no_pyplot_and_keep_the_backend(tmp_path):
    """The plots build ``Figure`` objects: no pyplot import, no backend
    switch (a fresh interpreter, so other tests cannot hide an import)."""
    import subprocess
    import sys
    code = (
        'import sys, matplotlib\n'
        'matplotlib.use("svg")\n'
        'import numpy as np\n'
        'from maxsup_mm.analysis import plotting, reliability_bins\n'
        'rng = np.random.default_rng(0)\n'
        'p = rng.dirichlet(np.ones(3), 50)\n'
        'b = reliability_bins(p, rng.integers(0, 3, 50))\n'
        f'plotting.save_figure(plotting.plot_reliability_diagram(b, "x"), '
        f'{str(tmp_path / "r.png")!r})\n'
        'assert "matplotlib.pyplot" not in sys.modules\n'
        'assert matplotlib.get_backend() == "svg", matplotlib.get_backend()\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _is_png(tmp_path / 'r.png')


# ---------------------------------------------------------------------------
# the one table / formatting path of every report
# ---------------------------------------------------------------------------
def test_mean_std_formatting():
    from maxsup_mm.analysis.tables import format_mean_std, mean_std
    # sample std of 1, 2, 6: mean 3, variance (4 + 1 + 9) / 2 = 7
    assert mean_std([1, 2, 6]) == (3.0, pytest.approx(np.sqrt(7)))
    assert mean_std([5.0]) == (5.0, 0.0)
    assert format_mean_std([1, 2, 6], digits=2) == '3.00 ± 2.65'
    assert format_mean_std([0.5, 0.7], scale=100, digits=1) == '60.0 ± 14.1'
    assert format_mean_std([0.25], digits=3) == '0.250'
    assert format_mean_std([0.25], digits=1, single=' (1 seed)') == \
        '0.2 (1 seed)'
    # runs without the metric are left out; none at all: the missing mark
    assert format_mean_std([None, 1.0, float('nan'), 3.0], digits=1) == \
        '2.0 ± 1.4'
    assert format_mean_std([], missing='–') == '–'
    assert format_mean_std([None]) == 'n/a'


def test_markdown_table():
    from maxsup_mm.analysis.tables import markdown_table
    lines = markdown_table(['method', 'runs', 'top-1'],
                           [['a|b', 2, '1.0 ± 0.1'], ['two\nlines', 1, 3]],
                           'lrr')
    assert lines == ['| method | runs | top-1 |',
                     '| --- | ---: | ---: |',
                     '| a\\|b | 2 | 1.0 ± 0.1 |',
                     '| two lines | 1 | 3 |']
    assert markdown_table(['x'], [])[1] == '| --- |'
    with pytest.raises(ValueError, match='2 cells'):
        markdown_table(['a', 'b', 'c'], [[1, 2]])


# ---------------------------------------------------------------------------
# small units: no function of maxsup_mm/analysis over 80 lines
# ---------------------------------------------------------------------------
def test_analysis_functions_are_small():
    import ast
    import glob
    import os.path as osp
    import maxsup_mm.analysis
    folder = osp.dirname(maxsup_mm.analysis.__file__)
    too_long = []
    for path in sorted(glob.glob(osp.join(folder, '*.py'))):
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_long.append(f'{osp.basename(path)}:{node.lineno} '
                                    f'{node.name} ({length} lines)')
    assert not too_long, too_long
