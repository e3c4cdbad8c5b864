"""In-fold preprocessing (ketabids.group.preprocessing): ComBat, covariate regression and
z-scoring against explicit least squares / scikit-learn, fitted on training rows only."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import StandardScaler

from ketabids.group.preprocessing import (
    ComBatTransformer,
    CovariateRegressor,
    apply_combat,
    apply_preprocessing,
    design_matrix,
    fit_combat,
    fit_preprocessing,
)


def test_combat_removes_site_effects_and_unseen_site_rule():
    rng = np.random.default_rng(0)
    n, p = 120, 300
    sites = np.repeat(["a", "b", "c"], 40)
    X = rng.standard_normal((n, p))
    shift = {"a": 0.0, "b": 2.0, "c": -1.0}
    scale = {"a": 1.0, "b": 2.0, "c": 0.5}
    for s_ in "abc":
        X[sites == s_] = X[sites == s_] * scale[s_] + shift[s_]
    train = sites != "c"
    params = fit_combat(X[train], sites[train])
    out = apply_combat(X, sites, params)
    ma, mb = out[sites == "a"].mean(0), out[sites == "b"].mean(0)
    assert abs((ma - mb).mean()) < 0.05                       # location harmonised (was 2)
    assert np.abs(ma - mb).mean() < 0.3                        # ~ sampling noise, n=40
    ratio = np.log(out[sites == "a"].std(0) / out[sites == "b"].std(0))
    assert abs(ratio.mean()) < 0.05                            # scale harmonised (was log 2)
    assert np.abs(ratio).mean() < 0.2                          # ~ sampling noise of SDs, n=40
    # unseen site "c": rows pass through unchanged (site effect treated as the grand mean)
    np.testing.assert_array_equal(out[sites == "c"], X[sites == "c"])


def test_design_matrix_is_an_intercept_and_the_covariates(rng):
    np.testing.assert_array_equal(design_matrix(None, 3), np.ones((3, 1)))
    cov = rng.standard_normal(5)
    np.testing.assert_array_equal(design_matrix(cov, 5), np.column_stack([np.ones(5), cov]))


def test_covariate_regression_equals_least_squares_fitted_on_training_rows(rng):
    n, p = 50, 30
    cov = rng.standard_normal((n, 2))
    X = rng.standard_normal((n, p)) + cov @ rng.standard_normal((2, p)) + 3.0
    train = np.arange(n) < 35
    reg = LinearRegression().fit(cov[train], X[train])
    expected = X - reg.predict(cov)
    Z = design_matrix(cov, n)
    params = fit_preprocessing(X, Z, cov, None, train)
    np.testing.assert_allclose(apply_preprocessing(X, Z, cov, None, params), expected,
                               atol=1e-10)
    # the transformer (covariates as the last columns) is the same map
    tr = CovariateRegressor(n_covariates=2).fit(np.column_stack([X, cov])[train])
    np.testing.assert_allclose(tr.transform(np.column_stack([X, cov])), expected, atol=1e-10)
    # no covariates: centring on the training mean
    c = CovariateRegressor().fit(X[train])
    np.testing.assert_allclose(c.transform(X), X - X[train].mean(0), atol=1e-12)


def test_standardisation_is_standard_scaler_of_the_training_residuals(rng):
    X = rng.standard_normal((40, 12)) * rng.uniform(0.5, 5, 12)
    X[:, 3] = 2.0                                        # a constant feature: SD 1, as sklearn
    rows = np.arange(40) >= 10
    Z = design_matrix(None, 40)
    params = fit_preprocessing(X, Z, None, None, rows, standardize=True)
    expected = StandardScaler().fit(X[rows]).transform(X)
    np.testing.assert_allclose(apply_preprocessing(X, Z, None, None, params), expected,
                               atol=1e-10)


def test_combat_transformer_is_the_combat_functions_with_a_column_convention(rng):
    n, p = 60, 20
    sites = np.repeat(["0", "1", "2"], 20)
    cov = rng.standard_normal((n, 1))
    X = rng.standard_normal((n, p)) + np.repeat(rng.standard_normal((3, p)), 20, axis=0)
    params = fit_combat(X, sites, cov)
    expected = apply_combat(X, sites, params, cov)
    Xa = np.column_stack([X, cov, sites.astype(float)])
    out = ComBatTransformer(n_covariates=1).fit(Xa).transform(Xa)
    np.testing.assert_allclose(out[:, :p], expected, atol=1e-12)
    np.testing.assert_array_equal(out[:, p:], cov)       # covariates kept for the regression
    # harmonised site means agree far better than the raw ones
    raw = np.ptp([X[sites == s].mean(0) for s in "012"], axis=0).mean()
    fixed = np.ptp([expected[sites == s].mean(0) for s in "012"], axis=0).mean()
    assert fixed < 0.25 * raw
