r"""Grad-CAM overlays for an mmpretrain classifier (ResNet or ViT/DeiT).

Uses the `grad-cam` package on the last residual block (ResNet) or the first
norm of the last transformer block (ViT/DeiT, class token dropped); one
image per class (`--num-images`), evidence for the ground-truth class
(`--target label`) as in Figure 3.

Usage::

    python tools/analysis/gradcam.py CONFIG CHECKPOINT \
        [--split val] [--out DIR]

Writes `report.md`, `metrics.json` and `gradcam_*.png` to `--out` (default:
`<checkpoint dir>/analysis/<config name>`). See `--help` and the README's
"Analysis toolkit" section.
"""
import os.path as osp
import sys

sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from maxsup_mm.analysis.cli import main_single  # noqa: E402


def main(argv=None):
    return main_single(['gradcam'], __doc__, argv,
                       title='Grad-CAM')


if __name__ == '__main__':
    main()
