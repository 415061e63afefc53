"""Figures of the analyses (matplotlib ``Figure`` objects, no pyplot).

Every ``plot_*`` function takes ``{method name: data}`` mappings so that
several runs (CE, LS, MaxSup, ...) appear in one figure with consistent
colours, and returns a :class:`matplotlib.figure.Figure`; :func:`save_figure`
writes it as a PNG.  Figures are built directly (``Figure()``), so no global
matplotlib backend is chosen or switched.
"""
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Sequence

import numpy as np

from maxsup_mm.fileio import atomic_write

if TYPE_CHECKING:  # imported when drawing: ``import maxsup_mm`` stays light
    from matplotlib.figure import Figure

__all__ = ['plot_logit_densities', 'plot_reliability_diagram',
           'plot_reliability_diagrams', 'plot_feature_projection',
           'plot_feature_projections', 'plot_gradcam_grid', 'method_colors',
           'short_name', 'save_figure']

_PALETTE = ('#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd',
            '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf')


def method_colors(names: Sequence[str]) -> Dict[str, str]:
    """A stable colour per method name (in order of first appearance)."""
    out = {}
    for name in names:
        if name not in out:
            out[name] = _PALETTE[len(out) % len(_PALETTE)]
    return out


def short_name(name, width: int = 22) -> str:
    """A class name for a plot: the first synonym, at most ``width`` chars."""
    name = str(name).split(',')[0].strip()
    return name if len(name) <= width else name[:width - 1] + '…'


def _figure(figsize) -> 'Figure':
    from matplotlib.figure import Figure
    return Figure(figsize=figsize)


def save_figure(fig: 'Figure', path: str, dpi: int = 110) -> str:
    """Write ``fig`` as a PNG (atomically, folder created); return ``path``."""
    with atomic_write(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=dpi, bbox_inches='tight')
    return path


def _density(ax, values, color, label, bins):
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return
    hist, edges = np.histogram(values, bins=bins, density=True)
    ax.step(edges[:-1], hist, where='post', color=color, label=label, lw=1.4)
    ax.fill_between(edges[:-1], hist, step='post', color=color, alpha=0.12)


def plot_logit_densities(components: Mapping[str, Mapping[str, np.ndarray]],
                         bins: int = 50) -> 'Figure':
    """Densities of ``z_gt``, ``z_max``, the logit range and the error gap.

    Args:
        components (Mapping): ``{method: logit_components(...)}`` (arrays
            ``z_gt``, ``z_max``, ``range``, ``gap``, ``correct``).
        bins (int): histogram bins (shared by the methods of a panel).
    """
    colors = method_colors(list(components))
    panels = [('z_gt', r'ground-truth logit $z_{gt}$', None),
              ('z_max', r'top-1 logit $z_{max}$', None),
              ('range', r'logit range $z_{max} - z_{min}$', None),
              ('gap', r'misclassified: $z_{max} - z_{gt}$', 'wrong')]
    fig = _figure((17, 3.6))
    axes = fig.subplots(1, 4)
    for ax, (key, title, subset) in zip(axes, panels):
        arrays = {}
        for name, comp in components.items():
            v = np.asarray(comp[key])
            if subset == 'wrong':
                v = v[~np.asarray(comp['correct'], dtype=bool)]
            arrays[name] = v
        pooled = np.concatenate([v for v in arrays.values()] + [np.zeros(0)])
        if pooled.size == 0:
            ax.text(0.5, 0.5, 'no samples', ha='center', va='center',
                    transform=ax.transAxes)
        else:
            lo, hi = np.percentile(pooled, [0.5, 99.5])
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.linspace(lo, hi, bins + 1)
            for name, v in arrays.items():
                _density(ax, np.clip(v, lo, hi), colors[name],
                         f'{name} (n={v.size})', edges)
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel('density')
    fig.tight_layout()
    return fig


def _reliability_axes(ax, bins: Mapping[str, np.ndarray], color: str,
                      title: str, ece: Optional[float]):
    edges = bins['edges']
    width = np.diff(edges)
    acc = np.nan_to_num(bins['accuracy'])
    conf = bins['confidence']
    filled = bins['counts'] > 0
    ax.bar(edges[:-1], acc, width=width, align='edge', color=color,
           alpha=0.75, edgecolor='black', lw=0.5, label='accuracy')
    gap_lo = np.where(filled, np.minimum(acc, conf), 0)
    gap_hi = np.where(filled, np.maximum(acc, conf), 0)
    ax.bar(edges[:-1], gap_hi - gap_lo, bottom=gap_lo, width=width,
           align='edge', color='none', edgecolor='#d62728', hatch='//',
           lw=0.5, label='gap to confidence')
    ax.plot([0, 1], [0, 1], 'k--', lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel('confidence (max probability)')
    ax.set_ylabel('accuracy')
    label = title if ece is None else f'{title}\nECE = {100 * ece:.2f}%'
    ax.set_title(label, fontsize=10)
    ax.legend(fontsize=7, loc='upper left')
    inset = ax.inset_axes([0.62, 0.08, 0.34, 0.22])
    share = bins['counts'] / max(bins['counts'].sum(), 1)
    inset.bar(edges[:-1], share, width=width, align='edge', color='gray')
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_title('samples', fontsize=6)


def plot_reliability_diagram(bins: Mapping[str, np.ndarray],
                             title: str = '', ece: Optional[float] = None,
                             color: str = _PALETTE[0]) -> 'Figure':
    """One reliability diagram (bars: accuracy per confidence bin).

    Args:
        bins (Mapping): the output of :func:`reliability_bins`.
        title (str): title (method name).
        ece (float, optional): shown in the title.
        color (str): bar colour.
    """
    fig = _figure((4, 4))
    ax = fig.subplots()
    _reliability_axes(ax, bins, color, title, ece)
    fig.tight_layout()
    return fig


def plot_reliability_diagrams(bins: Mapping[str, Mapping[str, np.ndarray]],
                              eces: Optional[Mapping[str, float]] = None
                              ) -> 'Figure':
    """Reliability diagrams of several methods side by side."""
    colors = method_colors(list(bins))
    n = len(bins)
    fig = _figure((4 * n, 4))
    axes = fig.subplots(1, n, squeeze=False)
    for ax, (name, b) in zip(axes[0], bins.items()):
        _reliability_axes(ax, b, colors[name], name,
                          None if eces is None else eces.get(name))
    fig.tight_layout()
    return fig


def _projection_axes(ax, proj, labels, classes, class_names, title):
    markers = ('o', 's', '^')
    for i, c in enumerate(classes):
        sel = labels == c
        name = short_name(class_names[c] if class_names is not None
                          else c)
        ax.scatter(proj['coords'][sel, 0], proj['coords'][sel, 1], s=9,
                   alpha=0.7, marker=markers[i % 3], label=name)
    t = proj['templates']
    ax.scatter(t[:, 0], t[:, 1], marker='*', s=160, c='black',
               label='templates')
    ax.set_aspect('equal', adjustable='datalim')
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.08),
              ncol=2, frameon=False)


def plot_feature_projection(proj: Mapping[str, np.ndarray], labels,
                            classes: Sequence[int],
                            class_names: Optional[Sequence[str]] = None,
                            title: str = '') -> 'Figure':
    """Scatter of penultimate features on a three-template plane.

    Args:
        proj (Mapping): the output of :func:`project_to_template_plane`.
        labels (array-like): labels of the projected samples.
        classes (Sequence[int]): the three classes.
        class_names (Sequence[str], optional): names of all classes.
        title (str): title.
    """
    fig = _figure((4.5, 4.5))
    ax = fig.subplots()
    _projection_axes(ax, proj, np.asarray(labels), classes, class_names,
                     title)
    fig.tight_layout()
    return fig


def plot_feature_projections(projs: Mapping[str, tuple], classes,
                             class_names=None) -> 'Figure':
    """Several methods' projections side by side.

    Args:
        projs (Mapping): ``{method: (projection dict, labels)}``.
    """
    n = len(projs)
    fig = _figure((4.5 * n, 4.5))
    axes = fig.subplots(1, n, squeeze=False)
    for ax, (name, (proj, labels)) in zip(axes[0], projs.items()):
        _projection_axes(ax, proj, np.asarray(labels), classes, class_names,
                         name)
    fig.tight_layout()
    return fig


def plot_gradcam_grid(images: np.ndarray,
                      overlays: Mapping[str, np.ndarray],
                      titles: Optional[Sequence[str]] = None,
                      row_notes: Optional[Mapping[str, Sequence[str]]] = None
                      ) -> 'Figure':
    """Images (first row) and one row of Grad-CAM overlays per method.

    Args:
        images (np.ndarray): ``(N, H, W, 3)`` uint8 RGB inputs.
        overlays (Mapping): ``{method: (N, H, W, 3) uint8 overlays}``.
        titles (Sequence[str], optional): column titles (e.g. class names).
        row_notes (Mapping, optional): ``{method: per-image text}`` shown
            under each overlay (e.g. the predicted class).
    """
    n = len(images)
    rows = 1 + len(overlays)
    fig = _figure((1.9 * n, 2.0 * rows))
    axes = fig.subplots(rows, n, squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j])
        if titles is not None:
            axes[0, j].set_title(short_name(titles[j], 18), fontsize=8)
    axes[0, 0].set_ylabel('input', fontsize=9)
    for i, (name, ov) in enumerate(overlays.items(), start=1):
        for j in range(n):
            axes[i, j].imshow(ov[j])
            if row_notes and name in row_notes:
                axes[i, j].set_xlabel(short_name(row_notes[name][j], 24),
                                      fontsize=7)
        axes[i, 0].set_ylabel(name, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
