"""The report of ``tools/reproduce.py``: ``report.json`` and ``report.md``.

One report per work dir.  ``report.json`` holds a section per measurement
(``top1``: Tables 4/5, ``geometry``: Tables 2/9, ``probe``: Table 3,
``segmentation``: Table 6), each with the command that last changed it, its
settings and one row per run (our raw numbers, the paper's, the run's
checkpoint, config and architecture, and the ``command``, ``time`` and
``settings`` that computed the row).  A later command replaces, in the
sections it recomputes, only the rows of the runs it evaluates (same name
and same checkpoint file given) and keeps every other row and section, so
running the tables one by one still gives one report; ``report.md`` is
rendered from ``report.json``.
"""
import json
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional

from maxsup_mm.analysis.tables import format_pm, markdown_table, mean_std
from maxsup_mm.fileio import atomic_write_json, atomic_write_text
from .tables import METHODS

__all__ = ['SECTIONS', 'merge_report', 'merge_rows', 'render_markdown',
           'write_report']

#: section key -> (title, paper tables)
SECTIONS = OrderedDict([
    ('top1', ('Tables 4 and 5: top-1 on ImageNet-val (%)', (4, 5))),
    ('geometry', ('Tables 2 and 9: feature geometry of the penultimate '
                  'layer', (2, 9))),
    ('probe', ('Table 3: linear probe on CIFAR-10 (%)', (3, ))),
    ('segmentation', ('Table 6: UperNet on ADE20K (commands)', (6, ))),
])
FORMAT = 'maxsup-mm reproduce report'
#: 2: rows carry their command; a command replaces only its runs' rows
VERSION = 2
#: what a row keeps of the command that computed it
PROVENANCE = ('command', 'time', 'settings')


def _run_key(row: dict) -> tuple:
    """A run is its name and the checkpoint file given (absolute path;
    rows of version 1 have only the path as given)."""
    return row['name'], row.get('source_path') or osp.abspath(row['source'])


def _with_provenance(section: dict) -> List[dict]:
    """The section's rows, each with the command that computed it (rows of
    reports written before version 2 get their section's)."""
    return [dict(row, **{k: row.get(k, section.get(k)) for k in PROVENANCE})
            for row in section.get('rows', [])]


def merge_rows(old: List[dict], new: List[dict]) -> List[dict]:
    """``old`` with the rows of the runs in ``new`` replaced in place (same
    name and source), then the other rows of ``new``."""
    fresh = OrderedDict((_run_key(r), r) for r in new)
    out = [fresh.pop(_run_key(r), r) for r in old]
    return out + list(fresh.values())


def merge_report(path: str, sections: Dict[str, dict]) -> dict:
    """The report at ``path`` (if any) with ``sections`` merged in: their
    rows replace those of the same runs, every other row is kept."""
    old = None
    if osp.isfile(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
    if not isinstance(old, dict) or old.get('format') != FORMAT:
        old = dict(format=FORMAT, version=VERSION, sections={})
    merged = dict(old, version=VERSION)
    merged['sections'] = {k: v for k, v in old['sections'].items()
                          if k in SECTIONS}
    for key, section in sections.items():
        previous = merged['sections'].get(key) or {}
        merged['sections'][key] = dict(section, rows=merge_rows(
            _with_provenance(previous), _with_provenance(section)))
    return merged


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------
def _num(value, digits: int) -> str:
    """A number, a paper's ``(mean, std)`` or ``–`` when there is none."""
    if value is None:
        return '–'
    if isinstance(value, (list, tuple)):
        return format_pm(value[0], value[1], digits)
    return f'{value:.{digits}f}'


def _method(row: dict) -> str:
    return METHODS.get(row.get('method'), '– (no paper row)')


def _arch(row: dict) -> str:
    note = row.get('paper_note')
    return row['architecture'] + (f' ({note})' if note else '')


def _seeds(rows: List[dict], value) -> List[List]:
    """``mean ± std`` lines for paper rows with several runs."""
    groups: Dict[tuple, list] = OrderedDict()
    for row in rows:
        if row.get('method'):
            groups.setdefault((row['method'], row['architecture']),
                              []).append(value(row))
    out = []
    for (method, arch), vals in groups.items():
        vals = [v for v in vals if v is not None]
        if len(vals) >= 2:
            out.append((METHODS[method], arch, *mean_std(vals), len(vals)))
    return out


def _commands(section: dict) -> List[tuple]:
    """``(command, time, runs)`` of the commands behind the rows (a run:
    its name and the file name of its checkpoint)."""
    groups: Dict[tuple, list] = OrderedDict()
    for row in _with_provenance(section):
        groups.setdefault((row['command'], row['time']), []).append(
            f'{row["name"]} (`{osp.basename(row["source"])}`)')
    return [(cmd, time, runs) for (cmd, time), runs in groups.items()]


def _header(section: dict, previous: Optional[dict]) -> List[str]:
    groups = _commands(section)
    if len(groups) == 1:
        command, time, _ = groups[0]
        if previous and _commands(previous) == groups:
            return [f'Command: the one above (run {time}).', '']
        return [f'Command (run {time}):', '', '```bash', command, '```', '']
    lines = ['Commands (each row comes from the command that last evaluated '
             'its run, i.e. the same name and checkpoint):', '']
    for command, time, runs in groups:
        lines += [f'Rows of {", ".join(runs)}, run {time}:', '', '```bash',
                  command, '```', '']
    return lines


def _by_setting(rows: List[dict], text) -> str:
    """``text(settings)`` of the rows; several: each with its rows."""
    groups: Dict[str, list] = OrderedDict()
    for row in rows:
        groups.setdefault(text(row.get('settings') or {}),
                          []).append(row['name'])
    if len(groups) == 1:
        return next(iter(groups))
    return '; '.join(f'{t} (rows {", ".join(names)})'
                     for t, names in groups.items())


def _top1(section: dict) -> List[str]:
    rows = section['rows']
    lines = markdown_table(
        ['run', 'paper row', 'architecture', 'val images', 'top-1, ours',
         'top-1, paper', 'paper source'],
        [[r['name'], _method(r), r['architecture'], r['num_images'],
          _num(r['top1'], 2), _num(r['paper'], 2), r['paper_source']]
         for r in rows])
    for method, arch, mean, std, n in _seeds(rows, lambda r: r['top1']):
        lines.append(f'| mean ± std of {n} runs | {method} | {arch} | | '
                     f'{format_pm(mean, std, 2)} | | |')
    lines += ['', 'Top-1 is the arg-max of the logits of one pass over the '
              "val split of the run's config (its test pipeline, as "
              '`tools/test.py` evaluates it). The paper reports mean ± std '
              'over training runs; one checkpoint differs a little.']
    return lines


def _self_pairs(row: dict) -> str:
    # rows written before the option existed left the self-pairs out
    return row.get('self_pairs', 'excluded')


def _train_subset(settings: dict) -> str:
    limit = settings.get('max_train_samples')
    return ((f'a random subset of at most {limit} images' if limit
             else 'every image')
            + f' (seed {settings.get("seed", 0)})')


def _geometry(section: dict) -> List[str]:
    rows = []
    for r in section['rows']:
        for i, split in enumerate(('train', 'val')):
            ours = r[split]
            paper = r['paper'] or {}
            rows.append([
                r['name'], _method(r), _arch(r), split, ours['num_samples'],
                _self_pairs(r), _num(ours['d_within'], 4),
                _num((paper.get('d_within') or [None, None])[i], 4),
                _num(ours['d_total'], 4),
                _num((paper.get('d_total') or [None, None])[i], 4),
                _num(ours['r2'], 4),
                _num((paper.get('r2') or [None, None])[i], 4)])
    used = sorted({_self_pairs(r) for r in section['rows']})
    lines = markdown_table(
        ['run', 'paper row', 'architecture', 'split', 'images', 'self-pairs',
         'd_within, ours', 'paper', 'd_total, ours', 'paper', 'R², ours',
         'paper'], rows)
    lines += ['', 'Cosine distance d = 1 − cos on the penultimate features '
              '(the input of the final linear layer); `d_within` averages '
              'each class\'s mean distance between its samples over the '
              'classes, `d_total` the same over all class pairs, '
              'R² = 1 − d_within / d_total (Kornblith et al., 2021; '
              '`maxsup_mm.analysis.class_separation`). Train: '
              + _by_setting(_with_provenance(section), _train_subset)
              + ' of the train split through the test pipeline (no '
              'augmentation); val: every image. The paper (ResNet-50, '
              'Tables 2 and 9) does not say how many training images it '
              'used.', '',
              'Self-pairs (column "self-pairs"; here: '
              + ' and '.join(used) + '): *included* is the formula of '
              'Kornblith et al., which the paper cites: each class\'s sum '
              'of distances over all N_k² ordered pairs (m, n), the m = n '
              'pairs (distance 0) included, divided by N_k² (the default '
              'of `tools/reproduce.py`); *excluded* (`--exclude-self-pairs`) '
              'divides the sum over m ≠ n by N_k(N_k − 1), the mean distance '
              'between two different samples. Each class\'s mean differs '
              'by the factor (N_k − 1) / N_k: with self-pairs d_within is '
              'lower and R² higher, the more so the fewer images per class.']
    return lines


def _probe(section: dict) -> List[str]:
    rows = section['rows']
    lines = markdown_table(
        ['run', 'paper row', 'architecture', 'input (w × h)',
         'train / test images', 'C', 'accuracy, ours', 'accuracy, paper'],
        [[r['name'], _method(r), _arch(r), '×'.join(map(str,
                                                         r['input_size'])),
          f'{r["num_train"]} / {r["num_test"]}', f'{r["C"]:g}',
          _num(r['accuracy'], 2), _num(r['paper'], 2)] for r in rows])
    for method, arch, mean, std, n in _seeds(rows,
                                             lambda r: r['accuracy']):
        lines.append(f'| mean ± std of {n} runs | {method} | {arch} | | | | '
                     f'{format_pm(mean, std, 2)} | |')
    lines += ['', 'Frozen penultimate features of the CIFAR-10 train and '
              "test images (mmpretrain's `CIFAR10`), resized to the model's "
              'input size (bicubic) and normalised as the model was '
              'trained; L2-regularised multinomial logistic regression '
              '(`maxsup_mm.analysis.linear_probe`: standardised features, C '
              'chosen on a held-out part of the train split, refit on all '
              'of it), accuracy on the test split. Paper numbers: the '
              "authors' README (ResNet-50), not in the paper's text."]
    return lines


def _segmentation(section: dict) -> List[str]:
    rows = section['rows']
    lines = markdown_table(
        ['run', 'paper row', 'architecture', 'mmseg checkpoint',
         'UperNet config', 'MS mIoU, paper'],
        [[r['name'], _method(r), _arch(r), f'`{r["mmseg_checkpoint"]}`',
          f'`{r["upernet_config"]}`' if r['upernet_config'] else '–',
          _num(r['paper'], 1)] for r in rows])
    for r in rows:
        lines += ['', f'**{r["name"]}**' + (
            f' (paper: {r["paper"]:.1f} MS mIoU)' if r['paper'] else '')
            + ':', '']
        cmd = r.get('commands')
        if not cmd:
            lines.append(r.get('note', ''))
            continue
        lines += ['```bash',
                  f'# fine-tune, {cmd["gpus"]} GPUs',
                  cmd['train_multi'],
                  '# multi-scale (0.5-1.75) + flip test ("MS" in Table 6)',
                  cmd['test_multi'],
                  '# the same on one GPU',
                  cmd['train_single'],
                  cmd['test_single'],
                  '```']
        if cmd.get('note'):
            lines += ['', cmd['note'] + '.']
    lines += ['', 'Table 6 fine-tunes DeiT-Small backbones (ImageNet-1K) '
              'with UperNet on ADE20K for 80k iterations with '
              'cross-entropy and reports multi-scale mIoU; the commands '
              'above run that recipe from the converted checkpoints.']
    return lines


_RENDER = dict(top1=_top1, geometry=_geometry, probe=_probe,
               segmentation=_segmentation)


def _runs(report: dict) -> List[str]:
    seen = OrderedDict()
    for section in report['sections'].values():
        for r in section['rows']:
            key = (r['name'], r['source'], r['checkpoint'], r['config'])
            seen.setdefault(key, r)
    return markdown_table(
        ['run', 'paper row', 'checkpoint given', 'format',
         'mmpretrain checkpoint', 'config', 'architecture'],
        [[r['name'], _method(r), f'`{r["source"]}`', r['format'],
          f'`{r["checkpoint"]}`', f'`{r["config"]}`', r['architecture']]
         for r in seen.values()])


def render_markdown(report: dict) -> str:
    lines = ['# MaxSup paper: reproduction report', '',
             'Written by `tools/reproduce.py`: our numbers beside the '
             "paper's (Zhou et al., MaxSup, ICML 2025). A run's name "
             'selects the paper row (baseline/ce, ls, zipf, ols, maxsup, '
             'lp); its architecture the paper column. Raw numbers: '
             '`report.json`.', '', '## Runs', '']
    lines += _runs(report)
    previous = None
    for key, (title, _) in SECTIONS.items():
        section = report['sections'].get(key)
        if not section:
            continue
        lines += ['', f'## {title}', ''] + _header(section, previous) \
            + _RENDER[key](section)
        previous = section
    return '\n'.join(lines) + '\n'


def write_report(work_dir: str, sections: Dict[str, dict]) -> str:
    """Merge ``sections`` into ``work_dir/report.json``, render
    ``work_dir/report.md``; returns the Markdown path."""
    json_path = osp.join(work_dir, 'report.json')
    md_path = osp.join(work_dir, 'report.md')
    report = merge_report(json_path, sections)
    atomic_write_json(json_path, report, indent=2)
    atomic_write_text(md_path, render_markdown(report))
    return md_path
