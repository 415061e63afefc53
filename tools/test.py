"""Evaluate a checkpoint with an mmpretrain or mmsegmentation config.

Examples::

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --tta        # multi-scale / flip
    python tools/test.py CONFIG CHECKPOINT --out preds.pkl     # predictions
    python tools/test.py CONFIG CHECKPOINT --out metrics.json  # metrics
    bash tools/dist_test.sh CONFIG CHECKPOINT 8

CONFIG is a file, one of ``configs/`` (from any directory) or
``PACKAGE::PATH`` (``mmpretrain::resnet/resnet50_8xb32_in1k.py``).  The
checkpoint must fit the config's model exactly (every key, every shape,
no NaN/Inf); ``--non-strict`` loads what fits and warns.  An unconverted
external checkpoint (DeiT code base, timm, Lightning, torchvision) is
refused with the converter's command.  User errors end with one line.
``--out``, ``--out-item``, ``--show-dir`` and ``--work-dir`` behave as in
mmpretrain's ``tools/test.py``.
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction

from maxsup_mm.apis import (USER_ERRORS, check_writable, close_distributed,
                            evaluate_checkpoint, one_line_error)
from maxsup_mm.fileio import atomic_write, exit_on_sigterm

PICKLE = ('.pkl', '.pickle')
#: --out extensions of --out-item metrics -> mmengine.dump's file format
METRIC_FORMATS = {'.json': 'json', '.yaml': 'yaml', '.yml': 'yaml',
                  '.pkl': 'pkl', '.pickle': 'pkl'}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the directory for logs and the metrics json '
        '(default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--out', help='output file: predictions (a .pkl / .pickle file) or '
        'metrics (.json, .yaml, or any of them with --out-item metrics)')
    parser.add_argument(
        '--out-item', choices=['metrics', 'pred'],
        help='what --out receives: "pred" (every sample\'s prediction, '
        'pickled, as mmpretrain) or "metrics". Default: "pred" for a .pkl / '
        '.pickle file, else "metrics"')
    parser.add_argument(
        '--show-dir', help='save the painted predictions to this directory '
        '(the config\'s visualization hook)')
    parser.add_argument(
        '--interval', type=int, default=1,
        help='with --show-dir: paint every n-th sample (mmpretrain) or batch '
        '(mmseg)')
    parser.add_argument(
        '--non-strict', action='store_true',
        help='evaluate even if the checkpoint does not fit the model (missing '
        'or unexpected keys, other shapes): load what fits, warn, and score '
        'a partly initialised network')
    parser.add_argument(
        '--tta', action='store_true',
        help='test-time augmentation from the config\'s tta_model and '
        'tta_pipeline (mmseg: multi-scale + flip)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def out_item(out, item):
    """What ``--out`` receives (``'pred'`` / ``'metrics'`` / None); raises
    ValueError for a combination that cannot work."""
    if out is None:
        if item is not None:
            raise ValueError('--out-item needs --out (the file to write)')
        return None
    ext = osp.splitext(out)[1].lower()
    item = item or ('pred' if ext in PICKLE else 'metrics')
    if item == 'pred' and ext not in PICKLE:
        raise ValueError(f'--out {out}: predictions are dumped as a pickle; '
                         'give a .pkl / .pickle file (or --out-item metrics)')
    if item == 'metrics' and ext not in METRIC_FORMATS:
        raise ValueError(f'--out {out}: metrics are written as .json, .yaml '
                         'or .pkl; give a file with one of these extensions')
    return item


def _plain(value):
    """Metric values as Python numbers / lists (json, yaml)."""
    if hasattr(value, 'tolist'):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def format_metric(value) -> str:
    """2 decimals for values >= 1 (percentages), 4 below; others as is."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f'{value:.2f}' if abs(value) >= 1 else f'{value:.4f}'


def dump_metrics(metrics: dict, path: str) -> None:
    import mmengine
    fmt = METRIC_FORMATS[osp.splitext(path)[1].lower()]
    mode = 'wb' if fmt == 'pkl' else 'w'
    with atomic_write(path, mode) as f:
        mmengine.dump({k: _plain(v) for k, v in metrics.items()}, f,
                      file_format=fmt)


def main(argv=None):
    args = parse_args(argv)
    exit_on_sigterm()
    prog = 'test.py'
    try:
        item = out_item(args.out, args.out_item)
        if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
            raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
        if args.out:
            check_writable(args.out, '--out')
        if args.work_dir:
            check_writable(args.work_dir, '--work-dir', folder=True)
        metrics = evaluate_checkpoint(
            args.config, args.checkpoint, work_dir=args.work_dir,
            tta=args.tta, cfg_options=args.cfg_options,
            launcher=args.launcher, show_dir=args.show_dir,
            show_interval=args.interval,
            strict=not args.non_strict,
            dump_predictions=args.out if item == 'pred' else None)
    except USER_ERRORS as err:  # other exceptions are bugs: tracebacks
        raise SystemExit(f'{prog}: error: {one_line_error(err)}')
    from mmengine.dist import is_main_process
    if is_main_process():
        for key, value in metrics.items():
            print(f'[test] {key}: {format_metric(value)}', flush=True)
        if item == 'metrics':
            dump_metrics(metrics, args.out)
            print(f'[test] metrics written to {args.out}', flush=True)
    close_distributed()
    return metrics


if __name__ == '__main__':
    main()
