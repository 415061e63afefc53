# Table 7 (ImageNet-1K), ResNet-101: MaxSup, alpha 0.1 -> 0.2.
# Paper: 77.33.
_base_ = './resnet101_8xb64-steplr-90e_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='MaxSupLoss', alpha=0.1)))
custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]
