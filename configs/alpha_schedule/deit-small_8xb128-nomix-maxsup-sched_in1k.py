# Table 8, DeiT-Small without Mixup/CutMix: MaxSup,
# alpha = 0.1 + 0.1 t/T.  Paper: 76.58.  The fixed-alpha column is
# configs/ablation/deit-small_8xb128-nomix-maxsup_in1k.py.
_base_ = '../ablation/deit-small_8xb128-nomix_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='MaxSupLoss', alpha=0.1)))
custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]
