"""Reproduce the MaxSup paper's tables from checkpoints, one command each.

Each run is ``NAME=CHECKPOINT`` or ``NAME=CHECKPOINT:CONFIG``. The checkpoint
is the authors' release (DeiT code base ``checkpoint_deit``, the Lightning
ResNet-50s), a timm / torchvision file or your own mmpretrain checkpoint;
external formats are detected and converted once into
``WORK_DIR/checkpoints/NAME-HASH.pth`` (HASH: the source's content, --ema and
the config; the matching config, e.g. ``configs/released/*``, is chosen for
them). A config named inside an mmpretrain checkpoint is used only if it is
one of ours (``configs/...``); any other must be given (``:CONFIG`` or
--config). The name selects the paper's row: baseline (or ce), ls, zipf, ols,
maxsup, lp (e.g. ``maxsup-s1``); other names get no paper column.

Tables:
  4, 5   top-1 on ImageNet-val (ResNets: Table 4, DeiT-Small: Table 5)
  2, 9   d_within, d_total, R^2 of the penultimate features, train and val
  3      linear probe of the frozen features on CIFAR-10
  6      convert for mmseg and print the UperNet fine-tune / MS-test commands

Tables 2/9 count the self-pairs (m = n) as Kornblith et al., whom the paper
cites, do (each class's sum over N_k^2 pairs divided by N_k^2);
--exclude-self-pairs divides by N_k (N_k - 1) instead. The report says which.

Writes WORK_DIR/report.md (our numbers beside the paper's) and
WORK_DIR/report.json (raw numbers); a later command replaces the rows of the
runs it evaluates (same name and checkpoint file) and keeps every other row
and table.
"""
import argparse
import datetime
import os.path as osp
import shlex
import sys
from functools import partial

# the checkout's root: tools.paper lives in tools/, which is not installed
# (maxsup_mm itself is imported as installed)
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

EXAMPLES = """examples:
  # Table 5: the authors' DeiT-Small (release "checkpoint_deit")
  python tools/reproduce.py --tables 5 --run maxsup=checkpoint_deit.pth \\
      --imagenet-root data/imagenet
  # Tables 4, 2 and 9: the authors' ResNet-50s (Hugging Face)
  python tools/reproduce.py --tables 4 2 9 --run baseline=r50_baseline.ckpt \\
      --run ls=r50_ls.ckpt --run maxsup=r50_maxsup.ckpt \\
      --imagenet-root data/imagenet --max-train-samples 50000
  # Table 3: linear probe on CIFAR-10 (data/cifar10/cifar-10-batches-py)
  python tools/reproduce.py --tables 3 --run baseline=r50_baseline.ckpt \\
      --run ls=r50_ls.ckpt --run maxsup=r50_maxsup.ckpt \\
      --cifar10-root data/cifar10
  # Table 6: convert for UperNet and print the commands
  python tools/reproduce.py --tables 6 --run maxsup=checkpoint_deit.pth
  # your own mmpretrain checkpoints (NAME=CKPT:CONFIG, or --config for all)
  python tools/reproduce.py --tables 4 9 --imagenet-root data/imagenet \\
      --config configs/resnet/resnet50_8xb256-coslr-200e-maxsup_in1k.py \\
      --run maxsup-s0=work_dirs/r50_maxsup_s0/epoch_200.pth \\
      --run maxsup-s1=work_dirs/r50_maxsup_s1/epoch_200.pth
"""


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--tables', nargs='+', required=True, metavar='N',
        choices=['2', '3', '4', '5', '6', '9'],
        help='paper tables to reproduce (2 and 9 are one measurement, so '
        'are 4 and 5)')
    parser.add_argument(
        '--run', action='append', required=True, metavar='NAME=CKPT[:CFG]',
        help='a checkpoint (repeat for several); NAME selects the paper '
        'row, CFG the mmpretrain config (default: --config, else the one '
        'matching the converted weights)')
    parser.add_argument('--config', help='config of the runs without one')
    parser.add_argument('--ema', action='store_true',
                        help='take "model_ema" of DeiT code base checkpoints')
    parser.add_argument(
        '--imagenet-root', help='ImageNet in mmpretrain\'s layout '
        '(train/, val/, meta/{train,val}.txt); default: the config\'s')
    parser.add_argument(
        '--max-train-samples', type=int, default=50000, metavar='N',
        help='Tables 2/9: random train images (default 50000, about 50 per '
        'class; 0: all 1.28M)')
    parser.add_argument(
        '--exclude-self-pairs', action='store_true',
        help='Tables 2/9: leave the m = n self-pairs out of d_within and '
        'd_total (divide by N_k (N_k - 1)); default: Kornblith et al.\'s '
        'formula as the paper cites it (N_k^2 pairs, self-pairs included)')
    parser.add_argument(
        '--cifar10-root', default='data/cifar10',
        help='Table 3: folder holding cifar-10-batches-py/ (default '
        'data/cifar10)')
    parser.add_argument(
        '--probe-size', type=int, default=None,
        help='Table 3: resize CIFAR-10 images to this size (default: the '
        'input size of the config\'s test pipeline)')
    parser.add_argument(
        '--seg-config', help='Table 6: the mmseg UperNet config (default: '
        'the matching one of configs/upernet/)')
    parser.add_argument('--ade20k-root',
                        help='Table 6: ADE20K root for the printed commands '
                        '(default: the config\'s)')
    parser.add_argument('--work-dir', default='work_dirs/reproduce',
                        help='report, converted checkpoints and feature '
                        'cache (default work_dirs/reproduce)')
    parser.add_argument('--device', default=None,
                        help='cpu / cuda (default: cuda when available)')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='default: the config\'s')
    parser.add_argument('--num-workers', type=int, default=4,
                        help='data loading workers (default 4)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the train subset and the probe split')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of every run\'s config, '
                        'key=value')
    args = parser.parse_args(argv)
    if args.max_train_samples < 0:
        parser.error('--max-train-samples must be >= 0')
    return args


def _sections(tables):
    from tools.paper.report import SECTIONS
    wanted = {int(t) for t in tables}
    return [k for k, (_, nums) in SECTIONS.items() if wanted & set(nums)]


def _prepare(args, log):
    from tools.paper.pipelines import check_cifar10
    from tools.paper.runs import (describe_model, load_config, parse_run,
                                  prepare_checkpoint, set_data_root)
    runs = [parse_run(spec) for spec in args.run]
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f'run names must differ (seeds: maxsup-s0, '
                         f'maxsup-s1, ...); given twice: {", ".join(dup)}')
    sections = _sections(args.tables)
    if args.imagenet_root and not osp.isdir(args.imagenet_root):
        raise ValueError(f'--imagenet-root: no folder {args.imagenet_root}')
    if 'probe' in sections:
        check_cifar10(args.cifar10_root)
    for run in runs:  # every checkpoint is checked before any long work
        prepare_checkpoint(run, args.work_dir, args.config, args.ema, log)
        cfg = load_config(run.config, args.cfg_options)
        if args.imagenet_root:
            set_data_root(cfg, args.imagenet_root)
        run.cfg = cfg
        run.arch, run.arch_label, run.backbone_type, run.depth = \
            describe_model(cfg)
        log(f'[reproduce] {run.name}: {run.arch_label}, config '
            f'{run.config}, paper row: {run.row or "none"}')
    return runs, sections


def run_tables(args, argv, log=print) -> str:
    """Compute the requested tables; returns the report path."""
    from tools.paper import pipelines
    from tools.paper.report import render_markdown, write_report
    runs, sections = _prepare(args, log)
    features = pipelines.Features(
        args.work_dir, device=args.device, batch_size=args.batch_size,
        num_workers=args.num_workers, seed=args.seed, log=log)
    rows = {key: [] for key in sections}
    limit = args.max_train_samples or None
    include_self = not args.exclude_self_pairs
    for run in runs:
        if 'top1' in sections:
            rows['top1'].append(pipelines.top1_row(run, features))
        if 'geometry' in sections:
            rows['geometry'].append(
                pipelines.geometry_row(run, features, limit, include_self))
        if 'probe' in sections:
            rows['probe'].append(pipelines.probe_row(
                run, features, args.cifar10_root, args.probe_size,
                args.seed, log))
        if 'segmentation' in sections:
            rows['segmentation'].append(pipelines.segmentation_row(
                run, args.work_dir, args.seg_config, args.ade20k_root, log))
        features.clear()
    settings = dict(
        top1=dict(imagenet_root=args.imagenet_root, device=args.device),
        geometry=dict(imagenet_root=args.imagenet_root,
                      max_train_samples=limit, seed=args.seed,
                      self_pairs=pipelines.self_pairs_label(include_self)),
        probe=dict(cifar10_root=args.cifar10_root,
                   probe_size=args.probe_size, seed=args.seed),
        segmentation=dict(seg_config=args.seg_config,
                          ade20k_root=args.ade20k_root))
    now = datetime.datetime.now().isoformat(timespec='seconds')
    command = 'python tools/reproduce.py ' + ' '.join(
        shlex.quote(a) for a in argv)
    payload = {key: dict(time=now, command=command, settings=settings[key],
                         rows=rows[key]) for key in sections}
    path = write_report(args.work_dir, payload)
    # the new sections on stdout (Table 6: the commands to run)
    text = render_markdown(dict(sections=payload))
    log(text[text.index('\n## ', text.index('## Runs') + 1):].strip())
    log(f'[reproduce] wrote {path} and '
        f'{osp.join(args.work_dir, "report.json")}')
    return path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    log = partial(print, flush=True)
    try:
        run_tables(args, argv, log)
    except (ValueError, FileNotFoundError) as err:
        message = ' '.join(str(err).split())  # one line
        print(f'reproduce: error: {message}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
