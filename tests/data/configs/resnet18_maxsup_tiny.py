# A tiny version of mmpretrain's ResNet-18 recipe with MaxSup, Mixup/CutMix
# and the alpha schedule, for tests on generated ImageNet-layout data.
# Only data roots, image size, batch size and the schedule length differ from
# what a user would train.
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)

data_root = 'data/imagenet'  # overridden by the tests
model = dict(
    backbone=dict(depth=18),
    head=dict(
        num_classes=4,
        topk=(1, ),
        loss=dict(_delete_=True, type='MaxSupLoss', alpha=0.1)),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]))
data_preprocessor = dict(num_classes=4)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=32),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=32, edge='short'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

train_cfg = dict(by_epoch=True, max_epochs=3, val_interval=1)
param_scheduler = dict(
    _delete_=True, type='CosineAnnealingLR', T_max=3, by_epoch=True)
optim_wrapper = dict(optimizer=dict(lr=0.05))
custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=1, max_keep_ckpts=-1))
randomness = dict(seed=0, deterministic=False)
env_cfg = dict(cudnn_benchmark=False)
