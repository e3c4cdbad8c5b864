"""Cross-validation splitters (ketabids.group.cv): stratified folds, whole-group folds,
leave-one-group-out, the conversion of scikit-learn splitters into fold arrays, fold limits."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold, RepeatedStratifiedKFold, ShuffleSplit

from ketabids.errors import UsageError
from ketabids.group import NestedCVSettings
from ketabids.group.cv import (
    GroupFolds,
    LeaveGroupOut,
    StratifiedFolds,
    check_fold_counts,
    fold_partitions,
    group_folds,
    max_folds,
    stratified_folds,
)
from ketabids.group.nested import make_scheme


def test_stratified_folds_balanced(rng):
    y = np.r_[np.ones(47), np.zeros(52)].astype(int)
    sites = np.array(["a", "b", "c"])[rng.integers(0, 3, 99)]
    outer, inner = make_scheme(y, sites, NestedCVSettings(n_repeats=3))
    for r in range(3):
        sizes = np.bincount(outer[r])
        assert sizes.max() - sizes.min() <= 1
        pos = np.bincount(outer[r][y == 1], minlength=10)
        assert pos.max() - pos.min() <= 1
    assert (inner[0, 0][outer[0] == 0] == -1).all()


def test_default_splitters_deal_the_study_folds(rng):
    """The default outer/inner splitters reproduce the seeded round-robin folds exactly (the
    published results depend on them)."""
    from ketabids.group.cv import stratified_folds

    y = np.r_[np.ones(17), np.zeros(23)].astype(int)
    sites = np.array(["a", "b", "c"])[rng.integers(0, 3, 40)]
    s = NestedCVSettings(n_repeats=2, n_outer=4, n_inner=3, random_state=7)
    outer, inner = make_scheme(y, sites, s)
    for r in range(2):
        expected = stratified_folds(y, 4, np.random.default_rng([7, r]), sites)
        np.testing.assert_array_equal(outer[r], expected)
        for o in range(4):
            tr = expected != o
            np.testing.assert_array_equal(inner[r, o, tr], stratified_folds(
                y[tr], 3, np.random.default_rng([7, r, o, 1]), sites[tr]))


def test_stratified_folds_deal_each_label_and_site_stratum_evenly(rng):
    y = (rng.random(97) < 0.35).astype(int)
    sites = np.array(["a", "b", "c", "d"])[rng.integers(0, 4, 97)]
    for k in (3, 5, 10):
        folds = stratified_folds(y, k, np.random.default_rng(k), sites)
        assert set(folds) == set(range(k))
        for s in np.unique(sites):
            for label in (0, 1):
                per_fold = np.bincount(folds[(sites == s) & (y == label)], minlength=k)
                assert per_fold.max() - per_fold.min() <= 1, (k, s, label, per_fold)
        sizes = np.bincount(folds, minlength=k)
        assert sizes.max() - sizes.min() <= 1


def test_group_folds_keep_groups_whole_and_labels_balanced(rng):
    groups = np.repeat([f"g{i}" for i in range(12)], rng.integers(4, 15, 12))
    y = (rng.random(groups.size) < 0.4).astype(int)
    for k in (2, 3, 4):
        folds = group_folds(y, groups, k, np.random.default_rng(k))
        for g in np.unique(groups):
            assert np.unique(folds[groups == g]).size == 1          # a group is never split
        assert set(folds) == set(range(k))
        share = np.array([y[folds == f].mean() for f in range(k)])
        assert np.abs(share - y.mean()).max() < 0.15, share
    with pytest.raises(UsageError, match="at least 13 groups"):
        group_folds(y, groups, 13, rng)


def test_group_folds_splitter_partitions_and_falls_back_without_groups(rng):
    groups = np.repeat(["a", "b", "c", "d", "e"], 12)
    y = np.tile([0, 1, 0], 20)
    splits = list(GroupFolds(3, n_repeats=2, random_state=4).split(None, y, groups))
    assert len(splits) == 6
    for r in range(2):
        tests = [te for _, te in splits[3 * r:3 * r + 3]]
        np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(60))
        for tr, te in splits[3 * r:3 * r + 3]:
            assert set(groups[tr]).isdisjoint(groups[te])
    one_group = list(GroupFolds(3, random_state=4).split(None, y, np.array(["a"] * 60)))
    assert [te.size for _, te in one_group] == [20, 20, 20]
    with pytest.raises(UsageError, match="group of every participant"):
        list(GroupFolds(3).split(None, y))


def test_leave_group_out_is_one_fold_per_group_in_sorted_order():
    groups = np.array(list("cabcab") * 5)
    y = np.tile([0, 1], 15)
    cv = LeaveGroupOut()
    assert cv.get_n_splits(groups=groups) == 3
    splits = list(cv.split(None, y, groups))
    assert [sorted(set(groups[te])) for _, te in splits] == [["a"], ["b"], ["c"]]
    # a single group (the inner CV of a two-site leave-site-out): stratified folds instead
    assert cv.get_n_splits(groups=np.array(["a"] * 30)) == 5
    assert len(list(cv.split(None, y, np.array(["a"] * 30)))) == 5


def test_fold_partitions_are_scikit_learns_splits():
    y = np.tile([0, 1, 1, 0, 0], 8)
    cv = RepeatedStratifiedKFold(n_splits=4, n_repeats=3, random_state=0)
    parts = fold_partitions(cv, np.zeros((40, 1)), y)
    assert parts.shape == (3, 40)
    for i, (_, te) in enumerate(cv.split(np.zeros((40, 1)), y)):
        np.testing.assert_array_equal(np.flatnonzero(parts[i // 4] == i % 4), te)
    groups = np.repeat(np.arange(8), 5)
    expected = np.empty(40, int)
    for f, (_, te) in enumerate(GroupKFold(4).split(np.zeros((40, 1)), y, groups)):
        expected[te] = f
    np.testing.assert_array_equal(fold_partitions(GroupKFold(4), np.zeros((40, 1)), y, groups),
                                  expected[None])
    with pytest.raises(UsageError, match="overlap|cover"):
        fold_partitions(ShuffleSplit(3, test_size=0.3, random_state=0), np.zeros((40, 1)), y)


def test_fold_limits_match_the_partitions_and_name_the_largest_valid_value(rng):
    y = np.r_[np.ones(9), np.zeros(30)].astype(int)
    max_outer, max_inner = max_folds(y, 3)
    assert max_outer == 9
    smallest = min(np.bincount(y[tr], minlength=2).min()
                   for tr, _ in StratifiedFolds(3, n_repeats=1, random_state=0).split(None, y))
    assert max_inner == smallest == 6
    with pytest.raises(UsageError, match="use --n-outer 9 or less"):
        check_fold_counts(y, NestedCVSettings(n_outer=10, n_inner=2))
    with pytest.raises(UsageError, match=r"use --n-inner 6 \(the largest that works\)"):
        check_fold_counts(y, NestedCVSettings(n_outer=3, n_inner=7))
    check_fold_counts(y, NestedCVSettings(n_outer=3, n_inner=6))
