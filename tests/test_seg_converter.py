"""mmpretrain -> mmseg checkpoint conversion (tools/model_converters).

Oracles: the mmpretrain backbone itself (its features on the same input),
PyTorch's strict ``load_state_dict`` (no missing / unexpected keys) and
``F.interpolate`` for the resized position embedding.
"""
import glob
import os
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from maxsup_mm.converters import ConversionError, convert_mmpretrain_to_mmseg
from maxsup_mm.converters.mmpretrain2mmseg import read_config
from flat_dict import flatten  # tests/helpers
from load_tool import load_tool  # tests/helpers
from malicious import write_malicious_checkpoint  # tests/helpers
from random_weights import (max_diff, randomize_,  # tests/helpers
                            seg_backbone)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
UPERNET = osp.join(ROOT, 'configs', 'upernet')
DEIT_CFG = osp.join(UPERNET,
                    'upernet_deit-s16_ce-pre_8xb2-80k_ade20k-512x512.py')
R50_CFG = osp.join(UPERNET, 'upernet_r50_ce-pre_4xb4-80k_ade20k-512x512.py')
R50_V1C_BASE = 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'
IMG = 64  # DeiT pretraining resolution in these tests (4x4 patches)


# ---------------------------------------------------------------------------
# helpers: random mmpretrain classifiers saved as the Runner saves them
# ---------------------------------------------------------------------------
def _classifier(backbone, in_channels, neck=True):
    from mmpretrain.registry import MODELS
    import mmpretrain.models  # noqa: F401
    head = dict(type='mmpretrain.LinearClsHead', num_classes=10,
                in_channels=in_channels)
    if backbone['type'].endswith('VisionTransformer'):
        head['type'] = 'mmpretrain.VisionTransformerClsHead'
    return MODELS.build(dict(
        type='mmpretrain.ImageClassifier', backbone=backbone, head=head,
        neck=dict(type='mmpretrain.GlobalAveragePooling') if neck else None))


def _save(model, path):
    torch.save({'meta': {'mmpretrain_version': '1.2.0', 'epoch': 1},
                'state_dict': model.state_dict()}, path)
    return str(path)


DEIT_BACKBONE = dict(type='mmpretrain.VisionTransformer', arch='deit-small',
                     img_size=IMG, patch_size=16)


@pytest.fixture(scope='module')
def deit_ckpt(tmp_path_factory):
    model = _classifier(dict(DEIT_BACKBONE), 384, neck=False)
    randomize_(model.backbone, seed=1)
    path = _save(model, tmp_path_factory.mktemp('deit') / 'deit.pth')
    return path, model.backbone.state_dict()


@pytest.fixture(scope='module')
def resnet_ckpts(tmp_path_factory):
    out = {}
    for i, kind in enumerate(('ResNet', 'ResNetV1c', 'ResNetV1d')):
        model = _classifier(dict(type=f'mmpretrain.{kind}', depth=50), 2048)
        randomize_(model.backbone, seed=10 + i)
        path = _save(model, tmp_path_factory.mktemp(kind) / f'{kind}.pth')
        out[kind] = (path, model.backbone.state_dict())
    return out


def _mmpretrain_backbone(cfg, state_dict, out_indices, **extra):
    from mmpretrain.registry import MODELS
    model = MODELS.build(dict(cfg, out_indices=out_indices, **extra))
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return model


def _converted(path):
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    assert set(ckpt) == {'state_dict', 'meta'}
    return ckpt['state_dict']


# ---------------------------------------------------------------------------
# DeiT-Small
# ---------------------------------------------------------------------------
def test_deit_small_strict_load_and_same_features(deit_ckpt, tmp_path,
                                                  capsys):
    src, source_sd = deit_ckpt
    dst = str(tmp_path / 'deit_mmseg.pth')
    report = convert_mmpretrain_to_mmseg(src, dst)
    out = capsys.readouterr().out
    assert 'layers.0.attn.qkv.weight -> layers.0.attn.attn.in_proj_weight' \
        in out
    assert 'dropped 2 tensors: head (2)' in out
    state = _converted(dst)
    assert report['num_tensors'] == len(state) == len(source_sd)

    # the backbone of the Table 6 config (img_size = pretraining size here)
    seg = seg_backbone(DEIT_CFG, img_size=(IMG, IMG))
    result = seg.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    cls = _mmpretrain_backbone(dict(DEIT_BACKBONE), source_sd,
                               out_indices=list(seg.out_indices),
                               out_type='featmap')
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    # float64: the two attention implementations differ by ~5e-6 in float32
    # on these random weights; a wrong mapping differs by O(1)
    cls.double(), seg.double()
    with torch.no_grad():
        want, got = cls(x.double()), seg(x.double())
    assert len(got) == 4  # out_indices (2, 5, 8, 11) of the config
    assert max_diff(want, got) < 1e-5
    # not trivially equal: the four levels differ from each other
    assert (got[0] - got[3]).abs().max() > 1e-2


def test_deit_config_loads_converted_file(deit_ckpt, tmp_path):
    """model.pretrained of the config reaches the backbone, fully."""
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    src, source_sd = deit_ckpt
    dst = str(tmp_path / 'deit_mmseg.pth')
    convert_mmpretrain_to_mmseg(src, dst, config=DEIT_CFG, log=None)
    cfg = Config.fromfile(DEIT_CFG)
    cfg.model.pretrained = dst
    cfg.model.backbone.img_size = (128, 128)  # 8x8 grid, resized from 4x4
    cfg.model.type = 'mmseg.EncoderDecoder'
    model = MODELS.build(cfg.model)
    model.init_weights()
    loaded = model.backbone.state_dict()
    state = _converted(dst)
    assert set(loaded) == set(state)
    for key, value in state.items():
        if key != 'pos_embed':
            assert torch.equal(loaded[key], value), key
    pos = state['pos_embed']
    grid = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(8, 8), mode='bicubic',
                            align_corners=False)
    want = torch.cat([pos[:, :1], resized.flatten(2).transpose(1, 2)], 1)
    assert torch.allclose(loaded['pos_embed'], want, atol=1e-6)


def test_qkv_without_bias_gets_exact_zero_bias(tmp_path):
    model = _classifier(dict(DEIT_BACKBONE, qkv_bias=False), 384, neck=False)
    randomize_(model.backbone, seed=3)
    src = _save(model, tmp_path / 'nobias.pth')
    dst = str(tmp_path / 'out.pth')
    convert_mmpretrain_to_mmseg(src, dst, log=None)
    seg = seg_backbone(DEIT_CFG, img_size=(IMG, IMG))
    seg.load_state_dict(_converted(dst), strict=True)
    cls = _mmpretrain_backbone(dict(DEIT_BACKBONE, qkv_bias=False),
                               model.backbone.state_dict(),
                               out_indices=list(seg.out_indices),
                               out_type='featmap')
    x = torch.randn(1, 3, IMG, IMG, dtype=torch.float64)
    cls.double(), seg.double()
    with torch.no_grad():
        assert max_diff(cls(x), seg(x)) < 1e-5


# ---------------------------------------------------------------------------
# ResNet-50: plain (our R50 configs), V1c (mmseg's UperNet base), V1d
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('kind, config, overrides', [
    ('ResNet', R50_CFG, {}),
    ('ResNetV1c', R50_V1C_BASE, {}),
    ('ResNetV1c', R50_CFG, {'type': 'ResNetV1c'}),
    ('ResNetV1d', R50_V1C_BASE, {'type': 'ResNetV1d'}),
])
def test_resnet50_strict_load_and_same_features(resnet_ckpts, tmp_path, kind,
                                                config, overrides):
    src, source_sd = resnet_ckpts[kind]
    dst = str(tmp_path / 'r50_mmseg.pth')
    report = convert_mmpretrain_to_mmseg(src, dst, log=None)
    assert report['architecture']['type'] == kind
    state = _converted(dst)
    seg = seg_backbone(config, **overrides)
    result = seg.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    cls = _mmpretrain_backbone(dict(type=f'mmpretrain.{kind}', depth=50),
                               source_sd, out_indices=tuple(seg.out_indices))
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = cls(x), seg(x)
    assert len(got) == 4
    assert max_diff(want, got) < 1e-5


def test_r50_config_loads_converted_file(resnet_ckpts, tmp_path):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    src, _ = resnet_ckpts['ResNet']
    dst = str(tmp_path / 'r50_mmseg.pth')
    convert_mmpretrain_to_mmseg(src, dst, config=R50_CFG, log=None)
    cfg = Config.fromfile(R50_CFG)
    cfg.model.pretrained = dst
    cfg.model.type = 'mmseg.EncoderDecoder'
    model = MODELS.build(cfg.model)
    model.init_weights()
    loaded = model.backbone.state_dict()
    state = _converted(dst)
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


# ---------------------------------------------------------------------------
# refusals; DST is never partial
# ---------------------------------------------------------------------------
def _assert_nothing_written(folder, dst, before=None):
    if before is None:
        assert not osp.exists(dst)
    else:
        with open(dst, 'rb') as f:
            assert f.read() == before
    assert not glob.glob(osp.join(folder, '.*.tmp'))


@pytest.mark.parametrize('existing', [False, True])
def test_truncated_file_is_refused(deit_ckpt, tmp_path, existing):
    src, _ = deit_ckpt
    with open(src, 'rb') as f:
        data = f.read()
    bad = tmp_path / 'truncated.pth'
    bad.write_bytes(data[:len(data) // 2])
    dst = str(tmp_path / 'out.pth')
    before = None
    if existing:
        before = b'an older conversion'
        with open(dst, 'wb') as f:
            f.write(before)
    with pytest.raises(ConversionError, match='truncated or corrupt'):
        convert_mmpretrain_to_mmseg(str(bad), dst, log=None)
    _assert_nothing_written(str(tmp_path), dst, before)


def test_non_classification_checkpoints_are_refused(tmp_path):
    dst = str(tmp_path / 'out.pth')
    seg = tmp_path / 'seg.pth'
    torch.save({'state_dict': {'backbone.cls_token': torch.zeros(1, 1, 8),
                               'decode_head.conv_seg.weight':
                               torch.zeros(3, 8, 1, 1)}}, seg)
    with pytest.raises(ConversionError, match='mmsegmentation checkpoint'):
        convert_mmpretrain_to_mmseg(str(seg), dst, log=None)
    headless = tmp_path / 'headless.pth'
    torch.save({'state_dict': {'backbone.conv1.weight':
                               torch.zeros(8, 3, 7, 7)}}, headless)
    with pytest.raises(ConversionError, match='no "head'):
        convert_mmpretrain_to_mmseg(str(headless), dst, log=None)
    other = tmp_path / 'optim.pth'
    torch.save({'optimizer': {'lr': 0.1}}, other)
    with pytest.raises(ConversionError, match='not a model checkpoint'):
        convert_mmpretrain_to_mmseg(str(other), dst, log=None)
    unsafe = tmp_path / 'unsafe.pth'
    marker = str(tmp_path / 'payload_ran')
    write_malicious_checkpoint(str(unsafe), marker)
    with pytest.raises(ConversionError, match='refused: it needs builtins.exec'):
        convert_mmpretrain_to_mmseg(str(unsafe), dst, log=None)
    assert not osp.exists(marker)
    _assert_nothing_written(str(tmp_path), dst)


def test_unknown_and_mismatched_architectures_are_refused(
        deit_ckpt, resnet_ckpts, tmp_path):
    dst = str(tmp_path / 'out.pth')
    src, _ = deit_ckpt
    # a ViT checkpoint against the ResNet-50 UperNet config
    with pytest.raises(ConversionError, match='architecture mismatch'):
        convert_mmpretrain_to_mmseg(src, dst, config=R50_CFG, log=None)
    # DeiT-Small (384 wide) against mmseg's ViT-B UperNet backbone
    with pytest.raises(ConversionError, match='shape mismatches'):
        convert_mmpretrain_to_mmseg(
            src, dst, log=None, config='mmseg::vit/'
            'vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py')
    # mmseg's own DeiT-S config: no patch bias / final norm -> say so
    with pytest.raises(ConversionError, match='patch_bias=True'):
        convert_mmpretrain_to_mmseg(
            src, dst, log=None,
            config='mmseg::vit/'
            'vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py')
    # a plain ResNet-50 against the deep-stem (V1c) base config
    r50, _ = resnet_ckpts['ResNet']
    with pytest.raises(ConversionError, match='missing in the checkpoint'):
        convert_mmpretrain_to_mmseg(r50, dst, config=R50_V1C_BASE, log=None)
    # an architecture the converter does not know (a Swin-like backbone)
    swin = tmp_path / 'swin.pth'
    torch.save({'state_dict': {
        'backbone.patch_embed.projection.weight': torch.zeros(8, 3, 4, 4),
        'backbone.stages.0.blocks.0.attn.w_msa.qkv.weight':
        torch.zeros(24, 8),
        'head.fc.weight': torch.zeros(10, 8)}}, swin)
    with pytest.raises(ConversionError, match='unknown architecture'):
        convert_mmpretrain_to_mmseg(str(swin), dst, log=None)
    # a ViT with a tensor no rule covers (layer scale)
    model = _classifier(dict(DEIT_BACKBONE, layer_scale_init_value=0.1), 384,
                        neck=False)
    scaled = _save(model, tmp_path / 'layer_scale.pth')
    with pytest.raises(ConversionError, match='no mmseg counterpart'):
        convert_mmpretrain_to_mmseg(scaled, dst, log=None)
    _assert_nothing_written(str(tmp_path), dst)


def test_failure_while_writing_leaves_no_partial_dst(deit_ckpt, tmp_path,
                                                     monkeypatch):
    src, _ = deit_ckpt
    dst = str(tmp_path / 'out.pth')
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(OSError, match='disk full'):
        convert_mmpretrain_to_mmseg(src, dst, log=None)
    _assert_nothing_written(str(tmp_path), dst)
    with pytest.raises(ConversionError, match='same file'):
        convert_mmpretrain_to_mmseg(src, src, log=None)


def test_command_line(deit_ckpt, tmp_path, capsys):
    tool = load_tool('model_converters/mmpretrain2mmseg.py')
    src, _ = deit_ckpt
    dst = str(tmp_path / 'cli.pth')
    assert tool.main([src, dst, '--config', DEIT_CFG]) == 0
    out = capsys.readouterr().out
    assert 'renamed' in out and 'resized to (1, 1025, 384)' in out
    assert osp.isfile(dst)
    os.remove(dst)
    assert tool.main([src, dst, '--config', R50_CFG]) == 1
    assert 'architecture mismatch' in capsys.readouterr().err
    assert not osp.exists(dst)


# ---------------------------------------------------------------------------
# the configs: Table 6 siblings differ only in the pretrained checkpoint
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('family', ['deit-s16', 'r50'])
def test_upernet_siblings_differ_only_in_the_checkpoint(family):
    paths = sorted(p for p in glob.glob(osp.join(
        UPERNET, f'upernet_{family}_*-pre_*.py')) if '-loss_' not in p)
    names = [osp.basename(p).split('_')[2] for p in paths]
    assert names == ['ce-pre', 'ls-pre', 'maxsup-pre']
    flat = [flatten(read_config(p).to_dict()) for p in paths]
    for method, cfg in zip(('ce', 'ls', 'maxsup'), flat):
        assert cfg['model.pretrained'].endswith(f'_{method}_mmseg.pth')
        assert cfg['model.decode_head.loss_decode.type'] == 'CrossEntropyLoss'
        assert 'tta_model.type' in cfg and cfg['train_cfg.max_iters'] == 80000
        diff = {k for k in set(cfg) | set(flat[0])
                if cfg.get(k) != flat[0].get(k)}
        assert diff <= {'model.pretrained'}, diff
    backbone = flat[0]
    if family == 'deit-s16':
        assert backbone['model.backbone.patch_bias'] is True
        assert backbone['model.backbone.final_norm'] is True
        assert backbone['model.backbone.embed_dims'] == 384
        assert backbone['train_dataloader.batch_size'] == 2
    else:
        assert backbone['model.backbone.type'] == 'ResNet'
        assert backbone['model.backbone.depth'] == 50


def test_maxsup_loss_config():
    path = osp.join(UPERNET, 'upernet_deit-s16_maxsup-pre_maxsup-loss_'
                    '8xb2-80k_ade20k-512x512.py')
    cfg = read_config(path)
    assert cfg.model.decode_head.loss_decode == dict(
        type='MaxSupLoss', alpha=0.1, avg_non_ignore=False, loss_weight=1.0,
        loss_name='loss_maxsup')
    assert cfg.model.auxiliary_head.loss_decode.type == 'CrossEntropyLoss'
    assert cfg.model.pretrained.endswith('_maxsup_mmseg.pth')
    assert 'maxsup_mm' in cfg.custom_imports.imports


# ---------------------------------------------------------------------------
# issue 13 item 7: non-finite weights; item 17: messages that suggest the fix
# ---------------------------------------------------------------------------
def test_non_finite_weights_are_refused(deit_ckpt, tmp_path, capsys):
    src, _ = deit_ckpt
    ckpt = torch.load(src, weights_only=True)
    sd = dict(ckpt['state_dict'])
    qkv = 'backbone.layers.3.attn.qkv.weight'
    sd[qkv] = sd[qkv].clone()
    sd[qkv][5, 7] = float('nan')
    sd['head.layers.head.bias'] = torch.full_like(sd['head.layers.head.bias'],
                                                  float('-inf'))
    bad = str(tmp_path / 'diverged.pth')
    torch.save(dict(ckpt, state_dict=sd), bad)
    dst = str(tmp_path / 'out.pth')
    with pytest.raises(ConversionError, match=r'2 tensor\(s\) hold NaN or '
                       rf'infinity .*: {qkv}, head.layers.head.bias'):
        convert_mmpretrain_to_mmseg(bad, dst, log=None)
    tool = load_tool('model_converters/mmpretrain2mmseg.py')
    assert tool.main([bad, dst]) == 1
    assert qkv in capsys.readouterr().err
    _assert_nothing_written(str(tmp_path), dst)


def _hint(src, dst, config=None):
    with pytest.raises(ConversionError) as err:
        convert_mmpretrain_to_mmseg(src, dst, config=config, log=None)
    hints = [line for line in str(err.value).splitlines()
             if line.strip().startswith('hint:')]
    assert hints, str(err.value)
    return ' '.join(hints)


def test_mismatch_messages_suggest_the_fix(deit_ckpt, resnet_ckpts,
                                           tmp_path):
    dst = str(tmp_path / 'out.pth')
    # a CIFAR-stem ResNet: only mmpretrain's ResNet_CIFAR has that stem
    cifar = _classifier(dict(type='mmpretrain.ResNet_CIFAR', depth=18,
                             stem_channels=16, base_channels=16), 128)
    src = _save(cifar, tmp_path / 'cifar.pth')
    hint = _hint(src, dst)
    assert "type='mmpretrain.ResNet_CIFAR', depth=18, stem_channels=16, " \
        'base_channels=16' in hint
    assert 'upernet_resnet18-tiny_1xb8-digit-scenes-32x32.py' in hint
    # ... and with that config it converts
    quickstart = osp.join(ROOT, 'configs', 'quickstart',
                          'upernet_resnet18-tiny_1xb8-digit-scenes-32x32.py')
    convert_mmpretrain_to_mmseg(src, dst, config=quickstart, log=None)
    os.remove(dst)
    # deep stem (ResNetV1c) into a plain-stem config, and the reverse
    v1c, _ = resnet_ckpts['ResNetV1c']
    assert "model.backbone.type='ResNetV1c'" in _hint(v1c, dst, R50_CFG)
    r50, _ = resnet_ckpts['ResNet']
    assert "model.backbone.type='ResNet'" in _hint(r50, dst, R50_V1C_BASE)
    # another depth
    r101 = tmp_path / 'r101.py'
    r101.write_text(f'_base_ = {R50_CFG!r}\n'
                    'model = dict(backbone=dict(depth=101))\n')
    assert 'depth=50' in _hint(r50, dst, str(r101))
    # DeiT-Small into mmseg's ViT-B: name the architecture and its config
    src, _ = deit_ckpt
    hint = _hint(src, dst, 'mmseg::vit/'
                 'vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py')
    assert 'DeiT-Small' in hint and 'embed_dims=384' in hint
    assert 'upernet_deit-s16_ce-pre_8xb2-80k_ade20k-512x512.py' in hint
    _assert_nothing_written(str(tmp_path), dst)
