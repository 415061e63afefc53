# Table 4 (CIFAR-100), ResNet-101: Online Label Smoothing.
# Paper: 79.25.
_base_ = './resnet101_1xb128-200e_cifar100.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(
        loss=dict(
            _delete_=True,
            type='OnlineLabelSmoothLoss',
            num_classes=100,
            alpha=0.5,
            smoothing=0.1)))
custom_hooks = [dict(type='OnlineLabelSmoothHook')]
