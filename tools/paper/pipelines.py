"""What ``tools/reproduce.py`` measures for each table, per run.

* Tables 4 / 5: top-1 on ImageNet-val, from the logits of one pass of the
  run's config's val split (the same data and pipeline ``tools/test.py``
  evaluates).
* Tables 2 / 9: ``d_within``, ``d_total``, ``R^2`` of the penultimate
  features (:func:`maxsup_mm.analysis.class_separation`) on a random subset
  of the train split (test pipeline) and on the val split; by default with
  the self-pairs, the formula of Kornblith et al. that the paper cites
  (``include_self=True``: each class's sum over its ``N_k^2`` pairs divided
  by ``N_k^2``), ``--exclude-self-pairs``: ``N_k (N_k - 1)`` pairs.
* Table 3: the frozen penultimate features of CIFAR-10 (mmpretrain's
  ``CIFAR10``) as the library feeds downstream data
  (:func:`maxsup_mm.analysis.extract_features` with ``data_cfg``: the
  model's channel order, input size and normalisation), then
  :func:`maxsup_mm.analysis.linear_probe`.
* Table 6: the checkpoint converted for mmseg (``mmpretrain2mmseg``) and
  the UperNet fine-tune / multi-scale test commands.

Features come from :func:`maxsup_mm.analysis.extract_features` and are
cached in ``<work-dir>/features`` (one pass per run and split).
"""
import os.path as osp
import re
import shlex
from typing import Callable, Dict, Optional

from maxsup_mm.analysis import (class_separation, extract_features,
                                input_size, linear_probe)
from maxsup_mm.analysis.extraction import file_digest
from maxsup_mm.converters import convert_mmpretrain_to_mmseg
from .runs import Run, conversion_path, load_config, resolve_config
from .tables import (ARCH_LABELS, TABLE3, TABLE3_ARCH, TABLE6,
                     TABLE6_ARCH, TABLE9, TABLE9_ARCH, top1_reference)

__all__ = ['Features', 'top1_row', 'geometry_row', 'probe_row',
           'segmentation_row', 'input_size', 'probe_data_config',
           'upernet_config', 'check_cifar10', 'self_pairs_label',
           'seg_commands', 'CIFAR10_FILES']

#: the files of the python version of CIFAR-10 (cifar-10-python.tar.gz)
CIFAR10_FILES = tuple(f'data_batch_{i}' for i in range(1, 6)) + (
    'test_batch', 'batches.meta')


class Features:
    """One feature pass per (run, data, split), kept for the run's tables."""

    def __init__(self, work_dir: str, device: Optional[str] = None,
                 batch_size: Optional[int] = None, num_workers: int = 0,
                 seed: int = 0, log: Callable[[str], None] = print):
        self.cache_dir = osp.join(work_dir, 'features')
        self.device, self.batch_size = device, batch_size
        self.num_workers, self.seed, self.log = num_workers, seed, log
        self.memo: Dict[tuple, dict] = {}

    def __call__(self, run: Run, cfg, split: str, data: str = 'ImageNet',
                 max_samples: Optional[int] = None, data_cfg=None,
                 data_size: Optional[tuple] = None) -> dict:
        key = (run.name, data, split)
        if key not in self.memo:
            subset = f', {max_samples} random images' if max_samples else ''
            self.log(f'[reproduce] {run.name}: penultimate features and '
                     f'logits of {data} {split}{subset}')
            self.memo[key] = extract_features(
                cfg, run.checkpoint, split=split, batch_size=self.batch_size,
                num_workers=self.num_workers, device=self.device,
                cache_dir=self.cache_dir, max_samples=max_samples,
                seed=self.seed, data_cfg=data_cfg, data_size=data_size,
                progress=True)
        return self.memo[key]

    def clear(self) -> None:
        self.memo.clear()


def _paper_flag(run: Run, paper_arch: str) -> str:
    """A note when the run's architecture is not the table's."""
    if run.arch == paper_arch:
        return ''
    return f'paper: {ARCH_LABELS[paper_arch]}'


# ---------------------------------------------------------------------------
# Tables 4 and 5
# ---------------------------------------------------------------------------
def top1_row(run: Run, features: Features) -> dict:
    ev = features(run, run.cfg, 'val')
    correct = ev['logits'].argmax(axis=1) == ev['labels']
    paper, source = top1_reference(run.arch, run.row)
    return dict(run.info(), top1=float(correct.mean() * 100),
                num_images=int(len(correct)),
                paper=list(paper) if paper else None, paper_source=source)


# ---------------------------------------------------------------------------
# Tables 2 and 9
# ---------------------------------------------------------------------------
def self_pairs_label(include_self: bool) -> str:
    """What the report says of the self-pair convention."""
    return 'included' if include_self else 'excluded'


def geometry_row(run: Run, features: Features,
                 max_train_samples: Optional[int],
                 include_self: bool = True) -> dict:
    out = dict(run.info(), self_pairs=self_pairs_label(include_self))
    for split, limit in (('train', max_train_samples), ('val', None)):
        ev = features(run, run.cfg, split, max_samples=limit)
        sep = class_separation(ev['features'], ev['labels'],
                               include_self=include_self)
        out[split] = {k: sep[k] for k in ('d_within', 'd_total', 'r2',
                                          'num_samples', 'num_classes')}
    paper = TABLE9.get(run.row)
    out['paper'] = {k: list(v) for k, v in paper.items()} if paper else None
    out['paper_note'] = _paper_flag(run, TABLE9_ARCH)
    return out


# ---------------------------------------------------------------------------
# Table 3
# ---------------------------------------------------------------------------
def probe_data_config(cifar10_root: str, batch_size: Optional[int],
                      num_workers: int):
    """CIFAR-10 train / test through mmpretrain's ``CIFAR10`` (RGB arrays),
    no crop, no flip; :func:`~maxsup_mm.analysis.extract_features` resizes
    them to the model's input size and feeds them in its channel order."""
    from mmengine.config import Config

    def loader(split):
        return dict(batch_size=batch_size or 64, num_workers=num_workers,
                    dataset=dict(type='CIFAR10', data_root=cifar10_root,
                                 split=split, download=False,
                                 pipeline=[dict(type='PackInputs')]),
                    sampler=dict(type='DefaultSampler', shuffle=False))

    return Config(dict(default_scope='mmpretrain',
                       train_dataloader=loader('train'),
                       test_dataloader=loader('test')))


def check_cifar10(root: str) -> None:
    folder = osp.join(root, 'cifar-10-batches-py')
    missing = [f for f in CIFAR10_FILES if not osp.isfile(osp.join(folder,
                                                                   f))]
    if missing:
        raise ValueError(
            f'CIFAR-10 not found: {folder} lacks {", ".join(missing)} (the '
            'python version, cifar-10-python.tar.gz, unpacked; set '
            '--cifar10-root)')


def probe_row(run: Run, features: Features, cifar10_root: str,
              size: Optional[int] = None, seed: int = 0,
              log: Callable[[str], None] = print) -> dict:
    wh = (size, size) if size else input_size(run.cfg)
    if wh is None:
        raise ValueError(f'run {run.name}: cannot tell the input size from '
                         f'{run.config}; set --probe-size')
    data_cfg = probe_data_config(cifar10_root, features.batch_size,
                                 features.num_workers)
    train = features(run, run.cfg, 'train', data='CIFAR-10',
                     data_cfg=data_cfg, data_size=wh)
    test = features(run, run.cfg, 'test', data='CIFAR-10',
                    data_cfg=data_cfg, data_size=wh)
    log(f'[reproduce] {run.name}: fitting the linear probe (L2 '
        f'multinomial logistic regression, {len(train["labels"])} x '
        f'{train["features"].shape[1]} features)')
    res = linear_probe(train['features'], train['labels'], test['features'],
                       test['labels'], seed=seed)
    return dict(run.info(), accuracy=float(res['accuracy'] * 100),
                C=float(res['C']), num_train=int(res['num_train']),
                num_test=int(res['num_test']), input_size=list(wh),
                paper=TABLE3.get(run.row),
                paper_note=_paper_flag(run, TABLE3_ARCH))


# ---------------------------------------------------------------------------
# Table 6
# ---------------------------------------------------------------------------
def upernet_config(run: Run) -> Optional[str]:
    """The UperNet config of ``configs/upernet/`` for the run's backbone."""
    tag = {'baseline': 'ce', 'ls': 'ls', 'maxsup': 'maxsup'}.get(run.row,
                                                                  'ce')
    if run.arch == 'deit-small':
        return (f'configs/upernet/upernet_deit-s16_{tag}-pre_8xb2-80k_'
                'ade20k-512x512.py')
    if run.depth == 50 and run.backbone_type == 'ResNetBlurPool':
        return ('configs/upernet/upernet_r50-blurpool_official-pre_4xb4-80k_'
                'ade20k-512x512.py')
    if run.depth == 50 and run.backbone_type == 'ResNet':
        return (f'configs/upernet/upernet_r50_{tag}-pre_4xb4-80k_'
                'ade20k-512x512.py')
    return None


def _last_checkpoint(cfg, work: str) -> str:
    train_cfg = cfg.get('train_cfg', None) or {}
    if train_cfg.get('max_iters'):
        return f'{work}/iter_{train_cfg["max_iters"]}.pth'
    if train_cfg.get('max_epochs'):
        return f'{work}/epoch_{train_cfg["max_epochs"]}.pth'
    return f'{work}/LAST_CHECKPOINT.pth'


def seg_commands(config: str, seg_ckpt: str, name: str,
                 ade20k_root: Optional[str] = None) -> dict:
    """Fine-tune and multi-scale test commands, on the config's number of
    GPUs (``NxbB`` in its name; 8 if absent) and on one GPU."""
    cfg = load_config(config)
    match = re.search(r'(\d+)xb(\d+)', osp.basename(config))
    gpus, per_gpu = (int(match.group(1)), int(match.group(2))) if match \
        else (8, None)
    stem = osp.splitext(osp.basename(config))[0]
    work = f'work_dirs/{stem}_{name}'
    q = shlex.quote

    def roots(*splits):
        return ''.join(f' {k}_dataloader.dataset.data_root={q(ade20k_root)}'
                       for k in splits) if ade20k_root else ''

    train_opts = f'--work-dir {q(work)} --cfg-options ' \
        f'model.pretrained={q(seg_ckpt)}{roots("train", "val", "test")}'
    test_opts = '--tta' + (f' --cfg-options{roots("test")}'
                           if ade20k_root else '')
    ckpt = _last_checkpoint(cfg, work)
    out = dict(
        gpus=gpus, work_dir=work, checkpoint=ckpt,
        train_multi=f'bash tools/dist_train.sh {q(config)} {gpus} '
        f'{train_opts}',
        test_multi=f'bash tools/dist_test.sh {q(config)} {q(ckpt)} {gpus} '
        f'{test_opts}',
        train_single=f'python tools/train.py {q(config)} {train_opts}',
        test_single=f'python tools/test.py {q(config)} {q(ckpt)} '
        f'{test_opts}')
    if per_gpu:
        out['note'] = (f'{stem} trains {gpus} GPUs x {per_gpu} images; on '
                       f'one GPU the batch is {per_gpu} images unless you '
                       f'add train_dataloader.batch_size={gpus * per_gpu} '
                       'to --cfg-options (if it fits in memory)')
    return out


def segmentation_row(run: Run, work_dir: str,
                     seg_config: Optional[str] = None,
                     ade20k_root: Optional[str] = None,
                     log: Callable[[str], None] = print) -> dict:
    config = seg_config or upernet_config(run)
    if config is not None:
        resolve_config(config)  # exists
    # one file per mmpretrain checkpoint (content) and UperNet config
    dst = conversion_path(
        work_dir, run.name, dict(checkpoint_sha256=file_digest(
            run.checkpoint), config=config), 'seg', '_mmseg.pth')
    log(f'[reproduce] {run.name}: converting {run.checkpoint} for mmseg '
        f'({config or "the equivalent mmseg backbone"})')
    report = convert_mmpretrain_to_mmseg(
        run.checkpoint, dst,
        config=None if config is None else resolve_config(config), log=log)
    out = dict(run.info(), mmseg_checkpoint=dst, upernet_config=config,
               mmseg_backbone=report['architecture']['type'],
               paper=TABLE6.get(run.row),
               paper_note=_paper_flag(run, TABLE6_ARCH))
    if config is None:
        out['commands'] = None
        out['note'] = ('configs/upernet/ has no UperNet config for this '
                       'backbone: write one (model.backbone as the mmseg '
                       f'{report["architecture"]["type"]} the checkpoint '
                       'was converted for) and pass it as --seg-config')
    else:
        out['commands'] = seg_commands(config, dst, run.name, ade20k_root)
    return out

