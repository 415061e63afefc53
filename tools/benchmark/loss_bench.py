#!/usr/bin/env python
"""Forward+backward time and peak memory of MaxSup against its peers.

Every method runs in the same process on the same logits, interleaved (in
a new, seeded random order every repeat: no method always runs right after
the same one, whose cache footprint it would inherit) so that drift on a
shared machine hits all of them alike.  The table gives the median time of
``loss = f(z, y); loss.backward()`` (ours: the op with
``reduction='mean'``, reduced in place as ``MaxSupLoss`` does; the naive
loss: ``.mean()`` of the unreduced one); its minimum over the repeats (the
least disturbed sample: what to read for a difference of a few
microseconds); its ratio to ``F.cross_entropy`` (hard targets) or to
timm's ``SoftTargetCrossEntropy`` (soft targets); its ratio to the fused op
(``vs op``: the registered ``MaxSupLoss`` module, called as mmpretrain's
heads call it, shows there what its Python wrapper costs); and the peak
memory the call allocates beyond the inputs (the gradient included), in
MiB and in units of the logits' size.

Examples::

    python tools/benchmark/loss_bench.py --device cpu --threads 1
    python tools/benchmark/loss_bench.py --device cpu --threads 2 --repeats 200
    python tools/benchmark/loss_bench.py --device cuda --repeats 200
    python tools/benchmark/loss_bench.py --device cuda --cuda-graph

Peers that are not installed (mmpretrain, timm) are left out with a note;
the 2-D-only peers get ``n/a`` at the segmentation shape (for soft targets
there the baseline is timm's formula applied along the class dim 1).
"""
import argparse
import os
import os.path as osp
import platform
import random
import statistics
import sys
import time
import types
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SHAPES = {
    '256x1000': (256, 1000),
    '64x21841': (64, 21841),
    '1024x100': (1024, 100),
    'seg8x150x128x128': (8, 150, 128, 128),
}
ALPHA = 0.1
SEG_IGNORE = 255
BASE_HARD = 'F.cross_entropy'
BASE_SOFT = 'timm SoftTargetCrossEntropy'
OURS = '**MaxSup fused (ours)**'


def import_ops():
    """``maxsup_mm.ops`` (the fused op and the naive oracle).

    It imports only torch (and triton); where the full package cannot be
    imported (a machine without mmpretrain, e.g. a bare GPU box) it is
    loaded under a stub parent package, skipping ``maxsup_mm/__init__``.
    """
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        from maxsup_mm import ops
        return ops
    except ImportError:
        for name in [m for m in sys.modules if m.startswith('maxsup_mm')]:
            del sys.modules[name]
        stub = types.ModuleType('maxsup_mm')
        stub.__path__ = [osp.join(ROOT, 'maxsup_mm')]
        sys.modules['maxsup_mm'] = stub
        from maxsup_mm import ops
        return ops


class Method:
    """A loss to time: ``fn(logits, target) -> scalar``."""

    def __init__(self, name: str, fn: Callable, soft: bool, seg: bool = True):
        self.name, self.fn, self.soft, self.seg = name, fn, soft, seg


def build_methods(fused_backend: Optional[str]) -> (List[Method], List[str]):
    ops = import_ops()
    notes = []
    ref = ops.maxsup_cross_entropy_reference

    def ign(z):
        return SEG_IGNORE if z.dim() > 2 else -100

    def ours(backend):
        # the op reduces in place (what MaxSupLoss does): no .mean() node
        return lambda z, t: ops.maxsup_cross_entropy(
            z, t, ALPHA, ign(z) if not t.is_floating_point() else -100,
            reduction='mean', backend=backend)

    hard = [
        Method(BASE_HARD, lambda z, t: F.cross_entropy(z, t,
                                                       ignore_index=ign(z)),
               False),
        Method('F.cross_entropy(label_smoothing=0.1)',
               lambda z, t: F.cross_entropy(
                   z, t, label_smoothing=0.1, ignore_index=ign(z)), False),
    ]
    try:
        from mmpretrain.models.losses import LabelSmoothLoss
        mm_ls = LabelSmoothLoss(label_smooth_val=0.1)

        def mm_fn(z, t):
            mm_ls.num_classes = z.shape[1]
            return mm_ls(z, t)

        hard.append(Method('mmpretrain LabelSmoothLoss(0.1)', mm_fn, False,
                           seg=False))
    except Exception as exc:  # not installed here
        notes.append(f'mmpretrain LabelSmoothLoss left out: {exc}')
    try:
        from timm.loss import (LabelSmoothingCrossEntropy,
                               SoftTargetCrossEntropy)
        timm_ls, timm_soft = LabelSmoothingCrossEntropy(0.1), \
            SoftTargetCrossEntropy()
        hard.append(Method('timm LabelSmoothingCrossEntropy(0.1)', timm_ls,
                           False, seg=False))
    except Exception as exc:
        timm_soft = None
        notes.append(f'timm losses left out: {exc}')
    module = []
    try:  # the registered loss, as mmpretrain's ClsHead calls it
        from maxsup_mm.models.losses import MaxSupLoss
        if fused_backend is not None:
            ops.set_default_backend(fused_backend)
        mm_maxsup = MaxSupLoss(alpha=ALPHA)
        for soft in (False, True):
            module.append(Method(
                'MaxSupLoss module (head call: avg_factor=N)',
                lambda z, t: mm_maxsup(z, t, avg_factor=z.shape[0]), soft,
                seg=False))
    except Exception as exc:  # mmpretrain not installed here
        notes.append(f'MaxSupLoss module left out: {exc}')
    hard += [
        Method('MaxSup naive (separate ops + autograd)',
               lambda z, t: ref(z, t, ALPHA, ign(z)).mean(), False),
        Method(OURS, ours(fused_backend), False),
    ] + [m for m in module if not m.soft] + [
        Method('MaxSup fused, pure-PyTorch fallback', ours('torch'), False),
    ]

    def soft_base(z, y):
        if z.dim() == 2 and timm_soft is not None:
            return timm_soft(z, y)
        # timm's formula, along the class dim 1 (what it would be for seg)
        return torch.sum(-y * F.log_softmax(z, dim=1), dim=1).mean()

    soft = [
        Method(BASE_SOFT, soft_base, True),
        Method('F.cross_entropy(probability target)',
               lambda z, y: F.cross_entropy(z, y), True),
        Method('MaxSup naive (separate ops + autograd)',
               lambda z, y: ref(z, y, ALPHA).mean(), True),
        Method(OURS, ours(fused_backend), True),
    ] + [m for m in module if m.soft] + [
        Method('MaxSup fused, pure-PyTorch fallback', ours('torch'), True),
    ]
    return hard + soft, notes


def make_inputs(shape, device, dtype, soft: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, k = shape[0], shape[1]
    z = (torch.randn(shape, generator=g) * 2).to(device=device, dtype=dtype)
    z.requires_grad_(True)
    if soft:  # Mixup-like: two classes mixed, as mmpretrain's batch augments
        a = torch.randint(0, k, (n, ) + tuple(shape[2:]), generator=g)
        b = torch.randint(0, k, (n, ) + tuple(shape[2:]), generator=g)
        lam = 0.7
        y = lam * F.one_hot(a, k).float() + (1 - lam) * F.one_hot(b, k).float()
        if len(shape) > 2:
            y = y.movedim(-1, 1).contiguous()
        return z, y.to(device=device, dtype=dtype)
    t = torch.randint(0, k, (n, ) + tuple(shape[2:]), generator=g)
    if len(shape) > 2:  # some ignored pixels, as in ADE20K
        t[torch.rand(t.shape, generator=g) < 0.05] = SEG_IGNORE
    return z, t.to(device)


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def step(m: Method, z, t):
    z.grad = None
    m.fn(z, t).backward()


def peak_extra_bytes(m: Method, z, t, device) -> Optional[int]:
    """Peak bytes allocated during one fwd+bwd beyond what was live before."""
    step(m, z, t)  # warm
    z.grad = None
    if device == 'cuda':
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(m, z, t)
        sync(device)
        return torch.cuda.max_memory_allocated() - before
    try:  # CPU: replay the allocator events the profiler records
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU],
                     profile_memory=True) as prof:
            step(m, z, t)
        events = [
            e for e in prof.profiler.kineto_results.events()
            if e.name() == '[memory]'
        ]
        live = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            live += e.nbytes()
            peak = max(peak, live)
        return peak
    except Exception:
        return None


def time_methods(methods: List[Method], z, t, device, repeats: int,
                 warmup: int, inner: int) -> Dict[str, List[float]]:
    times = {m.name: [] for m in methods}
    shuffle = random.Random(0).shuffle
    for r in range(warmup + repeats):
        order = list(methods)
        shuffle(order)
        for m in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                step(m, z, t)
            sync(device)
            if r >= warmup:
                times[m.name].append((time.perf_counter() - t0) / inner)
    return times


def time_graphs(methods: List[Method], z, t, repeats: int,
                inner: int) -> Dict[str, List[float]]:
    """GPU time per fwd+bwd: each method captured once in a CUDA graph and
    replayed ``inner`` times per sample (no host/launch overhead)."""
    graphs = {}
    for m in methods:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    step(m, z, t)
            torch.cuda.current_stream().wait_stream(side)
            z.grad = None
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                m.fn(z, t).backward()
            graphs[m.name] = graph
        except Exception as exc:  # e.g. a host sync inside the loss
            print(f'# {m.name}: no CUDA graph ({type(exc).__name__})',
                  file=sys.stderr)
            torch.cuda.synchronize()
    times = {k: [] for k in graphs}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
        enable_timing=True)
    names = list(graphs)
    shuffle = random.Random(0).shuffle
    for r in range(repeats + 3):
        shuffle(names)
        for name in names:
            start.record()
            for _ in range(inner):
                graphs[name].replay()
            end.record()
            end.synchronize()
            if r >= 3:
                times[name].append(start.elapsed_time(end) / 1e3 / inner)
    z.grad = None
    return times


def machine_info(device: str, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [f'torch {torch.__version__}',
             f'Python {platform.python_version()}']
    if device == 'cuda':
        parts.insert(0, torch.cuda.get_device_name())
        try:
            import triton
            parts.append(f'triton {triton.__version__}')
        except ImportError:
            parts.append('no triton')
    else:
        isa = torch.backends.cpu.get_cpu_capability()
        parts.insert(0, f'{cpu} ({os.cpu_count()} cores visible, ATen '
                     f'{isa}), {threads} thread(s)')
    return ', '.join(parts)


def fmt_time(sec: float) -> str:
    return f'{sec * 1e6:.0f} us' if sec < 1e-2 else f'{sec * 1e3:.1f} ms'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (default 1)')
    parser.add_argument('--repeats', type=int, default=100,
                        help='timed repeats per method (2-D shapes)')
    parser.add_argument('--seg-repeats', type=int, default=None,
                        help='timed repeats at the segmentation shape '
                        '(default: repeats / 10 on CPU, repeats on CUDA)')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--inner', type=int, default=None,
                        help='calls per timed sample (default 1 on CPU, '
                        '10 on CUDA)')
    parser.add_argument('--shapes', nargs='+', default=list(SHAPES),
                        choices=list(SHAPES))
    parser.add_argument('--dtype', default='float32',
                        choices=['float32', 'bfloat16', 'float16'])
    parser.add_argument('--targets', nargs='+', default=['hard', 'soft'],
                        choices=['hard', 'soft'])
    parser.add_argument('--backend', default=None,
                        help='force the fused back-end (cpp, cpp-avx2, '
                        'cpp-generic, triton, torch); default: auto')
    parser.add_argument('--cuda-graph', action='store_true',
                        help='CUDA: time replays of a CUDA graph of each '
                        'fwd+bwd (GPU time, no launch overhead)')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the peak-memory column')
    parser.add_argument('--json', default=None, help='also write numbers here')
    args = parser.parse_args(argv)

    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device')
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    inner = args.inner or (10 if args.device == 'cuda' else 1)
    methods, notes = build_methods(args.backend)
    backends = import_ops().available_backends(args.device)
    print(f'# loss_bench: {machine_info(args.device, args.threads)}')
    mode = 'CUDA-graph replay (GPU time)' if args.cuda_graph else 'eager'
    print(f'# fused back-ends here: {", ".join(backends)}; dtype {args.dtype};'
          f' {args.repeats} repeats (median), {inner} call(s) per sample, '
          f'{mode}')
    for note in notes:
        print(f'# note: {note}')
    results = {'machine': machine_info(args.device, args.threads),
               'dtype': args.dtype, 'threads': args.threads, 'rows': []}
    for kind in args.targets:
        soft = kind == 'soft'
        base_name = BASE_SOFT if soft else BASE_HARD
        print(f'\n### {kind} targets: fwd+bwd median (and minimum), ratio '
              f'to {base_name} and to the fused op\n')
        print('| shape | method | time | min | ratio | vs op | '
              'peak extra memory |')
        print('|---|---|---:|---:|---:|---:|---:|')
        for shape_name in args.shapes:
            shape = SHAPES[shape_name]
            seg = len(shape) > 2
            chosen = [m for m in methods
                      if m.soft == soft and (m.seg or not seg)]
            z, t = make_inputs(shape, args.device, dtype, soft)
            reps = args.repeats
            if seg:
                reps = args.seg_repeats or (max(5, args.repeats // 10)
                                            if args.device == 'cpu' else
                                            args.repeats)
            print(f'[{shape_name}: {len(chosen)} methods x {reps} repeats]',
                  file=sys.stderr, flush=True)
            if args.cuda_graph and args.device == 'cuda':
                times = time_graphs(chosen, z, t, reps, inner)
                chosen = [m for m in chosen if m.name in times]
            else:
                times = time_methods(chosen, z, t, args.device, reps,
                                     args.warmup if not seg else 1, inner)
            med = {k: statistics.median(v) for k, v in times.items()}
            low = {k: min(v) for k, v in times.items()}
            logits_bytes = z.numel() * z.element_size()
            base, op = med[base_name], med.get(OURS)
            for m in chosen:
                mem = None if args.no_memory else peak_extra_bytes(
                    m, z, t, args.device)
                mem_s = 'n/a' if mem is None else \
                    f'{mem / 2**20:.1f} MiB ({mem / logits_bytes:.1f}x logits)'
                vs_op = med[m.name] / op if op else None
                print(f'| {shape_name} | {m.name} | {fmt_time(med[m.name])} | '
                      f'{fmt_time(low[m.name])} | {med[m.name] / base:.2f}x | '
                      f'{"n/a" if vs_op is None else f"{vs_op:.2f}x"} | '
                      f'{mem_s} |', flush=True)
                results['rows'].append(dict(
                    targets=kind, shape=shape_name, method=m.name,
                    seconds=med[m.name], min_seconds=low[m.name],
                    ratio=med[m.name] / base, ratio_to_op=vs_op,
                    peak_extra_bytes=mem))
            skipped = [m.name for m in methods
                       if m.soft == soft and seg and not m.seg]
            if skipped:
                print(f'| {shape_name} | {", ".join(skipped)} | n/a (2-D '
                      'logits only) | | | | |')
            del z, t
    if args.json:
        from maxsup_mm.fileio import atomic_write_json
        atomic_write_json(args.json, results, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
