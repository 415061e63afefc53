# The authors' DeiT-Small (paper Table 5: MaxSup 76.49 +- 0.12 top-1),
# released as "checkpoint_deit" (a DeiT code base checkpoint). Convert it,
# then evaluate as the DeiT code base did (datasets.build_transform):
#
#   python tools/model_converters/external2mmpretrain.py \
#       checkpoint_deit.pth pretrain/deit-small_maxsup_official.pth
#   python tools/test.py configs/released/deit-small_official_in1k.py \
#       pretrain/deit-small_maxsup_official.pth
#
# Architecture: mmpretrain's VisionTransformer arch='deit-small' (patch 16,
# 384 wide, 12 layers, 6 heads, LayerNorm eps 1e-6, class token) + a linear
# head: exactly timm's deit_small_patch16_224, which the DeiT code base
# trained. Evaluation: decode with PIL as torchvision's ImageFolder does (no
# EXIF rotation), resize the shorter side to int(224 / 0.875) = 256 with
# bicubic interpolation (PIL), centre crop 224, ImageNet mean/std (the base
# config's data_preprocessor).
_base_ = 'mmpretrain::deit/deit-small_4xb256_in1k.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)

test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow',
         color_type='color_ignore_orientation'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
