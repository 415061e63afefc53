"""Numbers and Markdown tables of every report (one formatting path).

``tools/analysis`` (:func:`maxsup_mm.analysis.compare`), the quickstart
study and ``tools/reproduce.py`` all write their tables with these helpers:
``mean ± std`` with the *sample* standard deviation over runs (seeds) and
pipe tables whose cells are escaped.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['mean_std', 'format_pm', 'format_mean_std', 'md_escape',
           'markdown_table']


def _finite(values) -> np.ndarray:
    """The values that are numbers (``None`` and NaN dropped), float64."""
    vals = np.asarray([v for v in values if v is not None], dtype=float)
    return vals[~np.isnan(vals)]


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value).

    ``None`` and NaN entries are left out; no value left gives
    ``(nan, nan)``.
    """
    vals = _finite(values)
    if vals.size == 0:
        return float('nan'), float('nan')
    std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    return float(vals.mean()), std


def format_pm(mean: float, std: float, digits: int = 4) -> str:
    """``'mean ± std'`` with ``digits`` decimals."""
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


def format_mean_std(values: Sequence[float], scale: float = 1.0,
                    digits: int = 4, single: str = '',
                    missing: str = 'n/a') -> str:
    """One table cell for the runs (seeds) of a method.

    Args:
        values (Sequence[float]): one value per run; ``None`` / NaN (a run
            without the metric) are left out.
        scale (float): factor applied first (100 for percentages).
        digits (int): decimals.
        single (str): appended when there is one value (e.g.
            ``' (1 seed)'``).
        missing (str): the cell when there is no value.

    Returns:
        str: ``'x'`` for one value, ``'mean ± std'`` (sample std) for
        several.
    """
    vals = _finite(values) * scale
    if vals.size == 0:
        return missing
    if vals.size == 1:
        return f'{vals[0]:.{digits}f}{single}'
    return format_pm(*mean_std(vals), digits)


def md_escape(text) -> str:
    """A Markdown table cell: ``|`` escaped, newlines folded."""
    return str(text).replace('|', '\\|').replace('\n', ' ')


def markdown_table(header: Sequence[str], rows: Sequence[Sequence],
                   align: Optional[str] = None) -> List[str]:
    """The lines of a Markdown pipe table.

    Args:
        header (Sequence[str]): column titles.
        rows (Sequence[Sequence]): cells (any objects; ``str`` + escaped).
        align (str, optional): one letter per column, ``'l'`` or ``'r'``
            (right-aligned: ``---:``); default all left.

    Returns:
        list[str]: header, rule and one line per row.
    """
    align = align or 'l' * len(header)
    if len(align) != len(header):
        raise ValueError(f'{len(align)} alignments for {len(header)} '
                         'columns')
    rule = ['---:' if a == 'r' else '---' for a in align]
    lines = [_row(header), '| ' + ' | '.join(rule) + ' |']
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f'a row of {len(row)} cells in a table of '
                             f'{len(header)} columns: {row!r}')
        lines.append(_row(row))
    return lines


def _row(cells) -> str:
    return '| ' + ' | '.join(md_escape(c) for c in cells) + ' |'

