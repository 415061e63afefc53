# Table 4 (ImageNet-1K), ResNet-50: Zipf's label smoothing.
# Paper: 76.73.
_base_ = './resnet50_8xb256-coslr-200e_in1k.py'

# the head pools the map itself: it needs the un-pooled map for the votes
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    neck=None, head=dict(type='ZipfLinearClsHead', zipf_weight=0.1))
