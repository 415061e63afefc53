"""Convert an external checkpoint (DeiT code base, timm train.py or bare timm,
PyTorch Lightning, torchvision; BlurPool ResNets included) to an mmpretrain
checkpoint.

The format is detected from the file's contents. Examples::

    # the authors' DeiT-Small (release "checkpoint_deit")
    python tools/model_converters/external2mmpretrain.py \\
        checkpoint_deit.pth pretrain/deit-small_maxsup_official.pth
    python tools/model_converters/external2mmpretrain.py \\
        checkpoint_deit.pth pretrain/deit-small_maxsup_official_ema.pth --ema
    # the authors' ResNet-50 (Lightning checkpoint or bare state dict)
    python tools/model_converters/external2mmpretrain.py \\
        resnet50_maxsup.ckpt pretrain/resnet50-blurpool_maxsup.pth
    # a timm train.py run (last.pth.tar / model_best.pth.tar), EMA weights
    python tools/model_converters/external2mmpretrain.py \\
        output/train/run/model_best.pth.tar pretrain/resnet50_timm.pth --ema
    # then
    python tools/test.py configs/released/deit-small_official_in1k.py \\
        pretrain/deit-small_maxsup_official.pth

The logic lives in :mod:`maxsup_mm.converters.external`.
"""
import argparse
import sys

from maxsup_mm.apis import (USER_ERRORS, check_writable, one_line_error,
                            resolve_config)
from maxsup_mm.converters import convert_external_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a DeiT code base / timm train.py / timm '
        'ViT-DeiT / PyTorch '
        'Lightning / torchvision ResNet checkpoint (with or without '
        'BlurPool) to an mmpretrain ImageClassifier checkpoint; the format '
        'is detected from the contents; refuses anything it cannot map '
        'completely.')
    parser.add_argument('src', help='external checkpoint (.pth / .ckpt)')
    parser.add_argument('dst', help='output path (written atomically)')
    parser.add_argument(
        '--ema', action='store_true',
        help='take the EMA weights: "model_ema" of a DeiT code base '
        'checkpoint, "state_dict_ema" of a timm train.py checkpoint')
    parser.add_argument(
        '--config', help='an mmpretrain config whose model must accept the '
        'converted weights exactly: a file, one of configs/ or '
        'PACKAGE::PATH (default: the matching config, e.g. '
        'configs/released/deit-small_official_in1k.py)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_writable(args.dst, 'DST')
        config = resolve_config(args.config) if args.config else None
        convert_external_checkpoint(args.src, args.dst, ema=args.ema,
                                    config=config)
    except USER_ERRORS as err:  # ConversionError, a bad path or config
        print(f'external2mmpretrain: error: {one_line_error(err)}',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
