# Table 7 (ImageNet-1K), MobileNetV2: MaxSup, alpha 0.1 -> 0.2.
# Paper: 71.59.
_base_ = './mobilenet-v2_8xb64-steplr-90e_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='MaxSupLoss', alpha=0.1)))
custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]
