"""Cross-validation splits: ketabids' stratified folds as a scikit-learn splitter, and the
conversion of any partitioning splitter into the fold arrays the kernel engine works on.

The engine (:mod:`ketabids.group.nested`) accepts any scikit-learn splitter whose test sets
partition the subjects (``KFold``, ``StratifiedKFold``, ``GroupKFold``, ``LeaveOneGroupOut``,
``StratifiedGroupKFold``, repeated variants, ...); it calls ``split(X, y, groups=sites)``, so a
site-wise scheme is ``GroupKFold(n_splits)`` or ``LeaveOneGroupOut()`` with the sites as
groups. The default, :class:`StratifiedFolds`, stratifies by label (and by site when sites are
given) and deals every stratum round-robin, as the study did.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import BaseCrossValidator

from ketabids.errors import UsageError

__all__ = ["StratifiedFolds", "stratified_folds", "fold_partitions", "spawn", "max_folds",
           "check_fold_counts"]


def stratified_folds(y, k, rng, strata=None):
    """Fold index (0..k-1) of every row, stratified by label (and ``strata``, e.g. site).

    Rows of each stratum (label x site) are shuffled and dealt round-robin, continuing the deal
    across strata, so every fold gets floor/ceil of each stratum and fold sizes differ by <= 1.
    """
    y = np.asarray(y)
    key = y.astype(np.int64) if strata is None else (
        np.unique(np.asarray(strata), return_inverse=True)[1].astype(np.int64) * 2 + y)
    folds = np.empty(y.size, np.int64)
    pos = 0
    for s in np.unique(key):
        idx = np.flatnonzero(key == s)
        idx = idx[rng.permutation(idx.size)]
        folds[idx] = (pos + np.arange(idx.size)) % k
        pos += idx.size
    # random relabelling of folds so the first fold is not systematically larger
    return rng.permutation(k)[folds]


def _seed(random_state) -> tuple:
    return tuple(int(s) for s in np.atleast_1d(random_state))


class StratifiedFolds(BaseCrossValidator):
    """K folds stratified by label and, when ``groups`` are given, by group (site) too.

    ``split(X, y, groups)`` yields ``n_splits`` train/test index pairs per repeat; with
    ``n_repeats=None`` one partition drawn with ``numpy.random.default_rng(random_state)``, else
    ``n_repeats`` partitions, repeat ``r`` drawn with ``default_rng([*random_state, r])``.
    ``random_state`` is an int or a tuple of ints. :meth:`spawn` derives an independent splitter
    (the engine gives every outer training set its own inner folds this way).
    """

    def __init__(self, n_splits=5, n_repeats=None, random_state=0):
        self.n_splits = n_splits
        self.n_repeats = n_repeats
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None):
        return int(self.n_splits) * (1 if self.n_repeats is None else int(self.n_repeats))

    def split(self, X, y, groups=None):
        y = np.asarray(y)
        seeds = ([_seed(self.random_state)] if self.n_repeats is None else
                 [(*_seed(self.random_state), r) for r in range(int(self.n_repeats))])
        for seed in seeds:
            folds = stratified_folds(y, int(self.n_splits), np.random.default_rng(seed),
                                     groups)
            for f in range(int(self.n_splits)):
                yield np.flatnonzero(folds != f), np.flatnonzero(folds == f)

    def _iter_test_indices(self, X=None, y=None, groups=None):  # pragma: no cover - split
        raise NotImplementedError

    def spawn(self, *key):
        """A copy drawing its folds from ``random_state`` extended by ``key`` (one partition)."""
        return StratifiedFolds(self.n_splits, None, (*_seed(self.random_state), *key))


def spawn(cv, *key):
    """``cv.spawn(*key)`` for splitters that can derive independent copies, else ``cv``."""
    return cv.spawn(*key) if hasattr(cv, "spawn") else cv


def fold_partitions(cv, X, y, groups=None) -> np.ndarray:
    """The splits of ``cv`` as fold arrays ``(n_repeats, n)``: entry = test fold of each row.

    Consecutive splits whose test sets partition the rows form one repeat (fold numbers in split
    order). Raises :class:`UsageError` for a splitter whose test sets overlap or do not cover
    every row, or whose repeats differ in their number of folds.
    """
    n = len(y)
    repeats, current, k = [], np.full(n, -1, np.int64), 0
    for _, test in cv.split(X, y, groups):
        test = np.asarray(test)
        if (current[test] >= 0).any():
            raise UsageError(f"{cv!r}: test sets overlap within a repeat; the nested CV needs a "
                             "splitter whose test sets partition the participants")
        current[test] = k
        k += 1
        if (current >= 0).all():
            repeats.append(current)
            current, k = np.full(n, -1, np.int64), 0
    if k or not repeats:
        raise UsageError(f"{cv!r}: its test sets do not cover every participant; the nested CV "
                         "needs a splitter whose test sets partition the participants")
    sizes = {int(r.max()) + 1 for r in repeats}
    if len(sizes) > 1:
        raise UsageError(f"{cv!r}: repeats with different numbers of folds {sorted(sizes)}")
    return np.stack(repeats)


def max_folds(y, n_outer: int, groups=None, random_state=0, n_repeats: int = 1
              ) -> tuple[int, int]:
    """``(max_outer, max_inner)``: the most outer folds the class counts allow (the smaller
    class's size: every test fold needs one of each class) and, with ``n_outer`` outer folds,
    the most inner folds (the smaller class's count in the smallest outer training set,
    measured on the actual :class:`StratifiedFolds` partitions).

    >>> max_folds([0] * 4 + [1] * 4, 3)
    (4, 2)
    """
    y = np.asarray(y).astype(int)
    counts = np.bincount(y, minlength=2)
    max_outer = int(counts.min())
    if n_outer > max_outer or n_outer < 2:
        return max_outer, 0
    smallest = max_outer
    outer = StratifiedFolds(int(n_outer), n_repeats=int(n_repeats), random_state=random_state)
    for train, _ in outer.split(None, y, groups):
        smallest = min(smallest, int(np.bincount(y[train], minlength=2).min()))
    return max_outer, smallest


def check_fold_counts(y, settings, groups=None) -> None:
    """Refuse (exit 64) outer/inner fold counts the class counts cannot support, naming the
    largest valid value, before any feature is computed."""
    n_outer, n_inner = int(settings.n_outer), int(settings.n_inner)
    max_outer, max_inner = max_folds(y, n_outer, groups, settings.random_state,
                                     settings.n_repeats)
    if n_outer > max_outer:
        raise UsageError(f"--n-outer {n_outer}: the smaller class has {max_outer} participants, "
                         f"so every test fold cannot hold both classes; use --n-outer "
                         f"{max_outer} or less")
    if n_inner > max_inner:
        fix = (f"use --n-inner {max_inner} or less" if max_inner >= 2
               else "use a smaller --n-outer")
        raise UsageError(f"--n-inner {n_inner}: the smallest outer training set has "
                         f"{max_inner} participants of the smaller class; {fix} (or fewer "
                         "--n-outer folds)")
