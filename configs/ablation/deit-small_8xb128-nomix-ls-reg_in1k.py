# Table 1 (LS components), DeiT-Small without Mixup/CutMix:
# "+ Regularization" (LS without error enhancement); paper: 75.98.
# Fixed alpha (no schedule), as in Table 8's first column.
_base_ = './deit-small_8xb128-nomix_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(
        loss=dict(
            _delete_=True,
            type='LabelSmoothDecompLoss',
            alpha=0.1,
            component='regularization')))
