"""Train and test entry points shared by ``tools/`` and the quickstart."""
import pickle
from typing import Any, Dict, Optional

from mmengine.config import Config
from mmengine.evaluator import DumpResults
from mmengine.hooks import Hook
from mmengine.logging import print_log

from maxsup_mm.checkpoint import (CheckpointError, check_finite,
                                  load_checkpoint, load_state_dict_checked)
from maxsup_mm.converters import (EMA_ENTRIES, EXTERNAL_FORMATS,
                                  external_format)
from maxsup_mm.fileio import atomic_write

from .runner_utils import (add_default_hooks, build_runner, default_work_dir,
                           load_config)


def prepare_train_cfg(config: str,
                      work_dir: Optional[str] = None,
                      resume: Optional[str] = None,
                      cfg_options: Optional[dict] = None,
                      amp: bool = False,
                      no_validate: bool = False,
                      auto_scale_lr: bool = False,
                      launcher: str = 'none') -> Config:
    """Load a config and apply the options of ``tools/train.py``.

    Args:
        config (str): config file path.
        work_dir (str, optional): where logs and checkpoints go; defaults to
            the config's ``work_dir`` or ``./work_dirs/<config name>``.
        resume (str, optional): ``'auto'`` resumes from the latest
            checkpoint in ``work_dir``; a path resumes from that checkpoint.
        cfg_options (dict, optional): overrides, as ``--cfg-options``.
        amp (bool): use ``AmpOptimWrapper``.
        no_validate (bool): skip validation during training.
        auto_scale_lr (bool): scale the learning rate with the batch size.
        launcher (str): ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.

    Returns:
        Config: the config to build the runner from.
    """
    cfg = load_config(config, cfg_options, launcher)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = default_work_dir(config)
    if amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if auto_scale_lr:
        cfg.setdefault('auto_scale_lr', {})['enable'] = True
    if resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif resume is not None:
        cfg.resume, cfg.load_from = True, resume
    return add_default_hooks(cfg)


def train_model(config: str, **kwargs):
    """Train from ``config``; keyword arguments as :func:`prepare_train_cfg`.

    Returns:
        Runner: the runner after training.
    """
    runner = build_runner(prepare_train_cfg(config, **kwargs))
    runner.train()
    return runner


def prepare_test_cfg(config: str,
                     checkpoint: str,
                     work_dir: Optional[str] = None,
                     tta: bool = False,
                     cfg_options: Optional[dict] = None,
                     launcher: str = 'none',
                     show_dir: Optional[str] = None,
                     show_interval: int = 1) -> Config:
    """Load a config for evaluating ``checkpoint`` (``tools/test.py``).

    Args:
        config (str): config file path.
        checkpoint (str): checkpoint to evaluate.
        work_dir (str, optional): where logs go.
        tta (bool): test-time augmentation from the config's ``tta_model``
            and ``tta_pipeline`` (mmseg: multi-scale + flip).
        cfg_options (dict, optional): overrides, as ``--cfg-options``.
        launcher (str): job launcher.
        show_dir (str, optional): save painted predictions here, as
            mmpretrain's (``VisualizationHook.out_dir``) and mmseg's
            (``visualizer.save_dir``) ``tools/test.py --show-dir`` do.
        show_interval (int): paint every n-th sample (mmpretrain) / batch
            (mmseg), as mmpretrain's ``--interval``.
    """
    cfg = load_config(config, cfg_options, launcher)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = default_work_dir(config)
    cfg.load_from = checkpoint
    if show_dir is not None:
        _enable_visualization(cfg, config, show_dir, show_interval)
    if tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError(f'tta: {config} defines no tta_model / '
                             'tta_pipeline')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    return cfg


def _enable_visualization(cfg: Config, config: str, show_dir: str,
                          interval: int) -> None:
    hooks = cfg.get('default_hooks', None) or {}
    if 'visualization' not in hooks:
        raise ValueError(f'--show-dir: {config} has no '
                         'default_hooks.visualization (add '
                         "visualization=dict(type='VisualizationHook') or, "
                         "for mmseg, type='SegVisualizationHook')")
    vis = hooks['visualization']
    vis['interval'] = interval
    if cfg.get('default_scope', 'mmpretrain') == 'mmseg':
        vis['draw'] = True
        cfg.visualizer['save_dir'] = show_dir
    else:
        vis['enable'] = True
        vis['out_dir'] = show_dir


class _CheckLoadedWeights(Hook):
    """Refuse to score a checkpoint that does not fit the model.

    Runs after the runner has read the checkpoint and before mmengine loads
    it (non-strictly): non-finite tensors and, unless ``strict`` is False,
    missing / unexpected keys and shape mismatches stop the test with one
    :class:`~maxsup_mm.checkpoint.CheckpointError` line.
    """
    priority = 'LOWEST'

    def __init__(self, source: str, strict: bool = True):
        self.source, self.strict = source, strict

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('state_dict', checkpoint) \
            if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(f'{self.source}: no state_dict (got '
                                  f'{type(checkpoint).__name__})')
        check_finite(state, self.source)
        load_state_dict_checked(runner.model, state, self.source,
                                strict=self.strict)


class PredictionDump(DumpResults):
    """mmengine's ``DumpResults`` (what mmpretrain's ``tools/test.py --out``
    appends), written atomically.  mmseg's per-pixel ``seg_logits`` (K
    floats per pixel, ~200 MB per ADE20K image) are left out; the dumped
    ``pred_sem_seg`` holds the predicted classes."""

    #: prediction fields not dumped
    DROP = ('seg_logits', )

    def process(self, data_batch, predictions) -> None:
        super().process(data_batch, [
            {k: v for k, v in p.items() if k not in self.DROP}
            if isinstance(p, dict) else p for p in predictions])

    def compute_metrics(self, results: list) -> dict:
        with atomic_write(self.out_file_path, 'wb') as f:
            pickle.dump(results, f)
        print_log(f'Results has been saved to {self.out_file_path}.',
                  logger='current')
        return {}


#: the scheme of ``load_from`` for a checkpoint already read by
#: :func:`evaluate_checkpoint`: mmengine's ``CheckpointLoader`` hands the
#: runner that object instead of reading the file a second time
PRELOADED = 'maxsup-preloaded://'
_preloaded: Dict[str, Any] = {}


def _load_preloaded(filename: str, map_location=None) -> Any:
    """mmengine loader of :data:`PRELOADED`: the object read before the
    runner was built (once), else the file (e.g. a config dumped to the
    work dir, evaluated again)."""
    path = filename[len(PRELOADED):]
    if path in _preloaded:
        return _preloaded.pop(path)
    return load_checkpoint(path, map_location or 'cpu')


def read_test_checkpoint(checkpoint: str) -> Any:
    """Read a checkpoint to evaluate, before any runner is built.

    Loads it safely (:func:`maxsup_mm.checkpoint.load_checkpoint`) and
    refuses the external formats that
    :mod:`maxsup_mm.converters.external` recognises (DeiT code base, timm,
    Lightning, torchvision): their keys fit no mmpretrain model; the message
    gives the converter's command.

    Args:
        checkpoint (str): a local checkpoint file.

    Returns:
        the loaded checkpoint.

    Raises:
        CheckpointError: unsafe, corrupt or external; one line.
        FileNotFoundError: no such file.
    """
    obj = load_checkpoint(checkpoint)
    fmt = external_format(obj)
    if fmt is not None:
        ema = (' (add --ema for the EMA weights)' if fmt in EMA_ENTRIES
               else '')
        raise CheckpointError(
            f'{checkpoint} is a {fmt} ({EXTERNAL_FORMATS[fmt]}), not an '
            'OpenMMLab checkpoint: convert it first with python '
            'tools/model_converters/external2mmpretrain.py '
            f'{checkpoint} DST{ema} and test DST')
    return obj


def evaluate_checkpoint(config: str, checkpoint: str, strict: bool = True,
                        dump_predictions: Optional[str] = None,
                        **kwargs) -> dict:
    """Evaluate ``checkpoint``; keyword arguments as :func:`prepare_test_cfg`.

    The checkpoint must fit the config's model (every key, every shape, no
    NaN/Inf), else :class:`~maxsup_mm.checkpoint.CheckpointError`; a
    partly loaded network would give the metrics of a partly random one.
    A local checkpoint is read once, before the runner is built
    (:func:`read_test_checkpoint`: an unsafe, corrupt or external file is
    refused before any log line), and handed to the runner.

    Args:
        config (str): config file path.
        checkpoint (str): checkpoint to evaluate.
        strict (bool): ``False`` loads what fits and warns.
        dump_predictions (str, optional): a ``.pkl`` file that receives
            every sample's prediction (:class:`PredictionDump`).

    Returns:
        dict: the metrics.
    """
    cfg = prepare_test_cfg(config, checkpoint, **kwargs)
    if '://' in checkpoint:  # a URL: mmengine reads it
        return _test(cfg, checkpoint, strict, dump_predictions)
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(PRELOADED, _load_preloaded, force=True)
    _preloaded[checkpoint] = read_test_checkpoint(checkpoint)
    cfg.load_from = PRELOADED + checkpoint
    try:
        return _test(cfg, checkpoint, strict, dump_predictions)
    finally:  # not handed over (an error while building the runner)
        _preloaded.pop(checkpoint, None)


def _test(cfg: Config, checkpoint: str, strict: bool,
          dump_predictions: Optional[str]) -> dict:
    runner = build_runner(cfg)
    runner.register_hook(_CheckLoadedWeights(checkpoint, strict))
    if dump_predictions:
        runner.test_evaluator.metrics.append(
            PredictionDump(out_file_path=dump_predictions))
    return runner.test()
