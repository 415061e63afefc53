"""Import external classification checkpoints into mmpretrain.

The paper's released weights were not written by OpenMMLab: DeiT-Small by
the DeiT code base, the ResNet-50s by PyTorch Lightning around a
torchvision network with BlurPool.  This module recognises such a file from
its *contents* (never its name), maps its weights onto the keys of an
mmpretrain ``ImageClassifier`` (``backbone.*`` / ``head.*``) and refuses
anything it cannot map completely.

Source formats (:func:`detect_external_format`):

``deit-checkpoint``
    The DeiT code base's ``torch.save({'model': ..., 'model_ema': ...,
    'optimizer': ..., 'lr_scheduler': ..., 'epoch': ..., 'scaler': ...,
    'args': argparse.Namespace}, path)`` (also the official DeiT releases,
    ``{'model': ...}``). ``ema=True`` takes ``model_ema``.
``timm-checkpoint``
    What timm's ``train.py`` writes (``CheckpointSaver``: ``last.pth.tar``,
    ``model_best.pth.tar``, ``checkpoint-N.pth.tar``): ``{'state_dict':
    ..., 'state_dict_ema': ..., 'arch': ..., 'args': argparse.Namespace,
    'epoch': ..., 'optimizer': ..., 'version': 2, 'metric': ...}``, with a
    timm ViT / DeiT or ResNet (the same keys as torchvision's).
    ``ema=True`` takes ``state_dict_ema`` (runs with ``--model-ema``).
``timm-state-dict``
    A bare timm ``VisionTransformer`` state dict (``patch_embed.proj``,
    ``blocks.N.norm1`` / ``attn.qkv`` / ``attn.proj`` / ``norm2`` /
    ``mlp.fc1`` / ``mlp.fc2``, ``norm``, ``head``).
``lightning-checkpoint``
    A PyTorch Lightning checkpoint: ``state_dict`` with the network under a
    prefix (``model.`` for the authors' ``Conv/ffcv``) plus ``epoch``,
    ``global_step``, ``optimizer_states``, ``hyper_parameters``, ``loops``...
    Tensors of the LightningModule outside the network (e.g. a loss's
    buffers) are dropped and listed.
``torchvision-state-dict``
    A bare torchvision ``ResNet`` state dict, optionally inside
    ``{'state_dict': ...}`` and under a ``module.`` / ``model.`` prefix.

Architectures (:func:`detect_source_architecture`): a timm ViT / DeiT
(class token, no distillation token) -> mmpretrain ``VisionTransformer`` +
``VisionTransformerClsHead`` (key mapping as mmpretrain's own
``tools/model_converters/deit3_to_mmpretrain.py``); a torchvision ResNet
18/34/50/101/152 -> ``ResNet`` + ``GlobalAveragePooling`` +
``LinearClsHead`` (as ``torchvision_to_mmpretrain.py``), or, when it has
BlurPool (``<conv>.conv.weight`` and ``<conv>.blur_filter`` keys),
:class:`~maxsup_mm.models.backbones.ResNetBlurPool`.

The result is checked against the model of the matching config (every key,
every shape), e.g. ``configs/released/deit-small_official_in1k.py`` for the
authors' DeiT-Small and ``configs/released/resnet50-blurpool_official_in1k.py``
for their ResNet-50s; plain torchvision / timm weights use mmpretrain's
standard configs.  Architectures without a config are checked against the
mmpretrain model inferred from the weights (stored in ``meta['model']``).
"""
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Callable, Dict, Optional, Tuple

import torch

from maxsup_mm.checkpoint import CheckpointError, check_finite, \
    load_checkpoint
from maxsup_mm.fileio import atomic_save
from maxsup_mm.models.backbones import blur_filter
from maxsup_mm.utils import config_path
from .mmpretrain2mmseg import (RESNET_DEPTHS, ConversionError, _apply_rules,
                               _indices, check_against_target, read_config)

__all__ = [
    'EXTERNAL_FORMATS', 'RELEASED_CONFIGS', 'EMA_ENTRIES',
    'detect_external_format', 'external_format',
    'extract_source_state_dict', 'detect_source_architecture',
    'map_external_keys', 'infer_target_model', 'matching_config',
    'expected_model_shapes', 'convert_external_state_dict',
    'convert_external_checkpoint'
]

#: format name -> what it is (for messages and ``meta``)
EXTERNAL_FORMATS = {
    'deit-checkpoint': 'DeiT code base checkpoint ({"model", "model_ema", '
    '"args", ...})',
    'timm-checkpoint': 'timm train.py checkpoint ({"state_dict", '
    '"state_dict_ema", "arch", "args", ...})',
    'timm-state-dict': 'bare timm ViT/DeiT state dict',
    'lightning-checkpoint': 'PyTorch Lightning checkpoint ("state_dict" '
    'plus training state)',
    'torchvision-state-dict': 'bare torchvision ResNet state dict',
}

#: the configs that evaluate the authors' released weights as they did
#: (names of ours: :func:`maxsup_mm.config_path` finds the file)
RELEASED_CONFIGS = {
    'deit-small': 'configs/released/deit-small_official_in1k.py',
    'resnet50-blurpool': 'configs/released/resnet50-blurpool_official_in1k.py',
}

#: mmpretrain's standard configs for plain timm DeiT / torchvision weights
STANDARD_CONFIGS = {
    'deit-tiny': 'mmpretrain::deit/deit-tiny_4xb256_in1k.py',
    'deit-small': 'mmpretrain::deit/deit-small_4xb256_in1k.py',
    'deit-base': 'mmpretrain::deit/deit-base_16xb64_in1k.py',
    **{f'resnet{d}': f'mmpretrain::resnet/resnet{d}_8xb32_in1k.py'
       for d in (18, 34, 50, 101, 152)},
}

#: top-level keys that only a Lightning checkpoint has beside "state_dict"
LIGHTNING_KEYS = ('pytorch-lightning_version', 'global_step',
                  'optimizer_states', 'lr_schedulers', 'loops',
                  'hyper_parameters', 'callbacks')

#: top-level keys that timm's CheckpointSaver writes beside "state_dict"
#: (``arch`` and ``version`` always, ``state_dict_ema`` with --model-ema)
TIMM_KEYS = ('arch', 'version')

#: where the EMA weights are, by format
EMA_ENTRIES = {'deit-checkpoint': 'model_ema',
               'timm-checkpoint': 'state_dict_ema'}

#: anchor keys (first one searched, the others must share its prefix)
_VIT_ANCHORS = ('patch_embed.proj.weight', 'cls_token')
_RESNET_ANCHORS = ('layer1.0.conv1.weight', 'conv1.weight')

_OPENMMLAB_PARTS = ('backbone', 'neck', 'head', 'decode_head',
                    'auxiliary_head', 'data_preprocessor')


# ---------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------
def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor)
        for k, v in obj.items())


def _find_prefix(keys, anchors) -> Optional[str]:
    """The prefix under which all ``anchors`` exist, or ``None``."""
    keyset = set(keys)
    for key in keys:
        if key.endswith(anchors[0]):
            prefix = key[:-len(anchors[0])]
            if (prefix == '' or prefix.endswith('.')) and all(
                    prefix + a in keyset for a in anchors[1:]):
                return prefix
    return None


def _family(sd: Dict) -> Tuple[Optional[str], Optional[str]]:
    """``(family, prefix)`` of a state dict: ``'vit'`` / ``'resnet'``."""
    prefix = _find_prefix(list(sd), _VIT_ANCHORS)
    if prefix is not None:
        return 'vit', prefix
    prefix = _find_prefix(list(sd), _RESNET_ANCHORS)
    if prefix is not None:
        return 'resnet', prefix
    return None, None


def _is_openmmlab(sd: Dict) -> bool:
    parts = {k.split('.', 1)[0] for k in sd}
    return 'backbone' in parts and parts <= set(_OPENMMLAB_PARTS)


def detect_external_format(obj) -> str:
    """Recognise the container and key family of a loaded checkpoint.

    Args:
        obj: what :func:`maxsup_mm.checkpoint.load_checkpoint` returned.

    Returns:
        str: one of :data:`EXTERNAL_FORMATS` (``'deit-checkpoint'``,
        ``'timm-checkpoint'``, ``'timm-state-dict'``,
        ``'lightning-checkpoint'``, ``'torchvision-state-dict'``).

    Raises:
        ConversionError: not one of them (an OpenMMLab checkpoint, an
            optimizer-only file, unknown keys, ...); the message names what
            was found.
    """
    if not isinstance(obj, dict):
        raise ConversionError(
            f'not a checkpoint: expected a dict, got {type(obj).__name__}')
    if _is_state_dict(obj.get('model')):
        return 'deit-checkpoint'
    inner = obj
    if isinstance(obj.get('state_dict'), dict):
        inner = obj['state_dict']
        if any(k in obj for k in LIGHTNING_KEYS) and _is_state_dict(inner):
            return 'lightning-checkpoint'
        if _is_state_dict(inner) and not _is_openmmlab(inner) and (
                'state_dict_ema' in obj or all(k in obj for k in TIMM_KEYS)):
            return 'timm-checkpoint'
    if _is_state_dict(inner):
        if _is_openmmlab(inner):
            raise ConversionError(
                'this is already an OpenMMLab checkpoint ("backbone." / '
                '"head." keys): evaluate it with tools/test.py as it is, or '
                'convert it for mmseg with '
                'tools/model_converters/mmpretrain2mmseg.py')
        family, _ = _family(inner)
        if family == 'vit':
            return 'timm-state-dict'
        if family == 'resnet':
            return 'torchvision-state-dict'
        raise ConversionError(
            'unknown checkpoint: the weights are neither a timm ViT/DeiT '
            '(patch_embed.proj.weight, cls_token) nor a torchvision ResNet '
            f'(conv1.weight, layer1.0.conv1.weight); first keys: '
            f'{list(inner)[:6]}')
    raise ConversionError(
        'unknown checkpoint: no state dict found (expected a DeiT "model" '
        'entry, a Lightning / OpenMMLab "state_dict" or a bare state dict of '
        f'tensors); top-level keys: {sorted(map(str, obj))[:8]}')


def external_format(obj) -> Optional[str]:
    """The external format of a loaded checkpoint, if it is one.

    What :func:`detect_external_format` recognises, except an OpenMMLab
    checkpoint (also one saved from a DDP-wrapped model, ``module.``
    prefixes), which mmengine loads as it is.

    Args:
        obj: what :func:`maxsup_mm.checkpoint.load_checkpoint` returned.

    Returns:
        str or None: one of :data:`EXTERNAL_FORMATS`, or ``None`` (an
        OpenMMLab checkpoint, or nothing this module recognises).
    """
    inner = obj.get('state_dict', obj) if isinstance(obj, dict) else None
    if _is_state_dict(inner) and _is_openmmlab(
            {k[len('module.'):] if k.startswith('module.') else k: None
             for k in inner}):
        return None
    try:
        return detect_external_format(obj)
    except ConversionError:
        return None


def extract_source_state_dict(obj, fmt: str, ema: bool = False,
                              source: str = 'checkpoint'
                              ) -> Tuple[Dict, Dict]:
    """The network's state dict, without prefixes, and what was done.

    Args:
        obj: the loaded checkpoint.
        fmt (str): its format (:func:`detect_external_format`).
        ema (bool): take the EMA weights (DeiT's ``model_ema``, timm's
            ``state_dict_ema``).
        source (str): how to name the file in messages.

    Returns:
        tuple: ``(state_dict, info)``; ``info`` has ``entry`` (where the
        weights came from), ``prefix`` (removed), ``dropped`` (Lightning
        tensors outside the network), ``epoch`` (DeiT, timm, Lightning) and
        ``model`` (DeiT's ``args.model``, timm's ``arch``) where present.

    Raises:
        ConversionError: ``ema`` without EMA weights; keys outside the
            network prefix (other than Lightning's); non-finite weights.
    """
    info: Dict = dict(entry=None, prefix='', dropped=[])
    if ema and fmt not in EMA_ENTRIES:
        raise ConversionError(
            f'--ema: {source} is a {fmt} ({EXTERNAL_FORMATS[fmt]}); only '
            'DeiT code base ("model_ema") and timm train.py '
            '("state_dict_ema") checkpoints carry EMA weights')
    if fmt in EMA_ENTRIES:
        plain = 'model' if fmt == 'deit-checkpoint' else 'state_dict'
        entry = EMA_ENTRIES[fmt] if ema else plain
        sd = obj.get(entry)
        if not _is_state_dict(sd):
            flag = ('--no-model-ema' if fmt == 'deit-checkpoint' else
                    'without --model-ema')
            raise ConversionError(
                f'--ema: {source} has no EMA weights ("{entry}" is '
                f'{"missing" if entry not in obj else type(sd).__name__}'
                f'; the run was trained {flag}?); convert without --ema to '
                f'take "{plain}"')
        info['entry'] = entry
        args = obj.get('args')
        if isinstance(obj.get('arch'), str):  # timm: args.model as well
            info['model'] = obj['arch']
        elif isinstance(getattr(args, 'model', None), str):
            info['model'] = args.model
    elif fmt == 'lightning-checkpoint' or 'state_dict' in obj:
        sd, info['entry'] = obj['state_dict'], 'state_dict'
    else:
        sd = obj
    family, prefix = _family(sd)
    if family is None:
        raise ConversionError(
            f'{source}: the "{info["entry"]}" weights are neither a timm '
            'ViT/DeiT nor a torchvision ResNet; first keys: '
            f'{list(sd)[:6]}')
    outside = [k for k in sd if not k.startswith(prefix)]
    if outside and fmt == 'lightning-checkpoint':
        info['dropped'] = outside
    elif outside:
        raise ConversionError(
            f'{len(outside)} tensors of {source} lie outside the network '
            f'(prefix "{prefix}"): {outside[:8]}')
    info['prefix'] = prefix
    if fmt in ('deit-checkpoint', 'timm-checkpoint',
               'lightning-checkpoint') and isinstance(
            obj.get('epoch'), int):
        info['epoch'] = obj['epoch']
    net = OrderedDict((k[len(prefix):], v) for k, v in sd.items()
                      if k.startswith(prefix))
    try:
        check_finite(net, source)
    except CheckpointError as err:
        raise ConversionError(str(err)) from None
    return net, info


# ---------------------------------------------------------------------------
# Architecture detection
# ---------------------------------------------------------------------------
def _vit_preset(embed_dims: int, num_layers: int, ffn: int) -> Optional[str]:
    """The mmpretrain ``VisionTransformer`` arch of these shapes, if any."""
    from mmpretrain.models.backbones import VisionTransformer
    zoo = VisionTransformer.arch_zoo
    for name in ('deit-tiny', 'deit-small', 'deit-base', 'large', 'huge'):
        arch = zoo.get(name)
        if arch and (arch['embed_dims'], arch['num_layers'],
                     arch['feedforward_channels']) == (embed_dims,
                                                       num_layers, ffn):
            return name
    return None


def detect_source_architecture(sd: Dict[str, torch.Tensor]) -> Dict:
    """Recognise a timm ViT / torchvision ResNet from its (un-prefixed) keys.

    Args:
        sd (dict): the network's state dict.

    Returns:
        dict: ``family`` (``'vit'`` / ``'resnet'``), ``type`` (the mmpretrain
        backbone: ``VisionTransformer``, ``ResNet`` or ``ResNetBlurPool``),
        ``num_classes`` and the shape parameters.

    Raises:
        ConversionError: an architecture without an exact mmpretrain
            equivalent (distilled DeiT, no class token, no head, unknown
            ResNet layout, ...).
    """
    keys = list(sd)
    if 'patch_embed.proj.weight' in sd:
        if 'dist_token' in sd or 'head_dist.weight' in sd:
            raise ConversionError(
                'distilled DeiT ("dist_token" / "head_dist") is not '
                'supported: convert the non-distilled model')
        if 'cls_token' not in sd or 'pos_embed' not in sd:
            raise ConversionError('a ViT without "cls_token" / "pos_embed" '
                                  'has no mmpretrain equivalent here')
        if 'head.weight' not in sd:
            raise ConversionError(
                'no classification head ("head.weight"): a backbone-only / '
                'feature checkpoint cannot give an mmpretrain classifier')
        weight = sd['patch_embed.proj.weight']
        if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
            raise ConversionError(
                f'unsupported patch embedding of shape {tuple(weight.shape)}')
        embed_dims, patch = int(weight.shape[0]), int(weight.shape[2])
        num_layers = len(_indices(keys, r'blocks\.(\d+)\.'))
        if 'blocks.0.mlp.fc1.weight' not in sd:
            raise ConversionError('unsupported ViT block: no '
                                  '"blocks.0.mlp.fc1.weight"; first keys: '
                                  f'{keys[:6]}')
        ffn = int(sd['blocks.0.mlp.fc1.weight'].shape[0])
        tokens = int(sd['pos_embed'].shape[1]) - 1
        grid = int(round(max(tokens, 0) ** 0.5))
        if tokens <= 0 or grid * grid != tokens:
            raise ConversionError(
                f'pos_embed has {tokens + 1} tokens: not one class token '
                'plus a square grid of patches')
        preset = _vit_preset(embed_dims, num_layers, ffn)
        if preset:
            from mmpretrain.models.backbones import VisionTransformer
            num_heads = VisionTransformer.arch_zoo[preset]['num_heads']
        else:
            num_heads = max(1, embed_dims // 64)
        return dict(family='vit', type='VisionTransformer', preset=preset,
                    embed_dims=embed_dims, num_layers=num_layers,
                    num_heads=num_heads, heads_assumed=preset is None,
                    feedforward_channels=ffn, patch_size=patch,
                    img_size=grid * patch, in_channels=int(weight.shape[1]),
                    qkv_bias='blocks.0.attn.qkv.bias' in sd,
                    num_classes=int(sd['head.weight'].shape[0]))
    if 'layer1.0.conv1.weight' in sd and 'conv1.weight' in sd:
        if 'fc.weight' not in sd:
            raise ConversionError(
                'no classification head ("fc.weight"): a backbone-only / '
                'feature checkpoint cannot give an mmpretrain classifier')
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
        blurpool = any(k.endswith('.blur_filter') for k in keys)
        return dict(family='resnet',
                    type='ResNetBlurPool' if blurpool else 'ResNet',
                    depth=depth, blurpool=blurpool,
                    in_channels=int(sd['conv1.weight'].shape[1]),
                    feat_channels=int(sd['fc.weight'].shape[1]),
                    num_classes=int(sd['fc.weight'].shape[0]))
    raise ConversionError(
        'unknown architecture: neither a timm ViT/DeiT nor a torchvision '
        f'ResNet; first keys: {keys[:6]}')


# ---------------------------------------------------------------------------
# Key mapping (pure functions of the state dict)
# ---------------------------------------------------------------------------
_W = r'(weight|bias)'
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_CONV = r'(weight|bias|conv\.weight|conv\.bias|blur_filter)'

#: timm ViT -> mmpretrain ImageClassifier (deit3_to_mmpretrain.py's mapping)
VIT_RULES = [
    (re.compile(r'^(cls_token|pos_embed)$'), r'backbone.\1'),
    (re.compile(rf'^patch_embed\.proj\.{_W}$'),
     r'backbone.patch_embed.projection.\1'),
    (re.compile(rf'^blocks\.(\d+)\.norm1\.{_W}$'),
     r'backbone.layers.\1.ln1.\2'),
    (re.compile(rf'^blocks\.(\d+)\.norm2\.{_W}$'),
     r'backbone.layers.\1.ln2.\2'),
    (re.compile(rf'^blocks\.(\d+)\.attn\.(qkv|proj)\.{_W}$'),
     r'backbone.layers.\1.attn.\2.\3'),
    (re.compile(rf'^blocks\.(\d+)\.mlp\.fc1\.{_W}$'),
     r'backbone.layers.\1.ffn.layers.0.0.\2'),
    (re.compile(rf'^blocks\.(\d+)\.mlp\.fc2\.{_W}$'),
     r'backbone.layers.\1.ffn.layers.1.\2'),
    (re.compile(rf'^norm\.{_W}$'), r'backbone.ln1.\1'),
    (re.compile(rf'^head\.{_W}$'), r'head.layers.head.\1'),
]

#: torchvision ResNet (BlurPool or not) -> mmpretrain ImageClassifier
RESNET_RULES = [
    (re.compile(rf'^conv1\.{_W}$'), r'backbone.conv1.\1'),
    (re.compile(rf'^bn1\.{_BN}$'), r'backbone.bn1.\1'),
    (re.compile(rf'^(layer\d+\.\d+\.conv[123])\.{_CONV}$'),
     r'backbone.\1.\2'),
    (re.compile(rf'^(layer\d+\.\d+\.bn[123])\.{_BN}$'), r'backbone.\1.\2'),
    (re.compile(rf'^(layer\d+\.\d+\.downsample\.0)\.{_CONV}$'),
     r'backbone.\1.\2'),
    (re.compile(rf'^(layer\d+\.\d+\.downsample\.1)\.{_BN}$'),
     r'backbone.\1.\2'),
    (re.compile(rf'^fc\.{_W}$'), r'head.fc.\1'),
]


def map_external_keys(sd: Dict[str, torch.Tensor], arch: Dict):
    """Rename timm ViT / torchvision ResNet keys to mmpretrain's.

    Args:
        sd (dict): the network's un-prefixed state dict.
        arch (dict): what :func:`detect_source_architecture` returned.

    Returns:
        tuple: ``(mapped, renamed, unmapped)``: the new state dict, the
        ``(old, new)`` names and the keys no rule covers.
    """
    rules = VIT_RULES if arch['family'] == 'vit' else RESNET_RULES
    return _apply_rules(sd, rules)


def _check_blur_filters(sd: Dict[str, torch.Tensor]) -> None:
    for key, value in sd.items():
        if key.endswith('.blur_filter'):
            want = blur_filter(value.shape[0])
            if value.shape != want.shape or not torch.allclose(
                    value.float(), want, atol=1e-6):
                raise ConversionError(
                    f'{key} is not the BlurPool filter [1,2,1]x[1,2,1]/16 '
                    f'per channel (shape {tuple(value.shape)}); refusing to '
                    'guess what network these weights belong to')


# ---------------------------------------------------------------------------
# The target mmpretrain model
# ---------------------------------------------------------------------------
def infer_target_model(arch: Dict) -> Dict:
    """The mmpretrain ``ImageClassifier`` config of a detected source.

    A ViT's number of heads does not show in its weights: it is taken from
    the mmpretrain preset of the same shapes (``deit-small``: 6), else
    assumed ``embed_dims // 64`` (``arch['heads_assumed']``).

    Args:
        arch (dict): what :func:`detect_source_architecture` returned.

    Returns:
        dict: a model config (``type='ImageClassifier'``).
    """
    if arch['family'] == 'vit':
        backbone_arch = arch['preset'] or dict(
            embed_dims=arch['embed_dims'], num_layers=arch['num_layers'],
            num_heads=arch['num_heads'],
            feedforward_channels=arch['feedforward_channels'])
        return dict(
            type='ImageClassifier',
            backbone=dict(type='VisionTransformer', arch=backbone_arch,
                          img_size=arch['img_size'],
                          patch_size=arch['patch_size'],
                          in_channels=arch['in_channels'],
                          qkv_bias=arch['qkv_bias']),
            neck=None,
            head=dict(type='VisionTransformerClsHead',
                      num_classes=arch['num_classes'],
                      in_channels=arch['embed_dims']))
    return dict(
        type='ImageClassifier',
        backbone=dict(type=arch['type'], depth=arch['depth'],
                      in_channels=arch['in_channels'], num_stages=4,
                      out_indices=(3, ), style='pytorch'),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=arch['num_classes'],
                  in_channels=arch['feat_channels']))


def matching_config(fmt: str, arch: Dict) -> Optional[str]:
    """The config that evaluates these weights, or ``None``.

    The authors' DeiT-Small (a DeiT code base checkpoint) and BlurPool
    ResNet-50 get ``configs/released/``; plain timm DeiT and torchvision
    ResNet weights mmpretrain's standard configs (ImageNet-1k, 224 px).
    """
    if arch['num_classes'] != 1000 or arch['in_channels'] != 3:
        return None
    if arch['family'] == 'vit':
        preset = arch['preset']
        if (preset not in ('deit-tiny', 'deit-small', 'deit-base')
                or arch['img_size'] != 224 or arch['patch_size'] != 16
                or not arch['qkv_bias']):
            return None
        if fmt == 'deit-checkpoint' and preset == 'deit-small':
            return RELEASED_CONFIGS['deit-small']
        return STANDARD_CONFIGS[preset]
    if arch['blurpool']:
        return RELEASED_CONFIGS['resnet50-blurpool'] \
            if arch['depth'] == 50 else None
    return STANDARD_CONFIGS[f'resnet{arch["depth"]}']


def expected_model_shapes(model_cfg: Dict) -> Dict[str, torch.Size]:
    """Build an mmpretrain model and return ``{key: shape}`` of its state.

    Args:
        model_cfg (dict): a model config; unscoped types are looked up in
            mmpretrain's registry whatever the current default scope.
    """
    import mmpretrain.models  # noqa: F401  (registers the classifiers)
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    try:
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            model = MODELS.build(model_cfg)
    except Exception as err:
        raise ConversionError(
            f'cannot build the target mmpretrain model: '
            f'{type(err).__name__}: {err}') from err
    return {k: v.shape for k, v in model.state_dict().items()}


def _model_from_config(config: str) -> Dict:
    try:
        cfg = read_config(config_path(config))
    except Exception as err:  # noqa: BLE001 - a user's path or typo
        raise ConversionError(f'cannot read the config {config}: '
                              f'{type(err).__name__}: {err}') from None
    if 'model' not in cfg:
        raise ConversionError(f'{config}: has no "model"')
    model = cfg.model.to_dict()
    model.pop('train_cfg', None)  # batch augments: no weights, only logs
    if model.get('type', '').split('.')[-1] != 'ImageClassifier':
        raise ConversionError(
            f'{config}: model.type is {model.get("type")!r}, not an '
            'mmpretrain ImageClassifier')
    return model


# ---------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------
def convert_external_state_dict(obj, ema: bool = False,
                                config: Optional[str] = None,
                                source: str = 'checkpoint'):
    """Map a loaded external checkpoint onto an mmpretrain classifier.

    Args:
        obj: the loaded checkpoint (see :func:`detect_external_format`).
        ema (bool): take the EMA weights (DeiT's ``model_ema``, timm's
            ``state_dict_ema``).
        config (str, optional): the config whose ``model`` must accept the
            result exactly; by default the matching one
            (:func:`matching_config`), else the inferred model.
        source (str): how to name the file in messages.

    Returns:
        tuple: ``(state_dict, report)``; the report has ``format``,
        ``architecture``, ``config``, ``model`` (the inferred model config),
        ``target``, ``renamed``, ``resized``, ``info``
        (:func:`extract_source_state_dict`).

    Raises:
        ConversionError: anything that cannot be converted completely.
    """
    fmt = detect_external_format(obj)
    sd, info = extract_source_state_dict(obj, fmt, ema, source)
    arch = detect_source_architecture(sd)
    mapped, renamed, unmapped = map_external_keys(sd, arch)
    if unmapped:
        raise ConversionError(
            f'{len(unmapped)} tensors of the {arch["type"]} in {source} have '
            f'no mmpretrain counterpart: {unmapped[:8]}')
    if arch.get('blurpool'):
        _check_blur_filters(sd)
    model = infer_target_model(arch)
    if config is None:
        config = matching_config(fmt, arch)
    if config is not None:
        target_model = _model_from_config(config)
        target = f'mmpretrain ImageClassifier of {config}'
        found = str(target_model.get('backbone', {}).get('type', ''))
        found = found.split('.')[-1]
        if found != arch['type']:
            held = {'ResNetBlurPool': 'a BlurPool ResNet',
                    'ResNet': 'a plain ResNet (no BlurPool)'}.get(
                        arch['type'], 'a ViT')
            raise ConversionError(
                f'architecture mismatch: {source} holds {held} (mmpretrain '
                f'{arch["type"]}) but {config} builds a {found or "?"} '
                'backbone')
    else:
        target_model = model
        target = 'mmpretrain ImageClassifier inferred from the weights'
    resized = check_against_target(mapped, expected_model_shapes(
        target_model), target)
    report = dict(format=fmt, architecture=arch, config=config, model=model,
                  target=target, num_tensors=len(mapped), renamed=renamed,
                  unchanged=len(mapped) - len(renamed), resized=resized,
                  info=info)
    return mapped, report


def _arch_summary(arch: Dict) -> str:
    if arch['family'] == 'vit':
        name = arch['preset'] or 'custom'
        heads = f'{arch["num_heads"]} heads' + (
            ' (assumed: not in the weights; pass --config to set)'
            if arch['heads_assumed'] else '')
        return (f'ViT {name} (embed_dims={arch["embed_dims"]}, '
                f'{arch["num_layers"]} layers, {heads}, patch '
                f'{arch["patch_size"]}, {arch["img_size"]} px, '
                f'{arch["num_classes"]} classes)')
    blur = ' with BlurPool' if arch['blurpool'] else ''
    return (f'ResNet-{arch["depth"]}{blur} (mmpretrain {arch["type"]}, '
            f'{arch["num_classes"]} classes)')


def convert_external_checkpoint(src: str,
                                dst: str,
                                ema: bool = False,
                                config: Optional[str] = None,
                                log: Optional[Callable[[str], None]] = print,
                                num_examples: int = 4) -> Dict:
    """Convert a DeiT / timm / Lightning / torchvision checkpoint.

    Loads ``src`` safely (:func:`maxsup_mm.checkpoint.load_checkpoint`),
    detects its format and architecture, maps every tensor to the
    mmpretrain ``ImageClassifier`` keys, checks the result against the
    model of the matching config (every key, every shape) and writes
    ``{'state_dict': ..., 'meta': ...}`` to ``dst`` atomically.  On any
    error nothing is written and an existing ``dst`` is left untouched.

    Args:
        src (str): the external checkpoint.
        dst (str): output path.
        ema (bool): take the EMA weights (DeiT's ``model_ema``, timm's
            ``state_dict_ema``).
        config (str, optional): an mmpretrain config whose model must
            accept the weights exactly (default: the matching one).
        log (callable, optional): where progress lines go (``None``: quiet).
        num_examples (int): renamed keys to show.

    Returns:
        dict: the report of :func:`convert_external_state_dict` plus
        ``meta`` and ``dst``.

    Raises:
        ConversionError: (a ``ValueError``) anything that cannot be
            converted completely.
    """
    log = log or (lambda msg: None)
    src, dst = os.fspath(src), os.fspath(dst)
    if osp.abspath(src) == osp.abspath(dst):
        raise ConversionError('SRC and DST are the same file; refusing to '
                              'overwrite the source checkpoint')
    try:
        obj = load_checkpoint(src)
    except (FileNotFoundError, CheckpointError) as err:
        raise ConversionError(str(err)) from None
    state_dict, report = convert_external_state_dict(obj, ema, config, src)
    fmt, arch, info = report['format'], report['architecture'], \
        report['info']
    tag = '[external2mmpretrain]'
    entry = f', weights from "{info["entry"]}"' if info['entry'] else ''
    prefix = f', prefix "{info["prefix"]}" removed' if info['prefix'] else ''
    log(f'{tag} {src}: {fmt} ({EXTERNAL_FORMATS[fmt]}){entry}{prefix}')
    log(f'{tag} architecture: {_arch_summary(arch)}')
    log(f'{tag} target: {report["target"]}')
    log(f'{tag} mapped {report["num_tensors"]} tensors: '
        f'{len(report["renamed"])} renamed, {report["unchanged"]} unchanged'
        + (f'; dropped {len(info["dropped"])} tensors of the '
           f'LightningModule outside the network: {info["dropped"][:4]}'
           if info['dropped'] else ''))
    for old, new in report['renamed'][:num_examples]:
        log(f'    {old} -> {new}')
    if len(report['renamed']) > num_examples:
        log(f'    ... and {len(report["renamed"]) - num_examples} more')
    for key, got, want in report['resized']:
        log(f'{tag} {key} {got} is resized to {want} by mmpretrain when it '
            'loads the checkpoint')
    meta = dict(
        converter='maxsup_mm.converters.external', format=fmt,
        format_description=EXTERNAL_FORMATS[fmt], source=osp.basename(src),
        weights=info['entry'], ema=bool(ema),
        architecture=_arch_summary(arch), mmpretrain_type=arch['type'],
        config=report['config'], model=report['model'],
        dropped=list(info['dropped']))
    for key in ('epoch', 'model'):
        if key in info:
            meta['source_' + key] = info[key]
    if report['config'] is None:
        meta['config_note'] = (
            'no config matches this architecture: build meta["model"] '
            '(what the weights were checked against)')
    atomic_save(dict(state_dict=state_dict, meta=meta), dst)
    log(f'{tag} wrote {dst}')
    if report['config']:
        log(f'{tag} evaluate: python tools/test.py {report["config"]} {dst}')
    report.update(meta=meta, dst=dst)
    return report
