"""Checkpoint converters between OpenMMLab codebases."""
from .mmpretrain2mmseg import (ConversionError, check_against_target,
                               convert_mmpretrain_to_mmseg,
                               convert_state_dict, detect_architecture,
                               expected_backbone_shapes, infer_target_backbone,
                               load_classifier_checkpoint, map_resnet_keys,
                               map_vit_keys, target_backbone_from_config)

__all__ = [
    'ConversionError', 'check_against_target', 'convert_mmpretrain_to_mmseg',
    'convert_state_dict', 'detect_architecture', 'expected_backbone_shapes',
    'infer_target_backbone', 'load_classifier_checkpoint', 'map_resnet_keys',
    'map_vit_keys', 'target_backbone_from_config'
]
