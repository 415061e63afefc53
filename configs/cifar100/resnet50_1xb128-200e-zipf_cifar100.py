# Table 4 (CIFAR-100), ResNet-50: Zipf's label smoothing.
# Paper: 78.75.
_base_ = './resnet50_1xb128-200e_cifar100.py'

# the head pools the map itself: it needs the un-pooled map for the votes;
# on CIFAR the authors upsample the 4x4 map bilinearly (x2) first
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    neck=None,
    head=dict(
        type='ZipfLinearClsHead',
        zipf_weight=0.1,
        dense_upsample='bilinear',
        upsample_scale=2.0))
