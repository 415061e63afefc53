r"""The analysis toolkit's command line: one entry, one command per analysis.

Usage::

    python tools/analysis/analyze.py COMMAND [ARGS...]
    python tools/analysis/analyze.py compare [NAME=]CFG1:CKPT1 ... --out DIR
    python tools/analysis/analyze.py calibration CONFIG CHECKPOINT --out DIR

Commands (``analyze.py COMMAND --help`` for their options):

  compare             every analysis on several checkpoints, one report
  calibration         top-1, ECE and reliability diagrams
  class-separation    d_within, d_total, R^2 (Kornblith et al. 2021)
  linear-probe        linear probe on frozen features (Table 3 protocol)
  logit-stats         z_gt, z_max, logit range, error gap; densities
  feature-projection  features on the plane of three class templates
  gradcam             Grad-CAM overlays (ResNet, ViT / DeiT)
  extract-features    the features / logits / labels as .npz

Configs are files, ``configs/...`` of maxsup-mm (from any directory) or
``PACKAGE::PATH`` (``mmpretrain::resnet/resnet18_8xb32_in1k.py``).  Each
command also has its own script, ``tools/analysis/<command>.py`` with
``-`` written ``_`` (e.g. ``calibration.py CONFIG CHECKPOINT``).  Every
command but ``extract-features`` writes its figures, ``report.md`` and
``metrics.json`` to ``--out``.  User errors (an unsafe, corrupt, non-finite
or non-fitting checkpoint, a missing file, a split too small for the probe)
end the command with one ``error:`` line and exit code 1; SIGTERM ends it
like Ctrl-C (no partial output files).
"""
import argparse
import os.path as osp
from functools import partial
from typing import NamedTuple, Optional, Sequence

from maxsup_mm.analysis import (ANALYSES, CompareSettings, ExtractionOptions,
                                GradcamOptions, ProbeOptions,
                                ProjectionOptions, RunSpec, compare,
                                extract_features, parse_run_spec)
from maxsup_mm.apis import USER_ERRORS, one_line_error, resolve_config
from maxsup_mm.fileio import exit_on_sigterm

WRITES = ('Writes {} to `--out`\n(default: '
          '`<checkpoint dir>/analysis/<config name>`). The same as\n'
          '`analyze.py {}`; see the README\'s "Analysis toolkit" section.')


class Command(NamedTuple):
    """A command: its analyses, report title and help text."""
    analyses: Sequence[str]
    title: str
    doc: str


def _single(summary: str, details: str, name: str, writes: str) -> str:
    usage = (f'Usage::\n\n    python tools/analysis/{name}.py CONFIG '
             'CHECKPOINT \\\n        [--split val] [--out DIR]')
    files = ('`report.md`, `metrics.json`' + writes if writes else
             '`report.md` and `metrics.json`')
    writes = WRITES.format(files, name.replace('_', '-'))
    return f'{summary}\n\n{details}\n\n{usage}\n\n{writes}\n'


COMMANDS = {
    'compare': Command(ANALYSES, 'Comparison report', """\
Run every analysis on several checkpoints and write one Markdown report.

Usage::

    python tools/analysis/compare.py [NAME=]CFG1:CKPT1 [NAME=]CFG2:CKPT2 ... \\
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
"""),
    'calibration': Command(('accuracy', 'calibration'), 'Calibration', _single(
        'Calibration: expected calibration error and a reliability diagram.',
        'ECE with 15 equal-width bins over the max-probability confidence '
        '(`--bins`),\nweighted by bin size.', 'calibration',
        ' and `reliability*.png`')),
    'class-separation': Command(
        ('accuracy', 'separation'), 'Class separation', _single(
            'Class separation of penultimate features (Kornblith et al. '
            '2021).',
            'd_within (mean cosine distance within a class, averaged over '
            'classes),\nd_total (over all class pairs) and R^2 = 1 - '
            'd_within / d_total, as in the\nMaxSup paper\'s Tables 2 and 9, '
            'exact. `--train-split train` adds the train\nsplit.',
            'class_separation', '')),
    'linear-probe': Command(('probe', ), 'Linear probe', _single(
        'Linear probe on frozen penultimate features (Table 3 protocol).',
        'L2-regularised multinomial logistic regression fit on '
        '`--probe-train-split`\n(C chosen on a held-out 20% of it), scored '
        'on `--probe-test-split`.\n`--probe-config` takes the data from a '
        'downstream dataset config (e.g.\nmmpretrain\'s CIFAR-10), fed in '
        'the model\'s channel order and input size.', 'linear_probe', '')),
    'logit-stats': Command(('logits', ), 'Logit statistics', _single(
        'Logit statistics: z_gt, z_max, the logit range and the error gap.',
        'Densities per method (Figure 2 of the paper) and, for misclassified '
        'samples,\nthe gap z_max - z_gt that label smoothing\'s '
        'error-enhancement term widens.', 'logit_stats',
        ' and `logit_densities.png`')),
    'feature-projection': Command(('projection', ), 'Feature projection',
                                  _single(
        'Penultimate features on the plane of three class templates '
        '(Müller).',
        'The templates are the final linear layer\'s weight rows of three '
        'classes\n(`--classes a b c`; default: the most confused class and '
        'the classes it is\ntaken for); 80 samples per class '
        '(`--per-class`), as in Figures 4-5.', 'feature_projection',
        ' and `projection_*.png`')),
    'gradcam': Command(('gradcam', ), 'Grad-CAM', _single(
        'Grad-CAM overlays for an mmpretrain classifier (ResNet or '
        'ViT/DeiT).',
        'Uses the `grad-cam` package on the last residual block (ResNet) or '
        'the first\nnorm of the last transformer block (ViT/DeiT, class '
        'token dropped); one\nimage per class (`--num-images`), evidence for '
        'the ground-truth class\n(`--target label`) as in Figure 3.',
        'gradcam', ' and `gradcam_*.png`')),
    'extract-features': Command((), '', """\
Extract penultimate features, logits and labels of a checkpoint (.npz).

Usage::

    python tools/analysis/extract_features.py CONFIG CHECKPOINT \\
        [--split val] [--out features.npz]

The other analysis tools call the same function and reuse its cache; this
tool is for using the arrays elsewhere (``numpy.load``): ``features`` (N, D),
``logits`` (N, K), ``labels`` (N,), ``indices`` (N,), ``weight`` (K, D) and
``bias`` (K,) of the final linear layer, ``classes``, ``cache_key``.

An existing ``--out`` file is reused only when it was written for the same
config, checkpoint file, split and sampling (its ``cache_key``); otherwise it
is extracted again and overwritten.  The checkpoint must fit the config's
model exactly.
"""),
}


def _add_extraction(parser: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction
    parser.add_argument('--split', default='val',
                        choices=['train', 'val', 'test'],
                        help='data split of the config to analyse')
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--num-workers', type=int, default=0)
    parser.add_argument('--device', default=None,
                        help='cpu / cuda (default: cuda when available)')
    parser.add_argument('--max-samples', type=int, default=None,
                        help='analyse a random subset of this size')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--quiet', action='store_true',
                        help='no progress output')


def _add_analysis_options(parser: argparse.ArgumentParser,
                          analyses: Sequence[str]) -> None:
    parser.add_argument('--out', default=None,
                        help='output folder (default: '
                        'analysis/<name> next to the checkpoint)')
    _add_extraction(parser)
    parser.add_argument('--no-cache', action='store_true',
                        help='do not read / write the .npz feature cache')
    parser.add_argument('--cache-dir', default=None,
                        help='folder of the feature cache (default: '
                        '<checkpoint dir>/analysis_cache)')
    if 'separation' in analyses:
        parser.add_argument('--train-split', default=None,
                            help='also measure class separation on this '
                            'split (e.g. train, as in Table 9)')
    if 'probe' in analyses:
        parser.add_argument('--probe-config', default=None,
                            help='downstream dataset config of the linear '
                            'probe (default: the run\'s own config)')
        parser.add_argument('--probe-train-split', default='train')
        parser.add_argument('--probe-test-split', default=None,
                            help='default: --split')
        parser.add_argument('--probe-size', type=int, default=None,
                            metavar='N', help='resize the --probe-config '
                            'images to N x N (default: the model\'s input '
                            'size, from its test pipeline)')
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


def _settings(args, analyses: Sequence[str], title: str) -> CompareSettings:
    """The :class:`CompareSettings` of parsed arguments."""
    opt = vars(args)
    size = opt.get('probe_size')
    return CompareSettings(
        analyses=analyses, split=args.split, title=title,
        train_split=opt.get('train_split'), n_bins=opt.get('bins', 15),
        probe=ProbeOptions(
            cfg=opt.get('probe_config'),
            train_split=opt.get('probe_train_split', 'train'),
            test_split=opt.get('probe_test_split'),
            holdout=opt.get('holdout', 0.2),
            size=(size, size) if size else None),
        projection=ProjectionOptions(opt.get('classes'),
                                     opt.get('per_class', 80)),
        gradcam=GradcamOptions(opt.get('num_images', 6),
                               opt.get('target', 'label'),
                               opt.get('target_layers')),
        extraction=ExtractionOptions(
            batch_size=args.batch_size, num_workers=args.num_workers,
            device=args.device, cache=not args.no_cache,
            cache_dir=args.cache_dir, max_samples=args.max_samples,
            cfg_options=args.cfg_options, progress=not args.quiet))


def _compare(name: str, args) -> str:
    """Run the analyses of command ``name``; return the report path."""
    command = COMMANDS[name]
    if name == 'compare':
        runs = [parse_run_spec(s) for s in args.runs]
        analyses = args.analyses
    else:
        name = args.name or parse_run_spec(
            f'{args.config}:{args.checkpoint}').name
        runs = [RunSpec(name, args.config, args.checkpoint)]
        analyses = command.analyses
    # configs from any directory, and PACKAGE::PATH (names stay as given)
    runs = [run._replace(cfg=resolve_config(run.cfg)) for run in runs]
    if getattr(args, 'probe_config', None):
        args.probe_config = resolve_config(args.probe_config)
    out = args.out or osp.join(
        osp.dirname(osp.abspath(runs[0].checkpoint)), 'analysis',
        runs[0].name if len(runs) == 1 else 'compare')
    return compare(runs, out, _settings(args, analyses,
                                        command.title)).report_path


def _extract(args) -> dict:
    out = extract_features(
        resolve_config(args.config), args.checkpoint, split=args.split,
        batch_size=args.batch_size, num_workers=args.num_workers,
        device=args.device, cache=args.out or True,
        max_samples=args.max_samples, cfg_options=args.cfg_options,
        progress=not args.quiet)
    print(f"features {out['features'].shape}, logits {out['logits'].shape}, "
          f"labels {out['labels'].shape} -> {out['cache_path']}")
    return out


def build_parser(name: str, prog: Optional[str] = None
                 ) -> argparse.ArgumentParser:
    """The argument parser of command ``name``."""
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(
        prog=prog, description=command.doc,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    if name == 'compare':
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
    if name == 'extract-features':
        parser.add_argument('--out', default=None,
                            help='.npz path (default: the shared cache under '
                            '<checkpoint dir>/analysis_cache)')
        _add_extraction(parser)
        return parser
    if name != 'compare':
        parser.add_argument('--name', default=None,
                            help='method name in the report (default: the '
                            'config file name)')
    _add_analysis_options(parser, command.analyses)
    return parser


def run_command(name: str, argv: Optional[Sequence[str]] = None,
                prog: Optional[str] = None):
    """Parse ``argv`` for command ``name`` and run it: the report path (the
    arrays for ``extract-features``); user errors exit with one line."""
    parser = build_parser(name, prog)
    args = parser.parse_args(argv)
    run = _extract if name == 'extract-features' else partial(_compare,
                                                               name)
    exit_on_sigterm()
    try:
        return run(args)
    except USER_ERRORS as err:  # other exceptions are bugs: tracebacks
        raise SystemExit(f'{parser.prog}: error: {one_line_error(err)}')


def main(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        prog=osp.basename(__file__), description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('command', choices=list(COMMANDS))
    parser.add_argument('args', nargs=argparse.REMAINDER,
                        help='the command\'s arguments (COMMAND --help)')
    args = parser.parse_args(argv)
    return run_command(args.command, args.args,
                       prog=f'{parser.prog} {args.command}')


if __name__ == '__main__':
    main()
