# Table 4 (ImageNet-1K), MobileNetV2: Logit Penalty.
# Paper: 71.13.
_base_ = './mobilenet-v2_8xb256-coslr-200e_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='LogitPenaltyLoss', beta=2e-3)))
