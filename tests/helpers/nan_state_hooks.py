"""Hooks that make the model's state non-finite while the loss stays finite
(imported by test configs; see also fault_hooks.py)."""
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class NaNGradHook(Hook):
    """Make the first parameter's gradient NaN in training iteration ``iter``
    (0-based), on every rank or only on rank ``rank``: that iteration's loss
    is finite, its optimizer step writes NaN into the weights."""

    def __init__(self, iter: int, rank=None):
        self.iter = iter
        self.rank = rank
        self.handle = None

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter == self.iter and self.rank in (None, get_rank()):
            param = next(runner.model.parameters())
            self.handle = param.register_hook(
                lambda grad: torch.full_like(grad, float('nan')))

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


@HOOKS.register_module()
class NaNBufferHook(Hook):
    """Fill the first buffer whose name ends with ``suffix`` (a BatchNorm's
    running variance: unused by training-mode forward passes, so the loss
    stays finite) with NaN before training iteration ``iter`` (0-based), on
    every rank or only on rank ``rank``."""

    def __init__(self, iter: int, rank=None, suffix: str = 'running_var'):
        self.iter = iter
        self.rank = rank
        self.suffix = suffix

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter == self.iter and self.rank in (None, get_rank()):
            name, buffer = next((n, b) for n, b in
                                runner.model.named_buffers()
                                if n.endswith(self.suffix))
            with torch.no_grad():
                buffer.fill_(float('nan'))
