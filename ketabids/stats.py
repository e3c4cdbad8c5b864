"""Statistics shared by the group level and the report writers: the AUC and the text of a
permutation p-value (:mod:`ketabids.group.metrics` holds the rest, and re-exports these)."""
from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["roc_auc", "format_p"]


def roc_auc(y_true, score):
    """Area under the ROC curve (Mann-Whitney, ties count 1/2).

    Parameters
    ----------
    y_true, score : array-like of shape (n,)
        Labels 1/0 and decision values or probabilities (larger = more likely 1).

    Returns
    -------
    float
        The AUC; NaN when a class is absent.

    Examples
    --------
    >>> roc_auc([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    0.75
    """
    y_true = np.asarray(y_true)
    r = stats.rankdata(score)
    n1 = int((y_true == 1).sum())
    n0 = y_true.size - n1
    if n1 == 0 or n0 == 0:
        return np.nan
    return float((r[y_true == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def format_p(p, n_permutations) -> str:
    """A permutation p-value as text; at its floor ``1/(N+1)`` it says so.

    Parameters
    ----------
    p : float or None
        The p-value.
    n_permutations : int
        Number of permutations (0: no test).

    Returns
    -------
    str
        The text shown in reports, logs and the demo table.

    Examples
    --------
    >>> format_p(1 / 201, 200)
    'p <= 0.005 (floor of 200 permutations)'
    >>> format_p(0.0423, 200)
    'p = 0.042 (200 permutations)'
    >>> format_p(None, 0)
    'no permutation test'
    """
    if p is None or not n_permutations:
        return "no permutation test"
    floor = 1.0 / (int(n_permutations) + 1)
    if float(p) <= floor * (1 + 1e-9):
        return f"p <= {floor:.2g} (floor of {int(n_permutations)} permutations)"
    return f"p = {float(p):.2g} ({int(n_permutations)} permutations)"
