r"""Run every analysis on several checkpoints and write one Markdown report.

Usage::

    python tools/analysis/compare.py [NAME=]CFG1:CKPT1 [NAME=]CFG2:CKPT2 ... \
        --out DIR [--train-split train] [--probe-config CFG]

Each run is ``CONFIG:CHECKPOINT`` (the checkpoint follows the last colon, so
``mmpretrain::...`` configs work), optionally prefixed by a method name.
Runs with the same name (default: the config file name) are aggregated as
seeds: the tables show mean ± std. ``DIR/report.md`` has a table per metric
(top-1, ECE, d_within / d_total / R², linear probe, logit statistics) and the
figures side by side (reliability diagrams, logit densities, feature
projections, Grad-CAM); ``DIR/metrics.json`` has every number per run.
Features are extracted once per checkpoint and split and cached as ``.npz``
(``<checkpoint dir>/analysis_cache``), so re-running is cheap.
"""
import os.path as osp
import sys

sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from maxsup_mm.analysis.cli import main_compare  # noqa: E402


def main(argv=None):
    return main_compare(__doc__, argv)


if __name__ == '__main__':
    main()
