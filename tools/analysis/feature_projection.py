r"""Penultimate features on the plane of three class templates (Müller).

The templates are the final linear layer's weight rows of three classes
(`--classes a b c`; default: the most confused class and the classes it is
taken for); 80 samples per class (`--per-class`), as in Figures 4-5.

Usage::

    python tools/analysis/feature_projection.py CONFIG CHECKPOINT \
        [--split val] [--out DIR]

Writes `report.md`, `metrics.json` and `projection_*.png` to `--out` (default:
`<checkpoint dir>/analysis/<config name>`). See `--help` and the README's
"Analysis toolkit" section.
"""
import os.path as osp
import sys

sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from maxsup_mm.analysis.cli import main_single  # noqa: E402


def main(argv=None):
    return main_single(['projection'], __doc__, argv,
                       title='Feature projection')


if __name__ == '__main__':
    main()
