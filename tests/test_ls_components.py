"""What the LS components are (issue 13 item 14): eq. (5) versus Table 1.

Oracles: plain Python sums over the logits (no tensor code under test) and
PyTorch's own ``F.cross_entropy(label_smoothing=...)``.  The README must cite
each component by the formula it implements.
"""
import os.path as osp
import re

import pytest
import torch
import torch.nn.functional as F

from maxsup_mm.models.losses.functional import (label_smoothing_term,
                                                ls_error_enhancement_term,
                                                ls_regularization_term)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _logits():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 7, generator=g, dtype=torch.float64)
    z[0] = torch.tensor([3., 1, 1, 3, 0, -2, 5], dtype=torch.float64)  # ties
    y = torch.randint(0, 7, (64, ), generator=g)
    y[0] = 0
    return z, y


def _parts(z, y):
    """Per sample: (sum below, M, sum above, N) by plain loops."""
    out = []
    for row, gt in zip(z.tolist(), y.tolist()):
        zg = row[gt]
        below = [zg - v for v in row if v < zg]
        above = [zg - v for v in row if v > zg]
        out.append((sum(below), len(below), sum(above), len(above)))
    return out


def test_eq5_parts_sum_to_ls_and_table1_rows_are_means():
    z, y = _logits()
    alpha, k = 0.1, z.shape[1]
    parts = _parts(z, y)
    # eq. (4) = eq. (5): both parts with alpha / K add up to LS exactly ...
    eq5 = torch.tensor([alpha / k * (b + a) for b, _, a, _ in parts],
                       dtype=torch.float64)
    torch.testing.assert_close(alpha * label_smoothing_term(z, y), eq5)
    # ... and LS is CE on the smoothed target (PyTorch's own)
    ce = F.cross_entropy(z, y, reduction='none')
    ls = F.cross_entropy(z, y, reduction='none', label_smoothing=alpha)
    torch.testing.assert_close(ce + alpha * label_smoothing_term(z, y), ls)
    # the components are Table 1's rows 3 and 4: means over M and N logits
    reg = torch.tensor([b / m if m else 0. for b, m, _, _ in parts],
                       dtype=torch.float64)
    err = torch.tensor([a / n if n else 0. for _, _, a, n in parts],
                       dtype=torch.float64)
    torch.testing.assert_close(ls_regularization_term(z, y), reg)
    torch.testing.assert_close(ls_error_enhancement_term(z, y), err)
    # ties with z_gt count in neither M nor N (Corollary 3.4): sample 0 has
    # z_gt = 3 tied with one logit, 4 below and 1 above
    assert parts[0][1] == 4 and parts[0][3] == 1
    assert reg[0] == pytest.approx((2 + 2 + 3 + 5) / 4)
    assert err[0] == pytest.approx(-2.0)
    # so the weighted components are eq. (5)'s parts times K/M and K/N, and
    # do not add up to LS
    wrong = alpha * (reg + err)
    assert not torch.allclose(wrong, eq5)


def test_readme_cites_table1_not_eq5_for_the_components():
    text = open(osp.join(ROOT, 'README.md')).read()
    section = re.search(r'<!-- section:losses -->(.*)<!-- /section:losses',
                        text, re.S).group(1)
    rows = {name: line for line in section.splitlines()
            for name in ('regularization', 'error_enhancement')
            if line.startswith(f"| `… component='{name}'`")}
    assert set(rows) == {'regularization', 'error_enhancement'}
    for name, row in rows.items():
        paper = row.split('|')[3]
        assert 'Table 1, row' in paper and 'eq. (5), Table 1' not in paper
    assert '(α/M)·Σ_{z_m<z_gt}' in rows['regularization']
    assert '(α/N)·Σ_{z_n>z_gt}' in rows['error_enhancement']
    assert "with the same `α/K` in front of both parts" in section
