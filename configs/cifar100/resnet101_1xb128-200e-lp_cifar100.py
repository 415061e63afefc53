# Table 4 (CIFAR-100), ResNet-101: Logit Penalty.
# Paper: 78.89.
_base_ = './resnet101_1xb128-200e_cifar100.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='LogitPenaltyLoss', beta=2e-3)))
