# Table 7 (ImageNet-1K), ResNet-18: Logit Penalty.
# Paper: 66.97.
_base_ = './resnet18_8xb64-steplr-90e_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    head=dict(loss=dict(_delete_=True, type='LogitPenaltyLoss', beta=2e-3)))
