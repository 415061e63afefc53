"""Convert an mmpretrain classification checkpoint to an mmseg backbone.

mmpretrain and mmsegmentation name the weights of the same network
differently.  This module maps the backbone of an mmpretrain
``ImageClassifier`` checkpoint onto the parameter names of the mmseg backbone
the UperNet configs in ``configs/upernet/`` build, and refuses anything it
cannot map completely: a silently half-loaded backbone (mmseg loads
pre-trained weights with ``strict=False``) is the worst failure a transfer
study can have.

Supported (mmpretrain -> mmseg):

* ``VisionTransformer`` (ViT, DeiT without distillation) ->
  ``VisionTransformer``: ``attn.qkv`` -> ``attn.attn.in_proj_*`` (the
  fused q, k, v rows are already in ``nn.MultiheadAttention``'s order),
  ``attn.proj`` -> ``attn.attn.out_proj``; ``patch_embed.projection``, the
  per-layer ``ln1`` / ``ln2`` / ``ffn``, the final ``ln1``, ``cls_token`` and
  ``pos_embed`` keep their names.  The mmseg backbone must be built with
  ``patch_bias=True`` and ``final_norm=True`` to receive mmpretrain's
  patch-embedding bias and final norm (mmseg's ViT defaults drop both).
* ``ResNet`` / ``ResNetV1c`` / ``ResNetV1d`` -> the mmseg class of the same
  name: identical names except the deep stem (``stem.i.conv`` / ``stem.i.bn``
  -> ``stem.3i`` / ``stem.3i+1``) and, for ``ResNetV1d``, the first
  down-sampling of a stride-1 stage (mmseg puts an identity ``AvgPool`` in
  front of it).
* maxsup_mm's ``ResNetBlurPool`` (recognised by its ``.blur_filter``
  buffers) -> maxsup_mm's mmseg ``ResNetBlurPool``: identical names.

The output is ``{'state_dict': <backbone keys>, 'meta': {...}}``, what mmseg
loads through ``model.pretrained=...`` or
``model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...)``.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import torch

from maxsup_mm.checkpoint import (CheckpointError, check_finite,
                                  load_checkpoint)
from maxsup_mm.fileio import atomic_save
from maxsup_mm.utils import config_path

__all__ = [
    'ConversionError', 'convert_mmpretrain_to_mmseg', 'convert_state_dict',
    'load_classifier_checkpoint', 'detect_architecture', 'map_vit_keys',
    'map_resnet_keys', 'infer_target_backbone', 'target_backbone_from_config',
    'read_config',
    'expected_backbone_shapes', 'check_against_target'
]

#: top-level modules of an mmpretrain ``ImageClassifier`` state dict
CLASSIFIER_PARTS = ('backbone', 'neck', 'head', 'data_preprocessor')

#: ResNet depth from (block type, blocks per stage)
RESNET_DEPTHS = {
    ('BasicBlock', (2, 2, 2, 2)): 18,
    ('BasicBlock', (3, 4, 6, 3)): 34,
    ('Bottleneck', (3, 4, 6, 3)): 50,
    ('Bottleneck', (3, 4, 23, 3)): 101,
    ('Bottleneck', (3, 8, 36, 3)): 152,
}


class ConversionError(ValueError):
    """The checkpoint cannot be converted completely; nothing was written."""


# ---------------------------------------------------------------------------
# Reading the source
# ---------------------------------------------------------------------------
def load_classifier_checkpoint(src: str) -> Tuple[Dict, Dict[str, List]]:
    """Load an mmpretrain classifier checkpoint safely; split off the head.

    Args:
        src (str): path of the checkpoint (``torch.save`` file).

    Returns:
        tuple: ``(backbone_state_dict, dropped)`` where the backbone keys
        have the ``backbone.`` prefix removed and ``dropped`` maps
        ``'head'`` / ``'neck'`` / ``'data_preprocessor'`` to the keys left
        out.

    Raises:
        ConversionError: unreadable or truncated file, objects that
            ``weights_only`` loading refuses, NaN / Inf tensors (named), or
            not a classification checkpoint.
    """
    try:
        ckpt = load_checkpoint(src)
    except (FileNotFoundError, CheckpointError) as err:
        raise ConversionError(str(err)) from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get('state_dict'), dict):
        state_dict = ckpt['state_dict']
    elif isinstance(ckpt, dict) and ckpt and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()):
        state_dict = ckpt
    else:
        raise ConversionError(
            f'{src}: not a model checkpoint (expected a dict with a '
            f'"state_dict" entry or a state dict of tensors, got '
            f'{type(ckpt).__name__}'
            + (f' with keys {sorted(ckpt)[:6]}' if isinstance(ckpt, dict)
               else '') + ')')
    # checkpoints saved from a wrapped (DDP) model
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    try:  # a diverged or bit-flipped checkpoint must not become a backbone
        check_finite(state_dict, src)
    except CheckpointError as err:
        raise ConversionError(str(err)) from None
    parts: Dict[str, List[str]] = {}
    for key in state_dict:
        parts.setdefault(key.split('.', 1)[0], []).append(key)
    foreign = sorted(set(parts) - set(CLASSIFIER_PARTS))
    if foreign:
        hint = ''
        if {'decode_head', 'auxiliary_head'} & set(foreign):
            hint = ' (it looks like an mmsegmentation checkpoint)'
        raise ConversionError(
            f'{src}: not an mmpretrain classification checkpoint{hint}: '
            f'found parameters under {foreign}; an ImageClassifier has '
            f'only {list(CLASSIFIER_PARTS)}')
    if 'backbone' not in parts:
        raise ConversionError(f'{src}: no "backbone.*" parameters; not an '
                              'mmpretrain ImageClassifier checkpoint')
    if 'head' not in parts:
        raise ConversionError(
            f'{src}: no "head.*" parameters; not an mmpretrain '
            'classification checkpoint (self-supervised or backbone-only '
            'checkpoints are not supported)')
    backbone = OrderedDict(
        (k[len('backbone.'):], v) for k, v in state_dict.items()
        if k.startswith('backbone.'))
    dropped = {p: parts[p] for p in CLASSIFIER_PARTS[1:] if p in parts}
    return backbone, dropped


# ---------------------------------------------------------------------------
# Architecture detection
# ---------------------------------------------------------------------------
def _indices(keys, pattern: str) -> List[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys for m in [regex.match(k)]
                   if m})


def detect_architecture(sd: Dict[str, torch.Tensor]) -> Dict:
    """Recognise the mmpretrain backbone from its (un-prefixed) state dict.

    Args:
        sd (dict): backbone state dict without the ``backbone.`` prefix.

    Returns:
        dict: ``family`` (``'vit'`` or ``'resnet'``), ``type`` (the mmseg
        class name) and the shape parameters found.

    Raises:
        ConversionError: an architecture this converter does not handle.
    """
    keys = list(sd)
    vit_keys = ('cls_token', 'pos_embed', 'patch_embed.projection.weight',
                'layers.0.attn.qkv.weight')
    if all(k in sd for k in vit_keys):
        if 'dist_token' in sd:
            raise ConversionError(
                'distilled DeiT (a "dist_token") is not supported: mmseg\'s '
                'VisionTransformer has no distillation token')
        weight = sd['patch_embed.projection.weight']
        if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
            raise ConversionError('unsupported patch embedding of shape '
                                  f'{tuple(weight.shape)}')
        embed_dims, patch = int(weight.shape[0]), int(weight.shape[2])
        num_layers = len(_indices(keys, r'layers\.(\d+)\.'))
        tokens = int(sd['pos_embed'].shape[1]) - 1
        grid = int(round(tokens ** 0.5))
        if grid * grid != tokens:
            raise ConversionError(
                f'pos_embed has {tokens} patch tokens (plus one class '
                'token), not a square grid; mmseg resizes only square '
                'position embeddings')
        ffn_key = 'layers.0.ffn.layers.0.0.weight'
        if ffn_key not in sd:
            raise ConversionError(
                f'unsupported ViT feed-forward block: no "{ffn_key}" '
                '(SwiGLU and other FFN variants have no mmseg equivalent)')
        ffn = int(sd[ffn_key].shape[0])
        if ffn % embed_dims:
            raise ConversionError(
                f'feed-forward width {ffn} is not a multiple of embed_dims '
                f'{embed_dims}; mmseg\'s ViT needs an integer mlp_ratio')
        return dict(family='vit', type='VisionTransformer',
                    embed_dims=embed_dims, patch_size=patch,
                    in_channels=int(weight.shape[1]), num_layers=num_layers,
                    grid=grid, mlp_ratio=ffn // embed_dims,
                    patch_bias='patch_embed.projection.bias' in sd,
                    qkv_bias='layers.0.attn.qkv.bias' in sd,
                    final_norm='ln1.weight' in sd)
    if 'layer1.0.conv1.weight' in sd:
        if 'stem.0.conv.weight' in sd:
            deep_stem = True
        elif 'conv1.weight' in sd:
            deep_stem = False
        else:
            raise ConversionError('unknown ResNet stem: neither "conv1" nor '
                                  'a deep "stem.0.conv"')
        avg_down = any(k.endswith('.0.downsample.2.weight') for k in keys)
        block = 'Bottleneck' if 'layer1.0.conv3.weight' in sd \
            else 'BasicBlock'
        stages = _indices(keys, r'layer(\d+)\.')
        counts = tuple(len(_indices(keys, rf'layer{s}\.(\d+)\.'))
                       for s in stages)
        depth = RESNET_DEPTHS.get((block, counts))
        if depth is None or stages != [1, 2, 3, 4]:
            raise ConversionError(
                f'unknown ResNet layout: {block} blocks per stage {counts}; '
                f'known depths: {sorted(set(RESNET_DEPTHS.values()))}')
        if avg_down and not deep_stem:
            raise ConversionError('a ResNet with average-pool down-sampling '
                                  'but without the deep stem has no mmseg '
                                  'class')
        # maxsup_mm's ResNetBlurPool: <conv>.conv.weight + <conv>.blur_filter
        blurpool = any(k.endswith('.blur_filter') for k in keys)
        if blurpool and (deep_stem or avg_down):
            raise ConversionError('a BlurPool ResNet with a deep stem or '
                                  'average-pool down-sampling has no mmseg '
                                  'class (ResNetBlurPool is the plain stem)')
        mmseg_type = ('ResNetV1d' if avg_down else 'ResNetV1c') \
            if deep_stem else ('ResNetBlurPool' if blurpool else 'ResNet')
        return dict(family='resnet', type=mmseg_type, depth=depth,
                    block=block, deep_stem=deep_stem, avg_down=avg_down,
                    blurpool=blurpool,
                    in_channels=int(sd['stem.0.conv.weight' if deep_stem
                                       else 'conv1.weight'].shape[1]))
    raise ConversionError(
        'unknown architecture: the backbone is neither mmpretrain\'s '
        'VisionTransformer (cls_token, pos_embed, patch_embed.projection, '
        'layers.N.attn.qkv) nor its ResNet (layer1.0.conv1); first keys: '
        f'{keys[:5]}')


# ---------------------------------------------------------------------------
# Key mapping (pure functions of the state dict)
# ---------------------------------------------------------------------------
_VIT_RULES = [
    (re.compile(r'^(cls_token|pos_embed)$'), r'\1'),
    (re.compile(r'^patch_embed\.projection\.(weight|bias)$'),
     r'patch_embed.projection.\1'),
    (re.compile(r'^layers\.(\d+)\.attn\.qkv\.(weight|bias)$'),
     r'layers.\1.attn.attn.in_proj_\2'),
    (re.compile(r'^layers\.(\d+)\.attn\.proj\.(weight|bias)$'),
     r'layers.\1.attn.attn.out_proj.\2'),
    (re.compile(r'^layers\.(\d+)\.(ln1|ln2)\.(weight|bias)$'),
     r'layers.\1.\2.\3'),
    (re.compile(r'^layers\.(\d+)\.ffn\.layers\.(0\.0|1)\.(weight|bias)$'),
     r'layers.\1.ffn.layers.\2.\3'),
    (re.compile(r'^ln1\.(weight|bias)$'), r'ln1.\1'),
]


def _apply_rules(sd, rules):
    mapped, renamed, unmapped = OrderedDict(), [], []
    for key, value in sd.items():
        for regex, repl in rules:
            if regex.match(key):
                new = regex.sub(repl, key)
                mapped[new] = value
                if new != key:
                    renamed.append((key, new))
                break
        else:
            unmapped.append(key)
    return mapped, renamed, unmapped


def map_vit_keys(sd: Dict[str, torch.Tensor]):
    """Rename mmpretrain ``VisionTransformer`` keys to mmseg's.

    A ViT trained with ``qkv_bias=False`` gets an all-zero ``in_proj_bias``
    (mmseg's attention has one bias switch for q/k/v and the output
    projection; a zero bias is the same function).

    Args:
        sd (dict): backbone state dict without the ``backbone.`` prefix.

    Returns:
        tuple: ``(mapped, renamed, unmapped)``: the new state dict, the
        ``(old, new)`` names that changed and the keys no rule covers.
    """
    mapped, renamed, unmapped = _apply_rules(sd, _VIT_RULES)
    for i in _indices(mapped, r'layers\.(\d+)\.attn\.attn\.in_proj_weight'):
        bias = f'layers.{i}.attn.attn.in_proj_bias'
        if bias not in mapped:
            weight = mapped[f'layers.{i}.attn.attn.in_proj_weight']
            mapped[bias] = weight.new_zeros(weight.shape[0])
            renamed.append((f'(no layers.{i}.attn.qkv.bias)',
                            bias + ' = 0'))
    return mapped, renamed, unmapped


def map_resnet_keys(sd: Dict[str, torch.Tensor], avg_down: bool = False):
    """Rename mmpretrain ``ResNet`` / ``ResNetV1c`` / ``ResNetV1d`` keys.

    Args:
        sd (dict): backbone state dict without the ``backbone.`` prefix.
        avg_down (bool): the source is a ``ResNetV1d``: mmseg puts an
            (identity) ``AvgPool`` before the down-sampling conv of stride-1
            stages too, which shifts their ``downsample`` indices by one.

    Returns:
        tuple: ``(mapped, renamed, unmapped)`` as :func:`map_vit_keys`.
    """
    stem = re.compile(r'^stem\.(\d+)\.(conv|bn)\.(.+)$')
    block = re.compile(r'^(layer\d+\.\d+)\.(conv[123]|bn[123])\.(.+)$')
    down = re.compile(r'^(layer(\d+)\.0)\.downsample\.(\d+)\.(.+)$')
    plain = re.compile(r'^(conv1|bn1)\.(.+)$')
    shift = {int(m.group(2)) for k in sd for m in [down.match(k)]
             if avg_down and m and m.group(3) == '0'}
    mapped, renamed, unmapped = OrderedDict(), [], []
    for key, value in sd.items():
        m = stem.match(key)
        if m:
            index = 3 * int(m.group(1)) + (m.group(2) == 'bn')
            new = f'stem.{index}.{m.group(3)}'
        elif down.match(key):
            m = down.match(key)
            index = int(m.group(3)) + (int(m.group(2)) in shift)
            new = f'{m.group(1)}.downsample.{index}.{m.group(4)}'
        elif block.match(key) or plain.match(key):
            new = key
        else:
            unmapped.append(key)
            continue
        mapped[new] = value
        if new != key:
            renamed.append((key, new))
    return mapped, renamed, unmapped


# ---------------------------------------------------------------------------
# The target mmseg backbone
# ---------------------------------------------------------------------------
def infer_target_backbone(arch: Dict) -> Dict:
    """The mmseg backbone config equivalent to a detected architecture.

    For a ViT, the number of heads does not change any weight shape; it is
    set to ``embed_dims // 64`` (DeiT / ViT) and taken from the seg config
    when the model is built.

    Args:
        arch (dict): what :func:`detect_architecture` returned.

    Returns:
        dict: an mmseg backbone config.
    """
    if arch['family'] == 'vit':
        size = arch['grid'] * arch['patch_size']
        return dict(
            type=arch['type'], img_size=(size, size),
            patch_size=arch['patch_size'], in_channels=arch['in_channels'],
            embed_dims=arch['embed_dims'], num_layers=arch['num_layers'],
            num_heads=max(1, arch['embed_dims'] // 64),
            mlp_ratio=arch['mlp_ratio'], qkv_bias=True,
            patch_bias=arch['patch_bias'], final_norm=arch['final_norm'],
            with_cls_token=True, norm_cfg=dict(type='LN', eps=1e-6))
    return dict(type=arch['type'], depth=arch['depth'],
                in_channels=arch['in_channels'])


def read_config(config: str):
    """Load a config file, or an upstream one as ``'mmseg::vit/x.py'``.

    Args:
        config (str): a path, one of this project's configs
            (:func:`maxsup_mm.config_path`: ``configs/...`` from any
            directory), or ``scope::path`` inside an installed OpenMMLab
            package.

    Returns:
        Config: the loaded config.
    """
    if '::' in config:
        from mmengine.hub import get_config
        return get_config(config)
    from mmengine.config import Config
    return Config.fromfile(config_path(config))


def target_backbone_from_config(config: str) -> Dict:
    """``model.backbone`` of an mmseg config, without its pre-training.

    Args:
        config (str): an mmseg config (path or ``mmseg::...``).

    Returns:
        dict: the backbone config without ``pretrained`` / ``init_cfg``.
    """
    cfg = read_config(config)
    if 'backbone' not in cfg.get('model', {}):
        raise ConversionError(f'{config}: has no model.backbone')
    backbone = cfg.model.backbone.to_dict()
    backbone.pop('pretrained', None)
    backbone.pop('init_cfg', None)
    return backbone


def expected_backbone_shapes(backbone_cfg: Dict) -> Dict[str, torch.Size]:
    """Build the mmseg backbone and return ``{key: shape}`` of its state.

    Args:
        backbone_cfg (dict): an mmseg backbone config; a type without a
            scope is looked up in mmseg's registry (never mmpretrain's).

    Returns:
        dict: parameter and buffer names mapped to their shapes.
    """
    import mmseg.models  # noqa: F401  (registers the backbones)
    from mmseg.registry import MODELS
    cfg = dict(backbone_cfg)
    if '.' not in cfg['type']:  # never build another scope's class
        cfg['type'] = 'mmseg.' + cfg['type']
    try:
        backbone = MODELS.build(cfg)
    except Exception as err:
        raise ConversionError(
            f'cannot build the target mmseg backbone {backbone_cfg}: '
            f'{type(err).__name__}: {err}') from err
    return {k: v.shape for k, v in backbone.state_dict().items()}


def _square_tokens(shape) -> bool:
    tokens = int(shape[1]) - 1
    return tokens > 0 and int(round(tokens ** 0.5)) ** 2 == tokens


def check_against_target(mapped: Dict[str, torch.Tensor],
                         expected: Dict[str, torch.Size],
                         target_name: str = 'the target backbone') -> List:
    """Strict-loading check: same keys and same shapes, or raise.

    ``pos_embed`` may differ in its number of tokens (both square grids plus
    a class token): mmseg's ViT resizes it when it loads the checkpoint.

    Args:
        mapped (dict): the converted state dict.
        expected (dict): ``{key: shape}`` of the target backbone.
        target_name (str): how to name the target in the error message.

    Returns:
        list: ``(key, source shape, target shape)`` of the resized entries.

    Raises:
        ConversionError: missing keys, unexpected keys or shape mismatches.
    """
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    wrong, resized = [], []
    for key, shape in expected.items():
        if key not in mapped:
            continue
        got = mapped[key].shape
        if got == shape:
            continue
        if (key == 'pos_embed' and len(got) == len(shape) == 3
                and got[0] == shape[0] and got[2] == shape[2]
                and _square_tokens(got) and _square_tokens(shape)):
            resized.append((key, tuple(got), tuple(shape)))
            continue
        wrong.append(f'{key}: checkpoint {tuple(got)} vs {tuple(shape)}')
    if missing or unexpected or wrong:
        lines = [f'the converted weights do not fit {target_name} '
                 '(strict loading would fail):']
        if missing:
            lines.append(f'  {len(missing)} missing in the checkpoint: '
                         f'{missing[:8]}')
        if unexpected:
            lines.append(f'  {len(unexpected)} not in the target: '
                         f'{unexpected[:8]}')
        if wrong:
            lines.append(f'  {len(wrong)} shape mismatches: {wrong[:6]}')
        names = set(unexpected)
        if {'patch_embed.projection.bias', 'ln1.weight'} & names:
            lines.append('  hint: mmpretrain\'s ViT has a patch-embedding '
                         'bias and a final norm; build mmseg\'s '
                         'VisionTransformer with patch_bias=True, '
                         'final_norm=True (as configs/upernet/ do)')
        raise ConversionError('\n'.join(lines))
    return resized


#: ViT widths / depths of well-known architectures, for the hints
KNOWN_VITS = {(192, 12): 'DeiT-Tiny', (384, 12): 'DeiT-Small',
              (768, 12): 'ViT-B / DeiT-Base', (1024, 24): 'ViT-L'}
#: what mmseg's backbones build when the config does not say
_MMSEG_DEFAULTS = dict(stem_channels=64, base_channels=64, embed_dims=768,
                       num_layers=12, mlp_ratio=4, patch_size=16,
                       in_channels=3)


def suggest_fix(arch: Dict, sd: Dict[str, torch.Tensor],
                target_cfg: Dict) -> List[str]:
    """How to build a target backbone the checkpoint fits (for messages).

    Args:
        arch (dict): what :func:`detect_architecture` found.
        sd (dict): the backbone state dict (without ``backbone.``).
        target_cfg (dict): the mmseg backbone config it did not fit.

    Returns:
        list[str]: the hints, most specific first (empty: none known).
    """
    target_type = str(target_cfg.get('type', '')).split('.')[-1]

    def differing(want):
        return [f'{k}={v}' for k, v in want.items()
                if target_cfg.get(k, _MMSEG_DEFAULTS.get(k)) != v]

    if arch['family'] == 'vit':
        want = {k: arch[k] for k in ('embed_dims', 'num_layers', 'mlp_ratio',
                                     'patch_size', 'in_channels')}
        diff = differing(want)
        if not diff:
            return []
        name = KNOWN_VITS.get((arch['embed_dims'], arch['num_layers']),
                              'a ViT')
        hint = (f'the checkpoint is {name} ({", ".join(diff)}, where the '
                'target differs): use the mmseg config of that architecture '
                'or set these (and num_heads) in its model.backbone')
        if name == 'DeiT-Small':
            hint += (' (DeiT-Small: configs/upernet/'
                     'upernet_deit-s16_ce-pre_8xb2-80k_ade20k-512x512.py)')
        return [hint]

    conv1 = sd.get('conv1.weight')
    stem = sd['stem.2.conv.weight'] if arch['deep_stem'] else conv1
    want = dict(depth=arch['depth'], stem_channels=int(stem.shape[0]),
                base_channels=int(sd['layer1.0.conv1.weight'].shape[0]))
    target_deep = target_type in ('ResNetV1c', 'ResNetV1d') or bool(
        target_cfg.get('deep_stem'))
    hints = []
    if conv1 is not None and conv1.shape[-1] == 3 \
            and target_type != 'ResNet_CIFAR':
        return [
            'the checkpoint has a CIFAR stem (one 3x3 conv, mmpretrain '
            "ResNet_CIFAR), which mmseg's ResNets do not have: pass --config "
            'an mmseg config whose model.backbone is '
            f"dict(type='mmpretrain.ResNet_CIFAR', depth={want['depth']}, "
            f"stem_channels={want['stem_channels']}, "
            f"base_channels={want['base_channels']}, "
            "out_indices=(0, 1, 2, 3)) and custom_imports "
            "imports=['mmpretrain.models'], as configs/quickstart/"
            'upernet_resnet18-tiny_1xb8-digit-scenes-32x32.py does']
    if arch['deep_stem'] and not target_deep:
        hints.append(
            f'the checkpoint has a deep stem (mmpretrain {arch["type"]}): '
            f"use a config with model.backbone.type='{arch['type']}' "
            "(mmseg's own UperNet-R50, mmseg::upernet/"
            'upernet_r50_4xb4-80k_ade20k-512x512.py, is a ResNetV1c)')
    elif not arch['deep_stem'] and target_deep:
        hints.append(
            'the checkpoint has the plain 7x7 stem (mmpretrain ResNet): use a '
            "config with model.backbone.type='ResNet' (as configs/upernet/"
            'upernet_r50_ce-pre_4xb4-80k_ade20k-512x512.py)')
    elif arch['avg_down'] != (target_type == 'ResNetV1d'
                              or bool(target_cfg.get('avg_down'))):
        hints.append(f'the checkpoint is a {arch["type"]}: use a config with '
                     f"model.backbone.type='{arch['type']}'")
    diff = differing(want)
    if diff:
        hints.append(f'the checkpoint\'s ResNet has {", ".join(diff)}: set '
                     'them in the config\'s model.backbone')
    return hints


# ---------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------
def convert_state_dict(backbone_sd: Dict[str, torch.Tensor],
                       target_cfg: Optional[Dict] = None,
                       target_name: Optional[str] = None):
    """Map an mmpretrain backbone state dict onto an mmseg backbone.

    Args:
        backbone_sd (dict): backbone state dict without ``backbone.``.
        target_cfg (dict, optional): the mmseg backbone config to check
            against; inferred from the source when ``None``.
        target_name (str, optional): how to name the target in messages.

    Returns:
        tuple: ``(state_dict, report)``.

    Raises:
        ConversionError: unknown architecture, keys no rule covers, or a
            result that does not fit the target exactly.
    """
    arch = detect_architecture(backbone_sd)
    if arch['family'] == 'vit':
        mapped, renamed, unmapped = map_vit_keys(backbone_sd)
    else:
        mapped, renamed, unmapped = map_resnet_keys(backbone_sd,
                                                    arch['avg_down'])
    if unmapped:
        raise ConversionError(
            f'{len(unmapped)} backbone parameters of the mmpretrain '
            f'{arch["type"] if arch["family"] == "resnet" else "ViT"} have '
            f'no mmseg counterpart: {unmapped[:8]}')
    if target_cfg is None:
        target_cfg = infer_target_backbone(arch)
        target_name = target_name or (f'mmseg {target_cfg["type"]} '
                                      '(inferred from the checkpoint)')
    target_name = target_name or f'mmseg {target_cfg.get("type")}'
    src_type = target_cfg.get('type', '').split('.')[-1]
    if src_type != arch['type'] and not (arch['family'] == 'resnet'
                                         and src_type.startswith('ResNet')):
        raise ConversionError(
            f'architecture mismatch: the checkpoint holds an mmpretrain '
            f'{arch["type"]} but {target_name} is a {src_type}')
    if arch['family'] == 'resnet' and src_type.startswith('ResNet') and (
            (src_type == 'ResNetBlurPool') != arch['blurpool']):
        raise ConversionError(
            f'architecture mismatch: the checkpoint holds a '
            f'{"BlurPool" if arch["blurpool"] else "plain"} ResNet (mmseg '
            f'{arch["type"]}) but {target_name} is a {src_type}')
    try:
        resized = check_against_target(mapped, expected_backbone_shapes(
            target_cfg), target_name)
    except ConversionError as err:
        hints = suggest_fix(arch, backbone_sd, target_cfg)
        if not hints:
            raise
        raise ConversionError('\n'.join(
            [str(err)] + [f'  hint: {h}' for h in hints])) from None
    report = dict(architecture=arch, target=target_name,
                  num_tensors=len(mapped), renamed=renamed,
                  unchanged=len(mapped) - len(renamed), resized=resized)
    return mapped, report


def convert_mmpretrain_to_mmseg(src: str,
                                dst: str,
                                config: Optional[str] = None,
                                log: Optional[Callable[[str], None]] = print,
                                num_examples: int = 4) -> Dict:
    """Convert an mmpretrain classification checkpoint for mmseg.

    Loads ``src`` with :func:`maxsup_mm.checkpoint.load_checkpoint`, drops the head
    (and neck), renames the backbone weights to the mmseg backbone's names,
    checks that they fit that backbone exactly (every key, every shape) and
    writes ``{'state_dict': ..., 'meta': ...}`` to ``dst`` atomically (a
    temporary file in the same folder, then :func:`os.replace`).  On any
    error nothing is written and an existing ``dst`` is left untouched.

    Args:
        src (str): mmpretrain checkpoint (ImageClassifier with a ViT/DeiT
            or ResNet/ResNetV1c/ResNetV1d backbone).
        dst (str): output path.
        config (str, optional): an mmseg config whose ``model.backbone`` is
            the target (e.g. one of ``configs/upernet/``); by default the
            target is the mmseg backbone equivalent to the source.
        log (callable, optional): where progress lines go (``None``: quiet).
        num_examples (int): renamed keys to show.

    Returns:
        dict: the report (architecture, target, counts, renamed keys,
        resized entries, dropped keys, ``dst``).

    Raises:
        ConversionError: (a ``ValueError``) anything that cannot be
            converted completely.
    """
    log = log or (lambda msg: None)
    if osp.abspath(src) == osp.abspath(dst):
        raise ConversionError('SRC and DST are the same file; refusing to '
                              'overwrite the source checkpoint')
    backbone_sd, dropped = load_classifier_checkpoint(src)
    target_cfg = target_name = None
    if config is not None:
        target_cfg = target_backbone_from_config(config)
        target_name = f'mmseg {target_cfg.get("type")} of {config}'
    state_dict, report = convert_state_dict(backbone_sd, target_cfg,
                                            target_name)
    arch = report['architecture']
    desc = ', '.join(f'{k}={v}' for k, v in arch.items()
                     if k not in ('family', 'type'))
    log(f'[mmpretrain2mmseg] {src}: mmpretrain {arch["type"]} ({desc})')
    log(f'[mmpretrain2mmseg] target: {report["target"]}')
    n_drop = sum(len(v) for v in dropped.values())
    log(f'[mmpretrain2mmseg] mapped {report["num_tensors"]} backbone '
        f'tensors: {len(report["renamed"])} renamed, {report["unchanged"]} '
        f'unchanged; dropped {n_drop} tensors: '
        + ', '.join(f'{k} ({len(v)})' for k, v in dropped.items()))
    for old, new in report['renamed'][:num_examples]:
        log(f'    {old} -> {new}')
    if len(report['renamed']) > num_examples:
        log(f'    ... and {len(report["renamed"]) - num_examples} more')
    for key, got, want in report['resized']:
        log(f'[mmpretrain2mmseg] {key} {got} is resized to {want} by mmseg '
            'when it loads the checkpoint')
    meta = dict(converter='maxsup_mm.converters.mmpretrain2mmseg',
                source=osp.basename(src), mmseg_type=arch['type'],
                target=report['target'])
    atomic_save(dict(state_dict=state_dict, meta=meta), dst)
    log(f'[mmpretrain2mmseg] wrote {dst}')
    report.update(dropped=dropped, dst=dst)
    return report
