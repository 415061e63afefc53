"""Train and test entry points shared by ``tools/`` and the quickstart."""
from typing import Optional

from mmengine.config import Config

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
                     launcher: str = 'none') -> Config:
    """Load a config for evaluating ``checkpoint`` (``tools/test.py``).

    Args:
        config (str): config file path.
        checkpoint (str): checkpoint to evaluate.
        work_dir (str, optional): where logs go.
        tta (bool): test-time augmentation from the config's ``tta_model``
            and ``tta_pipeline`` (mmseg: multi-scale + flip).
        cfg_options (dict, optional): overrides, as ``--cfg-options``.
        launcher (str): job launcher.
    """
    cfg = load_config(config, cfg_options, launcher)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = default_work_dir(config)
    cfg.load_from = checkpoint
    if tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError(f'tta: {config} defines no tta_model / '
                             'tta_pipeline')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    return cfg


def evaluate_checkpoint(config: str, checkpoint: str, **kwargs) -> dict:
    """Evaluate ``checkpoint``; keyword arguments as :func:`prepare_test_cfg`.

    Returns:
        dict: the metrics.
    """
    runner = build_runner(prepare_test_cfg(config, checkpoint, **kwargs))
    return runner.test()
