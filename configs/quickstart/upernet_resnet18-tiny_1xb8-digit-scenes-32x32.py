# Quickstart transfer: UperNet (the ResNet row of configs/upernet/) on
# "digit scenes" (real 8x8 digits in the cells of 32x32 canvases, ADE20K
# layout, written by maxsup_mm.datasets.write_digit_scenes), with the digits
# ResNet-18 backbone pretrained by the quickstart (CIFAR stem, 16 base
# channels), converted by tools/model_converters/mmpretrain2mmseg.py.
# Point to the converted backbone with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
_base_ = '../upernet/upernet_r50_ce-pre_4xb4-80k_ade20k-512x512.py'
custom_imports = dict(
    imports=['maxsup_mm', 'mmpretrain.models'], allow_failed_imports=False)

data_root = 'data/digit_scenes'
crop_size = (32, 32)
num_classes = 11  # background + 10 digits
norm_cfg = dict(type='BN', requires_grad=True)  # CPU: no SyncBN

data_preprocessor = dict(
    mean=[77.6] * 3, std=[95.8] * 3, size=crop_size, bgr_to_rgb=False)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmpretrain.ResNet_CIFAR',
        depth=18,
        stem_channels=16,
        base_channels=16,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/digits.pth')),
    decode_head=dict(
        in_channels=[16, 32, 64, 128],
        pool_scales=(1, 2),
        channels=32,
        num_classes=num_classes,
        norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=64, channels=16, num_classes=num_classes,
        norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
test_pipeline = train_pipeline
img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale_factor=r, keep_ratio=True)
             for r in img_ratios],
            [dict(type='LoadAnnotations', reduce_zero_label=True)],
            [dict(type='PackSegInputs')],
        ])
]
dataset = dict(
    _delete_=True,
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=dict(
        classes=('background', ) + tuple(f'digit {i}' for i in range(10))),
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True)
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        **dataset,
        data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        **dataset,
        data_prefix=dict(
            img_path='images/validation',
            seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 300
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=3e-3, weight_decay=1e-4))
param_scheduler = [
    dict(
        type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters,
        by_epoch=False)
]
# a checkpoint every 50 iterations (and the last); two are kept
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=50, max_keep_ckpts=2))
randomness = dict(seed=0)
