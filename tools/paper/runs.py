"""Runs of ``tools/reproduce.py``: a name, a checkpoint, its config.

A run is ``NAME=CHECKPOINT`` or ``NAME=CHECKPOINT:CONFIG``.  The checkpoint
may be an mmpretrain checkpoint (used as it is) or any format the external
importer detects (DeiT code base, timm, Lightning, torchvision; BlurPool
included), which is converted once into ``<work-dir>/checkpoints/NAME.pth``
and reused while the source file (path, size, modification time), ``--ema``
and the config are unchanged.  Every file is read through
:func:`maxsup_mm.checkpoint.load_checkpoint`.
"""
import copy
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

from maxsup_mm.checkpoint import load_checkpoint
from maxsup_mm.converters import convert_external_checkpoint
from maxsup_mm.fileio import atomic_write_json
from maxsup_mm import config_path
from .tables import method_row

__all__ = ['Run', 'parse_run', 'resolve_config', 'load_config',
           'describe_model', 'prepare_checkpoint', 'set_data_root']

#: bump when what a cached conversion depends on changes
CONVERSION_VERSION = 1

_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.+@-]*')


@dataclass
class Run:
    """One checkpoint to reproduce a row with."""
    name: str
    source: str                    # the file the user gave
    config: Optional[str] = None   # the config the user gave
    row: Optional[str] = None      # paper row (tables.METHODS key)
    # filled in by prepare_checkpoint / the pipelines
    checkpoint: Optional[str] = None   # the mmpretrain checkpoint used
    format: Optional[str] = None       # 'mmpretrain' or the external format
    converted: str = ''                # 'converted' / 'reused' / ''
    arch: Optional[str] = None         # tables.ARCH_LABELS key or None
    arch_label: str = ''
    backbone_type: str = ''
    depth: Optional[int] = None
    cfg: object = field(default=None, repr=False)

    def info(self) -> dict:
        """What the report says about the run."""
        return dict(name=self.name, method=self.row, source=self.source,
                    format=self.format, conversion=self.converted or None,
                    checkpoint=self.checkpoint, config=self.config,
                    architecture=self.arch_label, arch_key=self.arch)


def parse_run(spec: str) -> Run:
    """``NAME=CHECKPOINT[:CONFIG]`` -> :class:`Run`.

    The config follows the first single colon, so ``mmpretrain::`` configs
    work (``r50=r50.pth:mmpretrain::resnet/resnet50_8xb32_in1k.py``).
    """
    name, sep, rest = spec.partition('=')
    if not sep or not rest:
        raise ValueError(f'--run {spec!r}: expected NAME=CHECKPOINT or '
                         'NAME=CHECKPOINT:CONFIG')
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f'--run {spec!r}: the name must start with a letter '
                         'or digit and hold only letters, digits and '
                         '"-_.+@"')
    match = re.match(r'^(.+?):(?!:)(.+)$', rest)
    ckpt, config = (match.group(1), match.group(2)) if match else (rest,
                                                                    None)
    return Run(name=name, source=ckpt, config=config, row=method_row(name))


def resolve_config(config: str) -> str:
    """A config path as given, ``scope::path``, or one of ours
    (``configs/...``, found by :func:`maxsup_mm.config_path`)."""
    try:
        return config_path(config)
    except FileNotFoundError:
        raise ValueError(f'config not found: {config}') from None


def load_config(config: str, cfg_options: Optional[dict] = None):
    """Load a config (path or ``scope::path``) and apply ``cfg_options``."""
    from mmengine.config import Config
    path = resolve_config(config)
    if '::' in path:
        from mmengine.hub import get_config
        cfg = get_config(path)
    else:
        cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(copy.deepcopy(cfg_options))
    return cfg


def set_data_root(cfg, root: str,
                  loaders=('train_dataloader', 'val_dataloader',
                           'test_dataloader')) -> None:
    """Point the datasets of the given dataloaders at ``root`` (in place)."""

    def visit(ds):
        if 'dataset' in ds:
            visit(ds['dataset'])
        elif 'datasets' in ds:
            for sub in ds['datasets']:
                visit(sub)
        else:
            ds['data_root'] = root

    for key in loaders:
        loader = cfg.get(key, None)
        if loader and loader.get('dataset', None):
            visit(loader['dataset'])


def describe_model(cfg) -> Tuple[Optional[str], str, str, Optional[int]]:
    """``(arch key, label, backbone type, depth)`` of a classifier config.

    The key (``resnet50``, ``deit-small``, ...) selects the paper's column;
    ``None`` for architectures the paper has no number for.
    """
    backbone = cfg.model.get('backbone', None) or {}
    btype = str(backbone.get('type', '?')).split('.')[-1]
    if btype.startswith('ResNet') and 'depth' in backbone:
        depth = int(backbone['depth'])
        label = f'ResNet-{depth}' + {'ResNet': '',
                                     'ResNetBlurPool': ' + BlurPool'}.get(
                                         btype, f' ({btype})')
        return f'resnet{depth}', label, btype, depth
    if btype == 'MobileNetV2':
        if float(backbone.get('widen_factor', 1.0)) == 1.0:
            return 'mobilenet-v2', 'MobileNetV2', btype, None
        return None, f'MobileNetV2 x{backbone["widen_factor"]}', btype, None
    if btype == 'VisionTransformer':
        from mmpretrain.models.backbones import VisionTransformer
        arch = backbone.get('arch', 'base')
        if isinstance(arch, str):
            arch = VisionTransformer.arch_zoo.get(arch.lower(), {})
        dims = tuple(arch.get(k) for k in ('embed_dims', 'num_layers',
                                           'num_heads'))
        patch = backbone.get('patch_size', 16)
        if dims == (384, 12, 6) and patch == 16:
            return 'deit-small', 'DeiT-Small', btype, None
        return None, (f'ViT ({dims[0]}-d, {dims[1]} layers, {dims[2]} '
                      f'heads, patch {patch})'), btype, None
    return None, btype, btype, None


def _is_mmpretrain(obj) -> bool:
    state = obj.get('state_dict', obj) if isinstance(obj, dict) else None
    return isinstance(state, dict) and any(
        isinstance(k, str) and k.startswith('backbone.') for k in state)


def _file_key(path: str) -> dict:
    st = os.stat(path)
    return dict(path=osp.abspath(path), size=st.st_size,
                mtime_ns=st.st_mtime_ns)


def _read_json(path: str) -> Optional[dict]:
    import json
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def prepare_checkpoint(run: Run, work_dir: str,
                       default_config: Optional[str] = None,
                       ema: bool = False,
                       log: Callable[[str], None] = print) -> Run:
    """Make ``run.checkpoint`` an mmpretrain checkpoint and find its config.

    An mmpretrain checkpoint is used as it is (its config: the run's, else
    ``--config``, else ``meta['config']`` of our converter).  Anything else
    goes through :func:`convert_external_checkpoint` into
    ``<work_dir>/checkpoints/<name>.pth``, with a ``.source.json`` beside it
    that records what it was converted from; an up-to-date one is reused
    without reading the source again.

    Raises:
        ValueError: (``CheckpointError`` / ``ConversionError`` included) a
            missing, unsafe, unknown or unconvertible file, or no config.
    """
    src = run.source
    if not osp.isfile(src):
        raise ValueError(f'run {run.name}: checkpoint not found: {src}')
    config = run.config or default_config
    dst = osp.join(work_dir, 'checkpoints', f'{run.name}.pth')
    stamp = osp.join(work_dir, 'checkpoints', f'{run.name}.source.json')
    key = dict(source=_file_key(src), ema=bool(ema), config=config,
               version=CONVERSION_VERSION)
    cached = _read_json(stamp) if osp.isfile(dst) else None
    if cached and cached.get('key') == key:
        run.checkpoint, run.format = dst, cached['format']
        run.config, run.converted = cached['config'], 'reused'
        log(f'[reproduce] {run.name}: {src} ({run.format}) was converted '
            f'before: reusing {dst}')
    else:
        obj = load_checkpoint(src)
        if _is_mmpretrain(obj):
            meta = obj.get('meta', None) if isinstance(obj, dict) else None
            del obj
            if config is None and isinstance(meta, dict) and isinstance(
                    meta.get('config', None), str):
                config = meta['config']
            run.checkpoint, run.format, run.config = src, 'mmpretrain', config
            log(f'[reproduce] {run.name}: {src} is an mmpretrain checkpoint: '
                'used as it is' + (' (--ema applies to DeiT code base '
                                   'checkpoints only)' if ema else ''))
        else:
            del obj
            log(f'[reproduce] {run.name}: converting {src} to {dst}')
            report = convert_external_checkpoint(src, dst, ema=ema,
                                                 config=config, log=log)
            run.checkpoint, run.format = dst, report['format']
            run.config, run.converted = report['config'], 'converted'
            atomic_write_json(stamp, dict(key=key, format=run.format,
                                          config=run.config,
                                          meta=report['meta']),
                              indent=2, default=str)
    if run.config is None:
        raise ValueError(
            f'run {run.name}: no config matches {src} ({run.format}); give '
            f'one as {run.name}=CHECKPOINT:CONFIG or with --config')
    return run
