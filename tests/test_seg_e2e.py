"""Pretrain (mmpretrain) -> convert -> fine-tune UperNet (mmseg) -> test.

The whole Table 6 pipeline on CPU through our tools, on generated data in the
real on-disk formats: two DeiT-Small iterations with MaxSup on the
ImageNet-layout fixture, the converter, a few UperNet iterations with the
MaxSup pixel loss on ADE20K-layout data (64x64 crops, batch 2), then
tools/test.py single-scale and with --tta (multi-scale + flip).
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from maxsup_mm.datasets import write_ade20k_folder

# pretraining, conversion and UperNet fine-tuning end to end in a subprocess: slow
pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_CFG = osp.join(ROOT, 'configs', 'upernet',
                   'upernet_deit-s16_maxsup-pre_maxsup-loss_8xb2-80k_'
                   'ade20k-512x512.py')

PRETRAIN_CFG = """\
_base_ = 'mmpretrain::deit/deit-small_4xb256_in1k.py'
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
data_root = {data_root!r}
model = dict(
    backbone=dict(img_size=32),
    head=dict(loss=dict(_delete_=True, type='MaxSupLoss', alpha=0.1)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=32),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
train_cfg = dict(by_epoch=True, max_epochs=1)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True)]
default_hooks = dict(logger=dict(interval=1))
"""

FINETUNE_CFG = """\
_base_ = {base!r}
data_root = {data_root!r}
crop_size = (64, 64)
model = dict(pretrained={pretrained!r},
             data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 64), ratio_range=(0.5, 2.0),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=1000)
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=2))
"""


# All stages in ONE subprocess (one interpreter start-up instead of five;
# isolated from the registries and scopes of the pytest process), each
# through the command-line entry point a user runs.
DRIVER = r"""
import importlib.util, sys
root, pre_cfg, pre_work, converted, seg_cfg, work, tmp = sys.argv[1:8]

def tool(rel):
    spec = importlib.util.spec_from_file_location(
        rel.replace('/', '_')[:-3], f'{root}/{rel}')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main

def stage(name):
    print(f'=== stage: {name}', flush=True)

train, test = tool('tools/train.py'), tool('tools/test.py')
convert = tool('tools/model_converters/mmpretrain2mmseg.py')
stage('pretrain')
train([pre_cfg, '--work-dir', pre_work, '--no-validate'])
stage('convert')
assert convert([f'{pre_work}/epoch_1.pth', converted,
                '--config', seg_cfg]) == 0
stage('finetune')
train([seg_cfg, '--work-dir', work, '--no-validate'])
for tta in (False, True):
    stage(f'test tta={tta}')
    test([seg_cfg, f'{work}/iter_2.pth', '--work-dir', f'{tmp}/test_{tta}',
          '--out', f'{tmp}/metrics_{tta}.json'] + ['--tta'] * tta)
stage('done')
"""


def scalars(work_dir):
    records = []
    for path in glob.glob(osp.join(work_dir, '*', 'vis_data',
                                   'scalars.json')):
        with open(path) as f:
            records += [json.loads(line) for line in f]
    return records


@pytest.fixture(scope='module')
def pipeline(imagenet_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('seg_e2e')
    pre_cfg = tmp / 'pretrain.py'
    pre_cfg.write_text(PRETRAIN_CFG.format(data_root=imagenet_root))
    converted = str(tmp / 'deit-small_maxsup_mmseg.pth')
    ade = write_ade20k_folder(str(tmp / 'ADEChallengeData2016'),
                              num_images=(4, 1), size=64)
    seg_cfg = tmp / 'finetune.py'
    seg_cfg.write_text(FINETUNE_CFG.format(base=SEG_CFG, data_root=ade,
                                           pretrained=converted))
    work = str(tmp / 'finetune')
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='2')
    proc = subprocess.run(
        [sys.executable, '-c', DRIVER, ROOT, str(pre_cfg),
         str(tmp / 'pretrain'), converted, str(seg_cfg), work, str(tmp)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and '=== stage: done' in log, \
        proc.stdout[-4000:] + proc.stderr[-6000:]
    stages = {}
    for chunk in proc.stdout.split('=== stage: ')[1:]:
        name, _, text = chunk.partition('\n')
        stages[name] = text
    return dict(work=work, tmp=tmp, stages=stages, converted=converted)


def test_pretrained_backbone_was_converted_and_loaded(pipeline):
    out = pipeline['stages']['convert']
    assert 'mmpretrain VisionTransformer' in out
    assert 'layers.0.attn.qkv.weight -> layers.0.attn.attn.in_proj_weight' \
        in out
    assert 'pos_embed (1, 5, 384) is resized to (1, 1025, 384)' in out
    assert osp.isfile(pipeline['converted'])
    # mmseg's ViT prints this only when it loads our checkpoint
    assert 'Resize the pos_embed shape from torch.Size([1, 5, 384])' in \
        pipeline['stages']['finetune']


def test_finetune_trains_with_the_pixel_maxsup_loss(pipeline):
    records = [r for r in scalars(pipeline['work']) if 'loss' in r]
    assert [r['iter'] for r in records] == [1, 2]
    for rec in records:
        assert 'decode.loss_maxsup' in rec and 'aux.loss_ce' in rec
        assert rec['decode.loss_maxsup'] > 0
    assert osp.isfile(osp.join(pipeline['work'], 'iter_2.pth'))


@pytest.mark.parametrize('tta', [False, True], ids=['single-scale', 'tta'])
def test_test_tool_prints_miou(pipeline, tta):
    log = pipeline['stages'][f'test tta={tta}']
    assert 'mIoU' in log
    with open(pipeline['tmp'] / f'metrics_{tta}.json') as f:
        metrics = json.load(f)
    assert {'aAcc', 'mIoU', 'mAcc'} <= set(metrics)
    assert 0.0 <= metrics['mIoU'] <= 100.0
