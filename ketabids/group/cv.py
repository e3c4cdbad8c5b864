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

__all__ = ["StratifiedFolds", "stratified_folds", "fold_partitions", "spawn"]


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
