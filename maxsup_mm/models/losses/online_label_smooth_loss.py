"""Online Label Smoothing (Zhang et al., 2021) as an mmpretrain loss."""
import warnings

import torch
import torch.nn.functional as F
from mmengine import dist
from mmpretrain.registry import MODELS

from .base import BaseClsLoss, check_finite
from .functional import cross_entropy, soft_cross_entropy


#: first-epoch soft-label matrices (see :func:`initial_soft_labels`)
INITS = ('label_smoothing', 'zeros', 'uniform')
#: soft label of a class without a correctly classified sample in an epoch
NEVER_CORRECT = ('zeros', 'uniform', 'keep')


def check_unit_interval(name: str, value: float) -> float:
    """Return ``float(value)``; raise unless it is a number in ``[0, 1]``
    (a one-line error naming the argument and its value)."""
    value = check_finite(f'OnlineLabelSmoothLoss: {name}', value)
    if not 0. <= value <= 1.:
        raise ValueError(f'OnlineLabelSmoothLoss: {name} must lie in [0, 1], '
                         f'got {value}')
    return value


def initial_soft_labels(num_classes: int, init: str = 'label_smoothing',
                        smoothing: float = 0.1) -> torch.Tensor:
    """The ``(K, K)`` soft-label matrix of the first epoch (column ``c`` is
    the soft label of class ``c``).

    * ``'label_smoothing'``: ``1 - smoothing`` on the diagonal,
      ``smoothing / (K - 1)`` elsewhere (the OLS in the MaxSup authors'
      release, ``Conv/ffcv/losses.py``);
    * ``'zeros'``: no soft term in the first epoch, which trains with
      ``alpha * CE`` only (Zhang et al.'s CIFAR / ImageNet release);
    * ``'uniform'``: ``1 / K`` everywhere (Zhang et al.'s fine-grained
      release).
    """
    if init == 'label_smoothing':
        matrix = torch.full((num_classes, num_classes),
                            smoothing / (num_classes - 1))
        return matrix.fill_diagonal_(1. - smoothing)
    if init == 'zeros':
        return torch.zeros(num_classes, num_classes)
    if init == 'uniform':
        return torch.full((num_classes, num_classes), 1. / num_classes)
    raise ValueError(f'OnlineLabelSmoothLoss: init must be one of {INITS}, '
                     f'got {init!r}')


@MODELS.register_module()
class OnlineLabelSmoothLoss(BaseClsLoss):
    r"""Online Label Smoothing (OLS), Zhang et al., "Delving Deep into Label
    Smoothing", IEEE TIP 2021.

    The soft label of class :math:`c` is column :math:`S_{:,c}` of a
    :math:`K \times K` matrix built from the *previous* epoch: the mean
    predicted distribution of the training samples of class :math:`c` that
    were classified correctly (samples with non-finite logits never count).
    Two details are not fixed by the method and differ between releases;
    the defaults reproduce the MaxSup authors' OLS (``Conv/ffcv/losses.py``,
    ``OnlineLabelSmoothing``):

    * the first epoch's matrix (``init``): by default ordinary label
      smoothing (``1 - smoothing`` on the diagonal, ``smoothing / (K - 1)``
      elsewhere), as in the MaxSup authors' OLS; Zhang et al.'s CIFAR /
      ImageNet release starts from zeros (``init='zeros'``: the first epoch
      trains with ``alpha * CE`` alone), their fine-grained one from
      ``1 / K`` (``init='uniform'``);
    * a class without a single correctly classified sample in an epoch
      (``never_correct``): by default a zero column, as in the MaxSup
      authors' ``next_epoch`` (``'zeros'``: no soft term for that class in
      the next epoch, which trains it with ``alpha * CE`` alone); Zhang et
      al.'s release sets it to ``1 / K`` (``'uniform'``); ``'keep'`` keeps
      its previous column (no new estimate, so the last one stays).

    ``init='zeros', never_correct='uniform'`` reproduces Zhang et al.'s
    CIFAR / ImageNet training script.

    .. math::
        L = \alpha H(y, q) + (1 - \alpha) H(S_{:,y}, q)

    With a soft target :math:`y` (Mixup / CutMix), the soft label is
    :math:`S y` and a sample counts as correct when its arg-max prediction is
    the arg-max of :math:`y`.

    The statistics (``update``, ``idx_count``) and the matrix (``supervise``)
    are buffers, so they are saved in checkpoints.  :meth:`epoch_update` sums
    the statistics over all DDP ranks and switches the matrix; it is called by
    :class:`~maxsup_mm.engine.hooks.OnlineLabelSmoothHook` at the end of every
    training epoch.  That hook is all OLS needs: the loss sees every training
    sample's logits and label in ``forward`` (the head passes them), and the
    epoch boundary is a runner event, so no special head is required.
    DDP must not broadcast buffers (mmengine's default,
    ``broadcast_buffers=False``), or rank 0 would overwrite the other ranks'
    statistics.

    Args:
        num_classes (int): number of classes ``K``.
        alpha (float): weight of the hard-label CE, in ``[0, 1]``.
            Defaults to 0.5.
        smoothing (float): label smoothing of the first epoch's matrix
            (``init='label_smoothing'``), in ``[0, 1]``. Defaults to 0.1.
        init (str): first-epoch matrix, ``'label_smoothing'`` (default),
            ``'zeros'`` or ``'uniform'``; see :func:`initial_soft_labels`.
        never_correct (str): soft label of a class that had no correctly
            classified sample in an epoch: ``'zeros'`` (default, the MaxSup
            authors' OLS), ``'uniform'`` (``1 / K``, Zhang et al.) or
            ``'keep'`` (its previous column).
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight (float): weight of the loss. Defaults to 1.0.
    """

    #: the buffers holding the statistics of the current epoch
    STATISTICS = ('update', 'idx_count')

    def __init__(self,
                 num_classes: int,
                 alpha: float = 0.5,
                 smoothing: float = 0.1,
                 reduction: str = 'mean',
                 loss_weight: float = 1.0,
                 init: str = 'label_smoothing',
                 never_correct: str = 'zeros'):
        super().__init__(reduction=reduction, loss_weight=loss_weight)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f'OnlineLabelSmoothLoss: num_classes must be an '
                             f'int >= 2, got {num_classes!r}')
        self.alpha = check_unit_interval('alpha', alpha)
        smoothing = check_unit_interval('smoothing', smoothing)
        if never_correct not in NEVER_CORRECT:
            raise ValueError('OnlineLabelSmoothLoss: never_correct must be '
                             f'one of {NEVER_CORRECT}, got {never_correct!r}')
        self.num_classes = num_classes
        self.init = init
        self.never_correct = never_correct
        self.register_buffer(
            'supervise', initial_soft_labels(num_classes, init, smoothing))
        self.register_buffer('update', torch.zeros(num_classes, num_classes))
        self.register_buffer('idx_count', torch.zeros(num_classes))
        self.hook_attached = False
        self._warned = False

    def soft_labels(self, label: torch.Tensor) -> torch.Tensor:
        """The OLS soft label of every sample, ``(N, K)``."""
        if label.dim() == 2:
            return label.to(self.supervise.dtype) @ self.supervise.t()
        return self.supervise.t()[label]

    @torch.no_grad()
    def accumulate(self, cls_score: torch.Tensor, label: torch.Tensor) -> None:
        """Add the predictions of correctly classified samples to the stats."""
        probs = F.softmax(cls_score.detach().float(), dim=1)
        hard = label.argmax(dim=1) if label.dim() == 2 else label
        # argmax of a NaN row is the NaN's index: such rows never count
        correct = (probs.argmax(dim=1) == hard) & \
            torch.isfinite(probs).all(dim=1)
        # every sample is added, the wrong ones with weight 0: selecting the
        # correct ones (``hard[correct]``) would read the mask on the host
        self.idx_count.index_add_(0, hard, correct.to(self.idx_count.dtype))
        self.update.index_add_(
            1, hard, torch.where(correct[:, None], probs, 0.).t().to(
                self.update))

    @torch.no_grad()
    def consolidate_statistics(self) -> None:
        """Move the statistics of every DDP rank to rank 0 (sum there, zeros
        elsewhere); the sum over ranks, all :meth:`epoch_update` uses, is
        unchanged.  Called before a mid-epoch checkpoint, which holds rank
        0's buffers only."""
        if dist.get_world_size() == 1:
            return
        for name in self.STATISTICS:
            buf = getattr(self, name)
            dist.all_reduce(buf, op='sum')
            if dist.get_rank() != 0:
                buf.zero_()

    @torch.no_grad()
    def epoch_update(self) -> None:
        """Sum the statistics over ranks and switch to the new matrix.

        Classes without a single correctly classified sample get the column
        ``never_correct`` says (by default zeros).
        """
        if dist.get_world_size() > 1:
            dist.all_reduce(self.update, op='sum')
            dist.all_reduce(self.idx_count, op='sum')
        seen = self.idx_count > 0
        new = self.update / self.idx_count.clamp(min=1)
        if self.never_correct == 'keep':
            fallback = self.supervise
        else:
            fill = 1. / self.num_classes \
                if self.never_correct == 'uniform' else 0.
            fallback = torch.full_like(self.supervise, fill)
        self.supervise.copy_(torch.where(seen.unsqueeze(0), new, fallback))
        self.update.zero_()
        self.idx_count.zero_()

    def loss_per_sample(self, cls_score: torch.Tensor,
                        label: torch.Tensor) -> torch.Tensor:
        if cls_score.shape[1] != self.num_classes:
            raise ValueError(
                f'OnlineLabelSmoothLoss: num_classes={self.num_classes} but '
                f'the logits have {cls_score.shape[1]} classes (shape '
                f'{tuple(cls_score.shape)}); set num_classes to the head\'s '
                'num_classes')
        if self.training:
            if not self.hook_attached and not self._warned:
                warnings.warn('OnlineLabelSmoothLoss is training without '
                              'OnlineLabelSmoothHook: its soft labels will '
                              "never update. Add dict(type='OnlineLabelSmooth"
                              "Hook') to custom_hooks.")
                self._warned = True
            self.accumulate(cls_score, label)
        soft = self.soft_labels(label).to(cls_score.dtype)
        return self.alpha * cross_entropy(cls_score, label) + \
            (1. - self.alpha) * soft_cross_entropy(cls_score, soft)

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, alpha={self.alpha}, '
                f'init={self.init!r}, never_correct={self.never_correct!r}')
