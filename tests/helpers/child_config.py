"""Test configs derived from the configs of ``tests/data/configs``: the
data root of generated data plus what a test adds."""
import os
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'tests', 'data', 'configs')
#: mmpretrain's ResNet-18 recipe, tiny, with MaxSup, Mixup/CutMix, alpha
RESNET18_MAXSUP_TINY = osp.join(CONFIGS, 'resnet18_maxsup_tiny.py')
#: a 4-class CIFAR-stem ResNet-18, upstream only (no maxsup_mm)
RESNET18_CIFAR_PLAIN = osp.join(CONFIGS, 'resnet18-cifar_4cls_plain.py')
#: what a config needs to use maxsup_mm's modules
CUSTOM_IMPORTS = ("custom_imports = dict(imports=['maxsup_mm'], "
                  "allow_failed_imports=False)\n")


def write_child_config(path, base: str, data_root: str, extra: str = ''):
    """Write ``_base_ = base`` with every dataloader reading ``data_root``,
    then ``extra`` (config text); return the path as a string."""
    with open(path, 'w') as f:
        f.write(f"_base_ = {base!r}\n"
                f"data_root = {data_root!r}\n"
                "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
                "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
                "test_dataloader = val_dataloader\n" + extra)
    return os.fspath(path)


#: a tiny DeiT (2 layers, 32 dims) on the 4-class 32x32 images under
#: ``{root}`` (``VIT_CFG.format(root=...)``), for extraction and analysis
VIT_CFG = """
_base_ = 'mmpretrain::deit/deit-small_4xb256_in1k.py'
custom_imports = dict(imports=['maxsup_mm'], allow_failed_imports=False)
data_root = {root!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=2,
                            num_heads=2, feedforward_channels=64),
                  img_size=32, patch_size=8),
    head=dict(num_classes=4, in_channels=32),
    train_cfg=None)
data_preprocessor = dict(num_classes=4)
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = val_dataloader
"""
