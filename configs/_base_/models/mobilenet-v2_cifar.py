# MobileNetV2 with a CIFAR stem (maxsup_mm.models.backbones.MobileNetV2_CIFAR:
# stride-1 stem and second stage, a 4x4 last map on 32x32 images).
_base_ = 'mmpretrain::_base_/models/mobilenet_v2_1x.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(type='MobileNetV2_CIFAR'),
    head=dict(num_classes=100))
