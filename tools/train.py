"""Train a model from an mmpretrain or mmsegmentation config with maxsup_mm.

Examples::

    python tools/train.py configs/deit-small_maxsup.py
    bash tools/dist_train.sh configs/deit-small_maxsup.py 8
    python tools/train.py CONFIG --resume            # last checkpoint
    python tools/train.py CONFIG --resume work_dirs/x/epoch_3.pth

CONFIG is a file, one of ``configs/`` (from any directory) or
``PACKAGE::PATH`` (``mmpretrain::resnet/resnet50_8xb32_in1k.py``).  User
errors (a missing or bad config, checkpoint or dataset) end with one line.
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction

from maxsup_mm.apis import (USER_ERRORS, check_writable, close_distributed,
                            one_line_error, train_model)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or from the latest one in '
        'the work dir when no path is given')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate checkpoints during training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr with the total batch size')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value, e.g. '
        'model.head.loss.alpha=0.2')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    resume = args.resume
    if resume not in (None, 'auto') and '://' not in resume \
            and not osp.isfile(resume):
        raise SystemExit(f'train.py: error: --resume: checkpoint not found: '
                         f'{resume}')
    try:
        if args.work_dir:
            check_writable(args.work_dir, '--work-dir', folder=True)
        train_model(args.config, work_dir=args.work_dir, resume=resume,
                    cfg_options=args.cfg_options, amp=args.amp,
                    no_validate=args.no_validate,
                    auto_scale_lr=args.auto_scale_lr, launcher=args.launcher)
    except USER_ERRORS as err:  # a bad checkpoint, config, data; not bugs
        raise SystemExit(f'train.py: error: {one_line_error(err)}')
    close_distributed()


if __name__ == '__main__':
    main()
