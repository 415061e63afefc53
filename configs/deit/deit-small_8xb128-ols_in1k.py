# Table 5, DeiT-Small (official DeiT recipe, no distillation):
# Online Label Smoothing.  Paper: 76.16.
_base_ = './deit-small_8xb128_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(
        loss=dict(
            _delete_=True,
            type='OnlineLabelSmoothLoss',
            num_classes=1000,
            alpha=0.5,
            smoothing=0.1)))
custom_hooks = [dict(type='OnlineLabelSmoothHook')]
