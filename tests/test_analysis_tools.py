"""The analysis tools end to end on tiny mmpretrain checkpoints.

A small CIFAR-stem ResNet-18 (derived from
``mmpretrain::resnet/resnet18_8xb32_in1k.py``) is trained for one epoch with
``tools/train.py`` on the generated ImageNet-layout data; every CLI in
``tools/analysis`` then runs on it and must write its figures and report.
The feature-extraction path is checked against mmpretrain's own
``predict`` / ``extract_feat``, and a tiny ViT checks the token path of
Grad-CAM.
"""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

# every test trains a ResNet first and runs the analysis tools: slow
pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools', 'analysis')

RESNET_CFG = """
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
data_root = {root!r}
model = dict(
    backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=16,
                  base_channels=16),
    head=dict(num_classes=4, in_channels=128, topk=(1, ),
              loss=dict(type='MaxSupLoss', alpha=0.1)))
data_preprocessor = dict(num_classes=4)
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=pipeline))
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=1)
optim_wrapper = dict(optimizer=dict(lr=0.05))
default_hooks = dict(logger=dict(interval=1))
"""

VIT_CFG = """
_base_ = 'mmpretrain::deit/deit-small_4xb256_in1k.py'
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
data_root = {root!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=2,
                            num_heads=2, feedforward_channels=64),
                  img_size=32, patch_size=8),
    head=dict(num_classes=4, in_channels=32),
    train_cfg=None)
data_preprocessor = dict(num_classes=4)
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = val_dataloader
"""


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(
        f'analysis_tool_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_png(path):
    with Image.open(path) as im:
        return im.format == 'PNG' and min(im.size) > 50


@pytest.fixture(scope='session')
def resnet_run(imagenet_root, tmp_path_factory):
    """(config path, checkpoint) of a CIFAR-stem ResNet-18 trained 1 epoch."""
    work = tmp_path_factory.mktemp('analysis_resnet')
    cfg = work / 'tiny_resnet18_maxsup.py'
    cfg.write_text(RESNET_CFG.format(root=imagenet_root))
    env = dict(os.environ, OMP_NUM_THREADS='2',
               PYTHONPATH=os.pathsep.join(
                   [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'train.py'), str(cfg),
         '--work-dir', str(work / 'train')],
        cwd=str(work), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = work / 'train' / 'epoch_1.pth'
    assert ckpt.is_file()
    return str(cfg), str(ckpt)


@pytest.fixture(scope='session')
def second_checkpoint(resnet_run, tmp_path_factory):
    """The same network with a halved classifier (a different 'method')."""
    _, ckpt = resnet_run
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    sd = state['state_dict']
    sd['head.fc.weight'] = sd['head.fc.weight'] * 0.5
    sd['head.fc.bias'] = sd['head.fc.bias'] * 0.5
    path = tmp_path_factory.mktemp('analysis_ls') / 'halved.pth'
    torch.save({'state_dict': sd}, str(path))
    return str(path)


def test_extraction_matches_mmpretrain(resnet_run, tmp_path):
    """Features / logits / labels against mmpretrain's own forward paths."""
    from mmengine.dataset import pseudo_collate

    from maxsup_mm.analysis import build_split_dataset, extract_features
    cfg, ckpt = resnet_run
    out = extract_features(cfg, ckpt, split='val', batch_size=5,
                           cache_dir=str(tmp_path), progress=False,
                           device='cpu')
    assert out['features'].shape == (16, 128)
    assert out['logits'].shape == (16, 4)
    np.testing.assert_array_equal(out['labels'], np.repeat(np.arange(4), 4))
    assert osp.isfile(out['cache_path'])

    # the oracle model: mmpretrain's own builder and checkpoint loader
    # (merges the config's data_preprocessor: mean / std, BGR -> RGB)
    from mmpretrain.apis import get_model
    model = get_model(cfg, pretrained=ckpt, device='cpu').eval()
    assert model.data_preprocessor.to_rgb
    dataset = build_split_dataset(cfg, 'val')
    data = model.data_preprocessor(
        pseudo_collate([dataset[i] for i in range(len(dataset))]), False)
    with torch.no_grad():
        preds = model.predict(data['inputs'], data['data_samples'])
        feats = model.head.pre_logits(model.extract_feat(data['inputs']))
    scores = np.stack([p.pred_score.numpy() for p in preds])
    probs = torch.softmax(torch.from_numpy(out['logits']), 1).numpy()
    np.testing.assert_allclose(probs, scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out['features'], feats.numpy(), rtol=1e-4,
                               atol=1e-6)
    gt = np.array([int(p.gt_label) for p in preds])
    np.testing.assert_array_equal(out['labels'], gt)
    np.testing.assert_allclose(out['weight'],
                               model.head.fc.weight.detach().numpy())

    # train split: all 32 images with the (deterministic) test pipeline
    tr = extract_features(cfg, ckpt, split='train', cache=False,
                          progress=False, device='cpu')
    assert tr['features'].shape == (32, 128)


def test_extraction_cache_is_reused(resnet_run, tmp_path, monkeypatch):
    from maxsup_mm.analysis import extraction
    cfg, ckpt = resnet_run
    first = extraction.extract_features(cfg, ckpt, cache_dir=str(tmp_path),
                                        progress=False, device='cpu')

    def no_model(*args, **kwargs):
        raise AssertionError('the cache should have been used')

    monkeypatch.setattr(extraction, 'build_classifier', no_model)
    again = extraction.extract_features(cfg, ckpt, cache_dir=str(tmp_path),
                                        progress=False)
    assert again['cache_path'] == first['cache_path']
    np.testing.assert_array_equal(again['features'], first['features'])
    assert again['classes'] == first['classes']
    # another split is another cache entry
    with pytest.raises(AssertionError, match='cache'):
        extraction.extract_features(cfg, ckpt, split='train',
                                    cache_dir=str(tmp_path), progress=False)


@pytest.mark.parametrize('tool,pngs,analyses', [
    ('class_separation', [], ['accuracy', 'separation']),
    ('linear_probe', [], ['probe']),
    ('logit_stats', ['logit_densities.png'], ['logits']),
    ('calibration', ['reliability.png'], ['accuracy', 'calibration']),
    ('feature_projection', ['projection_tiny.png'], ['projection']),
    ('gradcam', ['gradcam_grid.png', 'gradcam_tiny.png'], ['gradcam']),
])
def test_single_tools(resnet_run, tmp_path, tool, pngs, analyses):
    cfg, ckpt = resnet_run
    out = tmp_path / 'out'
    report = _load_tool(tool).main(
        [cfg, ckpt, '--out', str(out), '--name', 'tiny', '--device', 'cpu',
         '--cache-dir', str(tmp_path / 'cache'), '--quiet'])
    assert report == str(out / 'report.md') and osp.isfile(report)
    for png in pngs:
        assert _is_png(out / png), png
    metrics = json.loads((out / 'metrics.json').read_text())[0]['metrics']
    text = open(report).read()
    if 'separation' in analyses:
        sep = metrics['separation']['val']
        assert 0 <= sep['d_within'] <= 2 and sep['d_total'] > 0
        assert sep['r2'] == pytest.approx(1 - sep['d_within'] /
                                          sep['d_total'])
        assert 'Class separation' in text and 'R²' in text
    if 'probe' in analyses:
        assert 0 <= metrics['probe']['accuracy'] <= 1
        assert metrics['probe']['num_train'] == 32
        assert metrics['probe']['num_test'] == 16
    if 'calibration' in analyses:
        assert 0 <= metrics['ece'] <= 1 and 'ECE' in text
    if 'logits' in analyses:
        assert metrics['logits']['num_samples'] == 16
    if 'gradcam' in analyses:
        assert '![Grad-CAM](gradcam_grid.png)' in text


def test_compare_report_with_seeds(resnet_run, second_checkpoint, tmp_path):
    cfg, ckpt = resnet_run
    out = tmp_path / 'cmp'
    report = _load_tool('compare').main(
        [f'MaxSup={cfg}:{ckpt}', f'MaxSup={cfg}:{ckpt}',
         f'Halved={cfg}:{second_checkpoint}', '--out', str(out),
         '--device', 'cpu', '--cache-dir', str(tmp_path / 'cache'),
         '--train-split', 'train', '--num-images', '4', '--quiet'])
    text = open(report).read()
    for section in ('## Accuracy and calibration', '## Class separation',
                    '## Linear probe', '## Logit statistics',
                    '## Feature projection', '## Grad-CAM'):
        assert section in text, section
    # two runs named MaxSup are aggregated: mean ± std (here std = 0)
    assert '| MaxSup | 2 |' in text and '± 0.0000' in text
    assert '| Halved | 1 |' in text
    for png in ('logit_densities.png', 'reliability.png',
                'reliability_MaxSup.png', 'reliability_Halved.png',
                'projection_MaxSup.png', 'projection_Halved.png',
                'gradcam_grid.png', 'gradcam_MaxSup.png'):
        assert _is_png(out / png), png
        assert f']({png})' in text or png == 'reliability.png'
    metrics = json.loads((out / 'metrics.json').read_text())
    assert [m['name'] for m in metrics] == ['MaxSup', 'MaxSup', 'Halved']
    m0, m2 = metrics[0]['metrics'], metrics[2]['metrics']
    # halving the classifier halves every logit: same predictions and
    # features, smaller logits, different confidence
    assert m0['accuracy'] == m2['accuracy']
    for key in ('d_within', 'd_total', 'r2'):
        assert m0['separation']['val'][key] == pytest.approx(
            m2['separation']['val'][key], rel=1e-5)
    assert m2['logits']['range_mean'] == pytest.approx(
        m0['logits']['range_mean'] / 2, rel=1e-4)
    assert m0['ece'] != m2['ece']
    assert set(m0['separation']) == {'val', 'train'}


def test_compare_subprocess_and_bad_spec(resnet_run, tmp_path):
    from maxsup_mm.analysis import parse_run_spec
    spec = parse_run_spec('mmpretrain::resnet/resnet18_8xb32_in1k.py:a.pth')
    assert spec == ('resnet18_8xb32_in1k',
                    'mmpretrain::resnet/resnet18_8xb32_in1k.py', 'a.pth')
    assert parse_run_spec('LS=cfg/x.py:w/e.pth').name == 'LS'
    with pytest.raises(ValueError, match='CONFIG:CHECKPOINT'):
        parse_run_spec('just_a_config.py')
    cfg, ckpt = resnet_run
    env = dict(os.environ, OMP_NUM_THREADS='2')
    proc = subprocess.run(
        [sys.executable, osp.join(TOOLS, 'compare.py'), f'{cfg}:{ckpt}',
         '--out', str(tmp_path / 'r'), '--analyses', 'accuracy',
         'calibration', '--device', 'cpu', '--cache-dir',
         str(tmp_path / 'c')], env=env, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'report written to' in proc.stdout
    assert _is_png(tmp_path / 'r' / 'reliability.png')


def test_gradcam_on_vit(imagenet_root, tmp_path):
    """Token reshape path: a tiny ViT (class token) built from the DeiT
    config gives one map per image at input resolution."""
    from maxsup_mm.analysis import (build_classifier, default_target_layers,
                                    gradcam_for_checkpoint)
    cfg = tmp_path / 'tiny_vit.py'
    cfg.write_text(VIT_CFG.format(root=imagenet_root))
    torch.manual_seed(0)
    model = build_classifier(str(cfg), None, 'cpu')
    model.init_weights()
    ckpt = tmp_path / 'vit.pth'
    torch.save({'state_dict': model.state_dict()}, str(ckpt))
    layer = default_target_layers(model)[0]
    assert layer is model.backbone.layers[-1].ln1
    res = gradcam_for_checkpoint(str(cfg), str(ckpt), [0, 5, 10],
                                 device='cpu', target='pred')
    assert res['maps'].shape == (3, 32, 32)
    assert res['overlays'].shape == (3, 32, 32, 3)
    assert np.isfinite(res['maps']).all()
    assert res['maps'].max() <= 1 + 1e-6 and res['maps'].min() >= 0
    # the CLI on the same checkpoint
    report = _load_tool('gradcam').main(
        [str(cfg), str(ckpt), '--out', str(tmp_path / 'o'), '--device',
         'cpu', '--num-images', '3', '--quiet', '--cache-dir',
         str(tmp_path / 'c')])
    assert _is_png(tmp_path / 'o' / 'gradcam_grid.png') and osp.isfile(report)
