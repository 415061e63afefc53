"""Helpers shared by the command-line tools."""
from .runner_utils import (add_default_hooks, build_runner, default_work_dir,
                           init_cpu_distributed, load_config, register_all)

__all__ = ["add_default_hooks", "build_runner", "default_work_dir",
           "init_cpu_distributed", "load_config", "register_all"]
