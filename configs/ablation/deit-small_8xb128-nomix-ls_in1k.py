# Table 1 (LS components), DeiT-Small without Mixup/CutMix:
# label smoothing (alpha 0.1); paper: 75.91.
# Fixed alpha (no schedule), as in Table 8's first column.
_base_ = './deit-small_8xb128-nomix_in1k.py'

# label smoothing as CE + alpha*(z_gt - mean(z)) (exactly LS, eq. 4)
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(
        loss=dict(
            _delete_=True,
            type='LabelSmoothDecompLoss',
            alpha=0.1,
            component='full')))
