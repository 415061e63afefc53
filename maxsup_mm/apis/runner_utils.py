"""What ``tools/train.py`` and ``tools/test.py`` share.

They work for mmpretrain and mmsegmentation configs alike: the config's
``default_scope`` decides which registries (and which upstream registration
of modules) are used.  On machines without CUDA, distributed runs use the
``gloo`` backend, which mmengine's ``pytorch`` launcher does not handle.
"""
import os
import os.path as osp
import warnings
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.config import Config, ConfigDict

from maxsup_mm.datasets import use_checked_data
from maxsup_mm.engine import exact_resume_loop_cfg
# re-exported: ``maxsup_mm.apis.register_all`` is where tools found it
from maxsup_mm.utils import register_all  # noqa: F401

from .cli import resolve_config

#: hooks every run of our tools gets unless the config lists them already
DEFAULT_HOOKS = ('WeightsOnlyCheckpointHook', 'ReseedHook',
                 'NonFiniteLossHook', 'LossTermsHook')


def add_default_hooks(cfg: Config) -> Config:
    """Append :data:`DEFAULT_HOOKS` to ``cfg.custom_hooks`` where missing and
    use the exact-resume training loops.

    ``WeightsOnlyCheckpointHook`` makes checkpoints safe to load under torch
    >= 2.6, ``ReseedHook`` makes ``--resume`` exact, ``NonFiniteLossHook``
    stops a diverged run and ``LossTermsHook`` logs the CE part and the
    regularizer of our losses separately.  mmengine's ``EpochBasedTrainLoop`` /
    ``IterBasedTrainLoop`` (also when chosen by ``train_cfg.by_epoch``) are
    replaced by :mod:`maxsup_mm.engine.loops`' exact-resume loops, which
    resume from mid-epoch checkpoints without repeating batches; other loop
    types are kept.  Hooks and loops are registered in mmengine's root
    registries, so mmpretrain and mmseg runners both find them.
    """
    hooks = list(cfg.get('custom_hooks', None) or [])
    present = {str(h.get('type', '')).split('.')[-1] for h in hooks}
    for name in DEFAULT_HOOKS:
        if name not in present:
            hooks.append(ConfigDict(type=name))
    cfg.custom_hooks = hooks
    if cfg.get('train_cfg', None):
        cfg.train_cfg = exact_resume_loop_cfg(cfg.train_cfg)
    return cfg


def init_cpu_distributed(cfg: Config, launcher: str) -> None:
    """Start a ``gloo`` process group on CPU-only machines.

    mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` and wraps
    the model in DDP with ``device_ids=[LOCAL_RANK]``; both fail without
    CUDA.  Starting the group here (from torchrun's environment) makes the
    runner skip its own initialisation, and ``device_ids=None`` lets DDP run
    on the CPU.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise RuntimeError(f'launcher {launcher!r} needs CUDA; on a CPU-only '
                           "machine use --launcher pytorch (torchrun)")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend='gloo')
    wrapper = dict(cfg.get('model_wrapper_cfg', None) or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None
    # DDP's own default (True) would overwrite per-rank buffers such as the
    # statistics of OnlineLabelSmoothLoss; mmengine's default is False.
    wrapper.setdefault('broadcast_buffers', False)
    cfg.model_wrapper_cfg = wrapper
    cfg.setdefault('env_cfg', ConfigDict())
    cfg.env_cfg.setdefault('dist_cfg', ConfigDict())
    cfg.env_cfg.dist_cfg['backend'] = 'gloo'


def close_distributed() -> None:
    """End the process group that a distributed run started.

    The ranks meet at a barrier, then each destroys its group.  A ``gloo``
    group left for the interpreter's exit is torn down while its threads
    still run, and the rank can abort (``terminate called without an active
    exception``, SIGABRT) after a run that succeeded; torchrun then reports
    the whole job as failed.  Does nothing outside a distributed run.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        if torch_dist.get_backend() == 'nccl':  # the rank's own GPU
            torch_dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            torch_dist.barrier()
        torch_dist.destroy_process_group()


def default_work_dir(config_path: str) -> str:
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def build_runner(cfg: Config):
    """Build the runner the way mmpretrain / mmseg's tools do."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def load_config(path: str, cfg_options: Optional[dict] = None,
                launcher: str = 'none') -> Config:
    """Load a config, apply ``--cfg-options`` and set the launcher.

    ``path`` is found by :func:`~maxsup_mm.apis.cli.resolve_config` (a file,
    one of our ``configs/`` from any directory, or ``PACKAGE::PATH``).
    """
    with warnings.catch_warnings():
        # mmengine imports the deprecated pkg_resources to find the package
        # of a PACKAGE::PATH _base_: a warning nobody running a tool can act
        # on, printed before the tool's own output
        warnings.filterwarnings('ignore', 'pkg_resources is deprecated',
                                UserWarning)
        cfg = Config.fromfile(resolve_config(path))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    register_all(cfg)
    use_checked_data(cfg)  # broken data ends in one line
    init_cpu_distributed(cfg, launcher)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = '0'
    return cfg
