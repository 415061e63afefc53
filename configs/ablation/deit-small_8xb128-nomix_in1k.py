# Table 1 / Table 8, DeiT-Small without Mixup/CutMix: baseline
# (cross-entropy).  Paper: 74.21.
# The Table 5 recipe (official DeiT, no distillation) with the batch
# augmentations removed, so every loss sees the hard labels the LS
# decomposition is defined on.  Its siblings *-nomix-<method>_in1k.py (here
# and in ../alpha_schedule/) differ from it only in method keys.
_base_ = '../deit/deit-small_8xb128_in1k.py'

model = dict(
    train_cfg=None,  # no Mixup / CutMix
    head=dict(loss=dict(_delete_=True, type='CrossEntropyLoss')))
