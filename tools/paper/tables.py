"""The paper's numbers that ``tools/reproduce.py`` puts beside ours.

Source: /work/shared/paper/maxsup-paper.txt (MaxSup, ICML 2025), Tables 2,
4, 5, 6 and 9, copied as printed; Table 3's numbers are not in the paper's
text and come from the authors' README (github
ZhouYuxuanYX/Maximum-Suppression-Regularization, "Linear Transfer Accuracy on
CIFAR-10").  A run's *method name* selects the row (:func:`method_row`); its
*architecture* selects the column of Table 4 (:func:`top1_reference`).
"""
import re
from typing import Dict, Optional, Tuple

__all__ = ['METHODS', 'method_row', 'TABLE4', 'TABLE5', 'TABLE9', 'TABLE3',
           'TABLE6', 'top1_reference', 'ARCH_LABELS']

#: paper row -> how the paper names it
METHODS = {
    'baseline': 'Baseline',
    'ls': 'Label Smoothing',
    'zipf': 'Zipf-LS',
    'ols': 'OLS',
    'maxsup': 'MaxSup',
    'lp': 'Logit Penalty',
}

_ALIASES = {
    'baseline': 'baseline', 'ce': 'baseline', 'cross-entropy': 'baseline',
    'ls': 'ls', 'label-smoothing': 'ls', 'labelsmoothing': 'ls',
    'zipf': 'zipf', 'zipf-ls': 'zipf', 'zipfs': 'zipf', "zipf's": 'zipf',
    'ols': 'ols', 'online-ls': 'ols',
    'maxsup': 'maxsup', 'max-sup': 'maxsup',
    'lp': 'lp', 'logit-penalty': 'lp', 'logitpenalty': 'lp',
}


def method_row(name: str) -> Optional[str]:
    """The paper row of a run name (``None``: no paper column).

    The whole name is looked up first (``label-smoothing``), then the part
    before the first ``-``, ``_``, ``.``, ``+`` or ``@`` (``maxsup-s1``,
    ``ls_ema``); case does not matter.
    """
    key = name.lower()
    if key in _ALIASES:
        return _ALIASES[key]
    head = re.split(r'[-_.+@]', key, maxsplit=1)[0]
    return _ALIASES.get(head)


#: architecture key -> label (see ``tools/paper/runs.py: describe_model``)
ARCH_LABELS = {
    'resnet18': 'ResNet-18', 'resnet50': 'ResNet-50',
    'resnet101': 'ResNet-101', 'mobilenet-v2': 'MobileNetV2',
    'deit-small': 'DeiT-Small',
}

_T4 = {  # Table 4, ImageNet columns: top-1 mean, std over runs
    'baseline': ((69.09, .12), (76.41, .10), (75.96, .18), (71.40, .12)),
    'ls': ((69.54, .15), (76.91, .11), (77.37, .15), (71.61, .09)),
    'zipf': ((69.31, .12), (76.73, .17), (76.91, .11), (71.16, .15)),
    'ols': ((69.45, .15), (77.23, .21), (77.71, .17), (71.63, .11)),
    'maxsup': ((69.96, .13), (77.69, .07), (78.18, .12), (72.08, .17)),
    'lp': ((68.48, .10), (76.73, .10), (77.20, .15), (71.13, .10)),
}
#: Table 4 (ImageNet): architecture -> row -> (mean, std) top-1 in %
TABLE4: Dict[str, Dict[str, Tuple[float, float]]] = {
    arch: {row: vals[i] for row, vals in _T4.items()}
    for i, arch in enumerate(('resnet18', 'resnet50', 'resnet101',
                              'mobilenet-v2'))
}

#: Table 5 (DeiT-Small, ImageNet): row -> (mean, std) top-1 in %
TABLE5: Dict[str, Tuple[float, float]] = {
    'baseline': (74.39, .19), 'ls': (76.08, .16), 'zipf': (75.89, .26),
    'ols': (76.16, .18), 'maxsup': (76.49, .12),
}

#: Tables 2 and 9 (ResNet-50, ImageNet): row -> metric -> (train, val).
#: Table 2 prints d_within and R^2 only; Table 9 adds d_total.
TABLE9: Dict[str, Dict[str, Tuple[float, float]]] = {
    'baseline': dict(d_within=(0.3114, 0.3313), d_total=(0.5212, 0.5949),
                     r2=(0.4025, 0.4451)),
    'ls': dict(d_within=(0.2632, 0.2543), d_total=(0.4862, 0.4718),
               r2=(0.4690, 0.4611)),
    'ols': dict(d_within=(0.2707, 0.2820), d_total=(0.6672, 0.6570),
                r2=(0.5943, 0.5708)),
    'zipf': dict(d_within=(0.2611, 0.2932), d_total=(0.5813, 0.5628),
                 r2=(0.5522, 0.4790)),
    'maxsup': dict(d_within=(0.2926, 0.2998), d_total=(0.6081, 0.5962),
                   r2=(0.5188, 0.4972)),
    'lp': dict(d_within=(0.2840, 0.3144), d_total=(0.7996, 0.7909),
               r2=(0.6448, 0.6024)),
}
TABLE9_ARCH = 'resnet50'

#: Table 3 (ImageNet ResNet-50 -> CIFAR-10 linear probe, %), authors' README
TABLE3: Dict[str, float] = {'baseline': 81.43, 'ls': 74.58, 'maxsup': 81.02}
TABLE3_ARCH = 'resnet50'

#: Table 6 (UperNet + DeiT-Small on ADE20K, multi-scale mIoU, %)
TABLE6: Dict[str, float] = {'baseline': 42.1, 'ls': 42.4, 'maxsup': 42.8}
TABLE6_ARCH = 'deit-small'


def top1_reference(arch: Optional[str], row: Optional[str]
                   ) -> Tuple[Optional[Tuple[float, float]], Optional[str]]:
    """``((mean, std), 'Table 4, ResNet-50')`` for a run, or ``(None, why)``.

    Table 4 has ImageNet columns for ResNet-18/50/101 and MobileNetV2,
    Table 5 is DeiT-Small; other architectures have no paper number.
    """
    if arch in TABLE4:
        source = f'Table 4, {ARCH_LABELS[arch]}'
        table = TABLE4[arch]
    elif arch == 'deit-small':
        source, table = 'Table 5, DeiT-Small', TABLE5
    else:
        return None, 'architecture not in Tables 4/5'
    if row is None:
        return None, source
    if row not in table:
        return None, f'{source}: no {METHODS[row]} row'
    return table[row], source
