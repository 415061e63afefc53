# Table 7 (ImageNet-1K), MobileNetV2: Zipf's label smoothing.
# Paper: 71.24.
_base_ = './mobilenet-v2_8xb64-steplr-90e_in1k.py'

# the head pools the map itself: it needs the un-pooled map for the votes
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    neck=None, head=dict(type='ZipfLinearClsHead', zipf_weight=0.1))
