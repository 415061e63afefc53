"""The numbers of one run, and of the runs of one method.

:func:`measure_run` runs the selected analyses on one checkpoint (its
arrays are dropped afterwards) and returns a :class:`RunResult` (what
``metrics.json`` holds) plus the :class:`RunSamples` the figures pool over the
runs of a method; :func:`group_results` aggregates the runs sharing a name
(seeds) into :class:`GroupResult` s.
"""
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .calibration import expected_calibration_error, reliability_bins, softmax
from .extraction import extract_features
from .geometry import class_separation
from .logits import logit_components, logit_statistics
from .probe import linear_probe
from .settings import CompareSettings, RunSpec
from .tables import format_mean_std, mean_std

__all__ = ['RunResult', 'RunSamples', 'GroupResult', 'make_extractor',
           'measure_run', 'group_results', 'flatten_metrics']

#: ``extract(run, split, downstream)`` -> the arrays of extract_features
Extractor = Callable[[RunSpec, str, bool], dict]


@dataclass
class RunResult:
    """One analysed checkpoint and its metrics (``metrics.json``)."""
    name: str
    config: str
    checkpoint: str
    split: str
    metrics: dict

    def to_json(self) -> dict:
        return dict(name=self.name, config=self.config,
                    checkpoint=self.checkpoint, split=self.split,
                    metrics=self.metrics)


@dataclass
class RunSamples:
    """What the figures need from a run after its features are dropped."""
    labels: np.ndarray
    indices: np.ndarray
    classes: List[str]
    bins: Optional[dict] = None          # reliability bins
    components: Optional[dict] = None    # per-sample logit quantities
    confusion: Optional[np.ndarray] = None


@dataclass
class GroupResult:
    """The runs of one method (seeds): ``values[key]`` has one entry per run
    (``None`` where the run lacks the metric) for every numeric metric,
    keyed as by :func:`flatten_metrics` (``'accuracy'``,
    ``'separation.val.r2'``, ``'logits.error_gap_mean'``, ...)."""
    name: str
    runs: List[int]
    values: Dict[str, list] = field(default_factory=dict)

    def mean_std(self, key: str) -> Tuple[float, float]:
        """Mean and sample std over the runs (see :func:`tables.mean_std`)."""
        return mean_std(self.values.get(key, []))

    def cell(self, key: str, scale: float = 1.0, digits: int = 4) -> str:
        """The table cell of ``key``: ``x`` or ``mean ± std``."""
        return format_mean_std(self.values.get(key, []), scale, digits)


def flatten_metrics(metrics: dict, prefix: str = '') -> Dict[str, float]:
    """The numeric leaves of nested metrics as ``{'a.b.c': value}``
    (``bool`` and lists left out; dicts with non-string keys too)."""
    if not all(isinstance(key, str) for key in metrics):
        return {}
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten_metrics(value, f'{prefix}{key}.'))
        elif isinstance(value, (int, float, np.number)) and \
                not isinstance(value, bool):
            out[prefix + key] = float(value)
    return out


def make_extractor(s: CompareSettings) -> Extractor:
    """``extract(run, split, downstream)``: :func:`extract_features` of a
    run on one of its splits, or of the probe's downstream dataset."""
    opts = s.extraction

    def extract(run: RunSpec, split: str, downstream: bool = False) -> dict:
        if opts.progress:
            print(f'[analysis] {run.name}: features of the {split} split '
                  f'({run.checkpoint})', flush=True)
        return extract_features(
            run.cfg, run.checkpoint, split=split,
            data_cfg=s.probe.cfg if downstream else None,
            data_size=s.probe.size if downstream else None,
            batch_size=opts.batch_size, num_workers=opts.num_workers,
            device=opts.device, cache=opts.cache, cache_dir=opts.cache_dir,
            max_samples=opts.max_samples, cfg_options=opts.cfg_options,
            progress=opts.progress)

    return extract


def _probe_inputs(s: CompareSettings):
    """The (split, downstream) passes the probe fits on and scores on."""
    downstream = s.probe.cfg is not None
    return ((s.probe.train_split, downstream),
            (s.probe.test_split or s.split, downstream))


def _inputs(s: CompareSettings) -> List[Tuple[str, bool]]:
    """Every (split, downstream) pass one run needs, each once."""
    keys = [(s.split, False)]
    if 'separation' in s.analyses and s.train_split:
        keys.append((s.train_split, False))
    if 'probe' in s.analyses:
        keys += list(_probe_inputs(s))
    return list(OrderedDict.fromkeys(keys))


def calibration_metrics(ev: dict, n_bins: int) -> Tuple[dict, dict]:
    """``{'ece': ...}`` and the reliability bins of one pass."""
    probs = softmax(ev['logits'])
    return (dict(ece=expected_calibration_error(probs, ev['labels'], n_bins)),
            reliability_bins(probs, ev['labels'], n_bins))


def confusion(ev: dict) -> np.ndarray:
    """``(K, K)`` counts of (label, top-1 prediction) (scikit-learn)."""
    from sklearn.metrics import confusion_matrix
    k = ev['logits'].shape[1]
    return confusion_matrix(ev['labels'], ev['logits'].argmax(axis=1),
                            labels=np.arange(k))


def measure_run(run: RunSpec, s: CompareSettings, extract: Extractor
                ) -> Tuple[RunResult, RunSamples]:
    """Every selected analysis of one run (one pass per split it needs)."""
    data = {key: extract(run, *key) for key in _inputs(s)}
    ev = data[(s.split, False)]
    labels, logits = ev['labels'], ev['logits']
    m = dict(num_samples=int(len(labels)))
    out = RunSamples(labels=labels, indices=ev['indices'],
                     classes=list(ev['classes']))
    if 'accuracy' in s.analyses:
        m['accuracy'] = float((logits.argmax(1) == labels).mean())
    if 'calibration' in s.analyses:
        ece, out.bins = calibration_metrics(ev, s.n_bins)
        m.update(ece)
    if 'separation' in s.analyses:
        splits = [s.split] + ([s.train_split] if s.train_split else [])
        m['separation'] = {
            split: class_separation(data[split, False]['features'],
                                    data[split, False]['labels'])
            for split in splits}
    if 'probe' in s.analyses:
        train, test = (data[key] for key in _probe_inputs(s))
        m['probe'] = linear_probe(train['features'], train['labels'],
                                  test['features'], test['labels'],
                                  holdout=s.probe.holdout)
    if 'logits' in s.analyses:
        m['logits'] = logit_statistics(logits, labels)
        out.components = logit_components(logits, labels)
    if 'projection' in s.analyses:
        out.confusion = confusion(ev)
    result = RunResult(run.name, str(run.cfg), run.checkpoint, s.split, m)
    return result, out


def group_results(results: List[RunResult]) -> Dict[str, GroupResult]:
    """The runs sharing a name, in order of first appearance."""
    groups: Dict[str, GroupResult] = OrderedDict()
    flat = [flatten_metrics(r.metrics) for r in results]
    keys = list(OrderedDict.fromkeys(k for f in flat for k in f))
    for i, r in enumerate(results):
        groups.setdefault(r.name, GroupResult(r.name, [])).runs.append(i)
    for group in groups.values():
        group.values = {k: [flat[i].get(k) for i in group.runs]
                        for k in keys}
    return groups
