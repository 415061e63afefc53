#!/usr/bin/env python
"""End-to-end training speed: the same mmpretrain model with CE vs MaxSup.

Builds the model of one mmpretrain config (default: ImageNet ResNet-18,
1000 classes, ``mmpretrain::resnet/resnet18_8xb32_in1k.py``) three times
from the same seed, differing only in ``head.loss``: mmpretrain's
``CrossEntropyLoss``, our ``MaxSupLoss`` (fused kernel) and ``MaxSupLoss``
on the naive reference back-end.  The data are generated 32x32 JPEGs in the
ImageNet folder layout (``maxsup_mm.datasets.write_imagenet_folder``), read
by mmpretrain's ``ImageNet`` dataset, decoded once and cycled, so the timing
covers ``model.train_step`` (data preprocessor, forward, loss, backward, SGD
step), not JPEG decoding.  The variants are interleaved block by block, and
the table gives median seconds per iteration, iterations/s and the ratio to
CE (the end-to-end overhead of MaxSup).

Example::

    python tools/benchmark/train_bench.py --threads 2 --iters 200
"""
import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time

import torch

VARIANTS = {
    'CE (mmpretrain CrossEntropyLoss)':
    (dict(type='CrossEntropyLoss', loss_weight=1.0), None),
    'MaxSup fused (ours)': (dict(type='MaxSupLoss', alpha=0.1), 'auto'),
    'MaxSup naive (reference)': (dict(type='MaxSupLoss', alpha=0.1),
                                 'reference'),
}


def config_file(path: str) -> str:
    """A config path; ``scope::rel/path.py`` becomes a one-line child config
    (mmengine resolves ``_base_`` from installed packages, not ``fromfile``)."""
    if '::' not in path:
        return path
    fd, child = tempfile.mkstemp(suffix='.py', prefix='train_bench_cfg_')
    with os.fdopen(fd, 'w') as f:
        f.write(f'_base_ = [{path!r}]\n')
    return child


def make_batches(cfg, root: str, batch_size: int, num_batches: int, seed: int):
    """Decoded, collated batches from the generated ImageNet folder."""
    from mmengine.dataset import pseudo_collate
    from mmpretrain.datasets import ImageNet
    dataset = ImageNet(
        data_root=root,
        split='train',
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='PackInputs')])
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        idx = torch.randint(0, len(dataset), (batch_size, ), generator=g)
        batches.append(pseudo_collate([dataset[int(i)] for i in idx]))
    return batches


def build_model(cfg, loss_cfg, seed: int):
    from mmpretrain.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.head.loss = loss_cfg
    if cfg.get('data_preprocessor', None) is not None:
        model_cfg.data_preprocessor = copy.deepcopy(cfg.data_preprocessor)
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model.init_weights()
    model.train()
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config',
                        default='mmpretrain::resnet/resnet18_8xb32_in1k.py')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--iters', type=int, default=120,
                        help='timed iterations per variant')
    parser.add_argument('--block', type=int, default=5,
                        help='iterations per variant before switching')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from mmengine.optim import OptimWrapper

    from maxsup_mm.apis import load_config
    from maxsup_mm.datasets import write_imagenet_folder
    from maxsup_mm.ops import set_default_backend
    cfg = load_config(config_file(args.config))
    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    num_classes = cfg.model.head.num_classes
    with tempfile.TemporaryDirectory(prefix='maxsup_train_bench_') as root:
        print(f'[train_bench] writing {num_classes} classes of '
              f'{args.img_size}px JPEGs to {root}', file=sys.stderr)
        write_imagenet_folder(root, num_classes=num_classes, per_class=(1, ),
                              splits=('train', ), size=args.img_size,
                              seed=args.seed)
        batches = make_batches(cfg, root, args.batch_size, 4, args.seed)
    runs = {}
    for name, (loss_cfg, backend) in VARIANTS.items():
        model = build_model(cfg, loss_cfg, args.seed)
        optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01,
                                             momentum=0.9, weight_decay=1e-4))
        runs[name] = dict(model=model, optim=optim, backend=backend, times=[],
                          step=0)

    def run_block(name, n, record):
        r = runs[name]
        old = set_default_backend(r['backend'] or 'auto')
        try:
            for _ in range(n):
                data = batches[r['step'] % len(batches)]
                t0 = time.perf_counter()
                r['model'].train_step(data, r['optim'])
                dt = time.perf_counter() - t0
                r['step'] += 1
                if record:
                    r['times'].append(dt)
        finally:
            set_default_backend(old)

    names = list(runs)
    for name in names:
        run_block(name, args.warmup, False)
    blocks = max(1, args.iters // args.block)
    for b in range(blocks):
        for name in names[b % len(names):] + names[:b % len(names)]:
            run_block(name, args.block, True)
            print(f'[train_bench] block {b + 1}/{blocks} {name}: '
                  f'{statistics.median(runs[name]["times"]) * 1e3:.1f} '
                  'ms/iter so far', file=sys.stderr, flush=True)

    base = statistics.median(runs[names[0]]['times'])
    print(f'# train_bench: {args.config}, head {num_classes} classes, batch '
          f'{args.batch_size}, {args.img_size}px, {args.threads} thread(s), '
          f'torch {torch.__version__}, {blocks * args.block} iterations per '
          'variant (median)\n')
    print('| loss | s/iter (median) | it/s | ratio to CE | IQR s/iter |')
    print('|---|---:|---:|---:|---:|')
    for name in names:
        ts = sorted(runs[name]['times'])
        med = statistics.median(ts)
        q1, q3 = ts[len(ts) // 4], ts[(3 * len(ts)) // 4]
        print(f'| {name} | {med:.4f} | {1 / med:.2f} | {med / base:.3f}x | '
              f'{q1:.4f}-{q3:.4f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
