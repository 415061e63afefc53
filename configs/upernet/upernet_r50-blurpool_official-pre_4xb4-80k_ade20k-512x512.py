# ResNet-50 rows from the authors' released ImageNet weights
# (zhouyuxuanyx/MaxSup-Regularized-ResNet50: baseline, LS, MaxSup), which
# carry BlurPool: the backbone is maxsup_mm's mmseg ResNetBlurPool, the same
# blur [1,2,1]x[1,2,1]/16 before each strided conv with >= 16 inputs as in
# pretraining (UperNet keeps ResNet's strides (1, 2, 2, 2), so the layout
# and the keys are those of the pretrained network). Everything else is
# ./upernet_r50_ce-pre_4xb4-80k_ade20k-512x512.py (4 GPUs x 4 images, 80k
# iterations, cross-entropy fine-tuning).
#
#   python tools/model_converters/external2mmpretrain.py \
#       resnet50_maxsup.ckpt pretrain/resnet50-blurpool_maxsup.pth
#   python tools/model_converters/mmpretrain2mmseg.py \
#       pretrain/resnet50-blurpool_maxsup.pth \
#       pretrain/resnet50-blurpool_maxsup_mmseg.pth --config THIS_CONFIG
#   bash tools/dist_train.sh THIS_CONFIG 4
#
# Baseline / LS: --cfg-options \
#     model.pretrained=pretrain/resnet50-blurpool_{ce,ls}_mmseg.pth
_base_ = './upernet_r50_ce-pre_4xb4-80k_ade20k-512x512.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)

model = dict(
    pretrained='pretrain/resnet50-blurpool_maxsup_mmseg.pth',
    backbone=dict(type='ResNetBlurPool'))
