# Table 5, DeiT-Small (official DeiT recipe, no distillation):
# MaxSup, alpha 0.1 -> 0.2.  Paper: 76.49.
_base_ = './deit-small_8xb128_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='MaxSupLoss', alpha=0.1)))
custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]
