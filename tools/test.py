"""Evaluate a checkpoint with an mmpretrain or mmsegmentation config.

Examples::

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --tta        # multi-scale / flip
    bash tools/dist_test.sh CONFIG CHECKPOINT 8
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from maxsup_mm.apis import evaluate_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs/metrics')
    parser.add_argument('--out', help='dump the metrics to this json file')
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


def main(argv=None):
    args = parse_args(argv)
    try:
        metrics = evaluate_checkpoint(
            args.config, args.checkpoint, work_dir=args.work_dir,
            tta=args.tta, cfg_options=args.cfg_options,
            launcher=args.launcher)
    except ValueError as err:
        raise SystemExit(str(err))
    if args.out:
        import json
        with open(args.out, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2)
    return metrics


if __name__ == '__main__':
    main()
