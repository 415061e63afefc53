# Table 1 (LS components), DeiT-Small without Mixup/CutMix:
# MaxSup (alpha 0.1); paper: 76.12.
# Fixed alpha (no schedule), as in Table 8's first column.
_base_ = './deit-small_8xb128-nomix_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='MaxSupLoss', alpha=0.1)))
