"""The figures of a comparison, one function per analysis.

Each ``*_figure(s)`` function returns :class:`matplotlib.figure.Figure`
objects built from the runs' :class:`~maxsup_mm.analysis.measure.RunSamples`:
the logit densities and reliability diagrams pool the runs of a method, the
projection and Grad-CAM show the first run of each method.
:func:`write_figures` saves them as the PNGs of the report.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np

from .geometry import project_to_template_plane, select_confused_classes
from .measure import Extractor, GroupResult, RunSamples
from .plotting import (method_colors, plot_feature_projection,
                       plot_gradcam_grid, plot_logit_densities,
                       plot_reliability_diagram, plot_reliability_diagrams,
                       save_figure)
from .settings import CompareSettings, RunSpec

__all__ = ['logit_density_figure', 'reliability_figures',
           'projection_figures', 'gradcam_figures', 'write_figures',
           'class_name', 'safe_name']


def safe_name(name: str) -> str:
    """A method name as part of a file name."""
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'run'


def class_name(names: Sequence[str], c) -> str:
    c = int(c)
    return str(names[c]) if names and c < len(names) else str(c)


def _pool_bins(bins_list: List[dict]) -> dict:
    """Reliability bins of several runs as one (count-weighted)."""
    counts = sum(b['counts'] for b in bins_list)
    acc = sum(np.nan_to_num(b['accuracy']) * b['counts'] for b in bins_list)
    conf = sum(np.nan_to_num(b['confidence']) * b['counts']
               for b in bins_list)
    with np.errstate(invalid='ignore', divide='ignore'):
        return dict(edges=bins_list[0]['edges'], counts=counts,
                    accuracy=acc / counts, confidence=conf / counts)


def logit_density_figure(samples: List[RunSamples],
                         groups: Dict[str, GroupResult]):
    """Densities of z_gt, z_max, the range and the error gap per method."""
    pooled = OrderedDict()
    for name, group in groups.items():
        comps = [samples[i].components for i in group.runs]
        pooled[name] = {k: np.concatenate([c[k] for c in comps])
                        for k in comps[0]}
    return plot_logit_densities(pooled)


def reliability_figures(samples: List[RunSamples],
                        groups: Dict[str, GroupResult]):
    """``({method: diagram}, all methods side by side)``; titles show the
    method's mean ECE."""
    colors = method_colors(list(groups))
    bins = OrderedDict(
        (name, _pool_bins([samples[i].bins for i in g.runs]))
        for name, g in groups.items())
    eces = {name: g.mean_std('ece')[0] for name, g in groups.items()}
    each = OrderedDict(
        (name, plot_reliability_diagram(b, name, eces[name], colors[name]))
        for name, b in bins.items())
    return each, plot_reliability_diagrams(bins, eces)


def _projection_rows(labels, classes, per_class: int) -> np.ndarray:
    """Up to ``per_class`` samples of each class (seeded draw)."""
    rng = np.random.default_rng(0)
    rows = []
    for c in classes:
        r = np.flatnonzero(labels == c)
        if len(r) > per_class:
            r = np.sort(rng.choice(r, per_class, replace=False))
        rows.append(r)
    return np.concatenate(rows)


def projection_figures(runs: List[RunSpec], samples: List[RunSamples],
                       groups: Dict[str, GroupResult], s: CompareSettings,
                       extract: Extractor):
    """``(classes, {method: projection})``, or ``(None, why)`` when the
    model has fewer than three classes.  The classes are
    ``s.projection.classes`` or the confusion criterion (Appendix G) on
    all runs' predictions; each method's first run is projected (its
    features are read again, from the feature cache)."""
    confusion = sum(x.confusion for x in samples)
    if confusion.shape[0] < 3:
        return None, (f'the projection needs 3 classes, the model has '
                      f'{confusion.shape[0]}')
    chosen = s.projection.classes
    chosen = [int(c) for c in (chosen if chosen is not None else
                               select_confused_classes(confusion))]
    figures = OrderedDict()
    for name, group in groups.items():
        ev = extract(runs[group.runs[0]], s.split)
        rows = _projection_rows(ev['labels'], chosen, s.projection.per_class)
        proj = project_to_template_plane(ev['features'][rows], ev['weight'],
                                         chosen)
        figures[name] = plot_feature_projection(
            proj, ev['labels'][rows], chosen, ev['classes'], name)
    return chosen, figures


def pick_images(labels, indices, num: int) -> List[int]:
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


def gradcam_figures(runs: List[RunSpec], samples: List[RunSamples],
                    groups: Dict[str, GroupResult], s: CompareSettings):
    """``(grid of every method, {method: its own grid})`` on the same images
    (different classes, picked from the first run)."""
    from .gradcam import gradcam_for_checkpoint
    names = samples[0].classes
    pick = pick_images(samples[0].labels, samples[0].indices,
                       s.gradcam.images)
    overlays, notes, images, labels = OrderedDict(), {}, None, None
    for name, group in groups.items():
        run = runs[group.runs[0]]
        if s.extraction.progress:
            print(f'[analysis] {name}: Grad-CAM on {len(pick)} images',
                  flush=True)
        res = gradcam_for_checkpoint(
            run.cfg, run.checkpoint, pick, split=s.split,
            target=s.gradcam.target, target_layers=s.gradcam.layers,
            device=s.extraction.device, cfg_options=s.extraction.cfg_options)
        if images is None:
            images, labels = res['images'], res['labels']
        overlays[name] = res['overlays']
        notes[name] = ['pred: ' + class_name(names, p) for p in res['preds']]
    titles = [class_name(names, c) for c in labels]
    each = OrderedDict(
        (name, plot_gradcam_grid(images, {name: ov}, titles,
                                 {name: notes[name]}))
        for name, ov in overlays.items())
    return plot_gradcam_grid(images, overlays, titles, notes), each


def _save_each(figures: Dict[str, object], out_dir: str, prefix: str):
    return OrderedDict(
        (name, save_figure(fig, osp.join(out_dir,
                                         f'{prefix}_{safe_name(name)}.png')))
        for name, fig in figures.items())


def write_figures(runs: List[RunSpec], samples: List[RunSamples],
                  groups: Dict[str, GroupResult], s: CompareSettings,
                  extract: Extractor, out_dir: str) -> dict:
    """Build and save every figure of ``s.analyses``; return their paths
    (``logits``, ``calibration`` / ``calibration_all``, ``projection`` /
    ``projection_classes`` / ``projection_skipped``, ``gradcam`` /
    ``gradcam_runs``)."""
    paths = {}
    if 'logits' in s.analyses:
        paths['logits'] = save_figure(
            logit_density_figure(samples, groups),
            osp.join(out_dir, 'logit_densities.png'))
    if 'calibration' in s.analyses:
        each, both = reliability_figures(samples, groups)
        paths['calibration'] = _save_each(each, out_dir, 'reliability')
        paths['calibration_all'] = save_figure(
            both, osp.join(out_dir, 'reliability.png'))
    if 'projection' in s.analyses:
        chosen, figs = projection_figures(runs, samples, groups, s, extract)
        if chosen is None:
            paths['projection_skipped'] = figs
        else:
            paths['projection_classes'] = chosen
            paths['projection'] = _save_each(figs, out_dir, 'projection')
    if 'gradcam' in s.analyses and s.gradcam.images > 0:
        grid, each = gradcam_figures(runs, samples, groups, s)
        paths['gradcam'] = save_figure(grid,
                                       osp.join(out_dir, 'gradcam_grid.png'))
        paths['gradcam_runs'] = _save_each(each, out_dir, 'gradcam')
    return paths
