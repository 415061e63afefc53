r"""Extract penultimate features, logits and labels of a checkpoint (.npz).

Usage::

    python tools/analysis/extract_features.py CONFIG CHECKPOINT \
        [--split val] [--out features.npz]

The other analysis tools call the same function and reuse its cache; this
tool is for using the arrays elsewhere (``numpy.load``): ``features`` (N, D),
``logits`` (N, K), ``labels`` (N,), ``indices`` (N,), ``weight`` (K, D) and
``bias`` (K,) of the final linear layer, ``classes``, ``cache_key``.

An existing ``--out`` file is reused only when it was written for the same
config, checkpoint file, split and sampling (its ``cache_key``); otherwise it
is extracted again and overwritten.  The checkpoint must fit the config's
model exactly.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmengine.config import DictAction  # noqa: E402

from maxsup_mm.analysis import extract_features  # noqa: E402
from maxsup_mm.checkpoint import CheckpointError  # noqa: E402
from maxsup_mm.fileio import exit_on_sigterm  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='mmpretrain config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--split', default='val',
                        choices=['train', 'val', 'test'])
    parser.add_argument('--out', default=None,
                        help='.npz path (default: the shared cache under '
                        '<checkpoint dir>/analysis_cache)')
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--num-workers', type=int, default=0)
    parser.add_argument('--device', default=None)
    parser.add_argument('--max-samples', type=int, default=None)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args(argv)
    exit_on_sigterm()
    try:
        out = extract_features(
            args.config, args.checkpoint, split=args.split,
            batch_size=args.batch_size, num_workers=args.num_workers,
            device=args.device, cache=args.out or True,
            max_samples=args.max_samples, cfg_options=args.cfg_options,
            progress=not args.quiet)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f'extract_features.py: error: {err}')
    print(f"features {out['features'].shape}, logits {out['logits'].shape}, "
          f"labels {out['labels'].shape} -> {out['cache_path']}")
    return out


if __name__ == '__main__':
    main()
