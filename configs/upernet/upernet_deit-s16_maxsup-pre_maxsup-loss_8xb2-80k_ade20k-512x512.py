# Beyond the paper: the MaxSup-pretrained DeiT-Small fine-tuned with MaxSup as
# the per-pixel loss of the UperNet decode head (the auxiliary FCN head keeps
# cross-entropy). The per-pixel formula is the classification one.
_base_ = './upernet_deit-s16_maxsup-pre_8xb2-80k_ade20k-512x512.py'

custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)

model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True,
            type='MaxSupLoss',
            alpha=0.1,
            avg_non_ignore=False,  # as the CrossEntropyLoss it replaces
            loss_weight=1.0,
            loss_name='loss_maxsup')))
