# Table 5, DeiT-Small: baseline (cross-entropy).  Paper: 74.39.
# The official DeiT recipe (facebookresearch/deit, main.py defaults, which
# the MaxSup paper trains with) without distillation: 300 epochs, AdamW
# lr 5e-4 x 1024/512, weight decay 0.05, RandAugment, Random Erasing 0.25,
# Mixup 0.8 / CutMix 1.0, repeated augmentation, total batch 1024.
# mmpretrain's deit-small config is the base; the lines below restore the
# official settings it changes (its comment: "remove drop path").
# Its siblings deit-small_8xb128-<method>_in1k.py differ only in method keys.
_base_ = 'mmpretrain::deit/deit-small_4xb256_in1k.py'

model = dict(
    backbone=dict(drop_path_rate=0.1),  # official --drop-path 0.1
    # Mixup/CutMix turn every training label into a soft target
    head=dict(
        loss=dict(_delete_=True, type='CrossEntropyLoss', use_soft=True)))

# 8 GPUs x 128 = 1024, the total batch of the base's lr; repeated
# augmentation (3 repeats) as the official RASampler
train_dataloader = dict(
    batch_size=128, sampler=dict(type='RepeatAugSampler', num_repeats=3))

# official: no gradient clipping for DeiT-S
optim_wrapper = dict(clip_grad=None)

# official: 5 warm-up epochs from lr 1e-6, then cosine down to 1e-5
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=5,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5),
]
