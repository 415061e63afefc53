# Table 4 (CIFAR-100), ResNet-18 with a CIFAR stem: baseline
# (cross-entropy).  Paper: 76.16.  The paper's CIFAR recipe:
# 200 epochs, batch 128, lr 0.1 x0.2 at 60/120/160, wd 5e-4, Nesterov 0.9.
# Its siblings *-<method>_cifar100.py differ from it only in method keys.
_base_ = [
    'mmpretrain::_base_/models/resnet18_cifar.py',
    'mmpretrain::_base_/datasets/cifar100_bs16.py',
    '../_base_/schedules/cifar100_bs128_sgd-nesterov-200e.py',
    'mmpretrain::_base_/default_runtime.py',
]

model = dict(head=dict(num_classes=100))
train_dataloader = dict(batch_size=128)  # 1 GPU x 128
