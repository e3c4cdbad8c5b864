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
           "check_fold_counts", "one_class_inner_set", "GroupFolds", "LeaveGroupOut",
           "group_folds", "OUTER_SCHEMES"]

#: ``--outer-cv`` values: label-stratified folds (the study), one site (group) per outer fold,
#: k folds of whole sites (groups).
OUTER_SCHEMES = ("stratified", "leave-site-out", "group-kfold")


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

    A scikit-learn splitter. :meth:`spawn` derives an independent splitter (the engine gives
    every outer training set its own inner folds this way).

    Parameters
    ----------
    n_splits : int
        Folds per partition.
    n_repeats : int or None
        ``None``: one partition drawn with ``numpy.random.default_rng(random_state)``; else
        ``n_repeats`` partitions, repeat ``r`` drawn with ``default_rng([*random_state, r])``.
    random_state : int or tuple of int
        Seed.

    Examples
    --------
    >>> y = [0, 0, 0, 1, 1, 1]
    >>> [sorted(np.asarray(y)[test].tolist()) for _, test in StratifiedFolds(3).split(None, y)]
    [[0, 1], [0, 1], [0, 1]]
    """

    def __init__(self, n_splits=5, n_repeats=None, random_state=0):
        self.n_splits = n_splits
        self.n_repeats = n_repeats
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits: ``n_splits`` times the number of repeats."""
        return int(self.n_splits) * (1 if self.n_repeats is None else int(self.n_repeats))

    def split(self, X, y, groups=None):
        """Train/test indices, ``n_splits`` pairs per repeat.

        Parameters
        ----------
        X : array-like or None
            Ignored (the folds depend on ``y`` and ``groups`` only).
        y : array-like of shape (n,)
            Labels.
        groups : array-like of shape (n,) or None
            Sites: each fold gets a share of every site x label cell.

        Yields
        ------
        train, test : ndarray
            Row indices.
        """
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
    largest valid value, before any feature is computed.

    Counting is not enough: with strata (sites) the round-robin deal can put every participant
    of the smaller class of an outer training set into one inner fold, so the partitions the
    engine will use are drawn (:func:`ketabids.group.nested.make_scheme`, and those of the final
    model's C search, seeded ``[random_state, 99991]``) and every inner training set must hold
    both classes; otherwise the largest ``--n-inner`` whose partitions do is named.
    """
    n_outer, n_inner = int(settings.n_outer), int(settings.n_inner)
    max_outer, max_inner = max_folds(y, n_outer, groups, settings.random_state,
                                     settings.n_repeats)
    if n_outer > max_outer:
        raise UsageError(f"--n-outer {n_outer}: the smaller class has {max_outer} participants, "
                         f"so every test fold cannot hold both classes; use --n-outer "
                         f"{max_outer} or less")
    if n_inner > max_inner:
        where = (f"the smallest outer training set has {max_inner} participants of the "
                 "smaller class")
    else:
        where = one_class_inner_set(y, settings, groups)
        if where is None:
            return
        where += (" holds participants of one class only (folds stratified by label"
                  + (" and site)" if groups is not None else ")"))
    from dataclasses import replace

    def works(o, k):
        return one_class_inner_set(y, replace(settings, n_outer=o, n_inner=k), groups) is None

    def inner_max(o):
        return max_folds(y, o, groups, settings.random_state, settings.n_repeats)[1]

    inner = next((k for k in range(min(n_inner - 1, max_inner), 1, -1) if works(n_outer, k)),
                 None)
    outer = None if inner else next(
        ((o, k) for o in range(max_outer, 1, -1) if o != n_outer
         for k in range(min(n_inner, inner_max(o)), 1, -1) if works(o, k)), None)
    fix = (f"use --n-inner {inner} (the largest that works)" if inner else
           f"use --n-outer {outer[0]} --n-inner {outer[1]}" if outer else
           "no fold counts work with this --seed; try another --seed or more participants")
    raise UsageError(f"--n-inner {n_inner}: {where}; {fix}")


def one_class_inner_set(y, settings, groups=None) -> str | None:
    """Where the stratified nested CV of ``settings`` would train on one class: the first
    inner training set of the engine's own partitions (repeat, outer fold) or of the final
    model's C search holding one class, as words; None when every one holds both."""
    from ketabids.group.nested import make_scheme

    y = np.asarray(y).astype(int)
    try:
        _, inner = make_scheme(y, groups, settings)
    except UsageError:
        return "an outer training set"
    for r in range(inner.shape[0]):
        for o in range(inner.shape[1]):
            rows = inner[r, o] >= 0
            for i in range(int(inner[r, o].max()) + 1):
                if np.unique(y[rows & (inner[r, o] != i)]).size < 2:
                    return f"an inner training set (repeat {r + 1}, outer fold {o + 1})"
    final = fold_partitions(StratifiedFolds(int(settings.n_inner),
                                            random_state=(settings.random_state, 99991)),
                            np.zeros((y.size, 1)), y, groups)[0]
    if any(np.unique(y[final != i]).size < 2 for i in range(int(settings.n_inner))):
        return "an inner training set of the final model's C search"
    return None


def group_folds(y, groups, k, rng) -> np.ndarray:
    """Fold index (0..k-1) of every row with whole groups in one fold: groups are shuffled,
    then dealt largest first to the fold whose responder share and size stay closest to the
    whole sample's (greedy, as scikit-learn's ``StratifiedGroupKFold``), so folds are as
    label-balanced and even as whole groups allow. Needs ``k`` <= number of groups."""
    y = np.asarray(y).astype(np.int64)
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    if names.size < k:
        raise UsageError(f"{k} group folds need at least {k} groups; there are {names.size}")
    counts = np.zeros((names.size, 2))
    np.add.at(counts, (codes, y), 1)
    order = rng.permutation(names.size)
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    share = y.mean()
    fold_counts = np.zeros((k, 2))
    fold_of_group = np.empty(names.size, np.int64)
    for i, g in enumerate(order):
        if i < k:                      # the k largest groups open the k folds
            f = i
        else:                          # then: keep each fold's responder share and size even
            new = fold_counts + counts[g]
            size = new.sum(1)
            f = int(np.argmin(np.abs(new[:, 1] / size - share) + size / y.size))
        fold_of_group[g] = f
        fold_counts[f] += counts[g]
    return fold_of_group[codes]


class GroupFolds(StratifiedFolds):
    """K folds of whole groups (sites, cohorts), label-balanced as far as groups allow.

    Folds from :func:`group_folds`; parameters, repeats and :meth:`spawn` as
    :class:`StratifiedFolds`. A training set with a single group (nothing to group by) falls
    back to label-stratified folds. ``split`` needs ``groups`` (:class:`UsageError` without).
    """

    def split(self, X, y, groups=None):
        if groups is None:
            raise UsageError("group folds need the group of every participant (--site-column "
                             "or --group-column)")
        y = np.asarray(y)
        groups = np.asarray(groups).astype(str)
        seeds = ([_seed(self.random_state)] if self.n_repeats is None else
                 [(*_seed(self.random_state), r) for r in range(int(self.n_repeats))])
        for seed in seeds:
            rng = np.random.default_rng(seed)
            if np.unique(groups).size < 2:
                folds = stratified_folds(y, int(self.n_splits), rng)
            else:
                folds = group_folds(y, groups, int(self.n_splits), rng)
            for f in range(int(self.n_splits)):
                yield np.flatnonzero(folds != f), np.flatnonzero(folds == f)

    def spawn(self, *key):
        return GroupFolds(self.n_splits, None, (*_seed(self.random_state), *key))


class LeaveGroupOut(StratifiedFolds):
    """One fold per group (leave-one-site-out / leave-one-cohort-out), in sorted group order.

    Deterministic, so one repeat (``n_repeats`` is ignored). A training set with a single
    group (leave-site-out inner CV with two sites) falls back to ``n_splits`` label-stratified
    folds, seeded like :class:`StratifiedFolds`. ``split`` needs ``groups``
    (:class:`UsageError` without).

    Examples
    --------
    >>> cv = LeaveGroupOut()
    >>> [test.tolist() for _, test in cv.split(None, [0, 1, 0, 1], ["B", "A", "B", "A"])]
    [[1, 3], [0, 2]]
    """

    def __init__(self, n_splits=5, n_repeats=None, random_state=0):
        super().__init__(n_splits, None, random_state)

    def get_n_splits(self, X=None, y=None, groups=None):
        if groups is None:
            return int(self.n_splits)
        n = np.unique(np.asarray(groups).astype(str)).size
        return n if n >= 2 else int(self.n_splits)

    def split(self, X, y, groups=None):
        if groups is None:
            raise UsageError("leave-site-out needs the site of every participant "
                             "(--site-column or --group-column)")
        groups = np.asarray(groups).astype(str)
        names = np.unique(groups)
        if names.size < 2:
            yield from StratifiedFolds(self.n_splits, None, self.random_state).split(X, y)
            return
        for g in names:
            yield np.flatnonzero(groups != g), np.flatnonzero(groups == g)

    def spawn(self, *key):
        return LeaveGroupOut(self.n_splits, None, (*_seed(self.random_state), *key))
