# Table 8, DeiT-Small without Mixup/CutMix: label smoothing,
# alpha = 0.1 + 0.1 t/T.  Paper: 76.16.  The fixed-alpha column is
# configs/ablation/deit-small_8xb128-nomix-ls_in1k.py.
_base_ = '../ablation/deit-small_8xb128-nomix_in1k.py'

# label smoothing as CE + alpha*(z_gt - mean(z)) (exactly LS, eq. 4), whose
# alpha AlphaScheduleHook can raise
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(
        loss=dict(
            _delete_=True,
            type='LabelSmoothDecompLoss',
            alpha=0.1,
            component='full')))
custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]
