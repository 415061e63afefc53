# Table 6, "Label Smoothing": as the CE baseline, but the DeiT-Small backbone
# was pretrained with label smoothing
# (configs/deit/deit-small_8xb128-ls_in1k.py).
_base_ = './upernet_deit-s16_ce-pre_8xb2-80k_ade20k-512x512.py'

model = dict(pretrained='pretrain/deit-small_ls_mmseg.pth')
