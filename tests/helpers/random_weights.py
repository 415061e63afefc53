"""Networks with non-trivial random weights, the mmseg backbone a config
builds, and the largest difference between two lists of feature maps: what
the converter tests compare a source network and its conversion with."""
import torch
from torch.nn.modules.batchnorm import _BatchNorm


def randomize_(model, seed, img_size=64):
    """Non-trivial values everywhere (norm scales, biases, tokens, BN
    statistics), so that swapped or dropped tensors show.  BN running
    statistics are those of random ``img_size`` images, which keeps the
    activations O(1).  Returns ``model`` in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(('cls_token', 'pos_embed')):
                p.copy_(0.5 * noise)
            elif p.dim() > 1:
                p.copy_(noise * p[0].numel() ** -0.5)
            elif name.endswith('weight'):  # norm scales
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            model(torch.randn(4, 3, img_size, img_size, generator=g))
    model.eval()
    return model


def seg_backbone(config, **overrides):
    """The mmseg backbone a seg config builds (SyncBN reverted, as on CPU),
    in eval mode; ``overrides`` replace its config entries."""
    from mmengine.model import revert_sync_batchnorm
    import mmseg.models  # noqa: F401
    from mmseg.registry import MODELS

    from maxsup_mm.converters.mmpretrain2mmseg import read_config
    cfg = read_config(config).model.backbone.to_dict()
    cfg.update(overrides)
    cfg['type'] = 'mmseg.' + cfg['type']
    backbone = revert_sync_batchnorm(MODELS.build(cfg))
    backbone.eval()  # (mmseg's ViT.train returns None: no chaining)
    return backbone


def max_diff(outs_a, outs_b):
    """The largest absolute difference between two equally long lists of
    equally shaped tensors."""
    assert len(outs_a) == len(outs_b)
    diffs = []
    for a, b in zip(outs_a, outs_b):
        assert a.shape == b.shape
        diffs.append((a - b).abs().max().item())
    return max(diffs)
