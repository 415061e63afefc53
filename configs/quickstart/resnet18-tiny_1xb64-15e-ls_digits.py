# Quickstart sibling: label smoothing, alpha 0.1 -> 0.2 (as the MaxSup run).
_base_ = './resnet18-tiny_1xb64-15e_digits.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(
        loss=dict(
            _delete_=True,
            type='LabelSmoothDecompLoss',
            alpha=0.1,
            component='full')))
custom_hooks = [dict(type='AlphaScheduleHook', start=0.1, end=0.2)]
