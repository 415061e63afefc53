"""Runs of ``tools/reproduce.py``: a name, a checkpoint, its config.

A run is ``NAME=CHECKPOINT`` or ``NAME=CHECKPOINT:CONFIG``.  The checkpoint
may be an mmpretrain checkpoint (used as it is) or any format the external
importer detects (DeiT code base, timm, Lightning, torchvision; BlurPool
included), which is converted once into
``<work-dir>/checkpoints/NAME-HASH.pth``; ``HASH`` digests the source's
content, ``--ema`` and the config, so two sources never share a file and a
conversion is reused exactly while they are unchanged.  Every file is read
through :func:`maxsup_mm.checkpoint.load_checkpoint`.

A config is Python that mmengine executes, so one named inside a checkpoint
(``meta['config']`` of our converter) is used only when it names one of our
configs (:func:`known_config`); any other config must come from the user
(``NAME=CHECKPOINT:CONFIG`` or ``--config``).
"""
import copy
import hashlib
import json
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

from maxsup_mm.analysis.extraction import file_digest
from maxsup_mm.checkpoint import load_checkpoint
from maxsup_mm.converters import convert_external_checkpoint
from maxsup_mm.converters.external import STANDARD_CONFIGS
from maxsup_mm.fileio import atomic_write_json
from maxsup_mm.utils import config_root
from .tables import method_row

__all__ = ['Run', 'parse_run', 'resolve_config', 'load_config',
           'describe_model', 'prepare_checkpoint', 'set_data_root',
           'known_config', 'conversion_path']

#: bump when what a cached conversion depends on changes
CONVERSION_VERSION = 2

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
                    source_path=osp.abspath(self.source),
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
    """The file of a config: a path, ``PACKAGE::PATH`` or one of ours
    (``configs/...``) from any directory (the tools' one resolver,
    :func:`maxsup_mm.apis.resolve_config`); ValueError when none fits."""
    from maxsup_mm.apis import resolve_config as find
    try:
        return find(config)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None


def load_config(config: str, cfg_options: Optional[dict] = None):
    """Load a config (see :func:`resolve_config`), apply ``cfg_options``."""
    from mmengine.config import Config
    cfg = Config.fromfile(resolve_config(config))
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


def known_config(name: str) -> Optional[str]:
    """The config a checkpoint's ``meta['config']`` may name, or ``None``.

    Only names are matched, never opened as paths: one of the configs of
    this project (``configs/released/x.py`` or ``released/x.py``, compared
    with the list of files under :func:`maxsup_mm.utils.config_root`;
    returns that file) or an upstream config the external converter writes
    (``mmpretrain::resnet/resnet50_8xb32_in1k.py``; returned as given).

    Args:
        name (str): the name found in the checkpoint.

    Returns:
        str | None: the config to load, or ``None`` for anything else
        (another path, ``..``, an unknown name).
    """
    if name in STANDARD_CONFIGS.values():
        return name
    rel = name[len('configs/'):] if name.startswith('configs/') else name
    return _our_configs().get(rel)


def _our_configs() -> dict:
    """``{'released/x.py': file}`` for every config of this project."""
    root, out = config_root(), {}
    for folder, _, files in os.walk(root):
        for fname in files:
            if fname.endswith('.py'):
                path = osp.join(folder, fname)
                out[osp.relpath(path, root).replace(os.sep, '/')] = path
    return out


def _config_from_meta(run: 'Run', meta) -> Optional[str]:
    """Our config named by an mmpretrain checkpoint's meta, if any.

    Raises:
        ValueError: the meta names something that is not one of our
            configs (it is never executed).
    """
    name = meta.get('config', None) if isinstance(meta, dict) else None
    if not isinstance(name, str):
        return None
    config = known_config(name)
    if config is None:
        raise ValueError(
            f'run {run.name}: {run.source} names the config {name!r} in '
            'meta["config"], which is not one of our configs (configs/...);'
            ' a config is code, and one named in a checkpoint is never run: '
            f'pass it as {run.name}=CHECKPOINT:CONFIG or with --config')
    return config


def conversion_path(work_dir: str, name: str, key: dict,
                    folder: str = 'checkpoints', suffix: str = '.pth') -> str:
    """``<work_dir>/<folder>/<name>-<hash of key><suffix>``: one file per
    run name and conversion input (e.g. the source's content digest,
    ``--ema`` and the config), so two inputs never share a file."""
    blob = json.dumps(key, sort_keys=True).encode()
    tag = hashlib.sha256(blob).hexdigest()[:12]
    return osp.join(work_dir, folder, f'{name}-{tag}{suffix}')


def _read_json(path: str) -> Optional[dict]:
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
    ``--config``, else ``meta['config']`` of our converter when it names
    one of our configs, :func:`known_config`).  Anything else goes through
    :func:`convert_external_checkpoint` into :func:`conversion_path`
    (``<work_dir>/checkpoints/<name>-<hash>.pth``, the hash over the
    source's content, ``--ema`` and the config), with a ``.source.json``
    beside it that records what it was converted from; an existing one is
    reused without loading the source again (only its bytes are hashed).

    Raises:
        ValueError: (``CheckpointError`` / ``ConversionError`` included) a
            missing, unsafe, unknown or unconvertible file, no config, or a
            ``meta['config']`` that is not one of ours.
    """
    src = run.source
    if not osp.isfile(src):
        raise ValueError(f'run {run.name}: checkpoint not found: {src}')
    config = run.config or default_config
    key = dict(source_sha256=file_digest(src), ema=bool(ema), config=config,
               version=CONVERSION_VERSION)
    dst = conversion_path(work_dir, run.name, key)
    stamp = osp.splitext(dst)[0] + '.source.json'
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
            if config is None:
                config = _config_from_meta(run, meta)
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
            atomic_write_json(stamp, dict(key=key, source=osp.abspath(src),
                                          format=run.format,
                                          config=run.config,
                                          meta=report['meta']),
                              indent=2, default=str)
    if run.config is None:
        raise ValueError(
            f'run {run.name}: no config matches {src} ({run.format}); give '
            f'one as {run.name}=CHECKPOINT:CONFIG or with --config')
    return run
