"""Permutation tests (ketabids.group.permutation): p = (1 + #null >= observed) / (1 + n), its
floor 1/(n+1), permutations within groups, and the frozen-model test against a plain loop."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from ketabids.group import CVData, NestedCVSettings, external_permutation_test, nested_cv
from ketabids.group.permutation import permutation_test, permute_within
from tests.group.reference import cohort


def test_external_permutation_test(rng):
    n = 60
    y = (rng.random(n) < 0.5).astype(int)
    good = rng.standard_normal(n) + 1.5 * (2 * y - 1)
    res = external_permutation_test(y, good, n_permutations=999, random_state=1)
    assert res.p_bac == pytest.approx(1 / 1000) and res.p_auc == pytest.approx(1 / 1000)
    ps = [external_permutation_test(y, rng.standard_normal(n), n_permutations=199,
                                    random_state=s).p_auc for s in range(40)]
    assert 0.3 < np.mean(ps) < 0.7                      # ~uniform under the null
    # within-group permutation keeps each group's label counts
    groups = np.repeat(["a", "b"], n // 2)
    r2 = external_permutation_test(y, good, n_permutations=50, groups=groups)
    assert r2.null_bac.shape == (50,) and r2.as_dict()["n_permutations"] == 50


def test_permute_within_is_a_permutation_of_each_group(rng):
    y = (rng.random(60) < 0.4).astype(int)
    groups = np.array(list("abc"))[rng.integers(0, 3, 60)]
    seen_change = False
    for seed in range(20):
        yp = permute_within(y, groups, np.random.default_rng(seed))
        for g in "abc":
            assert sorted(yp[groups == g]) == sorted(y[groups == g])
        seen_change |= bool((yp != y).any())
    assert seen_change
    yp = permute_within(y, None, np.random.default_rng(0))
    assert sorted(yp) == sorted(y) and (yp != y).any()


def test_external_test_equals_a_plain_loop_over_the_same_permutations(rng):
    """The vectorised null equals scikit-learn's BAC / AUC on each permuted label vector drawn
    with the same generator, and p counts the null values >= the observed one."""
    n, n_perm = 40, 60
    y = (rng.random(n) < 0.45).astype(int)
    y[:2] = [0, 1]
    d = rng.standard_normal(n) + 0.6 * (2 * y - 1)
    groups = np.repeat(["a", "b"], n // 2)
    res = external_permutation_test(y, d, n_permutations=n_perm, random_state=3, groups=groups)
    gen = np.random.default_rng(3)
    null_bac, null_auc = [], []
    for _ in range(n_perm):
        yp = permute_within(y, groups, gen)
        null_bac.append(balanced_accuracy_score(yp, d > 0))
        null_auc.append(roc_auc_score(yp, d))
    np.testing.assert_allclose(res.null_bac, null_bac, atol=1e-12)
    np.testing.assert_allclose(res.null_auc, null_auc, atol=1e-12)
    assert res.observed_bac == pytest.approx(balanced_accuracy_score(y, d > 0))
    assert res.observed_auc == pytest.approx(roc_auc_score(y, d))
    expected = (1 + np.sum(np.array(null_auc) >= res.observed_auc - 1e-12)) / (1 + n_perm)
    assert res.p_auc == pytest.approx(expected)
    table = res.as_table()
    assert list(table.columns) == ["permutation", "null_bac", "null_auc"]
    assert table["permutation"].tolist() == list(range(1, n_perm + 1))


def test_nested_permutation_p_reaches_its_floor_on_a_separable_cohort(rng):
    """An effect no permuted cohort can match: p = 1 / (n_permutations + 1) exactly; results do
    not depend on n_jobs (one seeded generator per permutation)."""
    X, y, cov, _ = cohort(rng, n=40, p=100, k=1, effect=3.0)
    s = NestedCVSettings(n_repeats=1, n_outer=4, n_inner=3, C_grid=(0.25, 1.0), random_state=1)
    res = nested_cv(X, y, covariates=cov, settings=s)
    assert res.bac_pooled == 1.0
    perm = permutation_test(CVData(X, y, covariates=cov), settings=s, n_permutations=9,
                            observed=res)
    assert perm.p_bac == pytest.approx(1 / 10) and perm.p_auc == pytest.approx(1 / 10)
    assert perm.observed_bac == 1.0 and (perm.null_bac < 1.0).all()
    again = permutation_test(CVData(X, y, covariates=cov), settings=s, n_permutations=9,
                             n_jobs=2)
    np.testing.assert_array_equal(again.null_bac, perm.null_bac)
    np.testing.assert_array_equal(again.null_auc, perm.null_auc)
