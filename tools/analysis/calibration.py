r"""Calibration: expected calibration error and a reliability diagram.

ECE with 15 equal-width bins over the max-probability confidence (`--bins`),
weighted by bin size.

Usage::

    python tools/analysis/calibration.py CONFIG CHECKPOINT \
        [--split val] [--out DIR]

Writes `report.md`, `metrics.json` and `reliability*.png` to `--out` (default:
`<checkpoint dir>/analysis/<config name>`). See `--help` and the README's
"Analysis toolkit" section.
"""
import os.path as osp
import sys

sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from maxsup_mm.analysis.cli import main_single  # noqa: E402


def main(argv=None):
    return main_single(['accuracy', 'calibration'], __doc__, argv,
                       title='Calibration')


if __name__ == '__main__':
    main()
