"""Run the analyses on several checkpoints and write one Markdown report.

:func:`compare` is what ``tools/analysis/compare.py`` calls; the single
analysis tools call it with one run and one analysis.  Runs that share a
method name (e.g. several seeds of MaxSup) are aggregated: tables show
``mean ± std`` (sample standard deviation over the runs), the logit densities
and reliability diagrams pool the runs' samples, and the projection and
Grad-CAM figures show the first run of each method.
"""
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from maxsup_mm.fileio import atomic_write_json, atomic_write_text

from .calibration import expected_calibration_error, reliability_bins, softmax
from .extraction import extract_features
from .geometry import (class_separation, confusion_matrix,
                       project_to_template_plane, select_confused_classes)
from .logits import logit_components, logit_statistics
from .probe import linear_probe

__all__ = ['RunSpec', 'parse_run_spec', 'compare', 'ANALYSES',
           'format_mean_std', 'PAPER_TABLE9']

#: every analysis :func:`compare` knows, in report order
ANALYSES = ('accuracy', 'calibration', 'separation', 'probe', 'logits',
            'projection', 'gradcam')

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


class RunSpec(NamedTuple):
    """One checkpoint to analyse: a method name, its config and weights."""
    name: str
    cfg: object
    checkpoint: str


def parse_run_spec(spec: str) -> RunSpec:
    """Parse ``[NAME=]CONFIG:CHECKPOINT``.

    The checkpoint is what follows the *last* colon, so configs such as
    ``mmpretrain::resnet/resnet18_8xb32_in1k.py`` work.  Without ``NAME=``
    the name is the config's file name without extension; runs with the same
    name are aggregated (seeds).
    """
    name = None
    head, sep, rest = spec.partition('=')
    if sep and head and not any(ch in head for ch in '/:\\'):
        name, spec = head, rest
    cfg, sep, ckpt = spec.rpartition(':')
    if not sep or not cfg or not ckpt:
        raise ValueError(f'run {spec!r} is not of the form '
                         '[NAME=]CONFIG:CHECKPOINT')
    if name is None:
        name = osp.splitext(osp.basename(cfg))[0]
    return RunSpec(name, cfg, ckpt)


def _as_runs(runs) -> List[RunSpec]:
    out = []
    for run in runs:
        if isinstance(run, str):
            out.append(parse_run_spec(run))
        elif len(run) == 3:
            out.append(RunSpec(str(run[0]), run[1], str(run[2])))
        else:
            raise TypeError(f'a run is "[NAME=]CFG:CKPT" or (name, cfg, '
                            f'checkpoint), got {run!r}')
    if not out:
        raise ValueError('compare() needs at least one run')
    return out


def format_mean_std(values: Sequence[float], scale: float = 1.0,
                    digits: int = 4) -> str:
    """``'x'`` for one value, ``'mean ± std'`` (ddof=1) for several."""
    vals = np.asarray([v for v in values if v is not None], dtype=float)
    vals = vals * scale
    if vals.size == 0 or np.all(np.isnan(vals)):
        return 'n/a'
    if vals.size == 1:
        return f'{vals[0]:.{digits}f}'
    mean, std = np.nanmean(vals), np.nanstd(vals, ddof=1)
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


def _safe(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'run'


def _md(text: str) -> str:
    return str(text).replace('|', '\\|')


def _pool_bins(bins_list):
    counts = sum(b['counts'] for b in bins_list)
    acc = sum(np.nan_to_num(b['accuracy']) * b['counts'] for b in bins_list)
    conf = sum(np.nan_to_num(b['confidence']) * b['counts']
               for b in bins_list)
    with np.errstate(invalid='ignore', divide='ignore'):
        return dict(edges=bins_list[0]['edges'], counts=counts,
                    accuracy=acc / counts, confidence=conf / counts)


def _pick_images(labels, indices, num):
    """Up to ``num`` images of different classes (evenly over the classes)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if num <= 0 or len(labels) == 0:
        return []
    take = classes[np.unique(np.linspace(0, len(classes) - 1,
                                         min(num, len(classes))).round()
                             .astype(int))]
    rows = [int(np.flatnonzero(labels == c)[0]) for c in take]
    for r in range(len(labels)):
        if len(rows) >= num:
            break
        if r not in rows:
            rows.append(r)
    return [int(indices[r]) for r in rows[:num]]


def compare(runs,
            out_dir: str = 'work_dirs/analysis',
            analyses: Sequence[str] = ANALYSES,
            split: str = 'val',
            train_split: Optional[str] = None,
            probe_cfg=None,
            probe_train_split: str = 'train',
            probe_test_split: Optional[str] = None,
            probe_holdout: float = 0.2,
            separation_method: str = 'auto',
            separation_pairs: int = 200_000,
            n_bins: int = 15,
            proj_classes: Optional[Sequence[int]] = None,
            proj_per_class: int = 80,
            gradcam_images: int = 6,
            gradcam_target: str = 'label',
            gradcam_layers: Optional[Sequence[str]] = None,
            batch_size: Optional[int] = None,
            num_workers: int = 0,
            device: Optional[str] = None,
            cache: bool = True,
            cache_dir: Optional[str] = None,
            max_samples: Optional[int] = None,
            cfg_options: Optional[dict] = None,
            progress: bool = True,
            title: str = 'Analysis report') -> str:
    """Analyse several checkpoints and write ``out_dir/report.md``.

    Args:
        runs: ``(name, cfg, checkpoint)`` tuples or ``"[NAME=]CFG:CKPT"``
            strings; runs sharing a name are aggregated (mean ± std).
        out_dir (str): output folder (report, PNGs, ``metrics.json``).
            Defaults to ``work_dirs/analysis``.
        analyses (Sequence[str]): a subset of :data:`ANALYSES`.
        split (str): the evaluated split of each config.
        train_split (str, optional): also measure class separation on this
            split (e.g. ``'train'``, as Table 9 does).
        probe_cfg (str | Config, optional): downstream dataset config of the
            linear probe; default: each run's own config.
        probe_train_split (str): split the probe is fit on.
        probe_test_split (str, optional): split it is scored on; default
            ``split``.
        probe_holdout (float): fraction of the probe's train split held
            out to choose C (see :func:`linear_probe`).
        separation_method (str): see :func:`class_separation`.
        separation_pairs (int): pairs of the sampled estimator.
        n_bins (int): calibration bins.
        proj_classes (Sequence[int], optional): the three classes of the
            feature projection; default: the confusion criterion of
            Appendix G on the pooled predictions of all runs.
        proj_per_class (int): samples per class in the projection (80 in
            the paper).
        gradcam_images (int): images in the Grad-CAM grid.
        gradcam_target (str): ``'label'`` or ``'pred'``.
        gradcam_layers (Sequence[str], optional): target layer names.
        batch_size, num_workers, device, cache, cache_dir, max_samples,
        cfg_options, progress: passed to :func:`extract_features`.
        title (str): report title.

    Returns:
        str: the path of the Markdown report.
    """
    runs = _as_runs(runs)
    unknown = set(analyses) - set(ANALYSES)
    if unknown:
        raise ValueError(f'unknown analyses {sorted(unknown)}; choose from '
                         f'{ANALYSES}')
    analyses = [a for a in ANALYSES if a in analyses]
    os.makedirs(out_dir, exist_ok=True)
    ex_kwargs = dict(batch_size=batch_size, num_workers=num_workers,
                     device=device, cache=cache, cache_dir=cache_dir,
                     max_samples=max_samples, cfg_options=cfg_options,
                     progress=progress)
    groups: Dict[str, List[int]] = OrderedDict()
    for i, run in enumerate(runs):
        groups.setdefault(run.name, []).append(i)

    memo = {}

    def extract(run, data_split, data_cfg=None):
        """Features of one run on one split, once per run (memo) / cache."""
        key = (id(run), data_split, id(data_cfg))
        if key not in memo:
            if progress:
                print(f'[analysis] {run.name}: features of the {data_split} '
                      f'split ({run.checkpoint})', flush=True)
            memo[key] = extract_features(run.cfg, run.checkpoint,
                                         split=data_split, data_cfg=data_cfg,
                                         **ex_kwargs)
        return memo[key]

    metrics: List[dict] = [dict() for _ in runs]
    components: Dict[str, list] = OrderedDict()
    bins: Dict[str, list] = OrderedDict()
    confusion = None
    first_eval: Dict[str, dict] = {}
    classes_names = None
    for i, run in enumerate(runs):
        memo.clear()  # keep one run's arrays in memory at a time
        ev = extract(run, split)
        feats, logits, labels = ev['features'], ev['logits'], ev['labels']
        classes_names = classes_names or ev['classes']
        m = metrics[i]
        m['num_samples'] = int(len(labels))
        if 'accuracy' in analyses:
            m['accuracy'] = float((logits.argmax(1) == labels).mean())
        if 'calibration' in analyses:
            probs = softmax(logits)
            m['ece'] = expected_calibration_error(probs, labels, n_bins)
            bins.setdefault(run.name, []).append(
                reliability_bins(probs, labels, n_bins))
        if 'separation' in analyses:
            sep = class_separation(feats, labels, method=separation_method,
                                   num_pairs=separation_pairs)
            m['separation'] = {split: sep}
            if train_split:
                tr = extract(run, train_split)
                m['separation'][train_split] = class_separation(
                    tr['features'], tr['labels'], method=separation_method,
                    num_pairs=separation_pairs)
        if 'probe' in analyses:
            if probe_cfg is None:
                ptr = extract(run, probe_train_split)
                pte = ev if (probe_test_split or split) == split else \
                    extract(run, probe_test_split)
            else:
                ptr = extract(run, probe_train_split, probe_cfg)
                pte = extract(run, probe_test_split or split, probe_cfg)
            m['probe'] = linear_probe(ptr['features'], ptr['labels'],
                                      pte['features'], pte['labels'],
                                      holdout=probe_holdout)
        if 'logits' in analyses:
            m['logits'] = logit_statistics(logits, labels)
            components.setdefault(run.name, []).append(
                logit_components(logits, labels))
        if 'projection' in analyses:
            c = confusion_matrix(logits, labels, logits.shape[1])
            confusion = c if confusion is None else confusion + c
        if run.name not in first_eval:
            first_eval[run.name] = dict(labels=labels,
                                        indices=ev['indices'])

    memo.clear()
    figures: Dict[str, object] = {}
    # ---- logit densities (pooled over the runs of a method) ------------
    if 'logits' in analyses:
        from .plotting import plot_logit_densities
        pooled = OrderedDict(
            (name, {k: np.concatenate([c[k] for c in comps])
                    for k in comps[0]})
            for name, comps in components.items())
        figures['logits'] = plot_logit_densities(
            pooled, osp.join(out_dir, 'logit_densities.png'))
    # ---- reliability diagrams ------------------------------------------
    if 'calibration' in analyses:
        from .plotting import (plot_reliability_diagram,
                               plot_reliability_diagrams, method_colors)
        colors = method_colors(list(groups))
        pooled_bins = OrderedDict((n, _pool_bins(b)) for n, b in bins.items())
        eces = {n: float(np.mean([metrics[i]['ece'] for i in groups[n]]))
                for n in groups}
        figures['calibration'] = OrderedDict(
            (n, plot_reliability_diagram(
                b, osp.join(out_dir, f'reliability_{_safe(n)}.png'), n,
                eces[n], colors[n]))
            for n, b in pooled_bins.items())
        figures['calibration_all'] = plot_reliability_diagrams(
            pooled_bins, osp.join(out_dir, 'reliability.png'), eces)
    # ---- feature projection (first run of each method) -----------------
    if 'projection' in analyses:
        from .plotting import plot_feature_projection
        num_classes = confusion.shape[0]
        if num_classes < 3:
            figures['projection_skipped'] = (
                f'the projection needs 3 classes, the model has '
                f'{num_classes}')
        else:
            chosen = [int(c) for c in (proj_classes if proj_classes
                                       is not None else
                                       select_confused_classes(confusion))]
            figures['projection_classes'] = chosen
            figures['projection'] = OrderedDict()
            for name, idx in groups.items():
                run = runs[idx[0]]
                ev = extract(run, split)
                memo.clear()
                rng = np.random.default_rng(0)
                rows = []
                for c in chosen:
                    r = np.flatnonzero(ev['labels'] == c)
                    if len(r) > proj_per_class:
                        r = np.sort(rng.choice(r, proj_per_class,
                                               replace=False))
                    rows.append(r)
                rows = np.concatenate(rows)
                proj = project_to_template_plane(ev['features'][rows],
                                                 ev['weight'], chosen)
                figures['projection'][name] = plot_feature_projection(
                    proj, ev['labels'][rows], chosen,
                    osp.join(out_dir, f'projection_{_safe(name)}.png'),
                    ev['classes'], name)
    # ---- Grad-CAM (first run of each method, same images) --------------
    if 'gradcam' in analyses and gradcam_images > 0:
        from .gradcam import gradcam_for_checkpoint
        from .plotting import plot_gradcam_grid
        first = next(iter(first_eval.values()))
        pick = _pick_images(first['labels'], first['indices'],
                            gradcam_images)
        overlays, notes, images, labels_cam = OrderedDict(), {}, None, None
        for name, idx in groups.items():
            run = runs[idx[0]]
            if progress:
                print(f'[analysis] {name}: Grad-CAM on {len(pick)} images',
                      flush=True)
            res = gradcam_for_checkpoint(
                run.cfg, run.checkpoint, pick, split=split,
                target=gradcam_target, target_layers=gradcam_layers,
                device=device, cfg_options=cfg_options)
            if images is None:
                images, labels_cam = res['images'], res['labels']
            overlays[name] = res['overlays']
            notes[name] = ['pred: ' + _class_name(classes_names, p)
                           for p in res['preds']]
        titles = [_class_name(classes_names, c) for c in labels_cam]
        figures['gradcam'] = plot_gradcam_grid(
            images, overlays, osp.join(out_dir, 'gradcam_grid.png'), titles,
            notes)
        figures['gradcam_runs'] = OrderedDict(
            (name, plot_gradcam_grid(
                images, {name: ov},
                osp.join(out_dir, f'gradcam_{_safe(name)}.png'), titles,
                {name: notes[name]}))
            for name, ov in overlays.items())

    atomic_write_json(
        osp.join(out_dir, 'metrics.json'),
        [dict(name=r.name, config=str(r.cfg), checkpoint=r.checkpoint,
              split=split, metrics=m) for r, m in zip(runs, metrics)],
        default=_json_default)
    path = osp.join(out_dir, 'report.md')
    atomic_write_text(path, _render(
        title, runs, groups, metrics, figures, analyses, split, train_split,
        probe_cfg, probe_train_split, probe_test_split or split, n_bins,
        classes_names, out_dir, probe_holdout))
    if progress:
        print(f'[analysis] report written to {path}', flush=True)
    return path


def _class_name(names, c) -> str:
    c = int(c)
    return str(names[c]) if names and c < len(names) else str(c)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _rel(path: str, out_dir: str) -> str:
    return osp.relpath(path, out_dir).replace(os.sep, '/')


def _side_by_side(images: Dict[str, str], out_dir: str) -> List[str]:
    names = list(images)
    return ['| ' + ' | '.join(_md(n) for n in names) + ' |',
            '|' + ' --- |' * len(names),
            '| ' + ' | '.join(f'![{_md(n)}]({_rel(p, out_dir)})'
                              for n, p in images.items()) + ' |', '']


def _render(title, runs, groups, metrics, figures, analyses, split,
            train_split, probe_cfg, probe_train, probe_test, n_bins,
            class_names, out_dir, probe_holdout=0.2) -> str:
    def col(name, getter, scale=1.0, digits=4):
        vals = []
        for i in groups[name]:
            try:
                vals.append(getter(metrics[i]))
            except (KeyError, TypeError):
                vals.append(None)
        return format_mean_std(vals, scale, digits)

    several = any(len(v) > 1 for v in groups.values())
    lines = [f'# {title}', '']
    lines += [f'Split analysed: `{split}`. '
              + ('Methods with several runs show mean ± std (sample '
                 'standard deviation) over their runs; figures pool the '
                 'runs (densities, reliability) or show the first run '
                 '(projection, Grad-CAM).' if several else ''), '']
    lines += ['## Runs', '', '| method | runs | config | checkpoints |',
              '| --- | ---: | --- | --- |']
    for name, idx in groups.items():
        cfgs = sorted({str(runs[i].cfg) for i in idx})
        ckpts = '<br>'.join(f'`{_md(runs[i].checkpoint)}`' for i in idx)
        lines.append(f'| {_md(name)} | {len(idx)} | '
                     f'{"<br>".join("`" + _md(c) + "`" for c in cfgs)} | '
                     f'{ckpts} |')
    lines.append('')

    if 'accuracy' in analyses or 'calibration' in analyses:
        lines += ['## Accuracy and calibration', '',
                  f'Top-1 accuracy and expected calibration error on '
                  f'`{split}` ({n_bins} equal-width confidence bins, '
                  'weighted by bin size). Lower ECE is better.', '',
                  '| method | runs | top-1 (%) | ECE (%) |',
                  '| --- | ---: | ---: | ---: |']
        for name, idx in groups.items():
            lines.append(
                f'| {_md(name)} | {len(idx)} | '
                f'{col(name, lambda m: m["accuracy"], 100, 2)} | '
                f'{col(name, lambda m: m["ece"], 100, 2)} |')
        lines.append('')
        if 'calibration' in figures:
            lines += ['Reliability diagrams (bars: accuracy per confidence '
                      'bin; hatched: gap to the bin\'s mean confidence; '
                      'diagonal: perfect calibration):', '']
            lines += _side_by_side(figures['calibration'], out_dir)

    if 'separation' in analyses:
        splits = [split] + ([train_split] if train_split else [])
        lines += ['## Class separation (Kornblith et al., 2021)', '',
                  'Cosine distance d = 1 − cos on penultimate features. '
                  '`d_within`: mean distance between two different samples '
                  'of a class, averaged per class then over classes '
                  '(higher = more intra-class variation); `d_total`: the '
                  'same over all class pairs; R² = 1 − d_within / d_total '
                  '(higher = classes more separated).', '']
        head = '| method | runs |'
        rule = '| --- | ---: |'
        for s in splits:
            head += f' d_within ({s}) ↑ | d_total ({s}) | R² ({s}) ↑ |'
            rule += ' ---: | ---: | ---: |'
        lines += [head, rule]
        for name, idx in groups.items():
            row = f'| {_md(name)} | {len(idx)} |'
            for s in splits:
                for key in ('d_within', 'd_total', 'r2'):
                    row += ' ' + col(
                        name, lambda m, s=s, k=key: m['separation'][s][k]) \
                        + ' |'
            lines.append(row)
        lines += ['', 'For reference, the paper\'s Table 9 (ResNet-50, '
                  'ImageNet-1K, train / val):', '',
                  '| method | d_within | d_total | R² |',
                  '| --- | --- | --- | --- |']
        for name, ref in PAPER_TABLE9.items():
            lines.append(f'| {name} | ' + ' | '.join(
                f'{ref[k][0]:.4f} / {ref[k][1]:.4f}'
                for k in ('d_within', 'd_total', 'r2')) + ' |')
        lines.append('')

    if 'probe' in analyses:
        data = ('each run\'s own config' if probe_cfg is None
                else f'`{_md(str(probe_cfg))}`')
        lines += ['## Linear probe', '',
                  'L2-regularised multinomial logistic regression on frozen '
                  f'penultimate features ({data}): fit on `{probe_train}`, '
                  f'C chosen on a held-out {probe_holdout:.0%} of it '
                  '(every class on both sides), scored on '
                  f'`{probe_test}` (the protocol of Table 3).', '',
                  '| method | runs | probe accuracy (%) | chosen C |',
                  '| --- | ---: | ---: | ---: |']
        for name, idx in groups.items():
            cs = sorted({metrics[i]['probe']['C'] for i in idx})
            lines.append(
                f'| {_md(name)} | {len(idx)} | '
                f'{col(name, lambda m: m["probe"]["accuracy"], 100, 2)} | '
                f'{", ".join(f"{c:g}" for c in cs)} |')
        lines.append('')

    if 'logits' in analyses:
        lines += ['## Logit statistics', '',
                  'Means over the samples of `' + split + '`. The error gap '
                  'z_max − z_gt over misclassified samples is the '
                  '"error enhancement" diagnostic: label smoothing pushes '
                  'z_gt down on errors and widens it.', '',
                  '| method | runs | z_gt | z_max | range z_max − z_min | '
                  '‖z‖ | errors | error gap z_max − z_gt |',
                  '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
        for name, idx in groups.items():
            lines.append(
                f'| {_md(name)} | {len(idx)} | '
                f'{col(name, lambda m: m["logits"]["z_gt_mean"], 1, 3)} | '
                f'{col(name, lambda m: m["logits"]["z_max_mean"], 1, 3)} | '
                f'{col(name, lambda m: m["logits"]["range_mean"], 1, 3)} | '
                f'{col(name, lambda m: m["logits"]["logit_norm_mean"], 1, 3)}'
                f' | {col(name, lambda m: m["logits"]["num_errors"], 1, 1)} |'
                f' {col(name, lambda m: m["logits"]["error_gap_mean"], 1, 3)}'
                ' |')
        lines += ['', f'![logit densities]'
                  f'({_rel(figures["logits"], out_dir)})', '']

    if 'projection' in analyses:
        lines += ['## Feature projection (Müller et al., 2019)', '']
        if 'projection' in figures:
            from .plotting import short_name
            names = '; '.join(
                f'{c}: {short_name(_class_name(class_names, c), 30)}'
                for c in figures['projection_classes'])
            lines += ['Penultimate features of three classes '
                      f'({names}) projected onto the plane through their '
                      'class templates (rows of the final linear layer; '
                      'stars). Tight, well separated clusters mean low '
                      'intra-class variation.', '']
            lines += _side_by_side(figures['projection'], out_dir)
        else:
            lines += [figures.get('projection_skipped', 'skipped'), '']

    if 'gradcam' in figures:
        lines += ['## Grad-CAM', '',
                  'First row: inputs (titles: ground truth); then one row '
                  'per method (captions: prediction).', '',
                  f'![Grad-CAM]({_rel(figures["gradcam"], out_dir)})', '']
        lines += _side_by_side(figures['gradcam_runs'], out_dir)
    return '\n'.join(lines) + '\n'
