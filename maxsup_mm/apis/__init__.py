"""Helpers shared by the command-line tools and the quickstart."""
from .runner_utils import (add_default_hooks, build_runner,
                           close_distributed, default_work_dir,
                           init_cpu_distributed, load_config, register_all)
from .train_test import (evaluate_checkpoint, prepare_test_cfg,
                         prepare_train_cfg, train_model)

__all__ = [
    'add_default_hooks', 'build_runner', 'close_distributed',
    'default_work_dir',
    'init_cpu_distributed', 'load_config', 'register_all',
    'prepare_train_cfg', 'prepare_test_cfg', 'train_model',
    'evaluate_checkpoint'
]
