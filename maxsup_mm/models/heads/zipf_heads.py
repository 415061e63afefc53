"""Zipf's label smoothing heads (Liang et al., ECCV 2022) for mmpretrain.

Zipf-LS ("Efficient One Pass Self-distillation with Zipf's Label
Smoothing", Liang, Li, Bi, Sun, Zhang & Qin, ECCV 2022) builds each sample's
soft label from the *dense* predictions of the network itself: the final
classifier is applied to every location of the last feature map (CNNs) or to
every patch token (ViT/DeiT), each location votes for its arg-max class, the
classes are ranked by their votes and receive Zipf-distributed mass
``(1 / rank) ** power`` (target excluded).  The loss is

    loss = loss_module(z, y) + zipf_weight * KL(zipf || softmax(z without y))

where ``loss_module`` is the head's configured loss (plain CE in the paper).
The label and the KL live in :mod:`maxsup_mm.models.losses.functional`
(:func:`zipf_votes`, :func:`zipf_soft_label`, :func:`zipf_kl_term`); the
heads only produce the dense predictions, which is why Zipf-LS is a head
and not a loss: a loss sees only the pooled logits.

Soft targets (Mixup / CutMix): the configured loss gets the soft target as
usual; the Zipf term uses the arg-max of the soft target as "the target"
(the class removed from the Zipf label and from the KL softmax).  For Mixup
this is the class with the larger mixing weight, for CutMix the class of the
larger area.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from mmpretrain.models.heads import (LinearClsHead,
                                     VisionTransformerClsHead)

from maxsup_mm.models.losses.base import check_nonnegative
from maxsup_mm.models.losses.functional import (zipf_kl_term,
                                                zipf_soft_label, zipf_votes)

_UPSAMPLE_MODES = (None, 'bilinear', 'bicubic', 'nearest')


class ZipfLossMixin:
    """The Zipf-LS term on top of mmpretrain's ``ClsHead`` loss.

    The image-level logits are the head's own ``forward`` (mmpretrain's
    ``pre_logits`` and classifier), the configured loss and the training
    accuracy come from ``ClsHead._get_loss``; this mixin only adds the
    Zipf term.  Subclasses implement :meth:`zipf_dense_logits`, the dense
    logits ``(N, K, P)`` of every location (used without gradient).
    """

    def _init_zipf(self, zipf_weight: float, power: float,
                   image_vote: bool) -> None:
        self.zipf_weight = check_nonnegative('zipf_weight', zipf_weight)
        self.power = check_nonnegative('power', power)
        self.image_vote = bool(image_vote)

    def zipf_dense_logits(self, feats) -> torch.Tensor:
        """``(N, K, P)`` logits of the ``P`` locations (no gradient); a
        clear ``ValueError`` if ``feats`` has no location dimension."""
        raise NotImplementedError

    def zipf_label(self, cls_score: torch.Tensor, dense_logits: torch.Tensor,
                   hard_target: torch.Tensor) -> torch.Tensor:
        """The Zipf soft label ``(N, K)`` of a batch (no gradient)."""
        with torch.no_grad():
            votes = zipf_votes(dense_logits.detach())
            if self.image_vote:
                votes.scatter_add_(
                    1, cls_score.detach().argmax(dim=1, keepdim=True),
                    votes.new_ones(votes.shape[0], 1))
            return zipf_soft_label(votes, hard_target, self.power)

    def loss(self, feats: Tuple[torch.Tensor], data_samples: List,
             **kwargs) -> dict:
        """CE (the configured loss) plus ``zipf_weight`` times the Zipf KL.

        Args:
            feats (tuple[Tensor]): backbone (neck) outputs; the last one is
                used and must keep its spatial / token dimension.
            data_samples (list[DataSample]): with ``gt_label`` or, after
                Mixup / CutMix, ``gt_score``.

        Returns:
            dict: ``loss_cls`` (the configured loss), ``loss_zipf`` (the
            weighted KL) and, with ``cal_acc``, the training accuracy; the
            runner optimises (and logs as ``loss``) their sum.
        """
        dense_logits = self.zipf_dense_logits(feats)
        soft = 'gt_score' in data_samples[0]
        if self.cal_acc and soft:
            raise ValueError('cal_acc=True is pointless with Mixup/CutMix '
                             'soft targets; set cal_acc=False')
        cls_score = self(feats)
        upstream = self._get_loss(cls_score, data_samples, **kwargs)
        # not 'loss': mmengine logs the sum of all '*loss*' keys as 'loss'
        # and a key of that name would overwrite it in the log
        losses = dict(loss_cls=upstream.pop('loss'), **upstream)
        hard_target = (torch.stack([i.gt_score for i in data_samples])
                       .argmax(dim=1) if soft else
                       torch.cat([i.gt_label for i in data_samples]))
        label = self.zipf_label(cls_score, dense_logits, hard_target)
        losses['loss_zipf'] = self.zipf_weight * zipf_kl_term(
            cls_score, hard_target, label).mean()
        return losses


@MODELS.register_module()
class ZipfLinearClsHead(ZipfLossMixin, LinearClsHead):
    """Linear head with Zipf's label smoothing for CNN feature maps.

    Receives the **un-pooled** last feature map ``(N, C, H, W)`` (use
    ``neck=None``), pools it itself for the image-level logits, and applies
    the same ``fc`` to every position for the dense votes of Zipf-LS
    (Liang et al., ECCV 2022; see the module docstring for the loss).  At
    inference it behaves like :class:`mmpretrain.models.LinearClsHead`
    after global average pooling (it also accepts an already pooled
    ``(N, C)`` input there).

    Example:
        >>> model = dict(
        ...     neck=None,
        ...     head=dict(type='ZipfLinearClsHead', num_classes=1000,
        ...               in_channels=2048, zipf_weight=0.1,
        ...               loss=dict(type='CrossEntropyLoss')))

    Args:
        num_classes (int): number of classes.
        in_channels (int): channels of the feature map.
        zipf_weight (float): lambda, the weight of the KL term. 0.1 on
            ImageNet and CIFAR-100 (the authors' setting). Defaults to 0.1.
        power (float): Zipf exponent of the mass ``(1/rank)**power``.
            Defaults to 1.0.
        dense_upsample (str, optional): if set (``'bilinear'``,
            ``'bicubic'`` or ``'nearest'``), the map is upsampled by
            ``upsample_scale`` before the dense classifier, as the authors'
            release does on CIFAR. Defaults to None (ImageNet setting).
        upsample_scale (float): upsampling factor. Defaults to 2.0.
        image_vote (bool): also count the image-level prediction as one
            vote. Defaults to False (the authors' release counts only the
            dense votes).
        **kwargs: the arguments of ``LinearClsHead`` (``loss``, ``topk``,
            ``cal_acc``, ``init_cfg``).
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 zipf_weight: float = 0.1,
                 power: float = 1.0,
                 dense_upsample: Optional[str] = None,
                 upsample_scale: float = 2.0,
                 image_vote: bool = False,
                 **kwargs):
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         **kwargs)
        self._init_zipf(zipf_weight, power, image_vote)
        if dense_upsample not in _UPSAMPLE_MODES:
            raise ValueError(f'ZipfLinearClsHead: dense_upsample must be one '
                             f'of {_UPSAMPLE_MODES}, got {dense_upsample!r}')
        if not upsample_scale > 0:
            raise ValueError('ZipfLinearClsHead: upsample_scale must be > 0, '
                             f'got {upsample_scale}')
        self.dense_upsample = dense_upsample
        self.upsample_scale = float(upsample_scale)

    @staticmethod
    def _feature_map(feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        if x.dim() != 4:
            raise ValueError(
                'ZipfLinearClsHead needs the un-pooled feature map (N, C, H, '
                f'W) to compute dense votes, got shape {tuple(x.shape)}; set '
                "neck=None in the model config (the head pools itself)")
        return x

    def pre_logits(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Global average pooling of the last map (identity on ``(N, C)``)."""
        x = feats[-1]
        return x.mean(dim=(2, 3)) if x.dim() == 4 else x

    def dense_logits(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``fc`` at every position: ``(N, C, H, W)`` -> ``(N, K, P)``.

        With ``dense_upsample`` the logit map is upsampled after the ``fc``
        rather than the feature map before it: both maps are linear and the
        interpolation weights sum to one, so the result is the same, with
        ``K`` instead of ``C`` channels to interpolate, in channels-last
        layout (PyTorch's channels-first bilinear kernel on a 4x4 map of
        512 channels took 12 ms a batch on an H100).
        """
        num, _, height, width = feature_map.shape
        logits = self.fc(feature_map.flatten(2).transpose(1, 2))  # N, HW, K
        if self.dense_upsample is None:
            return logits.transpose(1, 2)
        maps = logits.view(num, height, width, -1).permute(0, 3, 1, 2)
        maps = F.interpolate(
            maps, scale_factor=self.upsample_scale, mode=self.dense_upsample,
            align_corners=None if self.dense_upsample == 'nearest' else False)
        return maps.flatten(2)

    def zipf_dense_logits(self, feats) -> torch.Tensor:
        with torch.no_grad():
            return self.dense_logits(self._feature_map(feats).detach())


@MODELS.register_module()
class ZipfVisionTransformerClsHead(ZipfLossMixin, VisionTransformerClsHead):
    """ViT/DeiT head with Zipf's label smoothing (patch-token votes).

    Receives all tokens ``(N, T, C)`` of the last layer (set the backbone's
    ``out_type='raw'``): the class token gives the image-level logits, as in
    :class:`mmpretrain.models.VisionTransformerClsHead`, and the same
    classifier (hidden layer, if any, and ``head``) applied to each patch
    token gives the dense votes of Zipf-LS (Liang et al., ECCV 2022; see the
    module docstring for the loss).  At inference it also accepts the class
    token alone (``out_type='cls_token'``).

    Example:
        >>> model = dict(
        ...     backbone=dict(out_type='raw'),
        ...     head=dict(type='ZipfVisionTransformerClsHead',
        ...               num_classes=1000, in_channels=384, zipf_weight=0.1))

    Args:
        num_classes (int): number of classes.
        in_channels (int): token dimension.
        zipf_weight (float): lambda, the weight of the KL term. Defaults to
            0.1 (the authors' ImageNet setting).
        power (float): Zipf exponent. Defaults to 1.0.
        num_extra_tokens (int): tokens before the patch tokens (the class
            token; 2 for a distilled DeiT). The first one is the class token.
            Defaults to 1.
        image_vote (bool): also count the class-token prediction as one
            vote. Defaults to False.
        **kwargs: the arguments of ``VisionTransformerClsHead``.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 zipf_weight: float = 0.1,
                 power: float = 1.0,
                 num_extra_tokens: int = 1,
                 image_vote: bool = False,
                 **kwargs):
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         **kwargs)
        self._init_zipf(zipf_weight, power, image_vote)
        if not isinstance(num_extra_tokens, int) or num_extra_tokens < 1:
            raise ValueError('ZipfVisionTransformerClsHead: num_extra_tokens '
                             'must be an int >= 1 (the class token comes '
                             f'first), got {num_extra_tokens!r}')
        self.num_extra_tokens = num_extra_tokens

    def _split(self, feats) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(class token (N, C), patch tokens (N, P, C) or None)."""
        feat = feats[-1]
        if isinstance(feat, (list, tuple)):  # old [patch_map, cls] format
            feat = feat[-1]
        if feat.dim() == 3:
            return feat[:, 0], feat[:, self.num_extra_tokens:]
        if feat.dim() == 2:
            return feat, None
        raise ValueError('ZipfVisionTransformerClsHead expects tokens (N, T, '
                         'C) or a class token (N, C), got '
                         f'{tuple(feat.shape)}')

    def pre_logits(self, feats) -> torch.Tensor:
        """mmpretrain's hidden layer (if any) on the class token."""
        cls_token, _ = self._split(feats)
        return super().pre_logits((cls_token, ))

    def zipf_dense_logits(self, feats) -> torch.Tensor:
        _, patches = self._split(feats)
        if patches is None or patches.shape[1] == 0:
            raise ValueError(
                'ZipfVisionTransformerClsHead needs the patch tokens to '
                "compute dense votes: set the backbone's out_type='raw'")
        with torch.no_grad():
            # mmpretrain's hidden layer and classifier on every patch token
            hidden = super().pre_logits((patches.detach(), ))
            return self.layers.head(hidden).transpose(1, 2)
