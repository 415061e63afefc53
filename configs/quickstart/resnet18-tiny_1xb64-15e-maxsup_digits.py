# Quickstart sibling: MaxSup, alpha 0.1 -> 0.2 (paper Table 8).
_base_ = './resnet18-tiny_1xb64-15e_digits.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='MaxSupLoss', alpha=0.1)))
custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]
