r"""Logit statistics: z_gt, z_max, the logit range and the error gap.

Densities per method (Figure 2 of the paper) and, for misclassified samples,
the gap z_max - z_gt that label smoothing's error-enhancement term widens.

Usage::

    python tools/analysis/logit_stats.py CONFIG CHECKPOINT \
        [--split val] [--out DIR]

Writes `report.md`, `metrics.json` and `logit_densities.png` to `--out`
(default: `<checkpoint dir>/analysis/<config name>`). See `--help` and the
README's "Analysis toolkit" section.
"""
import os.path as osp
import sys

sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from maxsup_mm.analysis.cli import main_single  # noqa: E402


def main(argv=None):
    return main_single(['logits'], __doc__, argv,
                       title='Logit statistics')


if __name__ == '__main__':
    main()
