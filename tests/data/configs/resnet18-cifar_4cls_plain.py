# A 4-class ResNet-18 with the CIFAR stem (16 base channels) on generated
# 32x32 ImageNet-layout folders: mmpretrain's own recipe and nothing of
# maxsup_mm (no custom_imports, the upstream loss), trained for one epoch.
# Tests derive from it with tests/helpers/child_config.py (data root, and
# what they add: custom_imports, a loss, evaluators).
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'

data_root = 'data/imagenet'  # overridden by the tests
model = dict(
    backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=16,
                  base_channels=16),
    head=dict(num_classes=4, in_channels=128, topk=(1, )))
data_preprocessor = dict(num_classes=4)
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=pipeline))
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=1)
optim_wrapper = dict(optimizer=dict(lr=0.05))
default_hooks = dict(logger=dict(interval=1))
