r"""Class separation of penultimate features (Kornblith et al. 2021).

d_within (mean cosine distance within a class, averaged over classes),
d_total (over all class pairs) and R^2 = 1 - d_within / d_total, as in the
MaxSup paper's Tables 2 and 9. `--train-split train` adds the train split;
`--separation-method sampled` estimates from random pairs with standard
errors.

Usage::

    python tools/analysis/class_separation.py CONFIG CHECKPOINT \
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
    return main_single(['accuracy', 'separation'], __doc__, argv,
                       title='Class separation')


if __name__ == '__main__':
    main()
