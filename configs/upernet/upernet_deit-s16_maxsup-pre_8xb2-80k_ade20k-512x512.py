# Table 6, "MaxSup": as the CE baseline, but the DeiT-Small backbone was
# pretrained with MaxSup (configs/deit/deit-small_8xb128-maxsup_in1k.py).
# Fine-tuning uses plain cross-entropy, as in the paper.
_base_ = './upernet_deit-s16_ce-pre_8xb2-80k_ade20k-512x512.py'

model = dict(pretrained='pretrain/deit-small_maxsup_mmseg.pth')
