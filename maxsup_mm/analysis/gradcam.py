"""Grad-CAM (Selvaraju et al.) for mmpretrain classifiers via ``grad-cam``.

``pytorch_grad_cam`` needs a plain ``nn.Module`` that maps an image batch to
logits, the layer(s) whose activations it weighs and, for transformers, a
function turning ``(B, tokens, C)`` activations into ``(B, C, H, W)`` maps.
:class:`LogitsModel` wraps an mmpretrain ``ImageClassifier``;
:func:`default_target_layers` picks the last residual block of a ResNet-like
backbone or the first norm of the last block of a ViT / DeiT (the last place
where patch tokens still feed the class token, as mmpretrain's own
``vis_cam.py`` does); :func:`vit_reshape_transform` drops the class (and
distillation) tokens and restores the patch grid.
"""
import math
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ['LogitsModel', 'vit_reshape_transform', 'is_vit_like',
           'default_target_layers', 'get_layer', 'gradcam_maps',
           'overlay_heatmap', 'gradcam_for_checkpoint']


class LogitsModel(nn.Module):
    """An mmpretrain classifier as a module that returns logits.

    Args:
        classifier (nn.Module): an mmpretrain ``ImageClassifier`` (anything
            whose ``forward(inputs, mode='tensor')`` returns the logits).
            Inputs are expected *after* its data preprocessor (normalised).
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.input_hw = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.input_hw = tuple(inputs.shape[-2:])
        out = self.classifier(inputs, mode='tensor')
        if isinstance(out, (tuple, list)):
            out = out[-1]
        if not torch.is_tensor(out) or out.dim() != 2:
            raise TypeError('the classifier must return (N, K) logits in '
                            "mode='tensor'; got "
                            f'{type(out).__name__} '
                            f'{getattr(out, "shape", "")}')
        return out


def vit_reshape_transform(tensor: torch.Tensor,
                          num_extra_tokens: int = 1,
                          grid: Optional[Sequence[int]] = None,
                          input_hw: Optional[Sequence[int]] = None
                          ) -> torch.Tensor:
    """``(B, extra + H*W, C)`` tokens -> ``(B, C, H, W)`` feature maps.

    Args:
        tensor (Tensor): token activations; 4-D maps pass through.
        num_extra_tokens (int): leading tokens to drop (1 for ViT's class
            token, 2 for DeiT's class + distillation tokens).
        grid (Sequence[int], optional): ``(H, W)`` of the patch grid.
            Inferred from ``input_hw``'s aspect ratio, else a square grid.
        input_hw (Sequence[int], optional): the input image size.

    Returns:
        Tensor: ``(B, C, H, W)``; token ``1 + r * W + c`` lands at ``[r, c]``.
    """
    if tensor.dim() == 4:
        return tensor
    if tensor.dim() != 3:
        raise ValueError(f'expected (B, tokens, C) activations, got shape '
                         f'{tuple(tensor.shape)}')
    tokens = tensor[:, num_extra_tokens:, :]
    n = tokens.shape[1]
    if grid is None:
        ratio = (input_hw[0] / input_hw[1]) if input_hw else 1.0
        h = int(round(math.sqrt(n * ratio)))
        w = n // max(h, 1)
        grid = (h, w)
    h, w = int(grid[0]), int(grid[1])
    if h * w != n:
        raise ValueError(f'{n} patch tokens (after dropping '
                         f'{num_extra_tokens} extra tokens) do not form a '
                         f'{h}x{w} grid; check num_extra_tokens')
    return tokens.reshape(tokens.shape[0], h, w,
                          tokens.shape[2]).permute(0, 3, 1, 2)


def is_vit_like(classifier: nn.Module) -> bool:
    """Whether the backbone is a token-based transformer (ViT, DeiT)."""
    backbone = getattr(classifier, 'backbone', classifier)
    return hasattr(backbone, 'num_extra_tokens') or \
        hasattr(backbone, 'patch_embed')


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``model`` called ``name`` (``named_modules``)."""
    modules = dict(model.named_modules())
    if name not in modules:
        close = [n for n in modules if name.split('.')[-1] in n][:10]
        raise ValueError(f'no layer named {name!r}; similar names: {close}')
    return modules[name]


def default_target_layers(classifier: nn.Module) -> List[nn.Module]:
    """The layer Grad-CAM weighs for an mmpretrain classifier.

    - ResNet-like backbones (``res_layers``): the last residual block.
    - ViT / DeiT (``layers`` of transformer blocks): ``layers[-1].ln1``.
    - Otherwise: the last normalisation layer of the backbone.
    """
    backbone = getattr(classifier, 'backbone', classifier)
    res_layers = getattr(backbone, 'res_layers', None)
    if res_layers:
        return [getattr(backbone, res_layers[-1])[-1]]
    layers = getattr(backbone, 'layers', None)
    if is_vit_like(classifier) and isinstance(layers, nn.ModuleList):
        last = layers[-1]
        return [getattr(last, 'ln1', last)]
    norms = [m for m in backbone.modules()
             if isinstance(m, (nn.modules.batchnorm._BatchNorm,
                               nn.GroupNorm, nn.LayerNorm))]
    if not norms:
        raise ValueError('cannot choose a Grad-CAM target layer for '
                         f'{type(backbone).__name__}; pass target_layers')
    return [norms[-1]]


def _make_reshape(model: nn.Module, classifier: nn.Module
                  ) -> Optional[Callable]:
    if not is_vit_like(classifier):
        return None
    backbone = getattr(classifier, 'backbone', classifier)
    extra = int(getattr(backbone, 'num_extra_tokens', 1))

    def reshape(tensor):
        return vit_reshape_transform(tensor, extra,
                                     input_hw=getattr(model, 'input_hw',
                                                      None))
    return reshape


def gradcam_maps(model: nn.Module,
                 inputs: torch.Tensor,
                 targets: Optional[Sequence[int]] = None,
                 target_layers: Optional[Sequence[nn.Module]] = None,
                 reshape_transform: Optional[Callable] = None,
                 batch_size: int = 16) -> np.ndarray:
    """Grad-CAM heat maps of ``model`` for the given target classes.

    Args:
        model (nn.Module): an mmpretrain classifier (wrapped in
            :class:`LogitsModel` here) or any module mapping images to logits.
        inputs (Tensor): ``(N, C, H, W)`` preprocessed images.
        targets (Sequence[int], optional): class per image; default: the
            predicted class.
        target_layers (Sequence[nn.Module], optional): default
            :func:`default_target_layers`.
        reshape_transform (Callable, optional): default
            :func:`vit_reshape_transform` for ViT-like backbones.
        batch_size (int): images per backward pass.

    Returns:
        np.ndarray: ``(N, H, W)`` maps in ``[0, 1]`` (each image scaled by
        its own maximum, as ``grad-cam`` does).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    is_mm = hasattr(model, 'data_preprocessor') or hasattr(model, 'backbone')
    classifier = model
    wrapped = LogitsModel(model) if is_mm else model
    if target_layers is None:
        target_layers = default_target_layers(classifier)
    if reshape_transform is None and is_mm:
        reshape_transform = _make_reshape(wrapped, classifier)
    if targets is not None and len(targets) != len(inputs):
        raise ValueError(f'{len(targets)} targets for {len(inputs)} images')
    device = next(wrapped.parameters()).device
    was_training = wrapped.training
    maps = []
    with torch.enable_grad():
        cam = GradCAM(model=wrapped, target_layers=list(target_layers),
                      reshape_transform=reshape_transform)
        try:
            for start in range(0, len(inputs), batch_size):
                x = inputs[start:start + batch_size].to(device)
                tg = None if targets is None else [
                    ClassifierOutputTarget(int(t))
                    for t in targets[start:start + batch_size]]
                maps.append(cam(input_tensor=x, targets=tg))
        finally:
            cam.activations_and_grads.release()
    wrapped.train(was_training)
    return np.concatenate(maps, axis=0).astype(np.float32)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray,
                    image_weight: float = 0.5) -> np.ndarray:
    """Blend an RGB image with a heat map (``grad-cam``'s jet colouring).

    Args:
        image (np.ndarray): ``(H, W, 3)`` uint8 RGB image.
        heatmap (np.ndarray): ``(H, W)`` map in ``[0, 1]``.
        image_weight (float): weight of the image in the blend.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8 RGB overlay.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image
    img = np.asarray(image, dtype=np.float32) / 255.0
    if img.shape[:2] != heatmap.shape:
        raise ValueError(f'image {img.shape[:2]} and heat map '
                         f'{heatmap.shape} sizes differ')
    return show_cam_on_image(img, np.clip(heatmap, 0, 1), use_rgb=True,
                             image_weight=image_weight)


def gradcam_for_checkpoint(cfg,
                           checkpoint: str,
                           indices: Sequence[int],
                           split: str = 'val',
                           target: str = 'label',
                           target_layers: Optional[Sequence[str]] = None,
                           device: Optional[str] = None,
                           cfg_options: Optional[dict] = None) -> dict:
    """Grad-CAM maps of an mmpretrain checkpoint on some images of a split.

    Args:
        cfg (str | Config): the mmpretrain config.
        checkpoint (str): the checkpoint.
        indices (Sequence[int]): dataset indices of the images.
        split (str): data split of the config (test pipeline).
        target (str): ``'label'`` (the ground-truth class, as in the paper's
            Figure 3) or ``'pred'`` (the predicted class).
        target_layers (Sequence[str], optional): module names (see
            ``model.named_modules()``); default
            :func:`default_target_layers`.
        device (str, optional): default ``'cuda'`` when available.
        cfg_options (dict, optional): config overrides.

    Returns:
        dict: ``images`` ``(N, H, W, 3)`` uint8 RGB (the network's input
        before normalisation), ``maps`` ``(N, H, W)`` in ``[0, 1]``,
        ``overlays`` ``(N, H, W, 3)`` uint8, ``labels`` and ``preds``.
    """
    from mmengine.dataset import pseudo_collate

    from .data import (build_split_dataset, load_analysis_config,
                       unpack_batch_images)
    from .extraction import build_classifier
    if target not in ('label', 'pred'):
        raise ValueError(f"target must be 'label' or 'pred', got {target!r}")
    cfg = load_analysis_config(cfg, cfg_options)
    model = build_classifier(cfg, checkpoint, device)
    dataset = build_split_dataset(cfg, split)
    batch = pseudo_collate([dataset[int(i)] for i in indices])
    pre = model.data_preprocessor
    to_rgb = bool(getattr(pre, 'to_rgb', False)
                  or getattr(pre, '_channel_conversion', False))
    images = unpack_batch_images(batch['inputs'], to_rgb)
    data = pre(batch, False)
    labels = np.array([int(s.gt_label.reshape(-1)[0])
                       for s in data['data_samples']])
    inputs = data['inputs']
    with torch.no_grad():
        logits = LogitsModel(model)(inputs)
    preds = logits.argmax(dim=1).cpu().numpy()
    layers = None
    if target_layers:
        layers = [get_layer(model, name) for name in target_layers]
    maps = gradcam_maps(model, inputs, labels if target == 'label' else preds,
                        target_layers=layers)
    if maps.shape[1:] != images.shape[1:3]:
        raise ValueError(f'Grad-CAM maps {maps.shape[1:]} and images '
                         f'{images.shape[1:3]} differ in size')
    overlays = np.stack([overlay_heatmap(img, m)
                         for img, m in zip(images, maps)])
    return dict(images=images, maps=maps, overlays=overlays, labels=labels,
                preds=preds)
