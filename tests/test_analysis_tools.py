"""The analysis tools end to end on tiny mmpretrain checkpoints.

A small CIFAR-stem ResNet-18 (derived from
``mmpretrain::resnet/resnet18_8xb32_in1k.py``) is trained for one epoch with
``tools/train.py`` on the generated ImageNet-layout data; every CLI in
``tools/analysis`` then runs on it and must write its figures and report.
The feature-extraction path is checked against mmpretrain's own
``predict`` / ``extract_feat``, and a tiny ViT checks the token path of
Grad-CAM.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from child_config import (CUSTOM_IMPORTS,  # tests/helpers
                          RESNET18_CIFAR_PLAIN, VIT_CFG, write_child_config)
from load_tool import load_tool  # tests/helpers

# every test trains a ResNet first and runs the analysis tools: slow
pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools', 'analysis')

#: the tests' 4-class CIFAR-stem ResNet-18, trained with MaxSup
RESNET_EXTRA = CUSTOM_IMPORTS + (
    "model = dict(head=dict(loss=dict(type='MaxSupLoss', alpha=0.1)))\n")


def _load_tool(name):
    return load_tool(f'analysis/{name}.py')


def _is_png(path):
    with Image.open(path) as im:
        return im.format == 'PNG' and min(im.size) > 50


@pytest.fixture(scope='session')
def resnet_run(imagenet_root, tmp_path_factory):
    """(config path, checkpoint) of a CIFAR-stem ResNet-18 trained 1 epoch."""
    work = tmp_path_factory.mktemp('analysis_resnet')
    cfg = write_child_config(work / 'tiny_resnet18_maxsup.py',
                             RESNET18_CIFAR_PLAIN, imagenet_root,
                             RESNET_EXTRA)
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
    # the script imports maxsup_mm as installed; PYTHONPATH makes that this
    # checkout (the package is installed editable from another one here)
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONPATH=ROOT)
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


# ---------------------------------------------------------------------------
# linear probe on a downstream dataset (--probe-config / probe_cfg)
# ---------------------------------------------------------------------------
#: an ImageNet-style model (BGR files, to_rgb=True) evaluated at 40 px, with
#: Mixup / CutMix and fewer classes (4) than CIFAR-10 has (10)
PROBE_MODEL_CFG = """
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=16,
                  base_channels=16),
    head=dict(num_classes=4, in_channels=128, topk=(1, ),
              loss=dict(type='MaxSupLoss', alpha=0.1)),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8),
                             dict(type='CutMix', alpha=1.0)]))
data_preprocessor = dict(num_classes=4)
test_pipeline = [dict(type='LoadImageFromFile'),
                 dict(type='ResizeEdge', scale=46, edge='short'),
                 dict(type='CenterCrop', crop_size=40),
                 dict(type='PackInputs')]
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root={root!r},
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
"""

#: mmpretrain's own CIFAR-10 dataset config (RGB arrays, 32 px)
CIFAR_CFG = """
_base_ = 'mmpretrain::_base_/datasets/cifar10_bs16.py'
train_dataloader = dict(num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={root!r}))
test_dataloader = dict(num_workers=0, persistent_workers=False,
                       dataset=dict(data_root={root!r}))
val_dataloader = test_dataloader
"""


@pytest.fixture
def cifar_probe(imagenet_root, tmp_path, monkeypatch):
    """(model config, random-weight checkpoint, CIFAR-10 config, root)."""
    from cifar_md5_off import switch_off_cifar10_md5
    from mmpretrain.datasets import CIFAR10

    from maxsup_mm.analysis import build_classifier
    from maxsup_mm.datasets import write_cifar10
    for attr in ('train_list', 'test_list', 'meta'):
        monkeypatch.setattr(CIFAR10, attr, getattr(CIFAR10, attr))
    switch_off_cifar10_md5()
    cifar = write_cifar10(str(tmp_path / 'cifar10'), per_class=(5, 2))
    cfg = tmp_path / 'probe_model.py'
    cfg.write_text(PROBE_MODEL_CFG.format(root=imagenet_root))
    data_cfg = tmp_path / 'cifar10.py'
    data_cfg.write_text(CIFAR_CFG.format(root=cifar))
    torch.manual_seed(0)
    model = build_classifier(str(cfg), None, 'cpu')
    model.init_weights()
    ckpt = tmp_path / 'probe_model.pth'
    torch.save({'state_dict': model.state_dict()}, str(ckpt))
    return str(cfg), str(ckpt), str(data_cfg), cifar


def _cifar_oracle(cfg, ckpt, cifar, files, size=40, swap=False):
    """Penultimate features of the CIFAR pickles: PIL bicubic resize of the
    RGB arrays, the model's (RGB) mean / std by hand, mmpretrain's own
    model (``get_model``) without its data preprocessor."""
    import pickle

    from mmpretrain.apis import get_model
    data, labels = [], []
    for name in files:
        with open(osp.join(cifar, 'cifar-10-batches-py', name), 'rb') as f:
            entry = pickle.load(f)
        data.append(entry['data'])
        labels += entry['labels']
    imgs = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    if swap:
        imgs = imgs[..., ::-1]
    x = torch.stack([torch.from_numpy(np.asarray(
        Image.fromarray(np.ascontiguousarray(im)).resize(
            (size, size), Image.BICUBIC), dtype=np.float32)).permute(2, 0, 1)
        for im in imgs])
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    model = get_model(cfg, pretrained=ckpt, device='cpu').eval()
    with torch.no_grad():
        feats = model.head.pre_logits(model.extract_feat((x - mean) / std))
    return feats.numpy(), np.asarray(labels)


def test_probe_on_a_downstream_dataset(cifar_probe, tmp_path):
    """``probe_cfg`` = mmpretrain's CIFAR-10 for an ImageNet-style model:
    RGB arrays fed in the model's channel order, resized to the model's
    input size (40), and no one-hot labels of the model's 4 classes (its
    Mixup / CutMix) for CIFAR's 10."""
    from maxsup_mm.analysis import compare, extract_features
    cfg, ckpt, data_cfg, cifar = cifar_probe
    for split, files in (('train', [f'data_batch_{i}' for i in
                                    range(1, 6)]), ('test', ['test_batch'])):
        got = extract_features(cfg, ckpt, split=split, data_cfg=data_cfg,
                               cache=False, progress=False, device='cpu')
        want, labels = _cifar_oracle(cfg, ckpt, cifar, files)
        order = np.argsort(got['indices'])
        np.testing.assert_array_equal(got['labels'][order], labels)
        np.testing.assert_allclose(got['features'][order], want, rtol=1e-4,
                                   atol=1e-4)
    # not trivially equal: the channel order matters to these features
    swapped, _ = _cifar_oracle(cfg, ckpt, cifar, ['test_batch'], swap=True)
    assert np.abs(swapped - want).max() > 1e-3
    result = compare([('MaxSup', cfg, ckpt)], str(tmp_path / 'out'),
                     analyses=['probe'], probe_cfg=data_cfg,
                     probe_test_split='test', device='cpu', progress=False,
                     cache_dir=str(tmp_path / 'cache'))
    probe = json.loads((tmp_path / 'out' / 'metrics.json').read_text())[0][
        'metrics']['probe']
    assert probe['num_train'] == 50 and probe['num_test'] == 20
    assert 0 <= probe['accuracy'] <= 1
    ours = result.runs[0].metrics['probe']
    assert (ours['accuracy'], ours['C']) == (probe['accuracy'], probe['C'])
    assert result.groups['MaxSup'].values['probe.accuracy'] == [
        probe['accuracy']]
    # the same through the command line (features from the cache)
    report = _load_tool('analyze').main(
        ['linear-probe', cfg, ckpt, '--probe-config', data_cfg,
         '--probe-test-split', 'test', '--out', str(tmp_path / 'cli'),
         '--device', 'cpu', '--quiet', '--cache-dir',
         str(tmp_path / 'cache')])
    text = open(report).read()
    assert f'`{data_cfg}`' in text and 'scored on `test`' in text
    cli = json.loads((tmp_path / 'cli' / 'metrics.json').read_text())[0]
    assert cli['metrics']['probe']['accuracy'] == probe['accuracy']


# ---------------------------------------------------------------------------
# one command-line entry; the per-analysis scripts are thin wrappers
# ---------------------------------------------------------------------------
def test_one_entry_and_thin_wrappers(resnet_run, tmp_path, capsys):
    import ast
    scripts = sorted(f for f in os.listdir(TOOLS) if f.endswith('.py'))
    assert 'analyze.py' in scripts and len(scripts) == 9
    for name in scripts:
        text = open(osp.join(TOOLS, name)).read()
        assert 'sys.path' not in text, name
        if name != 'analyze.py':   # the entry, one command, nothing else
            body = ast.parse(text).body
            assert len(body) == 4 and 'run_command(' in text, name
    analyze = _load_tool('analyze')
    with pytest.raises(SystemExit):
        analyze.main(['--help'])
    helptext = capsys.readouterr().out
    for command in analyze.COMMANDS:
        assert command in helptext
    cfg, ckpt = resnet_run
    report = analyze.main(
        ['calibration', cfg, ckpt, '--out', str(tmp_path / 'o'), '--name',
         'tiny', '--device', 'cpu', '--quiet', '--cache-dir',
         str(tmp_path / 'c')])
    assert report == str(tmp_path / 'o' / 'report.md')
    assert _is_png(tmp_path / 'o' / 'reliability_tiny.png')
    with pytest.raises(SystemExit) as exc:
        analyze.main(['calibration', cfg, str(tmp_path / 'none.pth'),
                      '--device', 'cpu', '--quiet'])
    message = str(exc.value.code)
    assert message.startswith('analyze.py calibration: error: ')
    assert 'none.pth' in message and '\n' not in message
