"""The Markdown report of a comparison, one function per section.

Every section is rendered from the :class:`GroupResult` s (``mean ± std``
over the runs of a method, :mod:`maxsup_mm.analysis.tables`) and the paths of
the figures :func:`~maxsup_mm.analysis.figures.write_figures` wrote.
"""
import os
import os.path as osp
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Sequence

from .figures import class_name
from .measure import GroupResult, RunResult
from .settings import CompareSettings
from .tables import markdown_table

__all__ = ['PAPER_TABLE9', 'render_report']

#: Table 9 of the MaxSup paper (ResNet-50, ImageNet-1K; train / val)
PAPER_TABLE9 = OrderedDict([
    ('Baseline', dict(d_within=(0.3114, 0.3313), d_total=(0.5212, 0.5949),
                      r2=(0.4025, 0.4451))),
    ('LS', dict(d_within=(0.2632, 0.2543), d_total=(0.4862, 0.4718),
                r2=(0.4690, 0.4611))),
    ('OLS', dict(d_within=(0.2707, 0.2820), d_total=(0.6672, 0.6570),
                 r2=(0.5943, 0.5708))),
    ("Zipf's", dict(d_within=(0.2611, 0.2932), d_total=(0.5813, 0.5628),
                    r2=(0.5522, 0.4790))),
    ('MaxSup', dict(d_within=(0.2926, 0.2998), d_total=(0.6081, 0.5962),
                    r2=(0.5188, 0.4972))),
])


@dataclass
class _Report:
    """What every section reads."""
    runs: List[RunResult]
    groups: Dict[str, GroupResult]
    s: CompareSettings
    figures: dict
    class_names: Sequence[str]
    out_dir: str

    def rel(self, path: str) -> str:
        return osp.relpath(path, self.out_dir).replace(os.sep, '/')

    def side_by_side(self, images: Dict[str, str]) -> List[str]:
        """One table row of images with the method names as header."""
        return markdown_table(
            list(images), [[f'![{name}]({self.rel(path)})'
                            for name, path in images.items()]]) + ['']

    def per_method(self, header: Sequence[str], cells, align: str
                   ) -> List[str]:
        """A table with a row per method: name, runs, ``cells(group)``."""
        rows = [[name, len(g.runs)] + list(cells(g))
                for name, g in self.groups.items()]
        return markdown_table(['method', 'runs'] + list(header), rows,
                              'lr' + align) + ['']


def _intro(r: _Report) -> List[str]:
    several = any(len(g.runs) > 1 for g in r.groups.values())
    note = ('Methods with several runs show mean ± std (sample standard '
            'deviation) over their runs; figures pool the runs (densities, '
            'reliability) or show the first run (projection, Grad-CAM).'
            if several else '')
    lines = [f'# {r.s.title}', '', f'Split analysed: `{r.s.split}`. {note}',
             '', '## Runs', '']
    rows = []
    for name, g in r.groups.items():
        cfgs = sorted({r.runs[i].config for i in g.runs})
        rows.append([name, len(g.runs),
                     '<br>'.join(f'`{c}`' for c in cfgs),
                     '<br>'.join(f'`{r.runs[i].checkpoint}`'
                                 for i in g.runs)])
    return lines + markdown_table(['method', 'runs', 'config',
                                   'checkpoints'], rows, 'lrll') + ['']


def _accuracy(r: _Report) -> List[str]:
    lines = ['## Accuracy and calibration', '',
             f'Top-1 accuracy and expected calibration error on '
             f'`{r.s.split}` ({r.s.n_bins} equal-width confidence bins, '
             'weighted by bin size). Lower ECE is better.', '']
    lines += r.per_method(['top-1 (%)', 'ECE (%)'], lambda g: [
        g.cell('accuracy', 100, 2), g.cell('ece', 100, 2)], 'rr')
    if 'calibration' in r.figures:
        lines += ['Reliability diagrams (bars: accuracy per confidence '
                  'bin; hatched: gap to the bin\'s mean confidence; '
                  'diagonal: perfect calibration):', '']
        lines += r.side_by_side(r.figures['calibration'])
    return lines


def _separation(r: _Report) -> List[str]:
    splits = [r.s.split] + ([r.s.train_split] if r.s.train_split else [])
    lines = ['## Class separation (Kornblith et al., 2021)', '',
             'Cosine distance d = 1 − cos on penultimate features. '
             '`d_within`: mean distance between two different samples '
             'of a class, averaged per class then over classes '
             '(higher = more intra-class variation); `d_total`: the '
             'same over all class pairs; R² = 1 − d_within / d_total '
             '(higher = classes more separated).', '']
    header = [f'{title} ({split}){arrow}' for split in splits
              for title, arrow in (('d_within', ' ↑'), ('d_total', ''),
                                   ('R²', ' ↑'))]
    keys = [f'separation.{split}.{key}' for split in splits
            for key in ('d_within', 'd_total', 'r2')]
    lines += r.per_method(header, lambda g: [g.cell(k) for k in keys],
                          'r' * len(keys))
    lines += ['For reference, the paper\'s Table 9 (ResNet-50, '
              'ImageNet-1K, train / val):', '']
    rows = [[name] + [f'{ref[k][0]:.4f} / {ref[k][1]:.4f}'
                      for k in ('d_within', 'd_total', 'r2')]
            for name, ref in PAPER_TABLE9.items()]
    return lines + markdown_table(['method', 'd_within', 'd_total', 'R²'],
                                  rows) + ['']


def _probe(r: _Report) -> List[str]:
    p = r.s.probe
    data = ('each run\'s own config' if p.cfg is None
            else f'`{str(p.cfg)}`'.replace('|', '\\|'))
    lines = ['## Linear probe', '',
             'L2-regularised multinomial logistic regression on frozen '
             f'penultimate features ({data}): fit on `{p.train_split}`, '
             f'C chosen on a held-out {p.holdout:.0%} of it '
             '(every class on both sides), scored on '
             f'`{p.test_split or r.s.split}` (the protocol of Table 3).', '']
    return lines + r.per_method(
        ['probe accuracy (%)', 'chosen C'], lambda g: [
            g.cell('probe.accuracy', 100, 2),
            ', '.join(f'{c:g}' for c in sorted(set(g.values['probe.C'])))],
        'rr')


def _logits(r: _Report) -> List[str]:
    lines = ['## Logit statistics', '',
             'Means over the samples of `' + r.s.split + '`. The error gap '
             'z_max − z_gt over misclassified samples is the '
             '"error enhancement" diagnostic: label smoothing pushes '
             'z_gt down on errors and widens it.', '']
    cols = [('z_gt', 'z_gt_mean', 3), ('z_max', 'z_max_mean', 3),
            ('range z_max − z_min', 'range_mean', 3),
            ('‖z‖', 'logit_norm_mean', 3), ('errors', 'num_errors', 1),
            ('error gap z_max − z_gt', 'error_gap_mean', 3)]
    lines += r.per_method([c[0] for c in cols], lambda g: [
        g.cell(f'logits.{key}', 1, digits) for _, key, digits in cols],
        'r' * len(cols))
    return lines + [f'![logit densities]({r.rel(r.figures["logits"])})',
                    '']


def _projection(r: _Report) -> List[str]:
    lines = ['## Feature projection (Müller et al., 2019)', '']
    if 'projection' not in r.figures:
        return lines + [r.figures.get('projection_skipped', 'skipped'), '']
    from .plotting import short_name
    names = '; '.join(f'{c}: {short_name(class_name(r.class_names, c), 30)}'
                      for c in r.figures['projection_classes'])
    lines += ['Penultimate features of three classes '
              f'({names}) projected onto the plane through their '
              'class templates (rows of the final linear layer; '
              'stars). Tight, well separated clusters mean low '
              'intra-class variation.', '']
    return lines + r.side_by_side(r.figures['projection'])


def _gradcam(r: _Report) -> List[str]:
    lines = ['## Grad-CAM', '',
             'First row: inputs (titles: ground truth); then one row '
             'per method (captions: prediction).', '',
             f'![Grad-CAM]({r.rel(r.figures["gradcam"])})', '']
    return lines + r.side_by_side(r.figures['gradcam_runs'])


#: (section, whether the report has it)
_SECTIONS = (
    (_accuracy, lambda r: {'accuracy', 'calibration'} & set(r.s.analyses)),
    (_separation, lambda r: 'separation' in r.s.analyses),
    (_probe, lambda r: 'probe' in r.s.analyses),
    (_logits, lambda r: 'logits' in r.s.analyses),
    (_projection, lambda r: 'projection' in r.s.analyses),
    (_gradcam, lambda r: 'gradcam' in r.figures),
)


def render_report(runs: List[RunResult], groups: Dict[str, GroupResult],
                  s: CompareSettings, figures: dict,
                  class_names: Sequence[str], out_dir: str) -> str:
    """The Markdown text of ``out_dir/report.md``."""
    r = _Report(runs, groups, s, figures, class_names, out_dir)
    lines = _intro(r)
    for section, wanted in _SECTIONS:
        if wanted(r):
            lines += section(r)
    return '\n'.join(lines) + '\n'
