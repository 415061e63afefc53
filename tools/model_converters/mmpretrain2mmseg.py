"""Convert an mmpretrain classification checkpoint for mmsegmentation.

Examples::

    python tools/model_converters/mmpretrain2mmseg.py \\
        work_dirs/deit-small_maxsup/epoch_300.pth \\
        pretrain/deit-small_maxsup_mmseg.pth
    # check against the exact backbone of a seg config
    python tools/model_converters/mmpretrain2mmseg.py SRC DST --config \\
        configs/upernet/upernet_deit-s16_maxsup-pre_8xb2-80k_ade20k-512x512.py

The logic lives in :mod:`maxsup_mm.converters.mmpretrain2mmseg`.
"""
import argparse
import sys

from maxsup_mm.apis import (USER_ERRORS, check_writable, one_line_error,
                            resolve_config)
from maxsup_mm.converters import convert_mmpretrain_to_mmseg
from maxsup_mm.fileio import exit_on_sigterm


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an mmpretrain classification checkpoint '
        '(ViT/DeiT, ResNet, ResNetV1c, ResNetV1d) to the keys of the mmseg '
        'backbone; refuses anything it cannot map completely.')
    parser.add_argument('src', help='mmpretrain checkpoint (.pth)')
    parser.add_argument('dst', help='output path (written atomically)')
    parser.add_argument(
        '--config', help='an mmseg config whose model.backbone must accept '
        'the converted weights exactly: a file, one of configs/ or '
        'PACKAGE::PATH (default: the mmseg backbone equivalent to the '
        'checkpoint)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM / Ctrl-C while DST is written: the temporary file is removed
    # and DST is left as it was (absent or the previous conversion)
    exit_on_sigterm()
    try:
        check_writable(args.dst, 'DST')
        config = resolve_config(args.config) if args.config else None
        convert_mmpretrain_to_mmseg(args.src, args.dst, config=config)
    except USER_ERRORS as err:  # ConversionError, a bad path or config
        print(f'mmpretrain2mmseg: error: {one_line_error(err)}',
              file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit) as err:
        code = 130 if isinstance(err, KeyboardInterrupt) else err.code
        print(f'mmpretrain2mmseg: interrupted; nothing written to {args.dst}',
              file=sys.stderr)
        return code
    return 0


if __name__ == '__main__':
    sys.exit(main())
