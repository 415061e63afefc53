# The authors' ResNet-50s (paper Table 4 top-1: baseline 76.41 +- 0.10,
# LS 76.91 +- 0.11, MaxSup 77.69 +- 0.07), released on Hugging Face as
# zhouyuxuanyx/MaxSup-Regularized-ResNet50 and trained by their Conv/ffcv
# code (PyTorch Lightning, torchvision resnet50 with BlurPool). Convert,
# then evaluate as their FFCV validation loader did:
#
#   python tools/model_converters/external2mmpretrain.py \
#       resnet50_maxsup.ckpt pretrain/resnet50-blurpool_maxsup.pth
#   python tools/test.py configs/released/resnet50-blurpool_official_in1k.py \
#       pretrain/resnet50-blurpool_maxsup.pth
#
# Architecture: torchvision's ResNet-50 (mmpretrain ResNet, style 'pytorch')
# with a [1,2,1]x[1,2,1]/16 blur before every conv of stride > 1 and >= 16
# input channels (maxsup_mm ResNetBlurPool), global average pooling, linear
# head. Evaluation (Conv/ffcv/data.py + config.toml + write_imagenet.sh):
# the image as FFCV stored it (longer side shrunk to at most 500 px, OpenCV
# INTER_AREA), a centre square of 224/256 of its shorter side, resized to the
# validation resolution 256 x 256 (INTER_AREA), ImageNet mean/std. FFCV's
# writer also JPEG-recompressed a random half of the images (quality 90);
# that step is not reproduced (expect a few hundredths of a point).
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'

custom_imports = dict(
    imports=['maxsup_mm', 'maxsup_mm.datasets.transforms'],
    allow_failed_imports=False)

model = dict(backbone=dict(type='ResNetBlurPool'))

test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow',
         color_type='color_ignore_orientation'),
    dict(type='FFCVCenterCrop', scale=256, crop_ratio=224 / 256,
         max_resolution=500, interpolation='area'),
    dict(type='PackInputs'),
]

val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
