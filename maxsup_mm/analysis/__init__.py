"""Analysis toolkit: do the representations behave as the MaxSup paper says?

Pure functions on arrays (tested against closed-form answers):

- :func:`class_separation` -- ``d_within``, ``d_total``, ``R^2`` of
  Kornblith et al. (2021) (Tables 2 and 9), exact in one ``O(N D)`` pass.
- :func:`linear_probe` -- L2 multinomial logistic regression on frozen
  features (Table 3).
- :func:`logit_statistics` / :func:`logit_components` -- ``z_gt``,
  ``z_max``, the logit range and the error gap ``z_max - z_gt`` (Figure 2).
- :func:`expected_calibration_error` / :func:`reliability_bins`.
- :func:`project_to_template_plane` -- Müller et al. (2019) (Figures 4-5).
- :func:`gradcam_maps` -- Grad-CAM via ``grad-cam`` for ResNet and ViT/DeiT
  (Figure 3).

the glue to run them on mmpretrain checkpoints: :func:`extract_features`
(one cached pass: penultimate features + logits + labels; downstream probe
data fed as the model saw its own, :mod:`~maxsup_mm.analysis.data`), and
:func:`compare`, which composes the units -- per run the metrics
(:mod:`~maxsup_mm.analysis.measure`), per analysis the figures
(:mod:`~maxsup_mm.analysis.figures`, matplotlib ``Figure`` objects from
:mod:`~maxsup_mm.analysis.plotting`) and the report sections
(:mod:`~maxsup_mm.analysis.sections`, tables of
:mod:`~maxsup_mm.analysis.tables`) -- and returns a :class:`Comparison`.
The command-line front end is ``tools/analysis/analyze.py``.
"""
from .calibration import (expected_calibration_error, reliability_bins,
                          softmax)
from .data import build_split_dataset, input_size
from .extraction import (build_classifier, extract_features,
                         find_classifier_layer, load_weights)
from .geometry import (class_separation, project_to_template_plane,
                       select_confused_classes, template_plane_basis)
from .gradcam import (LogitsModel, default_target_layers,
                      gradcam_for_checkpoint, gradcam_maps, overlay_heatmap,
                      vit_reshape_transform)
from .logits import logit_components, logit_statistics
from .measure import GroupResult, RunResult
from .plotting import (plot_feature_projection, plot_gradcam_grid,
                       plot_logit_densities, plot_reliability_diagram,
                       plot_reliability_diagrams, save_figure)
from .probe import linear_probe
from .report import Comparison, compare
from .settings import (ANALYSES, CompareSettings, ExtractionOptions,
                       GradcamOptions, ProbeOptions, ProjectionOptions,
                       RunSpec, parse_run_spec)
from .tables import format_mean_std, markdown_table, mean_std

__all__ = [
    'class_separation', 'project_to_template_plane',
    'select_confused_classes', 'template_plane_basis',
    'expected_calibration_error', 'reliability_bins', 'softmax',
    'linear_probe', 'logit_components', 'logit_statistics',
    'LogitsModel', 'default_target_layers', 'gradcam_maps',
    'gradcam_for_checkpoint', 'overlay_heatmap', 'vit_reshape_transform',
    'extract_features', 'build_classifier', 'build_split_dataset',
    'find_classifier_layer', 'load_weights', 'input_size',
    'plot_feature_projection', 'plot_gradcam_grid', 'plot_logit_densities',
    'plot_reliability_diagram', 'plot_reliability_diagrams', 'save_figure',
    'compare', 'Comparison', 'RunResult', 'GroupResult', 'RunSpec',
    'parse_run_spec', 'ANALYSES', 'CompareSettings', 'ExtractionOptions',
    'ProbeOptions', 'ProjectionOptions', 'GradcamOptions',
    'format_mean_std', 'mean_std', 'markdown_table'
]
