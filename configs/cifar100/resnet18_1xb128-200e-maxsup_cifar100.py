# Table 4 (CIFAR-100), ResNet-18: MaxSup, alpha 0.1 -> 0.2.
# Paper: 77.82.
_base_ = './resnet18_1xb128-200e_cifar100.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='MaxSupLoss', alpha=0.1)))
custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]
