"""Helpers shared by the command-line tools and the quickstart."""
from .cli import (USER_ERRORS, check_writable, one_line_error,
                  resolve_config)
from .runner_utils import (add_default_hooks, build_runner,
                           close_distributed, default_work_dir,
                           init_cpu_distributed, load_config, register_all)
from .train_test import (evaluate_checkpoint, prepare_test_cfg,
                         prepare_train_cfg, read_test_checkpoint,
                         train_model)

__all__ = [
    'add_default_hooks', 'build_runner', 'close_distributed',
    'default_work_dir',
    'init_cpu_distributed', 'load_config', 'register_all',
    'prepare_train_cfg', 'prepare_test_cfg', 'train_model',
    'evaluate_checkpoint', 'read_test_checkpoint', 'resolve_config',
    'one_line_error', 'check_writable', 'USER_ERRORS'
]
