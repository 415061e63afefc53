"""Run the analyses on several checkpoints and write one Markdown report.

:func:`compare` composes the units of this package: per run
:func:`~maxsup_mm.analysis.measure.measure_run` (metrics), then
:func:`~maxsup_mm.analysis.figures.write_figures` (PNGs) and
:func:`~maxsup_mm.analysis.sections.render_report` (Markdown).  Runs that
share a method name (e.g. several seeds of MaxSup) are aggregated: tables
show ``mean ± std`` (sample standard deviation over the runs), the logit
densities and reliability diagrams pool the runs' samples, and the
projection and Grad-CAM figures show the first run of each method.
"""
import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from maxsup_mm.fileio import atomic_write_json, atomic_write_text

from .figures import write_figures
from .measure import (GroupResult, RunResult, group_results, make_extractor,
                      measure_run)
from .sections import PAPER_TABLE9, render_report
from .settings import (ANALYSES, CompareSettings, RunSpec, as_runs,
                       parse_run_spec)
from .tables import format_mean_std

__all__ = ['RunSpec', 'parse_run_spec', 'compare', 'Comparison', 'ANALYSES',
           'format_mean_std', 'PAPER_TABLE9']


@dataclass
class Comparison:
    """What :func:`compare` measured and wrote.

    Attributes:
        runs (list[RunResult]): one per run, in the order given (name,
            config, checkpoint, split and the metrics of ``metrics.json``).
        groups (dict[str, GroupResult]): the runs of each method (seeds)
            with every numeric metric per run; ``group.mean_std(key)``.
        figures (dict): paths of the PNGs written.
        report_path (str): ``out_dir/report.md``.
        metrics_path (str): ``out_dir/metrics.json``.
    """
    runs: List[RunResult]
    groups: Dict[str, GroupResult]
    figures: dict
    report_path: str
    metrics_path: str

    def find(self, name: str, checkpoint: str) -> RunResult:
        """The run of method ``name`` on ``checkpoint``."""
        for run in self.runs:
            if run.name == name and run.checkpoint == checkpoint:
                return run
        raise KeyError(f'no run {name}={checkpoint} in this comparison')


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def compare(runs, out_dir: str = 'work_dirs/analysis',
            settings: Optional[CompareSettings] = None,
            **options) -> Comparison:
    """Analyse several checkpoints; write ``out_dir/report.md``,
    ``out_dir/metrics.json`` and the figures.

    Args:
        runs: ``(name, cfg, checkpoint)`` tuples or ``"[NAME=]CFG:CKPT"``
            strings; runs sharing a name are aggregated (mean ± std).
        out_dir (str): output folder. Defaults to ``work_dirs/analysis``.
        settings (CompareSettings, optional): what to analyse and how;
            default ``CompareSettings()`` (every analysis on ``val``).
        **options: replace fields of ``settings``: ``analyses``, ``split``,
            ``train_split``, ``n_bins``, ``title``, ``probe`` (a
            :class:`ProbeOptions`), ... or one option of a group by its flat
            name: ``probe_cfg``, ``probe_train_split``, ``probe_test_split``,
            ``probe_holdout``, ``probe_size``, ``proj_classes``,
            ``proj_per_class``, ``gradcam_images``, ``gradcam_target``,
            ``gradcam_layers`` and the :class:`ExtractionOptions`
            (``batch_size``, ``num_workers``, ``device``, ``cache``,
            ``cache_dir``, ``max_samples``, ``cfg_options``, ``progress``).

    Returns:
        Comparison: per-run and per-method metrics and the paths written.
    """
    s = (settings or CompareSettings()).replace(**options)
    specs = as_runs(runs)
    os.makedirs(out_dir, exist_ok=True)
    extract = make_extractor(s)
    results, samples = [], []
    for run in specs:  # one run's arrays in memory at a time
        result, sample = measure_run(run, s, extract)
        results.append(result)
        samples.append(sample)
    groups = group_results(results)
    figures = write_figures(specs, samples, groups, s, extract, out_dir)
    metrics_path = osp.join(out_dir, 'metrics.json')
    atomic_write_json(metrics_path, [r.to_json() for r in results],
                      default=_json_default)
    report_path = osp.join(out_dir, 'report.md')
    atomic_write_text(report_path, render_report(
        results, groups, s, figures, samples[0].classes, out_dir))
    if s.extraction.progress:
        print(f'[analysis] report written to {report_path}', flush=True)
    return Comparison(results, groups, figures, report_path, metrics_path)
