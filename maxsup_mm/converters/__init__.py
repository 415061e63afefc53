"""Checkpoint converters between OpenMMLab codebases, and importers of
external checkpoints (DeiT code base, timm, Lightning, torchvision)."""
from .external import (EMA_ENTRIES, EXTERNAL_FORMATS, RELEASED_CONFIGS,
                       convert_external_checkpoint,
                       convert_external_state_dict, detect_external_format,
                       external_format,
                       detect_source_architecture, extract_source_state_dict,
                       infer_target_model, map_external_keys,
                       matching_config)
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
    'map_vit_keys', 'target_backbone_from_config', 'EXTERNAL_FORMATS',
    'EMA_ENTRIES', 'RELEASED_CONFIGS', 'convert_external_checkpoint',
    'convert_external_state_dict', 'detect_external_format',
    'external_format',
    'detect_source_architecture', 'extract_source_state_dict',
    'infer_target_model', 'map_external_keys', 'matching_config'
]
