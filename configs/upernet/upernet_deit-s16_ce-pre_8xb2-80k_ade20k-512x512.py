# Table 6, "Baseline": UperNet + DeiT-Small pretrained on ImageNet-1K with
# plain cross-entropy (configs/deit/deit-small_8xb128_in1k.py), fine-tuned on
# ADE20K (8 GPUs x 2 images, 80k iterations, 512x512 crops) with
# cross-entropy. Evaluate single-scale, or multi-scale + flip with --tta.
#
# The backbone checkpoint is an mmpretrain checkpoint converted by
# tools/model_converters/mmpretrain2mmseg.py; point to yours with
#   --cfg-options model.pretrained=PATH
_base_ = 'mmseg::vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py'

model = dict(
    pretrained='pretrain/deit-small_ce_mmseg.pth',
    # mmpretrain's ViT has a patch-embedding bias and a final LayerNorm;
    # mmseg's ViT defaults to neither and would drop both tensors silently
    # (it loads pre-trained weights with strict=False).
    backbone=dict(patch_bias=True, final_norm=True))
