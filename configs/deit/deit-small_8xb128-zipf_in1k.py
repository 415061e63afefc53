# Table 5, DeiT-Small (official DeiT recipe, no distillation):
# Zipf's label smoothing.  Paper: 75.89.
_base_ = './deit-small_8xb128_in1k.py'

# all tokens go to the head: class token -> logits, patch tokens -> votes
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(out_type='raw'),
    head=dict(type='ZipfVisionTransformerClsHead', zipf_weight=0.1))
