"""Weights of every outer model, CV ratio, sign consistency, Haufe patterns, region tables."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import SVC

from ketabids.group import (
    KetaSVC,
    NestedCVSettings,
    haufe_pattern,
    nested_cv,
    region_table,
    weight_maps,
)


def _data(rng, n=60, p=200):
    y = (np.arange(n) % 2).astype(int)
    cov = rng.standard_normal((n, 1))
    X = 10 * rng.standard_normal((n, p)) + 5
    X[:, :10] += 6 * (2 * y[:, None] - 1)
    X += 3 * cov
    return X, y, cov


def test_outer_weights_equal_primal_weights(rng):
    X, y, cov = _data(rng)
    s = NestedCVSettings(n_repeats=1, n_outer=4, n_inner=3, C_grid=(1e-4, 1.0))
    res = nested_cv(X, y, covariates=cov, settings=s)
    assert res.weights.shape == (4, X.shape[1])
    for o in range(4):
        tr = res.fold_of[0] != o
        Z = np.column_stack([np.ones(tr.sum()), cov[tr]])
        Xr = X[tr] - Z @ np.linalg.lstsq(Z, X[tr], rcond=None)[0]
        ref = SVC(kernel="linear", C=res.chosen_C[0, o], class_weight="balanced", tol=1e-10)
        ref.fit(Xr, y[tr])
        np.testing.assert_allclose(res.weights[o], ref.coef_[0], atol=2e-5 * np.abs(
            ref.coef_).max())
        assert res.intercepts[o] == pytest.approx(ref.intercept_[0], abs=1e-5)
    maps = weight_maps(res)
    assert maps.n_models == 4
    assert ((maps.sign_consistency >= 0) & (maps.sign_consistency <= 1)).all()
    assert np.abs(maps.cv_ratio[:10]).mean() > np.abs(maps.cv_ratio[10:]).mean()


def test_haufe_pattern_recovers_source_not_suppressor(rng):
    # classic suppressor: x1 = signal + noise, x2 = noise; w uses x2, the pattern does not
    n = 400
    y = (rng.random(n) < 0.5).astype(int)
    noise = rng.standard_normal(n)
    X = np.column_stack([(2 * y - 1) + noise, noise, rng.standard_normal(n)])
    model = KetaSVC(C_grid=(1.0,)).fit(X, y)
    assert abs(model.coef_[0, 1]) > 0.5 * abs(model.coef_[0, 0])   # suppressor has weight
    A = haufe_pattern(model, X)
    assert A[0] > 0 and abs(A[1]) < 0.2 * A[0] and abs(A[2]) < 0.2 * A[0]


def test_region_table():
    labels = np.array([0, 1, 1, 2, 2, 2, 3])
    pattern = np.array([9.0, 1.0, 3.0, -5.0, -4.0, -6.0, 0.1])
    t = region_table(labels, pattern, names={1: "frontal", 2: "cerebellar"})
    assert list(t.name) == ["cerebellar", "frontal", "3"]
    assert list(t.sign) == ["-", "+", "+"]
    assert t.loc[0, "mean_pattern"] == pytest.approx(-5.0) and t.loc[0, "n_voxels"] == 3
    assert len(region_table(labels, pattern, top=1)) == 1
    with pytest.raises(ValueError):
        region_table(labels[:-1], pattern)
