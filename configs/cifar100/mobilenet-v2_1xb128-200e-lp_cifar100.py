# Table 4 (CIFAR-100), MobileNetV2: Logit Penalty.
# Paper: 69.46.
_base_ = './mobilenet-v2_1xb128-200e_cifar100.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='LogitPenaltyLoss', beta=2e-3)))
