# Quickstart: the CIFAR recipe of Table 4 (ResNet-18, CIFAR stem) shrunk to
# the real 8x8 handwritten digits that scikit-learn ships, upsampled to 16x16.
# Baseline: cross-entropy.  Siblings *-ls / *-maxsup change only the method.
# What differs from ../cifar100/resnet18_1xb128-200e_cifar100.py: the data
# (mmpretrain CustomDataset folders written by maxsup_mm.datasets), a 4x
# narrower network, 15 epochs, batch 64, and Mixup/CutMix as in the DeiT
# recipe (without batch mixing MaxSup and LS coincide whenever the training
# prediction is correct, which on digits is almost always).
_base_ = '../cifar100/resnet18_1xb128-200e_cifar100.py'

data_root = 'data/digits'
max_epochs = 15

model = dict(
    backbone=dict(stem_channels=16, base_channels=16),
    head=dict(num_classes=10, in_channels=128, topk=(1, )),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]))
data_preprocessor = dict(
    num_classes=10, mean=[77.6] * 3, std=[95.8] * 3, to_rgb=False)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(16, 16)),
    dict(type='RandomCrop', crop_size=16, padding=2),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(16, 16)),
    dict(type='PackInputs'),
]


train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    train_dataloader,
    batch_size=256,
    dataset=dict(
        train_dataloader['dataset'], data_prefix='val',
        pipeline=test_pipeline))
test_dataloader = dict(
    val_dataloader, dataset=dict(val_dataloader['dataset'], data_prefix='test'))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = dict(
    milestones=[int(max_epochs * f) for f in (0.3, 0.6, 0.8)])
auto_scale_lr = dict(base_batch_size=64)
# a checkpoint every epoch, so an interrupted study loses at most one epoch;
# two are kept (mmengine deletes the older before writing the newer)
default_hooks = dict(
    logger=dict(interval=17),
    checkpoint=dict(interval=1, max_keep_ckpts=2))
randomness = dict(seed=0)
