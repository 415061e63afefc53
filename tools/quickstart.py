"""The quickstart study on real data: CE vs LS vs MaxSup, end to end.

    python tools/quickstart.py            # full study (about 4 min, 2 cores)
    python tools/quickstart.py --fast     # 2-minute smoke version

Trains, analyses, transfers to segmentation and writes
``work_dirs/quickstart/report.md``.  Interrupted?  Run it again: finished
runs are not redone (a work dir of a study with other settings is refused).
The study itself is tools/quickstart_study.py.
"""
import argparse
import os.path as osp
import sys
import warnings

# the checkout's root: tools.quickstart_study lives in tools/, which is not
# installed (maxsup_mm itself is imported as installed)
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from maxsup_mm.apis import USER_ERRORS, one_line_error  # noqa: E402
from tools.quickstart_study import StudySettings, run_study  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='quickstart.py',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--fast', action='store_true',
                        help='smoke version: 2 seeds, 2 epochs, a few '
                        'segmentation iterations')
    parser.add_argument('--work-dir', help='output folder (default '
                        'work_dirs/quickstart[_fast])')
    parser.add_argument('--data-dir', default='data',
                        help='where the digits are written')
    parser.add_argument('--seeds', type=int, nargs='+',
                        help='training seeds (default 0 1 2; --fast: 0 1)')
    parser.add_argument('--epochs', type=int,
                        help='classification epochs (default 15)')
    parser.add_argument('--seg-iters', type=int,
                        help='UperNet fine-tuning iterations (default 300)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    opts = {k: v for k, v in dict(
        work_dir=args.work_dir, data_dir=args.data_dir,
        seeds=tuple(args.seeds) if args.seeds else None, epochs=args.epochs,
        seg_iters=args.seg_iters).items() if v is not None}
    settings = StudySettings.fast(**opts) if args.fast else \
        StudySettings(**opts)
    warnings.filterwarnings('ignore')
    sys.stdout.reconfigure(line_buffering=True)  # progress shows at once
    try:
        report = run_study(settings)
    except USER_ERRORS as err:  # a folder, a resumed other study, data
        raise SystemExit(f'quickstart.py: error: {one_line_error(err)}')
    print(open(report).read())


if __name__ == '__main__':
    main()
