"""External checkpoints -> mmpretrain (-> mmseg): the authors' released
formats (DeiT code base, Lightning + BlurPool ResNet-50), bare timm and
torchvision weights, and the refusals.

Oracles, all independent of the code under test: the source architectures
built from timm and torchvision (BlurPool applied by ``_blurpool_`` below,
written after the authors' ``Conv/ffcv/model.py``), their logits and
intermediate features on the same input; PyTorch's strict
``load_state_dict``; torchvision / PIL for the DeiT evaluation transform;
FFCV's crop formula (``ffcv/fields/rgb_image.py``) with OpenCV for the FFCV
one.
"""
import argparse
import contextlib
import glob
import os
import os.path as osp
import pathlib
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from maxsup_mm.converters import (ConversionError,
                                  convert_external_checkpoint,
                                  convert_mmpretrain_to_mmseg)
from maxsup_mm.converters.mmpretrain2mmseg import read_config
from flat_dict import flatten  # tests/helpers
from load_tool import load_tool  # tests/helpers
from malicious import write_malicious_checkpoint  # tests/helpers
from random_weights import (max_diff, randomize_,  # tests/helpers
                            seg_backbone)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEIT_RELEASED = 'configs/released/deit-small_official_in1k.py'
R50_RELEASED = 'configs/released/resnet50-blurpool_official_in1k.py'
DEIT_STANDARD = 'mmpretrain::deit/deit-small_4xb256_in1k.py'
R18_STANDARD = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
R50_STANDARD = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
UPERNET_DEIT = osp.join(
    ROOT, 'configs', 'upernet',
    'upernet_deit-s16_maxsup-pre_8xb2-80k_ade20k-512x512.py')
UPERNET_R50 = osp.join(ROOT, 'configs', 'upernet',
                       'upernet_r50_ce-pre_4xb4-80k_ade20k-512x512.py')
UPERNET_R50_BLUR = osp.join(
    ROOT, 'configs', 'upernet',
    'upernet_r50-blurpool_official-pre_4xb4-80k_ade20k-512x512.py')
IMG = 64  # ResNet test resolution


# ---------------------------------------------------------------------------
# independent source architectures
# ---------------------------------------------------------------------------
class _AuthorsBlurPoolConv2d(nn.Module):
    """The authors' ``BlurPoolConv2d`` (Conv/ffcv/model.py), re-typed."""

    def __init__(self, conv):
        super().__init__()
        filt = torch.tensor([[[[1, 2, 1], [2, 4, 2], [1, 2, 1]]]]) / 16.0
        self.conv = conv
        self.register_buffer('blur_filter',
                             filt.repeat(conv.in_channels, 1, 1, 1))

    def forward(self, x):
        x = F.conv2d(x, self.blur_filter.to(x.dtype), stride=1,
                     padding=(1, 1), groups=self.conv.in_channels)
        return self.conv(x)


def _blurpool_(mod):
    """The authors' ``Net._apply_blurpool``."""
    for name, child in mod.named_children():
        if isinstance(child, nn.Conv2d) and (np.max(child.stride) > 1
                                             and child.in_channels >= 16):
            setattr(mod, name, _AuthorsBlurPoolConv2d(child))
        else:
            _blurpool_(child)


def _tv_resnet(depth, blur, seed, num_classes=1000):
    import torchvision
    model = getattr(torchvision.models, f'resnet{depth}')(
        num_classes=num_classes)
    if blur:
        _blurpool_(model)
    return randomize_(model, seed)


def _tv_features(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for i in range(1, 5):
        x = getattr(model, f'layer{i}')(x)
        outs.append(x)
    return outs


def _small_vit(seed, qkv_bias=True, num_classes=10):
    from timm.models.vision_transformer import VisionTransformer
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=128,
                              depth=2, num_heads=2, num_classes=num_classes,
                              qkv_bias=qkv_bias)
    return randomize_(model, seed)


def _timm_block_outputs(model, x, indices):
    """Patch tokens after the given blocks as NCHW (the last one normed),
    what mmseg's ViT returns with final_norm=True."""
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    outs = []
    for i, blk in enumerate(model.blocks):
        x = blk(x)
        if i in indices:
            y = model.norm(x) if i == len(model.blocks) - 1 else x
            tokens = y[:, 1:]
            n, hw, c = tokens.shape
            side = int(hw ** 0.5)
            outs.append(tokens.transpose(1, 2).reshape(n, c, side, side))
    return outs


# ---------------------------------------------------------------------------
# on-disk formats
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _fake_lightning_module():
    """Lightning's ``AttributeDict``, pickled under Lightning's module name
    (Lightning itself is not installed here)."""
    name = 'lightning_fabric.utilities.data'
    module = types.ModuleType(name)

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = name, \
        'AttributeDict'
    module.AttributeDict = AttributeDict
    added = {n: types.ModuleType(n) for n in ('lightning_fabric',
                                              'lightning_fabric.utilities')}
    added[name] = module
    for key, value in added.items():
        assert key not in sys.modules
        sys.modules[key] = value
    try:
        yield AttributeDict
    finally:
        for key in added:
            del sys.modules[key]


def _save_lightning(model, path, extra=None):
    """What Lightning's ModelCheckpoint writes for the authors' ``Net``."""
    state = {'model.' + k: v for k, v in model.state_dict().items()}
    state.update(extra or {})
    with _fake_lightning_module() as AttributeDict:
        torch.save({
            'epoch': 89, 'global_step': 225180,
            'pytorch-lightning_version': '2.4.0',
            'state_dict': state,
            'loops': {'fit_loop': {'state_dict': {}, 'epoch_progress': {
                'total': {'ready': 90, 'completed': 89}}}},
            'callbacks': {"ModelCheckpoint{'monitor': 'Val_Acc_Top1'}": {
                'best_model_score': torch.tensor(77.7)}},
            'optimizer_states': [{'state': {}, 'param_groups': [
                {'lr': 0.0008, 'momentum': 0.9, 'params': [0, 1]}]}],
            'lr_schedulers': [{'step_size': 30, 'gamma': 0.1}],
            'hparams_name': 'config',
            'hyper_parameters': AttributeDict(config={
                'model': 'resnet50', 'num_classes': 1000, 'weights': '',
                'loss': {'loss_type': 'ms', 'begin_lambda': 0.1}}),
        }, path)
    return str(path)


def _deit_args():
    return argparse.Namespace(
        model='deit_small_patch16_224', input_size=224, eval_crop_ratio=0.875,
        output_dir=pathlib.Path('/checkpoint/deit_maxsup'),
        data_path=pathlib.PurePosixPath('/datasets/imagenet'),
        model_ema=True, smoothing=0.1, lr=5e-4, seed=0)


def _tool():
    return load_tool('model_converters/external2mmpretrain.py')


def _converted(path):
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    assert set(ckpt) == {'state_dict', 'meta'}
    return ckpt


def _classifier(model_cfg, state_dict):
    """The mmpretrain model of a config, strictly loaded."""
    from mmengine.registry import DefaultScope
    import mmpretrain.models  # noqa: F401
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(model_cfg)
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


def _config_model(config):
    if not config.startswith('mmpretrain::'):
        config = osp.join(ROOT, config)
    return read_config(config).model.to_dict()


def _images(n, size, seed=0):
    return torch.randn(n, 3, size, size,
                       generator=torch.Generator().manual_seed(seed))


def _assert_logits_equal(want, got, tol=1e-5):
    assert want.shape == got.shape
    scale = want.abs().max().item()
    assert (want - got).abs().max().item() <= tol * max(1.0, scale)
    # not trivially equal: the classes differ from each other
    assert want.std().item() > 1e-3


# ---------------------------------------------------------------------------
# the BlurPool backbone
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('depth', [18, 50])
def test_blurpool_backbones_have_torchvision_keys(depth):
    import mmpretrain.models  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmpretrain.registry import MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    from maxsup_mm.models.backbones import apply_blurpool_
    import torchvision
    source = getattr(torchvision.models, f'resnet{depth}')()
    _blurpool_(source)
    want = {k: v.shape for k, v in source.state_dict().items()
            if not k.startswith('fc.')}
    cls = MODELS.build(dict(type='mmpretrain.ResNetBlurPool', depth=depth))
    seg = SEG_MODELS.build(dict(type='mmseg.ResNetBlurPool', depth=depth))
    conv = '1' if depth == 18 else '2'  # BasicBlock: stride on conv1
    assert cls.blurred == seg.blurred == [
        f'layer{i}.0.{name}' for i in (2, 3, 4)
        for name in (f'conv{conv}', 'downsample.0')]
    for model in (cls, seg):
        got = {k: v.shape for k, v in model.state_dict().items()}
        assert got == want
        taps = torch.tensor([1., 2., 1.])
        kernel = (taps[:, None] * taps[None, :]) / 16
        for key, value in model.state_dict().items():
            if key.endswith('blur_filter'):
                assert torch.equal(value, kernel.expand_as(value)), key
    # applying the rule twice changes nothing
    assert apply_blurpool_(cls) == []
    assert {k: v.shape for k, v in cls.state_dict().items()} == want


# ---------------------------------------------------------------------------
# the authors' DeiT-Small: DeiT code base checkpoint, model and model_ema
# ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def deit_small(tmp_path_factory):
    import timm
    model = randomize_(timm.create_model('deit_small_patch16_224'), seed=1)
    ema = randomize_(timm.create_model('deit_small_patch16_224'), seed=2)
    path = tmp_path_factory.mktemp('deit') / 'checkpoint_deit.pth'
    torch.save({
        'model': model.state_dict(),
        'optimizer': {'state': {}, 'param_groups': [{'lr': 5e-4}]},
        'lr_scheduler': {'last_epoch': 299}, 'epoch': 299,
        'model_ema': ema.state_dict(),
        'scaler': {'scale': 65536.0, 'growth_factor': 2.0},
        'args': _deit_args(),
    }, path)
    return str(path), model, ema


@pytest.mark.slow
def test_deit_code_base_checkpoint_model_and_ema(deit_small, tmp_path,
                                                 capsys):
    src, model, ema = deit_small
    tool = _tool()
    x = _images(1, 224).double()
    for use_ema, source in ((False, model), (True, ema)):
        dst = str(tmp_path / f'deit_{use_ema}.pth')
        assert tool.main([src, dst] + (['--ema'] if use_ema else [])) == 0
        out = capsys.readouterr().out
        assert 'deit-checkpoint' in out and 'deit-small' in out
        assert f'tools/test.py {DEIT_RELEASED} {dst}' in out
        ckpt = _converted(dst)
        meta = ckpt['meta']
        assert meta['format'] == 'deit-checkpoint'
        assert meta['config'] == DEIT_RELEASED
        assert meta['weights'] == ('model_ema' if use_ema else 'model')
        assert meta['source_model'] == 'deit_small_patch16_224'
        assert meta['source_epoch'] == 299
        cls = _classifier(_config_model(DEIT_RELEASED), ckpt['state_dict'])
        cls.double(), source.double()
        with torch.no_grad():
            want, got = source(x), cls(x, mode='tensor')
        source.float()
        _assert_logits_equal(want, got, tol=1e-8)
    # the two entries really differ, and --ema took the second
    assert not torch.equal(model.head.weight, ema.head.weight)

    # on to mmseg: the Table 6 UperNet backbone gets timm's block outputs
    seg_dst = str(tmp_path / 'deit_mmseg.pth')
    convert_mmpretrain_to_mmseg(str(tmp_path / 'deit_True.pth'), seg_dst,
                                config=UPERNET_DEIT, log=None)
    seg = seg_backbone(UPERNET_DEIT, img_size=(224, 224))
    result = seg.load_state_dict(_converted(seg_dst)['state_dict'],
                                 strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    seg.double(), ema.double()
    with torch.no_grad():
        want = _timm_block_outputs(ema, x, set(seg.out_indices))
        got = seg(x)
    ema.float()
    assert len(got) == 4
    assert max_diff(want, got) < 1e-8


def test_bare_timm_deit_small_uses_the_standard_config(deit_small,
                                                        tmp_path):
    _, model, _ = deit_small
    src = str(tmp_path / 'deit_small_patch16_224.pth')
    torch.save(model.state_dict(), src)
    dst = str(tmp_path / 'out.pth')
    report = convert_external_checkpoint(src, dst, log=None)
    assert report['format'] == 'timm-state-dict'
    ckpt = _converted(dst)
    assert ckpt['meta']['config'] == DEIT_STANDARD
    cls = _classifier(_config_model(DEIT_STANDARD), ckpt['state_dict'])
    x = _images(1, 224)
    with torch.no_grad():
        want, got = model(x), cls(x, mode='tensor')
    _assert_logits_equal(want, got, tol=1e-4)


@pytest.mark.parametrize('qkv_bias, prefix', [(True, ''),
                                              (False, 'module.')])
def test_bare_timm_vit_without_a_config(tmp_path, qkv_bias, prefix):
    model = _small_vit(seed=3, qkv_bias=qkv_bias)
    src = str(tmp_path / 'vit.pth')
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, src)
    dst = str(tmp_path / 'out.pth')
    report = convert_external_checkpoint(src, dst, log=None)
    assert report['format'] == 'timm-state-dict'
    assert report['info']['prefix'] == prefix
    meta = _converted(dst)['meta']
    assert meta['config'] is None and 'config_note' in meta
    assert meta['model']['backbone']['arch']['num_heads'] == 2
    cls = _classifier(meta['model'], _converted(dst)['state_dict'])
    x = _images(2, 32).double()
    cls.double(), model.double()
    with torch.no_grad():
        _assert_logits_equal(model(x), cls(x, mode='tensor'), tol=1e-8)
        # and on to mmseg (a bias-free qkv gets mmseg's zero bias)
        seg_dst = str(tmp_path / 'seg.pth')
        convert_mmpretrain_to_mmseg(dst, seg_dst, log=None)
        from mmseg.registry import MODELS
        seg = MODELS.build(dict(
            type='mmseg.VisionTransformer', img_size=(32, 32), patch_size=8,
            embed_dims=128, num_layers=2, num_heads=2, mlp_ratio=4,
            qkv_bias=True, patch_bias=True, final_norm=True,
            with_cls_token=True, out_indices=(0, 1),
            norm_cfg=dict(type='LN', eps=1e-6)))
        seg.load_state_dict(_converted(seg_dst)['state_dict'], strict=True)
        seg.eval()  # (mmseg's ViT.train returns None: no chaining)
        seg.double()
        assert max_diff(_timm_block_outputs(model, x, {0, 1}), seg(x)) \
            < 1e-8


# ---------------------------------------------------------------------------
# timm's train.py: CheckpointSaver's {"state_dict", "state_dict_ema", ...}
# ---------------------------------------------------------------------------
def _timm_train_checkpoint(path, model, ema=None, arch='resnet18'):
    """What timm's ``CheckpointSaver._save`` writes (``last.pth.tar``,
    ``model_best.pth.tar``): ``ema`` None is a run without --model-ema."""
    state = {
        'epoch': 41, 'arch': arch, 'version': 2,
        'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1}]},
        'args': argparse.Namespace(model=arch, model_ema=ema is not None,
                                   smoothing=0.1, lr=0.1, epochs=100),
        'state_dict': model.state_dict(),
        'amp_scaler': {'scale': 65536.0, 'growth_factor': 2.0},
        'metric': 71.3,
    }
    if ema is not None:
        state['state_dict_ema'] = ema.state_dict()
    torch.save(state, path)
    return str(path)


def test_timm_train_checkpoint_resnet18_model_and_ema(tmp_path, capsys):
    """A timm-trained ResNet-18 (timm's own architecture as the oracle):
    "state_dict" by default, "state_dict_ema" with --ema."""
    import timm
    model = randomize_(timm.create_model('resnet18'), seed=21).eval()
    ema = randomize_(timm.create_model('resnet18'), seed=22).eval()
    src = _timm_train_checkpoint(tmp_path / 'last.pth.tar', model, ema)
    tool = _tool()
    x = _images(2, IMG)
    for use_ema, source in ((False, model), (True, ema)):
        dst = str(tmp_path / f'r18_{use_ema}.pth')
        assert tool.main([src, dst] + (['--ema'] if use_ema else [])) == 0
        out = capsys.readouterr().out
        assert 'timm-checkpoint' in out
        meta = _converted(dst)['meta']
        assert meta['format'] == 'timm-checkpoint'
        assert meta['weights'] == ('state_dict_ema' if use_ema
                                   else 'state_dict')
        assert meta['ema'] is use_ema
        assert meta['source_model'] == 'resnet18'
        assert meta['source_epoch'] == 41
        assert meta['config'] == R18_STANDARD
        cls = _classifier(_config_model(R18_STANDARD),
                          _converted(dst)['state_dict'])
        with torch.no_grad():
            _assert_logits_equal(source(x), cls(x, mode='tensor'))
    assert not torch.equal(model.fc.weight, ema.fc.weight)


def test_timm_train_checkpoint_vit_without_ema(tmp_path, capsys):
    """A timm ViT trained without --model-ema: converts from "state_dict";
    --ema names the missing entry and writes nothing."""
    model = _small_vit(seed=23).eval()
    src = _timm_train_checkpoint(tmp_path / 'model_best.pth.tar', model,
                                 arch='vit_custom')
    dst = str(tmp_path / 'vit.pth')
    tool = _tool()
    err = _refused(tool, capsys, src, dst, '--ema')
    assert '"state_dict_ema" is missing' in err and '--model-ema' in err
    report = convert_external_checkpoint(src, dst, log=None)
    assert report['format'] == 'timm-checkpoint'
    assert report['info']['entry'] == 'state_dict'
    meta = _converted(dst)['meta']
    cls = _classifier(meta['model'], _converted(dst)['state_dict'])
    x = _images(2, 32).double()
    cls.double(), model.double()
    with torch.no_grad():
        _assert_logits_equal(model(x), cls(x, mode='tensor'), tol=1e-8)


def test_timm_hub_safetensors(tmp_path, capsys):
    """timm's Hugging Face hub weights are ``model.safetensors`` (bare timm
    state dicts): a timm ResNet-18 gets mmpretrain's standard config and
    timm's logits."""
    import timm
    from safetensors.torch import save_file
    model = randomize_(timm.create_model('resnet18'), seed=24).eval()
    src = str(tmp_path / 'model.safetensors')
    save_file(model.state_dict(), src, metadata={'format': 'pt'})
    dst = str(tmp_path / 'r18.pth')
    assert _tool().main([src, dst]) == 0
    assert 'torchvision-state-dict' in capsys.readouterr().out
    ckpt = _converted(dst)
    assert ckpt['meta']['config'] == R18_STANDARD
    cls = _classifier(_config_model(R18_STANDARD), ckpt['state_dict'])
    x = _images(2, IMG)
    with torch.no_grad():
        _assert_logits_equal(model(x), cls(x, mode='tensor'))


# ---------------------------------------------------------------------------
# the authors' ResNet-50: Lightning checkpoint, torchvision keys + BlurPool
# ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def blur_r50(tmp_path_factory):
    model = _tv_resnet(50, blur=True, seed=4)
    path = _save_lightning(model, tmp_path_factory.mktemp('r50') /
                           'resnet50_maxsup.ckpt')
    return path, model


def test_lightning_blurpool_resnet50(blur_r50, tmp_path, capsys):
    src, model = blur_r50
    dst = str(tmp_path / 'r50.pth')
    assert _tool().main([src, dst]) == 0
    out = capsys.readouterr().out
    assert 'lightning-checkpoint' in out and 'ResNet-50 with BlurPool' in out
    assert 'prefix "model." removed' in out
    ckpt = _converted(dst)
    assert ckpt['meta']['format'] == 'lightning-checkpoint'
    assert ckpt['meta']['config'] == R50_RELEASED
    assert ckpt['meta']['mmpretrain_type'] == 'ResNetBlurPool'
    assert ckpt['meta']['source_epoch'] == 89
    assert ckpt['state_dict']['backbone.layer2.0.conv2.blur_filter'].shape \
        == (128, 1, 3, 3)
    cls = _classifier(_config_model(R50_RELEASED), ckpt['state_dict'])
    x = _images(2, IMG)
    with torch.no_grad():
        want, got = model(x), cls(x, mode='tensor')
    _assert_logits_equal(want, got, tol=1e-5)
    # without the blur the same weights give other logits
    plain = _classifier(_config_model(R50_STANDARD), {
        k.replace('.conv.weight', '.weight'): v
        for k, v in ckpt['state_dict'].items()
        if not k.endswith('blur_filter')})
    with torch.no_grad():
        assert (plain(x, mode='tensor') - want).abs().max() > 1e-2

    # on to mmseg: the BlurPool UperNet config's backbone
    seg_dst = str(tmp_path / 'r50_mmseg.pth')
    convert_mmpretrain_to_mmseg(dst, seg_dst, config=UPERNET_R50_BLUR,
                                log=None)
    seg = seg_backbone(UPERNET_R50_BLUR)
    result = seg.load_state_dict(_converted(seg_dst)['state_dict'],
                                 strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        assert max_diff(_tv_features(model, x), seg(x)) < 1e-4
    # never onto a plain mmseg ResNet (the same weights without the blur)
    with pytest.raises(ConversionError, match='BlurPool ResNet .* is a '
                       'ResNet$'):
        convert_mmpretrain_to_mmseg(dst, str(tmp_path / 'x.pth'),
                                    config=UPERNET_R50, log=None)


@pytest.mark.slow
def test_released_resnet50_config_runs_in_tools_test(blur_r50, imagenet_root,
                                                     tmp_path, capfd):
    """convert -> tools/test.py with the released config, on generated
    ImageNet-layout JPEGs: the weights load completely and it evaluates."""
    import json
    src, _ = blur_r50
    dst = str(tmp_path / 'r50.pth')
    convert_external_checkpoint(src, dst, log=None)
    tool = load_tool('test.py')
    out, work = str(tmp_path / 'metrics.json'), str(tmp_path / 'work')
    tool.main([osp.join(ROOT, R50_RELEASED), dst, '--work-dir', work,
               '--out', out, '--cfg-options',
               f'test_dataloader.dataset.data_root={imagenet_root}',
               'test_dataloader.batch_size=8',
               'test_dataloader.num_workers=0'])
    metrics = json.load(open(out))
    assert 0 <= metrics['accuracy/top1'] <= 100
    printed = ''.join(capfd.readouterr())  # mmengine warns about a partial
    # load, never fails; test.py read the file before building the runner
    # and handed it over (maxsup-preloaded://), not read it twice
    assert f'Load checkpoint from maxsup-preloaded://{dst}' in printed
    assert 'do not match exactly' not in printed


@pytest.mark.slow
@pytest.mark.parametrize('fmt', ['lightning-checkpoint', 'deit-checkpoint'])
def test_test_tool_points_external_checkpoints_to_the_converter(
        fmt, tmp_path):
    """An unconverted Lightning / DeiT code base file: exactly one line,
    the converter's command with the format, before any runner is built
    (nothing else printed)."""
    import subprocess
    if fmt == 'lightning-checkpoint':
        src = _save_lightning(_tv_resnet(18, blur=True, seed=8,
                                         num_classes=10),
                              tmp_path / 'resnet50_maxsup.ckpt')
        config = R50_RELEASED
    else:
        src = str(tmp_path / 'checkpoint_deit.pth')
        torch.save({'model': _small_vit(8).state_dict(),
                    'model_ema': _small_vit(9).state_dict(),
                    'optimizer': {'state': {}, 'param_groups': []},
                    'epoch': 3, 'args': _deit_args()}, src)
        config = DEIT_RELEASED
    work = str(tmp_path / 'work')
    proc = subprocess.run(
        [sys.executable, 'tools/test.py', config, src, '--work-dir', work],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT))
    assert proc.returncode == 1
    assert proc.stdout == '' and proc.stderr.count('\n') == 1, \
        proc.stdout[-2000:] + proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert line.startswith(f'test.py: error: {src} is a {fmt} '), line
    assert ('python tools/model_converters/external2mmpretrain.py '
            f'{src} DST') in line
    assert '--non-strict' not in line
    assert not osp.exists(work)  # no runner was built


def test_bare_blurpool_resnet18_with_module_prefix(tmp_path):
    model = _tv_resnet(18, blur=True, seed=5, num_classes=10)
    src = str(tmp_path / 'r18.pth')
    torch.save({'module.' + k: v for k, v in model.state_dict().items()},
               src)
    dst = str(tmp_path / 'out.pth')
    report = convert_external_checkpoint(src, dst, log=None)
    assert report['format'] == 'torchvision-state-dict'
    assert report['architecture']['type'] == 'ResNetBlurPool'
    ckpt = _converted(dst)
    assert ckpt['meta']['config'] is None  # no released R18 config
    cls = _classifier(ckpt['meta']['model'], ckpt['state_dict'])
    x = _images(2, IMG)
    with torch.no_grad():
        _assert_logits_equal(model(x), cls(x, mode='tensor'))
    seg_dst = str(tmp_path / 'seg.pth')
    report = convert_mmpretrain_to_mmseg(dst, seg_dst, log=None)
    assert report['architecture']['type'] == 'ResNetBlurPool'
    seg = seg_backbone(UPERNET_R50_BLUR, depth=18)
    seg.load_state_dict(_converted(seg_dst)['state_dict'], strict=True)
    with torch.no_grad():
        assert max_diff(_tv_features(model, x), seg(x)) < 1e-4


def test_lightning_drops_tensors_outside_the_network(tmp_path, capsys):
    model = _tv_resnet(18, blur=True, seed=6, num_classes=10)
    extra = {'criterion.supervise': torch.eye(10),
             'criterion.idx_count': torch.zeros(10)}
    src = _save_lightning(model, tmp_path / 'ols.ckpt', extra)
    dst = str(tmp_path / 'out.pth')
    report = convert_external_checkpoint(src, dst)
    assert report['info']['dropped'] == list(extra)
    assert 'dropped 2 tensors of the LightningModule' in \
        capsys.readouterr().out
    assert _converted(dst)['meta']['dropped'] == list(extra)


def test_plain_torchvision_resnet18_uses_the_standard_config(tmp_path):
    model = _tv_resnet(18, blur=False, seed=7)
    src = str(tmp_path / 'resnet18.pth')
    torch.save(model.state_dict(), src)
    dst = str(tmp_path / 'out.pth')
    report = convert_external_checkpoint(src, dst, log=None)
    assert report['format'] == 'torchvision-state-dict'
    ckpt = _converted(dst)
    assert ckpt['meta']['config'] == R18_STANDARD
    assert ckpt['meta']['mmpretrain_type'] == 'ResNet'
    cls = _classifier(_config_model(R18_STANDARD), ckpt['state_dict'])
    x = _images(2, IMG)
    with torch.no_grad():
        _assert_logits_equal(model(x), cls(x, mode='tensor'))
    seg_dst = str(tmp_path / 'seg.pth')
    assert convert_mmpretrain_to_mmseg(dst, seg_dst, log=None)[
        'architecture']['type'] == 'ResNet'
    with pytest.raises(ConversionError, match='plain ResNet .* is a '
                       'ResNetBlurPool$'):
        convert_mmpretrain_to_mmseg(dst, str(tmp_path / 'x.pth'), log=None,
                                    config=UPERNET_R50_BLUR)


# ---------------------------------------------------------------------------
# refusals: one line, nothing written
# ---------------------------------------------------------------------------
def _refused(tool, capsys, src, dst, *extra):
    assert tool.main([src, dst, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('external2mmpretrain: error: ')
    assert '\n' not in err
    assert dst == src or not osp.exists(dst)
    assert not glob.glob(osp.join(osp.dirname(dst), '.*.tmp'))
    return err


def test_truncated_malicious_and_same_file(blur_r50, tmp_path, capsys):
    tool = _tool()
    src, _ = blur_r50
    dst = str(tmp_path / 'out.pth')
    data = open(src, 'rb').read()
    cut = tmp_path / 'cut.ckpt'
    cut.write_bytes(data[:len(data) // 2])
    assert 'truncated or corrupt' in _refused(tool, capsys, str(cut), dst)
    unsafe = str(tmp_path / 'unsafe.pth')
    marker = str(tmp_path / 'payload_ran')
    write_malicious_checkpoint(unsafe, marker, {'conv1.weight':
                                                torch.zeros(2, 3, 7, 7)})
    assert 'builtins.exec' in _refused(tool, capsys, unsafe, dst)
    assert not osp.exists(marker)
    assert 'same file' in _refused(tool, capsys, src, src)
    assert 'not found' in _refused(tool, capsys, str(tmp_path / 'no.pth'),
                                   dst)


def test_mismatched_architectures_are_refused(blur_r50, tmp_path, capsys):
    tool = _tool()
    src, _ = blur_r50
    dst = str(tmp_path / 'out.pth')
    # BlurPool weights into the plain ResNet-50 config, and the reverse
    err = _refused(tool, capsys, src, dst, '--config', R50_STANDARD)
    assert 'architecture mismatch' in err and 'BlurPool' in err
    plain = str(tmp_path / 'r18.pth')
    torch.save(_tv_resnet(18, blur=False, seed=8).state_dict(), plain)
    assert 'architecture mismatch' in _refused(
        tool, capsys, plain, dst, '--config', R50_RELEASED)
    # a ResNet-18 against the ResNet-50 config: keys and shapes differ
    err = _refused(tool, capsys, plain, dst, '--config', R50_STANDARD)
    assert 'strict loading would fail' in err and 'layer1.0.conv3' in err
    # a small ViT against DeiT-Small's config: shapes differ
    vit = str(tmp_path / 'vit.pth')
    torch.save(_small_vit(seed=9).state_dict(), vit)
    err = _refused(tool, capsys, vit, dst, '--config', DEIT_RELEASED)
    assert 'shape mismatches' in err
    # a ViT against a ResNet config
    err = _refused(tool, capsys, vit, dst, '--config', R50_STANDARD)
    assert 'architecture mismatch' in err and 'holds a ViT' in err
    # a wrong blur filter is not the network the keys suggest
    sd = _tv_resnet(18, blur=True, seed=10).state_dict()
    sd['layer3.0.conv1.blur_filter'] = torch.ones_like(
        sd['layer3.0.conv1.blur_filter']) / 9
    bad = str(tmp_path / 'box.pth')
    torch.save(sd, bad)
    assert 'layer3.0.conv1.blur_filter is not the BlurPool filter' in \
        _refused(tool, capsys, bad, dst)


def test_unknown_missing_and_non_finite_weights_are_refused(tmp_path,
                                                            capsys):
    tool = _tool()
    dst = str(tmp_path / 'out.pth')
    sd = _tv_resnet(18, blur=False, seed=11).state_dict()

    def save(name, obj):
        path = str(tmp_path / name)
        torch.save(obj, path)
        return path

    # a tensor no rule covers
    err = _refused(tool, capsys, save('extra.pth', dict(
        sd, **{'layer1.0.se.fc.weight': torch.zeros(4, 64)})), dst)
    assert 'no mmpretrain counterpart' in err and 'layer1.0.se.fc' in err
    # a tensor outside the network's prefix
    err = _refused(tool, capsys, save('outside.pth', dict(
        {'module.' + k: v for k, v in sd.items()},
        **{'ema.decay': torch.tensor(0.9)})), dst)
    assert 'outside the network' in err and 'ema.decay' in err
    # a truncated state dict: strict loading would miss a tensor
    missing = dict(sd)
    del missing['layer4.1.bn2.running_var']
    err = _refused(tool, capsys, save('missing.pth', missing), dst)
    assert 'missing in the checkpoint' in err and \
        'layer4.1.bn2.running_var' in err
    # timm ViT with layer scale (no mmpretrain counterpart in this mapping)
    vit = _small_vit(seed=12).state_dict()
    vit['blocks.0.ls1.gamma'] = torch.ones(128)
    assert 'blocks.0.ls1.gamma' in _refused(
        tool, capsys, save('ls.pth', vit), dst)
    # distilled DeiT, unknown weights, an optimizer file, an mmpretrain file
    vit = _small_vit(seed=12).state_dict()
    vit['dist_token'] = torch.zeros(1, 1, 128)
    assert 'distilled DeiT' in _refused(tool, capsys,
                                        save('dist.pth', vit), dst)
    assert 'unknown checkpoint' in _refused(tool, capsys, save(
        'swin.pth', {'layers.0.blocks.0.attn.qkv.weight': torch.zeros(3, 1)}),
        dst)
    assert 'no state dict found' in _refused(tool, capsys, save(
        'optim.pth', {'optimizer': {'lr': 0.1}}), dst)
    assert 'already an OpenMMLab checkpoint' in _refused(
        tool, capsys, save('mmpretrain.pth', {'state_dict': {
            'backbone.conv1.weight': torch.zeros(2, 3, 7, 7),
            'head.fc.weight': torch.zeros(2, 2)}, 'meta': {}}), dst)
    # NaN / inf weights name the tensors
    nan = dict(sd)
    nan['layer2.0.conv1.weight'] = sd['layer2.0.conv1.weight'].clone()
    nan['layer2.0.conv1.weight'][0, 0, 0, 0] = float('nan')
    nan['fc.bias'] = torch.full_like(sd['fc.bias'], float('inf'))
    err = _refused(tool, capsys, save('nan.pth', nan), dst)
    assert 'NaN or infinity' in err and 'layer2.0.conv1.weight' in err \
        and 'fc.bias' in err


def test_ema_needs_model_ema(deit_small, blur_r50, tmp_path, capsys):
    tool = _tool()
    dst = str(tmp_path / 'out.pth')
    vit = _small_vit(seed=13).state_dict()
    no_ema = str(tmp_path / 'no_ema.pth')
    torch.save({'model': vit, 'epoch': 3, 'args': _deit_args()}, no_ema)
    assert 'no EMA weights' in _refused(tool, capsys, no_ema, dst, '--ema')
    with pytest.raises(ConversionError, match='"model_ema" is missing'):
        convert_external_checkpoint(no_ema, dst, ema=True, log=None)
    none_ema = str(tmp_path / 'none_ema.pth')
    torch.save({'model': vit, 'model_ema': None, 'args': _deit_args()},
               none_ema)
    assert 'no EMA weights' in _refused(tool, capsys, none_ema, dst, '--ema')
    # without --ema the same file converts
    assert tool.main([no_ema, dst]) == 0
    capsys.readouterr()
    src, _ = blur_r50
    assert 'only DeiT code base ("model_ema") and timm train.py ' \
        '("state_dict_ema") checkpoints carry EMA weights' in \
        _refused(tool, capsys, src, str(tmp_path / 'r50.pth'), '--ema')


# ---------------------------------------------------------------------------
# the released configs' evaluation transforms
# ---------------------------------------------------------------------------
def _write_jpegs(folder):
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(451, 300), (333, 500), (640, 427),
                                (259, 256)]):
        # smooth content, so that interpolation differences would show
        base = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3),
                            dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        noise = rng.integers(-20, 20, (h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img) + noise, 0,
                                      255).astype(np.uint8))
        if i == 3:
            img = img.convert('L')  # a greyscale JPEG, as ImageNet has
        exif = Image.Exif()
        if i == 1:  # an EXIF rotation tag, which ImageFolder ignores
            exif[0x0112] = 6
        path = osp.join(folder, f'img{i}.JPEG')
        img.save(path, quality=90, exif=exif)
        paths.append(path)
    return paths


def _run_test_pipeline(config, path):
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope
    import mmpretrain.datasets  # noqa: F401
    import maxsup_mm.datasets  # noqa: F401  (FFCVCenterCrop)
    cfg = read_config(osp.join(ROOT, config))
    assert cfg.val_dataloader.dataset.pipeline == \
        cfg.test_dataloader.dataset.pipeline
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        pipeline = Compose(cfg.test_dataloader.dataset.pipeline)
        packed = pipeline(dict(img_path=path))
    img = packed['inputs'].numpy().transpose(1, 2, 0)  # HWC, BGR
    return np.ascontiguousarray(img[..., ::-1]), cfg


def test_deit_config_evaluates_like_the_deit_code_base(tmp_path):
    """DeiT's build_transform: Resize(int(224 / 0.875), bicubic) +
    CenterCrop(224) on PIL images from ImageFolder."""
    from PIL import Image
    from torchvision import transforms
    oracle = transforms.Compose([
        transforms.Resize(int(224 / 0.875),
                          interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224)])
    for path in _write_jpegs(str(tmp_path)):
        with open(path, 'rb') as f:
            want = np.asarray(oracle(Image.open(f).convert('RGB')))
        got, cfg = _run_test_pipeline(DEIT_RELEASED, path)
        assert got.shape == want.shape == (224, 224, 3)
        assert np.array_equal(got, want), path
    assert cfg.data_preprocessor.mean == [123.675, 116.28, 103.53]
    assert cfg.data_preprocessor.std == [58.395, 57.12, 57.375]
    assert cfg.data_preprocessor.to_rgb


def _ffcv_oracle(path, max_resolution=500, ratio=224 / 256, res=256):
    """FFCV: the writer's resizer, then CenterCropRGBImageDecoder
    (get_center_crop + resize_crop with cv2.INTER_AREA)."""
    import cv2
    from PIL import Image
    with open(path, 'rb') as f:
        image = np.asarray(Image.open(f).convert('RGB'))  # ImageFolder
    size = np.array([image.shape[1], image.shape[0]])
    scale = max_resolution / size.max()
    if scale < 1:
        image = cv2.resize(image, tuple((scale * size).astype(int)),
                           interpolation=cv2.INTER_AREA)
    height, width = image.shape[:2]
    side = int(ratio * min(height, width))
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top:top + side, left:left + side]
    return cv2.resize(crop, (res, res), interpolation=cv2.INTER_AREA)


def test_resnet50_config_evaluates_like_ffcv(tmp_path):
    for path in _write_jpegs(str(tmp_path)):
        got, cfg = _run_test_pipeline(R50_RELEASED, path)
        want = _ffcv_oracle(path)
        assert got.shape == want.shape == (256, 256, 3)
        assert np.array_equal(got, want), path
    assert cfg.data_preprocessor.mean == [123.675, 116.28, 103.53]
    assert cfg.data_preprocessor.std == [58.395, 57.12, 57.375]
    assert cfg.data_preprocessor.to_rgb
    # a centre crop of 224/256 of the shorter side, not a resize + crop
    from maxsup_mm.datasets.transforms import ffcv_center_crop_box
    assert ffcv_center_crop_box(375, 500, 224 / 256) == (23, 86, 328)


def test_blurpool_upernet_differs_from_the_r50_recipe_only_in_the_backbone():
    base = flatten(read_config(UPERNET_R50).to_dict())
    blur = flatten(read_config(UPERNET_R50_BLUR).to_dict())
    diff = {k for k in set(base) | set(blur) if base.get(k) != blur.get(k)}
    assert diff == {'model.backbone.type', 'model.pretrained',
                    'custom_imports.imports',
                    'custom_imports.allow_failed_imports'}
    assert blur['model.backbone.type'] == 'ResNetBlurPool'
    assert blur['model.backbone.strides'] == (1, 2, 2, 2)
