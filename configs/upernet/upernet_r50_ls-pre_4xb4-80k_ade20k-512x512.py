# ResNet-50 row: the backbone pretrained with label smoothing
# (configs/resnet/resnet50_8xb256-coslr-200e-ls_in1k.py).
_base_ = './upernet_r50_ce-pre_4xb4-80k_ade20k-512x512.py'

model = dict(pretrained='pretrain/resnet50_ls_mmseg.pth')
