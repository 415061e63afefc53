r"""Linear probe on frozen penultimate features (Table 3 protocol).

L2-regularised multinomial logistic regression fit on `--probe-train-split`
(C chosen on a held-out 20% of it), scored on `--probe-test-split`.
`--probe-config` takes the data from a downstream dataset config.

Usage::

    python tools/analysis/linear_probe.py CONFIG CHECKPOINT \
        [--split val] [--out DIR]

Writes `report.md` and `metrics.json` to `--out` (default:
`<checkpoint dir>/analysis/<config name>`). See `--help` and the README's
"Analysis toolkit" section.
"""
import os.path as osp
import sys

sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from maxsup_mm.analysis.cli import main_single  # noqa: E402


def main(argv=None):
    return main_single(['probe'], __doc__, argv,
                       title='Linear probe')


if __name__ == '__main__':
    main()
