# Table 4 (ImageNet-1K), ResNet-50: label smoothing, alpha 0.1 -> 0.2.
# Paper: 76.91.
_base_ = './resnet50_8xb256-coslr-200e_in1k.py'

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
