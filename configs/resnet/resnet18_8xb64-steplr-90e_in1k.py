# Table 7 (ImageNet-1K), ResNet-18: baseline (cross-entropy).
# Paper: 69.11.  The TorchVision-V1 recipe
# (Appendix E): 90 epochs, lr 0.1 x0.1 every 30 epochs, batch 512.
# Its siblings *-<method>_in1k.py differ from it only in method keys.
_base_ = [
    'mmpretrain::_base_/models/resnet18.py',
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    '../_base_/schedules/imagenet_bs512_sgd-step-90e.py',
    'mmpretrain::_base_/default_runtime.py',
]

train_dataloader = dict(batch_size=64)  # 8 GPUs x 64 = 512
