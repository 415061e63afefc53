"""What :func:`maxsup_mm.analysis.compare` analyses, and how.

:class:`CompareSettings` groups the options: the analyses, the split, the
calibration bins and the report title at the top; the linear probe, the
feature projection, Grad-CAM and the feature extraction each in their own
small dataclass.  A run to analyse is a :class:`RunSpec`.
"""
import dataclasses
import os.path as osp
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Sequence, Tuple

__all__ = ['ANALYSES', 'RunSpec', 'parse_run_spec', 'as_runs',
           'ExtractionOptions', 'ProbeOptions', 'ProjectionOptions',
           'GradcamOptions', 'CompareSettings']

#: every analysis :func:`compare` knows, in report order
ANALYSES = ('accuracy', 'calibration', 'separation', 'probe', 'logits',
            'projection', 'gradcam')


class RunSpec(NamedTuple):
    """One checkpoint to analyse: a method name, its config and weights."""
    name: str
    cfg: object
    checkpoint: str


def parse_run_spec(spec: str) -> RunSpec:
    """Parse ``[NAME=]CONFIG:CHECKPOINT``.

    The checkpoint is what follows the *last* colon, so configs such as
    ``mmpretrain::resnet/resnet18_8xb32_in1k.py`` work.  Without ``NAME=``
    the name is the config's file name without extension; runs with the same
    name are aggregated (seeds).
    """
    name = None
    head, sep, rest = spec.partition('=')
    if sep and head and not any(ch in head for ch in '/:\\'):
        name, spec = head, rest
    cfg, sep, ckpt = spec.rpartition(':')
    if not sep or not cfg or not ckpt:
        raise ValueError(f'run {spec!r} is not of the form '
                         '[NAME=]CONFIG:CHECKPOINT')
    if name is None:
        name = osp.splitext(osp.basename(cfg))[0]
    return RunSpec(name, cfg, ckpt)


def as_runs(runs) -> List[RunSpec]:
    """``"[NAME=]CFG:CKPT"`` strings or ``(name, cfg, checkpoint)`` tuples
    as :class:`RunSpec` s."""
    out = []
    for run in runs:
        if isinstance(run, str):
            out.append(parse_run_spec(run))
        elif len(run) == 3:
            out.append(RunSpec(str(run[0]), run[1], str(run[2])))
        else:
            raise TypeError(f'a run is "[NAME=]CFG:CKPT" or (name, cfg, '
                            f'checkpoint), got {run!r}')
    if not out:
        raise ValueError('compare() needs at least one run')
    return out


@dataclass
class ExtractionOptions:
    """Arguments of :func:`~maxsup_mm.analysis.extract_features` shared by
    every pass (see there)."""
    batch_size: Optional[int] = None
    num_workers: int = 0
    device: Optional[str] = None
    cache: bool = True
    cache_dir: Optional[str] = None
    max_samples: Optional[int] = None
    cfg_options: Optional[dict] = None
    progress: bool = True


@dataclass
class ProbeOptions:
    """The linear probe (Table 3 protocol).

    Args:
        cfg (str | Config, optional): downstream dataset config (e.g.
            mmpretrain's CIFAR-10); default: each run's own config.
        train_split (str): split the probe is fit on.
        test_split (str, optional): split it is scored on; default: the
            analysed split.
        holdout (float): fraction of the train split held out to choose C.
        size (tuple[int, int], optional): ``(w, h)`` the downstream images
            are resized to; default: the model's input size.
    """
    cfg: object = None
    train_split: str = 'train'
    test_split: Optional[str] = None
    holdout: float = 0.2
    size: Optional[Tuple[int, int]] = None


@dataclass
class ProjectionOptions:
    """The feature projection: three ``classes`` (default: the confusion
    criterion of Appendix G on the pooled predictions of all runs) and
    ``per_class`` samples of each (80 in the paper)."""
    classes: Optional[Sequence[int]] = None
    per_class: int = 80


@dataclass
class GradcamOptions:
    """Grad-CAM: ``images`` in the grid, ``target`` ``'label'`` or
    ``'pred'``, target ``layers`` (module names; default per backbone)."""
    images: int = 6
    target: str = 'label'
    layers: Optional[Sequence[str]] = None


#: the flat keyword names of ``compare()`` -> (group, field)
_FLAT = dict(
    probe_cfg=('probe', 'cfg'), probe_train_split=('probe', 'train_split'),
    probe_test_split=('probe', 'test_split'),
    probe_holdout=('probe', 'holdout'), probe_size=('probe', 'size'),
    proj_classes=('projection', 'classes'),
    proj_per_class=('projection', 'per_class'),
    gradcam_images=('gradcam', 'images'),
    gradcam_target=('gradcam', 'target'),
    gradcam_layers=('gradcam', 'layers'),
    **{f.name: ('extraction', f.name)
       for f in dataclasses.fields(ExtractionOptions)})


@dataclass
class CompareSettings:
    """Everything :func:`~maxsup_mm.analysis.compare` needs besides the runs.

    Args:
        analyses (Sequence[str]): a subset of :data:`ANALYSES`.
        split (str): the evaluated split of each config.
        train_split (str, optional): also measure class separation on this
            split (e.g. ``'train'``, as Table 9 does).
        n_bins (int): calibration bins.
        title (str): report title.
        probe, projection, gradcam, extraction: per-analysis options.
    """
    analyses: Sequence[str] = ANALYSES
    split: str = 'val'
    train_split: Optional[str] = None
    n_bins: int = 15
    title: str = 'Analysis report'
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    projection: ProjectionOptions = field(default_factory=ProjectionOptions)
    gradcam: GradcamOptions = field(default_factory=GradcamOptions)
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)

    def __post_init__(self):
        unknown = set(self.analyses) - set(ANALYSES)
        if unknown:
            raise ValueError(f'unknown analyses {sorted(unknown)}; choose '
                             f'from {ANALYSES}')
        # report order, whatever order they were given in
        self.analyses = tuple(a for a in ANALYSES if a in self.analyses)
        if self.gradcam.target not in ('label', 'pred'):
            raise ValueError(f"gradcam target must be 'label' or 'pred', "
                             f'got {self.gradcam.target!r}')

    def replace(self, **options) -> 'CompareSettings':
        """A copy with ``options`` replaced: fields of this class by name,
        and the flat names of the per-analysis options (``probe_cfg``,
        ``proj_classes``, ``gradcam_images``, ``device``, ``cfg_options``,
        ``progress``, ...)."""
        top = {k: v for k, v in options.items() if k not in _FLAT}
        unknown = set(top) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f'unknown compare() options: {sorted(unknown)}')
        groups = {}
        for key, value in options.items():
            if key in _FLAT:
                group, name = _FLAT[key]
                groups.setdefault(group, {})[name] = value
        for group, values in groups.items():
            base = top.get(group, getattr(self, group))
            top[group] = dataclasses.replace(base, **values)
        return dataclasses.replace(self, **top)
