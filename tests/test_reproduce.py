"""``tools/reproduce.py`` end to end: every table's pipeline on generated data
(ImageNet-layout JPEGs, CIFAR-10 pickle batches) with random weights in each
checkpoint format the tool reads.

Oracles, independent of the code under test: the source architectures (timm
ViT, torchvision ResNet-18) run on images decoded with PIL and normalised by
hand (top-1, the penultimate features, and from them ``class_separation``);
CIFAR-10 read from the pickles and resized with PIL for the probe features;
the paper's numbers as printed in the paper (and the authors' README for
Table 3).
"""
import json
import os.path as osp
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from cifar_md5_off import switch_off_cifar10_md5  # tests/helpers
from load_tool import load_tool  # tests/helpers
from malicious import write_malicious_checkpoint  # tests/helpers
from maxsup_mm.analysis import class_separation, linear_probe
from maxsup_mm.checkpoint import load_checkpoint
from maxsup_mm.converters import convert_external_checkpoint
from test_external_checkpoints import (_deit_args, _save_lightning,
                                       _small_vit, _tv_resnet)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'reproduce.py')
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
R18_SIZE = 40  # the ResNet-18 configs' input size (CIFAR 32 -> 40)

VIT_CFG = f"""
_base_ = '{ROOT}/configs/released/deit-small_official_in1k.py'
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=128, num_layers=2,
                            num_heads=2, feedforward_channels=512),
                  img_size=32, patch_size=8),
    head=dict(num_classes=4, in_channels=128))
data_preprocessor = dict(num_classes=4)
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow',
         color_type='color_ignore_orientation'),
    dict(type='ResizeEdge', scale=32, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=8, num_workers=0)
val_dataloader = dict(batch_size=8, num_workers=0,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
"""

R18_CFG = f"""
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
model = dict(head=dict(num_classes=4))
data_preprocessor = dict(num_classes=4)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=46, edge='short'),
    dict(type='CenterCrop', crop_size={R18_SIZE}),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
"""

R18_BLUR_CFG = f"""
_base_ = '{ROOT}/configs/released/resnet50-blurpool_official_in1k.py'
model = dict(backbone=dict(depth=18),
             head=dict(num_classes=4, in_channels=512))
data_preprocessor = dict(num_classes=4)
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow',
         color_type='color_ignore_orientation'),
    dict(type='FFCVCenterCrop', scale={R18_SIZE}, crop_ratio=224 / 256,
         max_resolution=500, interpolation='area'),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
"""

# an UperNet for ResNet-18 backbones (8 GPUs x 2 images in its name)
UPERNET_R18_CFG = f"""
_base_ = '{ROOT}/configs/upernet/upernet_r50_ce-pre_4xb4-80k_ade20k-512x512.py'
model = dict(backbone=dict(depth=18),
             decode_head=dict(in_channels=[64, 128, 256, 512]),
             auxiliary_head=dict(in_channels=256))
"""


def _write(path, text):
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


@pytest.fixture(scope='module')
def world(tmp_path_factory, imagenet_root):
    """Configs, CIFAR-10 and one checkpoint per format, random weights."""
    from maxsup_mm.datasets import write_cifar10
    tmp = tmp_path_factory.mktemp('reproduce')
    w = dict(imagenet=imagenet_root, tmp=tmp,
             cifar=write_cifar10(str(tmp / 'cifar10'), per_class=(5, 2)),
             vit_cfg=_write(tmp / 'vit.py', VIT_CFG),
             r18_cfg=_write(tmp / 'r18.py', R18_CFG),
             blur_cfg=_write(tmp / 'r18_blur.py', R18_BLUR_CFG),
             seg_cfg=_write(tmp / 'upernet_r18_8xb2-80k_ade20k.py',
                            UPERNET_R18_CFG))
    # DeiT code base checkpoint (timm ViT)
    vit = _small_vit(seed=11, num_classes=4)
    w['vit'] = vit
    w['deit'] = str(tmp / 'checkpoint_deit.pth')
    torch.save({'model': vit.state_dict(),
                'model_ema': _small_vit(seed=12, num_classes=4).state_dict(),
                'optimizer': {'state': {}, 'param_groups': [{'lr': 5e-4}]},
                'epoch': 299, 'args': _deit_args()}, w['deit'])
    # bare timm state dict
    w['timm'] = str(tmp / 'vit_timm.pth')
    torch.save(_small_vit(seed=13, num_classes=4).state_dict(), w['timm'])
    # Lightning checkpoint of a BlurPool ResNet-18 (the authors' format)
    w['lightning'] = _save_lightning(
        _tv_resnet(18, blur=True, seed=14, num_classes=4),
        tmp / 'r18_blur.ckpt')
    # bare torchvision state dict under "module."
    r18 = _tv_resnet(18, blur=False, seed=15, num_classes=4)
    w['r18'] = r18
    w['torchvision'] = str(tmp / 'r18.pth')
    torch.save({'module.' + k: v for k, v in r18.state_dict().items()},
               w['torchvision'])
    # an mmpretrain checkpoint
    w['mmpretrain'] = str(tmp / 'r18_mmpretrain.pth')
    convert_external_checkpoint(_save_tv(tmp, 16), w['mmpretrain'],
                                config=w['r18_cfg'], log=None)
    return w


def _save_tv(tmp, seed):
    path = str(tmp / f'r18_{seed}.pth')
    torch.save(_tv_resnet(18, blur=False, seed=seed,
                          num_classes=4).state_dict(), path)
    return path


def _tool():
    return load_tool('reproduce.py')


def _common(w, work):
    return ['--imagenet-root', w['imagenet'], '--cifar10-root', w['cifar'],
            '--work-dir', str(work), '--device', 'cpu', '--num-workers',
            '0', '--batch-size', '8', '--max-train-samples', '20']


@pytest.fixture(scope='module')
def full_run(world):
    """Every table, five runs (one per format), as a subprocess."""
    w = world
    work = w['tmp'] / 'work'
    cmd = [sys.executable, osp.join(ROOT, 'tests', 'helpers',
                                    'cifar_md5_off.py'), TOOL,
           '--tables', '2', '3', '4', '5', '6', '9',
           '--run', f'maxsup={w["deit"]}:{w["vit_cfg"]}',
           '--run', f'ls={w["lightning"]}:{w["blur_cfg"]}',
           '--run', f'baseline={w["torchvision"]}:{w["r18_cfg"]}',
           '--run', f'mine={w["timm"]}:{w["vit_cfg"]}',
           '--run', f'ols-s0={w["mmpretrain"]}',
           '--config', w['r18_cfg']] + _common(w, work)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env=dict(__import__('os').environ,
                                   OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(work / 'report.json'))
    return work, report, proc.stdout, open(work / 'report.md').read()


def _rows(report, section):
    return {r['name']: r for r in report['sections'][section]['rows']}


def _val_images(root, split='val'):
    """ImageNet val (or train) as the oracle reads it: PIL, RGB, labels from
    meta."""
    from PIL import Image
    imgs, labels = [], []
    for line in open(osp.join(root, 'meta', f'{split}.txt')).read().split(
            '\n'):
        if line:
            name, label = line.split()
            img = np.asarray(Image.open(osp.join(root, split, name))
                             .convert('RGB'), dtype=np.float32)
            imgs.append(torch.from_numpy(img).permute(2, 0, 1))
            labels.append(int(label))
    return (torch.stack(imgs) - MEAN) / STD, np.asarray(labels)


@pytest.mark.slow
def test_every_format_is_detected_and_converted_once(full_run):
    work, report, stdout, _ = full_run
    rows = _rows(report, 'top1')
    assert {n: r['format'] for n, r in rows.items()} == {
        'maxsup': 'deit-checkpoint', 'ls': 'lightning-checkpoint',
        'baseline': 'torchvision-state-dict', 'mine': 'timm-state-dict',
        'ols-s0': 'mmpretrain'}
    assert rows['ols-s0']['checkpoint'].endswith('r18_mmpretrain.pth')
    # converted files: named after the run, keyed by what was converted
    assert re.fullmatch(re.escape(str(work / 'checkpoints' / 'maxsup-'))
                        + '[0-9a-f]{12}\\.pth', rows['maxsup']['checkpoint'])
    assert len({r['checkpoint'] for r in rows.values()}) == 5
    # one conversion per external file, one feature pass per split
    assert stdout.count('[external2mmpretrain]') >= 4
    assert stdout.count('converting') >= 4
    assert rows['ls']['architecture'] == 'ResNet-18 + BlurPool'


@pytest.mark.slow
def test_top1_and_val_geometry_equal_a_direct_forward(full_run, world):
    """Tables 4/5 and 2/9 (val) against timm's ViT on PIL-decoded images."""
    _, report, _, _ = full_run
    x, labels = _val_images(world['imagenet'])
    vit = world['vit']
    with torch.no_grad():
        feats = vit.forward_head(vit.forward_features(x), pre_logits=True)
        logits = vit.head(feats)
    top1 = float((logits.argmax(1).numpy() == labels).mean() * 100)
    ours = _rows(report, 'top1')['maxsup']
    assert ours['top1'] == pytest.approx(top1, abs=1e-9)
    assert ours['num_images'] == len(labels) == 16
    # Tables 2/9 by default: Kornblith et al.'s formula, self-pairs included
    sep = class_separation(feats.numpy(), labels, include_self=True)
    geo = _rows(report, 'geometry')['maxsup']
    for key in ('d_within', 'd_total', 'r2'):
        assert geo['val'][key] == pytest.approx(sep[key], rel=1e-5)
    assert 0 < geo['val']['d_within'] < geo['val']['d_total']
    # the train split: a random subset of --max-train-samples images
    assert geo['train']['num_samples'] == 20
    assert geo['train']['d_within'] != geo['val']['d_within']


@pytest.mark.slow
def test_report_has_the_papers_numbers_and_ours(full_run):
    _, report, stdout, md = full_run
    top1 = _rows(report, 'top1')
    # ResNet-18 runs: Table 4's ResNet-18 column, by method name
    assert top1['baseline']['paper'] == [69.09, 0.12]
    assert top1['ls']['paper'] == [69.54, 0.15]
    assert top1['ols-s0']['paper'] == [69.45, 0.15]
    assert top1['ols-s0']['paper_source'] == 'Table 4, ResNet-18'
    # no paper number: a ViT that is not DeiT-Small, an unknown name
    assert top1['maxsup']['paper'] is None
    assert top1['mine']['method'] is None and top1['mine']['paper'] is None
    for text in ('69.09 ± 0.12', '69.54 ± 0.15', '| ols-s0 | OLS |'):
        assert text in md
    geo = _rows(report, 'geometry')
    assert geo['ls']['paper']['d_within'] == [0.2632, 0.2543]
    assert geo['maxsup']['paper']['r2'] == [0.5188, 0.4972]
    assert geo['mine']['paper'] is None
    assert '| ls | Label Smoothing | ResNet-18 + BlurPool (paper: ' \
        'ResNet-50) | train | 20 |' in md
    for text in ('0.2632', '0.2543', '0.4862', '0.5188', '0.4972'):
        assert text in md
    probe = _rows(report, 'probe')
    assert probe['baseline']['paper'] == 81.43
    assert probe['ls']['paper'] == 74.58
    assert probe['maxsup']['paper'] == 81.02
    for name, row in probe.items():
        assert row['num_train'] == 50 and row['num_test'] == 20
        assert 0 <= row['accuracy'] <= 100
        assert f'{row["accuracy"]:.2f}' in md
    assert probe['baseline']['input_size'] == [R18_SIZE, R18_SIZE]
    assert probe['maxsup']['input_size'] == [32, 32]
    seg = _rows(report, 'segmentation')
    assert seg['maxsup']['paper'] == 42.8 and seg['baseline']['paper'] == 42.1
    # no UperNet config for these backbones: converted, and told so
    assert seg['ls']['mmseg_backbone'] == 'ResNetBlurPool'
    assert seg['maxsup']['mmseg_backbone'] == 'VisionTransformer'
    assert seg['maxsup']['commands'] is None
    assert 'has no UperNet config for this backbone' in md
    for name in seg:
        assert osp.isfile(seg[name]['mmseg_checkpoint'])
    # every section says which command made it; our numbers are printed too
    for section in report['sections'].values():
        assert '--tables 2 3 4 5 6 9' in section['command']
    assert '## Tables 4 and 5' in stdout and '## Table 6' in stdout
    for title in ('## Runs', '## Tables 4 and 5', '## Tables 2 and 9',
                  '## Table 3', '## Table 6'):
        assert title in md


@pytest.mark.slow
def test_probe_features_are_cifar10_resized_and_normalised(world, tmp_path,
                                                           monkeypatch):
    """Table 3's features: mmpretrain's CIFAR10 -> resize -> the model's
    normalisation, against PIL on the pickled arrays + torchvision."""
    from PIL import Image
    from mmpretrain.datasets import CIFAR10
    monkeypatch.setattr(CIFAR10, 'train_list', CIFAR10.train_list)
    monkeypatch.setattr(CIFAR10, 'test_list', CIFAR10.test_list)
    monkeypatch.setattr(CIFAR10, 'meta', CIFAR10.meta)
    switch_off_cifar10_md5()
    from tools.paper import pipelines
    from tools.paper.runs import (describe_model, load_config, parse_run,
                                  prepare_checkpoint)
    run = parse_run(f'baseline={world["torchvision"]}:{world["r18_cfg"]}')
    prepare_checkpoint(run, str(tmp_path), log=lambda m: None)
    run.cfg = load_config(run.config)
    run.arch, run.arch_label, run.backbone_type, run.depth = \
        describe_model(run.cfg)
    features = pipelines.Features(str(tmp_path), device='cpu',
                                  batch_size=16, log=lambda m: None)
    row = pipelines.probe_row(run, features, world['cifar'],
                              log=lambda m: None)

    r18 = world['r18']

    def oracle(batch_files):
        data, labels = [], []
        for name in batch_files:
            with open(osp.join(world['cifar'], 'cifar-10-batches-py',
                               name), 'rb') as f:
                entry = pickle.load(f)
            data.append(entry['data'])
            labels += entry['labels']
        imgs = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(
            0, 2, 3, 1)
        x = torch.stack([torch.from_numpy(np.asarray(
            Image.fromarray(im).resize((R18_SIZE, R18_SIZE),
                                       Image.BICUBIC),
            dtype=np.float32)).permute(2, 0, 1) for im in imgs])
        x = (x - MEAN) / STD
        with torch.no_grad():
            f = r18.avgpool(r18.layer4(r18.layer3(r18.layer2(r18.layer1(
                r18.maxpool(r18.relu(r18.bn1(r18.conv1(x)))))))))
        return f.flatten(1).numpy(), np.asarray(labels)

    want_tr = oracle([f'data_batch_{i}' for i in range(1, 6)])
    want_te = oracle(['test_batch'])
    for split, (want_f, want_l) in (('train', want_tr), ('test', want_te)):
        got = features.memo[('baseline', 'CIFAR-10', split)]
        order = np.argsort(got['indices'])
        np.testing.assert_array_equal(got['labels'][order], want_l)
        np.testing.assert_allclose(got['features'][order], want_f,
                                   rtol=1e-4, atol=1e-4)
    # not trivially equal: the channel order matters to these features
    assert np.abs(want_tr[0] - oracle_bgr(r18, world)).max() > 1e-3
    probe = linear_probe(want_tr[0], want_tr[1], want_te[0], want_te[1])
    assert row['accuracy'] == pytest.approx(probe['accuracy'] * 100)
    assert row['num_train'] == 50 and row['num_test'] == 20


def oracle_bgr(r18, world):
    """The train features with the channels swapped (a wrong pipeline)."""
    from PIL import Image
    data = []
    for i in range(1, 6):
        with open(osp.join(world['cifar'], 'cifar-10-batches-py',
                           f'data_batch_{i}'), 'rb') as f:
            data.append(pickle.load(f)['data'])
    imgs = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    x = torch.stack([torch.from_numpy(np.asarray(
        Image.fromarray(im[..., ::-1].copy()).resize(
            (R18_SIZE, R18_SIZE), Image.BICUBIC),
        dtype=np.float32)).permute(2, 0, 1) for im in imgs])
    x = (x - MEAN) / STD
    with torch.no_grad():
        f = r18.avgpool(r18.layer4(r18.layer3(r18.layer2(r18.layer1(
            r18.maxpool(r18.relu(r18.bn1(r18.conv1(x)))))))))
    return f.flatten(1).numpy()


@pytest.mark.slow
def test_table6_commands_reuse_the_conversion_and_merge(full_run, world,
                                                        capsys):
    """Table 6 alone, with an UperNet config: the commands (8 GPUs and 1
    GPU), the reused conversion, and one report with every table."""
    work, _, _, _ = full_run
    w = world
    tool = _tool()
    argv = ['--tables', '6',
            '--run', f'baseline={w["torchvision"]}:{w["r18_cfg"]}',
            '--seg-config', w['seg_cfg'], '--ade20k-root', 'data/my ade',
            '--work-dir', str(work)]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    assert 'was converted before: reusing' in out
    report = json.load(open(work / 'report.json'))
    seg_ckpt = _rows(report, 'segmentation')['baseline']['mmseg_checkpoint']
    assert re.fullmatch(re.escape(str(work / 'seg' / 'baseline-'))
                        + '[0-9a-f]{12}_mmseg\\.pth', seg_ckpt)
    cfg = w['seg_cfg']
    for cmd in (f'bash tools/dist_train.sh {cfg} 8 --work-dir '
                'work_dirs/upernet_r18_8xb2-80k_ade20k_baseline '
                f'--cfg-options model.pretrained={seg_ckpt} '
                "train_dataloader.dataset.data_root='data/my ade'",
                f'python tools/train.py {cfg} --work-dir',
                f'bash tools/dist_test.sh {cfg} work_dirs/upernet_r18_8xb2-'
                '80k_ade20k_baseline/iter_80000.pth 8 --tta',
                f'python tools/test.py {cfg} work_dirs/upernet_r18_8xb2-80k_'
                'ade20k_baseline/iter_80000.pth --tta'):
        assert cmd in out
    assert 'train_dataloader.batch_size=16' in out
    md = open(work / 'report.md').read()
    report = json.load(open(work / 'report.json'))
    assert set(report['sections']) == {'top1', 'geometry', 'probe',
                                       'segmentation'}
    # only the rows of the runs of this command are replaced
    seg_rows = _rows(report, 'segmentation')
    assert set(seg_rows) == {'maxsup', 'ls', 'baseline', 'mine', 'ols-s0'}
    assert seg_rows['baseline']['upernet_config'] == cfg
    assert seg_rows['baseline']['command'].startswith(
        'python tools/reproduce.py --tables 6 --run baseline=')
    assert '--tables 2 3 4 5 6 9' in seg_rows['ls']['command']
    assert '--tables 2 3 4 5 6 9' in report['sections']['top1']['command']
    assert 'paper: 42.1 MS mIoU' in md and 'bash tools/dist_train.sh' in md
    # the converted backbone fits the UperNet config's backbone exactly
    from maxsup_mm.converters.mmpretrain2mmseg import read_config
    import mmseg.models  # noqa: F401
    from mmseg.registry import MODELS
    backbone = read_config(cfg).model.backbone.to_dict()
    backbone['type'] = 'mmseg.' + backbone['type']
    seg = MODELS.build(backbone)
    seg.load_state_dict(load_checkpoint(seg_ckpt)['state_dict'],
                        strict=True)


@pytest.mark.slow
def test_refusals_are_one_line(world, tmp_path, capsys):
    tool = _tool()
    w = world
    marker = str(tmp_path / 'payload_ran')
    bad = write_malicious_checkpoint(str(tmp_path / 'bad.pth'), marker, {
        'backbone.conv1.weight': torch.zeros(2, 3, 7, 7)})
    bare = str(tmp_path / 'bare.pth')  # mmpretrain keys, no meta
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(1)}},
               bare)
    work = tmp_path / 'work'
    base = ['--imagenet-root', w['imagenet'], '--work-dir', str(work),
            '--device', 'cpu', '--num-workers', '0']
    cases = [
        (['--tables', '4', '--run', f'maxsup={bad}:{w["r18_cfg"]}'],
         'builtins.exec'),
        (['--tables', '4', '--run', f'ls={w["deit"]}:{w["vit_cfg"]}',
          '--run', f'maxsup={bad}'], 'builtins.exec'),
        (['--tables', '4', '--run', f'ols={bare}'], 'no config matches'),
        (['--tables', '4', '--run', f'a={w["timm"]}:{w["vit_cfg"]}',
          '--run', f'a={w["timm"]}:{w["vit_cfg"]}'], 'given twice: a'),
        (['--tables', '3', '--run', f'a={w["timm"]}:{w["vit_cfg"]}',
          '--cifar10-root', str(tmp_path)], 'CIFAR-10 not found'),
        (['--tables', '4', '--run', f'a={tmp_path}/none.pth'],
         'checkpoint not found'),
    ]
    for argv, needle in cases:
        assert tool.main(argv + base) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith('reproduce: error: ') and '\n' not in err
        assert needle in err, err
    assert not osp.exists(marker)
    assert not osp.exists(work / 'report.json')


@pytest.mark.parametrize('config, arch, top1, upernet', [
    ('configs/released/deit-small_official_in1k.py', 'deit-small',
     ('Table 5, DeiT-Small', (76.49, 0.12)),
     'upernet_deit-s16_maxsup-pre_8xb2-80k_ade20k-512x512.py'),
    ('configs/released/resnet50-blurpool_official_in1k.py', 'resnet50',
     ('Table 4, ResNet-50', (77.69, 0.07)),
     'upernet_r50-blurpool_official-pre_4xb4-80k_ade20k-512x512.py'),
    ('mmpretrain::resnet/resnet50_8xb32_in1k.py', 'resnet50',
     ('Table 4, ResNet-50', (77.69, 0.07)),
     'upernet_r50_maxsup-pre_4xb4-80k_ade20k-512x512.py'),
    ('configs/resnet/resnet101_8xb256-coslr-200e-maxsup_in1k.py',
     'resnet101', ('Table 4, ResNet-101', (78.18, 0.12)), None),
])
def test_released_configs_select_the_papers_column(config, arch, top1,
                                                   upernet):
    """The real configs of the authors' weights: paper column (Tables 4 /
    5), input size (Table 3) and UperNet config (Table 6)."""
    from tools.paper.pipelines import input_size, upernet_config
    from tools.paper.runs import describe_model, load_config, parse_run
    from tools.paper.tables import top1_reference
    run = parse_run(f'maxsup-s1=x.pth:{config}')
    assert (run.row, run.config) == ('maxsup', config)
    cfg = load_config(config)
    run.arch, run.arch_label, run.backbone_type, run.depth = \
        describe_model(cfg)
    assert run.arch == arch
    paper, source = top1_reference(run.arch, run.row)
    assert (source, paper) == top1
    assert upernet_config(run) == (upernet and f'configs/upernet/{upernet}')
    if upernet:
        assert osp.isfile(osp.join(ROOT, upernet_config(run)))
    # FFCV evaluates the released ResNet-50s at 256 px, the others at 224
    assert input_size(cfg) == ((256, 256) if 'blurpool' in config else
                               (224, 224))


def test_method_names_select_the_papers_row():
    from tools.paper.tables import method_row
    assert [method_row(n) for n in (
        'CE', 'baseline-s2', 'LS', 'label-smoothing', 'ls_ema', 'MaxSup',
        'maxsup.s0', 'ols', 'zipf-ls', 'lp', 'logit-penalty', 'focal',
        'lsr', 'mine')] == [
        'baseline', 'baseline', 'ls', 'ls', 'ls', 'maxsup', 'maxsup', 'ols',
        'zipf', 'lp', 'lp', None, None, None]


# ---------------------------------------------------------------------------
# configs named in a checkpoint: only ours, matched by name, are used
# ---------------------------------------------------------------------------
QUICKSTART_CFG = 'configs/quickstart/resnet18-tiny_1xb64-15e_digits.py'
EVIL_CONFIG = "open({marker!r}, 'w').write('ran')\n"


def _with_meta_config(path, config, state_dict=None):
    """An mmpretrain checkpoint whose ``meta['config']`` is ``config``."""
    torch.save({'state_dict': state_dict or {
        'backbone.conv1.weight': torch.zeros(1)},
        'meta': {'config': config}}, str(path))
    return str(path)


def _quickstart_state(seed=0):
    """Random weights of the quickstart ResNet-18 (a small config of ours)."""
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    torch.manual_seed(seed)
    cfg = Config.fromfile(osp.join(ROOT, QUICKSTART_CFG))
    return MODELS.build(cfg.model).state_dict()


@pytest.mark.parametrize('name, ours', [
    ('configs/released/deit-small_official_in1k.py',
     'released/deit-small_official_in1k.py'),
    ('released/resnet50-blurpool_official_in1k.py',
     'released/resnet50-blurpool_official_in1k.py'),
    ('mmpretrain::resnet/resnet50_8xb32_in1k.py', None),
    (osp.join(ROOT, 'configs/released/deit-small_official_in1k.py'), False),
    ('configs/../configs/released/deit-small_official_in1k.py', False),
    ('released/../../tests/data/configs/resnet18_maxsup_tiny.py', False),
    ('tests/data/configs/resnet18_maxsup_tiny.py', False),
    ('mmpretrain::../../../../tests/data/configs/x.py', False),
    ('released/no_such_config.py', False),
])
def test_only_our_configs_are_taken_from_a_checkpoint(name, ours, tmp_path):
    """``meta['config']`` is used only when it names one of the configs of
    ``configs/`` (or the upstream configs the converter writes); anything
    else, a path above all, is refused in one line."""
    from tools.paper.runs import parse_run, prepare_checkpoint
    run = parse_run(f'maxsup={_with_meta_config(tmp_path / "c.pth", name)}')
    if ours is False:
        with pytest.raises(ValueError) as err:
            prepare_checkpoint(run, str(tmp_path), log=lambda m: None)
        message = str(err.value)
        assert '\n' not in message and name in message
        assert 'maxsup=CHECKPOINT:CONFIG' in message and '--config' in message
        return
    prepare_checkpoint(run, str(tmp_path), log=lambda m: None)
    if ours is None:  # an upstream config of the converter's, by name
        assert run.config == name
    else:
        assert osp.samefile(run.config, osp.join(ROOT, 'configs', ours))


@pytest.mark.slow
def test_config_named_in_a_checkpoint_is_never_run(imagenet_root, tmp_path,
                                                   capsys, monkeypatch):
    tool = _tool()
    marker = tmp_path / 'config_ran'
    evil = _write(tmp_path / 'evil_config.py',
                  EVIL_CONFIG.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)  # a relative path would resolve too
    state = _quickstart_state()
    work = tmp_path / 'work'
    base = ['--tables', '4', '--imagenet-root', imagenet_root, '--work-dir',
            str(work), '--device', 'cpu', '--num-workers', '0']
    for i, name in enumerate((evil, 'evil_config.py')):
        ckpt = _with_meta_config(tmp_path / f'evil{i}.pth', name, state)
        assert tool.main(base + ['--run', f'mine={ckpt}']) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith('reproduce: error: ') and '\n' not in err
        assert name in err and 'mine=CHECKPOINT:CONFIG' in err, err
        assert not marker.exists()
        assert not (work / 'report.json').exists()
    # the way out: the user names the config
    ours = osp.join(ROOT, QUICKSTART_CFG)
    assert tool.main(base + ['--run', f'mine={ckpt}:{ours}']) == 0
    assert not marker.exists()
    # a checkpoint naming one of our configs still works
    good = _with_meta_config(tmp_path / 'good.pth', QUICKSTART_CFG, state)
    assert tool.main(base + ['--run', f'ce={good}']) == 0
    report = json.load(open(work / 'report.json'))
    row = _rows(report, 'top1')['ce']
    assert osp.samefile(row['config'], ours)
    assert row['num_images'] == 16 and row['format'] == 'mmpretrain'
    assert not marker.exists()


# ---------------------------------------------------------------------------
# Tables 2 / 9: Kornblith et al.'s formula, self-pairs included
# ---------------------------------------------------------------------------
def _separation_oracle(features, labels, include_self):
    """d_within, d_total, R^2 by brute force over all ordered (m, n) pairs
    of every class pair (j, k), each block's sum divided by its number of
    pairs: N_j N_k, or N_k (N_k - 1) on the diagonal without self-pairs."""
    x = np.asarray(features, np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = 1.0 - u @ u.T
    classes = np.unique(labels)
    within, blocks = [], []
    for j in classes:
        for k in classes:
            rows, cols = np.flatnonzero(labels == j), np.flatnonzero(
                labels == k)
            total = count = 0
            for m in rows:
                for n in cols:
                    if m == n and not include_self:
                        continue
                    total, count = total + dist[m, n], count + 1
            blocks.append(total / count)
            if j == k:
                within.append(total / count)
    d_within, d_total = np.mean(within), np.mean(blocks)
    return dict(d_within=d_within, d_total=d_total,
                r2=1 - d_within / d_total)


def _vit_features(world, split):
    x, labels = _val_images(world['imagenet'], split)
    vit = world['vit']
    with torch.no_grad():
        feats = vit.forward_head(vit.forward_features(x), pre_logits=True)
    return feats.numpy(), labels


@pytest.mark.slow
def test_geometry_tables_use_kornblith_formula_with_self_pairs(world,
                                                               tmp_path):
    """Tables 2/9 by default divide each class's within-class sum by N_k^2
    (Kornblith et al.); ``--exclude-self-pairs`` by N_k (N_k - 1); the
    report says which."""
    tool = _tool()
    w = world
    work = tmp_path / 'work'
    argv = ['--tables', '2', '9', '--run', f'maxsup={w["deit"]}:'
            f'{w["vit_cfg"]}', '--imagenet-root', w['imagenet'],
            '--work-dir', str(work), '--device', 'cpu', '--num-workers', '0',
            '--batch-size', '8', '--max-train-samples', '0']
    oracle = {split: _vit_features(w, split) for split in ('train', 'val')}
    for extra, include_self, word in (([], True, 'included'),
                                      (['--exclude-self-pairs'], False,
                                       'excluded')):
        assert tool.main(argv + extra) == 0
        report = json.load(open(work / 'report.json'))
        section = report['sections']['geometry']
        (row, ) = section['rows']
        for split, (feats, labels) in oracle.items():
            want = _separation_oracle(feats, labels, include_self)
            other = _separation_oracle(feats, labels, not include_self)
            assert row[split]['num_samples'] == len(labels)
            for key in ('d_within', 'd_total', 'r2'):
                assert row[split][key] == pytest.approx(want[key], rel=1e-5)
                # the tolerance tells the two conventions apart
                assert abs(want[key] - other[key]) > 1e-4 * abs(want[key])
        assert section['settings']['self_pairs'] == word
        assert row['self_pairs'] == word
        md = open(work / 'report.md').read()
        assert f'| train | 32 | {word} |' in md
        assert f'| val | 16 | {word} |' in md


# ---------------------------------------------------------------------------
# tables one command at a time: every conversion and every row is kept
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_tables_one_at_a_time_keep_every_conversion_and_row(world, tmp_path,
                                                            capsys):
    tool = _tool()
    w = world
    work = tmp_path / 'work'
    base = ['--imagenet-root', w['imagenet'], '--work-dir', str(work),
            '--device', 'cpu', '--num-workers', '0', '--batch-size', '8']
    run_a = f'maxsup={w["lightning"]}:{w["blur_cfg"]}'   # Table 4
    run_b = f'maxsup={w["deit"]}:{w["vit_cfg"]}'         # Table 5
    assert tool.main(['--tables', '4', '--run', run_a] + base) == 0
    (row_a, ) = _rows(json.load(open(work / 'report.json')),
                      'top1').values()
    ckpt_a = row_a['checkpoint']
    with open(ckpt_a, 'rb') as f:
        bytes_a = f.read()
    assert tool.main(['--tables', '5', '--run', run_b] + base) == 0
    with open(ckpt_a, 'rb') as f:
        assert f.read() == bytes_a
    rows = json.load(open(work / 'report.json'))['sections']['top1']['rows']
    assert sorted((r['name'], r['source']) for r in rows) == sorted(
        [('maxsup', w['lightning']), ('maxsup', w['deit'])])
    ckpts = {r['source']: r['checkpoint'] for r in rows}
    assert ckpts[w['lightning']] == ckpt_a != ckpts[w['deit']]
    # each file holds its own source's weights
    assert 'backbone.cls_token' in load_checkpoint(
        ckpts[w['deit']])['state_dict']
    assert 'backbone.layer1.0.conv1.weight' in load_checkpoint(
        ckpt_a)['state_dict']
    md = open(work / 'report.md').read()
    for r in rows:
        assert f'| maxsup | MaxSup | {r["architecture"]} | 16 | ' \
            f'{r["top1"]:.2f} |' in md
        assert f'`{r["checkpoint"]}`' in md
    assert '--tables 4' in md and '--tables 5' in md
    # the same run (name and source) again: its row is replaced, the
    # conversion reused
    capsys.readouterr()
    assert tool.main(['--tables', '4', '--run', run_a] + base) == 0
    assert 'was converted before: reusing' in capsys.readouterr().out
    rows = json.load(open(work / 'report.json'))['sections']['top1']['rows']
    assert sorted(r['source'] for r in rows) == sorted([w['lightning'],
                                                        w['deit']])
    with open(ckpt_a, 'rb') as f:
        assert f.read() == bytes_a


def _top1_row(name, source, top1):
    return dict(name=name, method='maxsup', source=source,
                source_path=osp.abspath(source), format='mmpretrain',
                conversion=None, checkpoint=source, config='c.py',
                architecture=f'arch of {source}', arch_key=None, top1=top1,
                num_images=16, paper=None, paper_source='')


def test_report_keeps_the_rows_of_other_runs(tmp_path):
    """A command replaces the rows of its own runs (same name and source)
    and keeps all others, each with the command that computed it."""
    from tools.paper.report import write_report

    def command(n, *rows):
        section = dict(time=f't{n}', command=f'cmd {n}', settings={},
                       rows=list(rows))
        write_report(str(tmp_path), dict(top1=section))
        return json.load(open(tmp_path / 'report.json'))

    command(1, _top1_row('maxsup', 'a.pth', 10.0))
    command(2, _top1_row('maxsup', 'b.pth', 20.0))
    report = command(3, _top1_row('maxsup', 'a.pth', 30.0),
                     _top1_row('ls', 'a.pth', 40.0))
    rows = report['sections']['top1']['rows']
    assert [(r['name'], r['source'], r['top1'], r['command'])
            for r in rows] == [('maxsup', 'a.pth', 30.0, 'cmd 3'),
                               ('maxsup', 'b.pth', 20.0, 'cmd 2'),
                               ('ls', 'a.pth', 40.0, 'cmd 3')]
    md = open(tmp_path / 'report.md').read()
    for text in ('| maxsup | MaxSup | arch of a.pth | 16 | 30.00 |',
                 '| maxsup | MaxSup | arch of b.pth | 16 | 20.00 |',
                 '| ls | MaxSup | arch of a.pth | 16 | 40.00 |',
                 'cmd 2', 'cmd 3'):
        assert text in md
    assert '10.00' not in md and 'cmd 1' not in md
