# Table 4 (ImageNet-1K), ResNet-101: baseline (cross-entropy).
# Paper: 75.96.  The paper's ImageNet recipe:
# 200 epochs, SGD momentum 0.9, wd 1e-4, lr 0.85, cosine, batch 2048.
# Its siblings *-<method>_in1k.py differ from it only in method keys.
_base_ = [
    'mmpretrain::_base_/models/resnet101.py',
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    '../_base_/schedules/imagenet_bs2048_sgd-coslr-200e.py',
    'mmpretrain::_base_/default_runtime.py',
]

train_dataloader = dict(batch_size=256)  # 8 GPUs x 256 = 2048
