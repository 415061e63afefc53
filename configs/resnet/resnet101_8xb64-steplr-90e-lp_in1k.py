# Table 7 (ImageNet-1K), ResNet-101: Logit Penalty.
# Paper: 75.17.
_base_ = './resnet101_8xb64-steplr-90e_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='LogitPenaltyLoss', beta=2e-3)))
