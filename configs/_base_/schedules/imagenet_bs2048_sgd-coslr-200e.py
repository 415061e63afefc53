# The paper's ImageNet recipe for ResNets / MobileNetV2 (Sec. 5.1.1, Table 4):
# 200 epochs, SGD momentum 0.9, weight decay 1e-4, total batch 2048,
# initial lr 0.85, cosine annealing.  "Additional training hyperparameters
# follow the FFCV training scripts" (footnote 2): FFCV does not decay the
# BatchNorm parameters.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.85, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0))

param_scheduler = dict(
    type='CosineAnnealingLR', T_max=200, by_epoch=True, begin=0, end=200)

train_cfg = dict(by_epoch=True, max_epochs=200, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# lr 0.85 belongs to a total batch of 2048 (8 GPUs x 256)
auto_scale_lr = dict(base_batch_size=2048)
