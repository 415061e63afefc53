# ResNet-50 row (not in the paper's Table 6): UperNet + ResNet-50 pretrained
# on ImageNet-1K with cross-entropy
# (configs/resnet/resnet50_8xb256-coslr-200e_in1k.py), fine-tuned on ADE20K
# (4 GPUs x 4 images, 80k iterations, 512x512 crops) with cross-entropy.
#
# The backbone is mmpretrain's plain ResNet-50 (the paper's Table 4 / 7
# recipes), converted by tools/model_converters/mmpretrain2mmseg.py; point to
# it with --cfg-options model.pretrained=PATH. For a ResNetV1c pretraining
# (mmpretrain::resnet/resnetv1c50_8xb32_in1k.py, the backbone of mmseg's base
# config) add --cfg-options model.backbone.type=ResNetV1c.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'

model = dict(
    pretrained='pretrain/resnet50_ce_mmseg.pth',
    backbone=dict(type='ResNet'))
