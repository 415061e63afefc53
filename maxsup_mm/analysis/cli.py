"""Command-line front ends shared by ``tools/analysis/*.py``.

Every tool takes ``CONFIG CHECKPOINT`` (or, for ``compare.py``, several
``[NAME=]CONFIG:CHECKPOINT`` runs) and the options below, and writes its
figures plus a ``report.md`` and ``metrics.json`` to ``--out``.  User
errors (an unsafe, corrupt, non-finite or non-fitting checkpoint, a missing
file, a split too small for the probe) end the tool with one ``error:`` line
and exit code 1; SIGTERM ends it like Ctrl-C (no partial output files).
"""
import argparse
import os.path as osp
from typing import Optional, Sequence

from maxsup_mm.checkpoint import CheckpointError
from maxsup_mm.fileio import exit_on_sigterm

from .report import ANALYSES, RunSpec, compare, parse_run_spec

__all__ = ['build_parser', 'main_single', 'main_compare']


def _add_common(parser: argparse.ArgumentParser, analyses: Sequence[str]):
    from mmengine.config import DictAction
    parser.add_argument('--out', default=None,
                        help='output folder (default: '
                        'analysis/<name> next to the checkpoint)')
    parser.add_argument('--split', default='val',
                        choices=['train', 'val', 'test'],
                        help='data split of the config to analyse')
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--num-workers', type=int, default=0)
    parser.add_argument('--device', default=None,
                        help='cpu / cuda (default: cuda when available)')
    parser.add_argument('--max-samples', type=int, default=None,
                        help='analyse a random subset of this size')
    parser.add_argument('--no-cache', action='store_true',
                        help='do not read / write the .npz feature cache')
    parser.add_argument('--cache-dir', default=None,
                        help='folder of the feature cache (default: '
                        '<checkpoint dir>/analysis_cache)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--quiet', action='store_true',
                        help='no progress output')
    if 'separation' in analyses:
        parser.add_argument('--train-split', default=None,
                            help='also measure class separation on this '
                            'split (e.g. train, as in Table 9)')
        parser.add_argument('--separation-method', default='auto',
                            choices=['auto', 'exact', 'sampled'])
        parser.add_argument('--separation-pairs', type=int, default=200_000,
                            help='pairs of the sampled estimator')
    if 'probe' in analyses:
        parser.add_argument('--probe-config', default=None,
                            help='downstream dataset config of the linear '
                            'probe (default: the run\'s own config)')
        parser.add_argument('--probe-train-split', default='train')
        parser.add_argument('--probe-test-split', default=None,
                            help='default: --split')
        parser.add_argument('--holdout', type=float, default=0.2,
                            help='fraction of the probe\'s train split held '
                            'out (stratified: every class on both sides) '
                            'to choose the regularisation strength C')
    if 'calibration' in analyses:
        parser.add_argument('--bins', type=int, default=15,
                            help='calibration bins')
    if 'projection' in analyses:
        parser.add_argument('--classes', type=int, nargs=3, default=None,
                            metavar='K', help='the three classes of the '
                            'projection (default: the most confused class '
                            'and the classes it is taken for)')
        parser.add_argument('--per-class', type=int, default=80,
                            help='samples per class in the projection')
    if 'gradcam' in analyses:
        parser.add_argument('--num-images', type=int, default=6,
                            help='images in the Grad-CAM grid')
        parser.add_argument('--target', default='label',
                            choices=['label', 'pred'],
                            help='class whose evidence Grad-CAM shows')
        parser.add_argument('--target-layers', nargs='+', default=None,
                            help='module names of the Grad-CAM layers '
                            '(default: last ResNet block / ViT layers[-1]'
                            '.ln1)')


def build_parser(analyses: Sequence[str], description: str,
                 multi: bool = False) -> argparse.ArgumentParser:
    """The argument parser of a tool running ``analyses``."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    if multi:
        parser.add_argument('runs', nargs='+', metavar='[NAME=]CFG:CKPT',
                            help='runs to compare; runs with the same NAME '
                            '(default: the config file name) are '
                            'aggregated as seeds (mean ± std)')
        parser.add_argument('--analyses', nargs='+', default=list(ANALYSES),
                            choices=list(ANALYSES),
                            help='analyses to run (default: all)')
    else:
        parser.add_argument('config', help='mmpretrain config file')
        parser.add_argument('checkpoint', help='checkpoint file')
        parser.add_argument('--name', default=None,
                            help='method name in the report (default: the '
                            'config file name)')
    _add_common(parser, analyses)
    return parser


def _run(args, runs, analyses, title):
    out = args.out
    if out is None:
        out = osp.join(osp.dirname(osp.abspath(runs[0].checkpoint)),
                       'analysis', runs[0].name if len(runs) == 1 else
                       'compare')
    kwargs = dict(
        analyses=analyses, split=args.split, batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device,
        cache=not args.no_cache, cache_dir=args.cache_dir,
        max_samples=args.max_samples, cfg_options=args.cfg_options,
        progress=not args.quiet, title=title)
    opt = vars(args)
    if 'train_split' in opt:
        kwargs.update(train_split=args.train_split,
                      separation_method=args.separation_method,
                      separation_pairs=args.separation_pairs)
    if 'probe_config' in opt:
        kwargs.update(probe_cfg=args.probe_config,
                      probe_train_split=args.probe_train_split,
                      probe_test_split=args.probe_test_split,
                      probe_holdout=args.holdout)
    if 'bins' in opt:
        kwargs.update(n_bins=args.bins)
    if 'classes' in opt:
        kwargs.update(proj_classes=args.classes,
                      proj_per_class=args.per_class)
    if 'num_images' in opt:
        kwargs.update(gradcam_images=args.num_images,
                      gradcam_target=args.target,
                      gradcam_layers=args.target_layers)
    exit_on_sigterm()
    try:
        return compare(runs, out, **kwargs)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f'{args.prog}: error: {err}')


def main_single(analyses: Sequence[str], description: str,
                argv: Optional[Sequence[str]] = None,
                title: str = 'Analysis report') -> str:
    """Entry point of a single-checkpoint tool; returns the report path."""
    parser = build_parser(analyses, description)
    args = parser.parse_args(argv)
    args.prog = parser.prog
    name = args.name or parse_run_spec(
        f'{args.config}:{args.checkpoint}').name
    return _run(args, [RunSpec(name, args.config, args.checkpoint)],
                list(analyses), title)


def main_compare(description: str,
                 argv: Optional[Sequence[str]] = None) -> str:
    """Entry point of ``tools/analysis/compare.py``."""
    parser = build_parser(ANALYSES, description, multi=True)
    args = parser.parse_args(argv)
    args.prog = parser.prog
    runs = [parse_run_spec(s) for s in args.runs]
    return _run(args, runs, args.analyses, 'Comparison report')
