# The TorchVision-V1 recipe of the paper's Appendix E (Table 7): 90 epochs,
# step lr (x0.1 every 30 epochs) from 0.1, total batch 512, SGD momentum 0.9,
# weight decay 1e-4.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4))

param_scheduler = dict(
    type='MultiStepLR', by_epoch=True, milestones=[30, 60], gamma=0.1)

train_cfg = dict(by_epoch=True, max_epochs=90, val_interval=1)
val_cfg = dict()
test_cfg = dict()

auto_scale_lr = dict(base_batch_size=512)
