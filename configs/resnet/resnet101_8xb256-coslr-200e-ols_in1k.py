# Table 4 (ImageNet-1K), ResNet-101: Online Label Smoothing.
# Paper: 77.71.
_base_ = './resnet101_8xb256-coslr-200e_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(
        loss=dict(
            _delete_=True,
            type='OnlineLabelSmoothLoss',
            num_classes=1000,
            alpha=0.5,
            smoothing=0.1)))
custom_hooks = [dict(type='OnlineLabelSmoothHook')]
