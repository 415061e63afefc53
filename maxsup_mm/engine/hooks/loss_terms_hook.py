"""Log the parts of the loss (CE and the regularizer) without a host sync
per step."""
from collections import defaultdict
from typing import Dict, List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmpretrain.utils import get_ori_model


@HOOKS.register_module()
class LossTermsHook(Hook):
    """Adds the CE part and the regularizer of our losses to the training log.

    Every loss of the model that splits itself (``MaxSupLoss`` and the
    MaxSup pixel loss: ``maxsup_term``; ``LabelSmoothDecompLoss``:
    ``ls_term``; ``LogitPenaltyLoss``: ``logit_penalty_term``;
    ``ConfidencePenaltyLoss``: ``confidence_penalty_term``) records, at each
    training step, its reduced loss and regularizer as detached device
    tensors.  This hook collects them and, only at the iterations where
    mmengine's ``LoggerHook`` writes a log line (every ``interval``
    iterations of it, and at the end of an epoch), reads all values of the
    interval in ONE device-to-host copy and adds them, iteration by
    iteration, to the message hub as ``train/<term>`` and ``train/ce_term``
    (the regularizer's share of the loss, ``loss_weight * coefficient *
    term``, and the rest of the loss: the two sum to the loss).  So the log
    shows both parts, averaged over the logger's window like ``loss``, and
    the steps in between never wait for the device.  The terms are averaged
    over the log processor's window, as ``loss`` is (a ``custom_cfg`` entry
    per key).

    With several such losses in one model (e.g. a decode and an auxiliary
    head) the keys are prefixed by the loss module's name in the model,
    e.g. ``decode_head.loss_decode.maxsup_term``.

    Example::

        custom_hooks = [dict(type='LossTermsHook')]

    Args:
        interval (int, optional): read the values every ``interval``
            iterations; default: the ``LoggerHook``'s interval.
    """
    priority = 'NORMAL'  # before LoggerHook (BELOW_NORMAL) reads the hub

    def __init__(self, interval: Optional[int] = None):
        if interval is not None and (not isinstance(interval, int)
                                     or interval < 1):
            raise ValueError(f'LossTermsHook: interval must be an int >= 1, '
                             f'got {interval!r}')
        self.interval = interval
        self._losses: Dict[str, torch.nn.Module] = {}
        self._pending: List[list] = []

    def before_train(self, runner) -> None:
        model = get_ori_model(runner.model)
        found = {
            name: m
            for name, m in model.named_modules()
            if hasattr(m, 'pop_recorded') and getattr(m, 'term_name', None)
        }
        self._losses = {}
        for name, module in found.items():
            module.record_terms = True
            prefix = f'{name}.' if len(found) > 1 else ''
            self._losses[prefix] = module
        if not found:  # e.g. a CE baseline: nothing to split
            runner.logger.info(
                'LossTermsHook: the model has no loss that logs its terms '
                '(MaxSupLoss, LabelSmoothDecompLoss, LogitPenaltyLoss, '
                'ConfidencePenaltyLoss, the MaxSup pixel loss); nothing to '
                'add to the log')
        if self.interval is None:
            loggers = [h for h in runner.hooks
                       if type(h).__name__ == 'LoggerHook']
            self.interval = loggers[0].interval if loggers else 10
        self._smooth_like_loss(runner)

    def _smooth_like_loss(self, runner) -> None:
        """Average the terms over the log processor's window, as mmengine
        averages ``loss`` (its ``mean_pattern`` matches only ``loss``-like
        keys; other scalars would show the last iteration's value)."""
        processor = getattr(runner, 'log_processor', None)
        if processor is None:
            return
        keys = set()
        for prefix, module in self._losses.items():
            keys.update((prefix + module.term_name, prefix + 'ce_term'))
        present = {c.get('log_name', c.get('data_src'))
                   for c in processor.custom_cfg}
        for key in sorted(keys - present):
            processor.custom_cfg.append(dict(
                data_src=key, method_name='mean',
                window_size=processor.window_size))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        step = []
        for prefix, module in self._losses.items():
            for loss, term, coef, loss_weight in module.pop_recorded():
                step.append((prefix + module.term_name, loss, term, coef,
                             loss_weight))
        if step:
            self._pending.append(step)
        if self.every_n_inner_iters(batch_idx, self.interval) or \
                self.end_of_epoch(runner.train_dataloader, batch_idx) or \
                len(self._pending) >= 4096:
            self._flush(runner)

    def after_train_epoch(self, runner) -> None:
        self._flush(runner)

    def after_train(self, runner) -> None:
        self._flush(runner)
        for module in self._losses.values():
            module.record_terms = False
            module.pop_recorded()

    def _flush(self, runner) -> None:
        """One device-to-host copy for every value since the last flush."""
        if not self._pending:
            return
        tensors = [t.float().reshape(1) for step in self._pending
                   for _, loss, term, _, _ in step for t in (loss, term)]
        values = iter(torch.cat([t.to(tensors[0].device) for t in tensors])
                      .tolist())
        for step in self._pending:
            totals = defaultdict(float)
            for name, _, _, coef, loss_weight in step:
                loss, term = next(values), next(values)
                share = loss_weight * coef * term
                prefix = name[:len(name) - len(name.split('.')[-1])]
                totals[name] += share
                totals[prefix + 'ce_term'] += loss_weight * loss - share
            for key, value in totals.items():
                runner.message_hub.update_scalar(f'train/{key}', value)
        self._pending = []
