"""A tiny mmpretrain classifier run by mmengine's Runner, in process: the
tests' ResNet-18 MaxSup recipe (tests/data/configs/resnet18_maxsup_tiny.py,
Mixup/CutMix, alpha schedule) with a one-convolution backbone, so that a
few training iterations (also under ``compile=True``) take seconds."""
import torch.nn as nn
from mmengine.model import BaseModule

from child_config import RESNET18_MAXSUP_TINY as CFG


def _register():
    from mmpretrain.registry import MODELS

    @MODELS.register_module(name='TinyTestNet', force=True)
    class TinyTestNet(BaseModule):
        """conv 3 -> 8, ReLU, global average pool: features (N, 8)."""

        def __init__(self, init_cfg=None):
            super().__init__(init_cfg)
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return (self.conv(x).relu().mean(dim=(2, 3)), )


def tiny_runner(data_root: str, work_dir: str, iters: int = 8, **overrides):
    """A Runner of the tiny recipe for ``iters`` iterations (batch 4)."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    from maxsup_mm.apis.runner_utils import register_all
    cfg = Config.fromfile(CFG)
    register_all(cfg)
    _register()
    cfg.merge_from_dict(dict(
        work_dir=work_dir,
        data_root=data_root,
        train_dataloader=dict(dataset=dict(data_root=data_root)),
        model=dict(backbone=dict(_delete_=True, type='TinyTestNet'),
                   neck=None, head=dict(in_channels=8)),
        train_cfg=dict(_delete_=True, type='IterBasedTrainLoop',
                       max_iters=iters),
        param_scheduler=dict(_delete_=True, type='ConstantLR', factor=1.0),
        val_dataloader=None, val_cfg=None, val_evaluator=None,
        test_dataloader=None, test_cfg=None, test_evaluator=None,
        default_hooks=dict(logger=dict(interval=2),
                           checkpoint=dict(interval=10**6)),
        custom_hooks=[],
        randomness=dict(seed=0, deterministic=False),
    ))
    cfg.merge_from_dict(overrides)
    return Runner.from_cfg(cfg)
