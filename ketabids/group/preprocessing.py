"""In-fold preprocessing: ComBat, covariate regression, standardisation.

The one preprocessing chain (:func:`fit_preprocessing` / :func:`apply_preprocessing`), used by
the estimator, the nested-CV engine and the scikit-learn transformers below: fitted on training
rows only and applied to any rows; parameters are plain numpy arrays (dicts of arrays) so fitted
models stay skops-safe.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

__all__ = ["design_matrix", "fit_preprocessing", "apply_preprocessing", "fit_combat",
           "apply_combat", "fit_scaler", "CovariateRegressor", "ComBatTransformer"]


def design_matrix(covariates, n):
    """``[1, covariates]`` as float64 (n, 1 + k)."""
    if covariates is None:
        return np.ones((n, 1))
    cov = np.asarray(covariates, float).reshape(n, -1)
    return np.column_stack([np.ones(n), cov])


def fit_preprocessing(X, Z, covariates, sites, rows, *, standardize=False, harmonize=False):
    """Fit ComBat (``harmonize``) -> regression of every feature on ``Z = [1, covariates]`` ->
    z-scoring (``standardize``) on the rows ``rows``; returns the parameters (dict of arrays).

    Regression coefficients are ``pinv(Z_rows) X_rows`` (min-norm if Z is rank-deficient).
    """
    params = {}
    Xr = X[rows].astype(float)
    cov = None if covariates is None else covariates[rows]
    if harmonize:
        params["combat"] = fit_combat(Xr, sites[rows], cov)
        Xr = apply_combat(Xr, sites[rows], params["combat"], cov)
    coef = np.linalg.pinv(Z[rows]) @ Xr
    params["cov_coef"] = coef
    if standardize:
        params["scale"] = fit_scaler(Xr - Z[rows] @ coef)
    return params


def apply_preprocessing(X, Z, covariates, sites, params):
    """Apply fitted :func:`fit_preprocessing` parameters to any rows."""
    Xt = X.astype(float)
    if "combat" in params:
        Xt = apply_combat(Xt, sites, params["combat"], covariates)
    Xt = Xt - Z @ params["cov_coef"]
    if "scale" in params:
        Xt = Xt / params["scale"]
    return Xt


def fit_scaler(X):
    """Per-feature SD (ddof=0) of centred training rows; zero SD -> 1 (as StandardScaler)."""
    sd = X.std(0)
    return np.where(sd > 0, sd, 1.0)


# ---------------------------------------------------------------------------------------------
# ComBat (Johnson et al. 2007 Biostatistics 8:118; Fortin et al. 2018 NeuroImage 167:104)
# ---------------------------------------------------------------------------------------------
def fit_combat(X, sites, covariates=None, *, max_iter=1000, conv=1e-4):
    """Fit parametric empirical-Bayes ComBat (location and scale) on training rows.

    Model per voxel v: x = alpha_v + C beta_v + gamma_{s v} + delta_{s v} eps. Site one-hot +
    covariates are fitted by least squares; data are standardised by the pooled residual SD;
    per-site means and variances are shrunk with normal / inverse-gamma priors (one prior per
    site, across voxels). Sites with a single training subject get no scale adjustment
    (delta = 1). Returns a dict of numpy arrays (skops-safe).
    """
    X = np.asarray(X, float)
    sites = np.asarray(sites).astype(str)
    levels, s_idx = np.unique(sites, return_inverse=True)
    n, p = X.shape
    S = levels.size
    onehot = np.zeros((n, S))
    onehot[np.arange(n), s_idx] = 1.0
    cov = np.zeros((n, 0)) if covariates is None else np.asarray(covariates, float).reshape(n, -1)
    design = np.column_stack([onehot, cov])
    coef = np.linalg.pinv(design) @ X
    n_s = onehot.sum(0)
    grand_mean = (n_s / n) @ coef[:S]
    resid = X - design @ coef
    var_pooled = (resid ** 2).mean(0)
    var_pooled = np.where(var_pooled > 0, var_pooled, 1.0)
    cov_coef = coef[S:]
    stand_mean = grand_mean + cov @ cov_coef
    sd = np.sqrt(var_pooled)
    sdata = (X - stand_mean) / sd
    gamma_hat = np.stack([sdata[s_idx == s].mean(0) for s in range(S)])
    delta_hat = np.stack([sdata[s_idx == s].var(0, ddof=1) if n_s[s] > 1 else np.ones(p)
                          for s in range(S)])
    gamma_bar = gamma_hat.mean(1)
    t2 = gamma_hat.var(1, ddof=1) if p > 1 else np.ones(S)
    m = delta_hat.mean(1)
    s2 = delta_hat.var(1, ddof=1) if p > 1 else np.zeros(S)
    s2 = np.where(s2 > 0, s2, 1e-12)
    a_prior = (2 * s2 + m ** 2) / s2
    b_prior = (m * s2 + m ** 3) / s2
    gamma_star = np.empty((S, p))
    delta_star = np.empty((S, p))
    for s in range(S):
        rows = sdata[s_idx == s]
        ns = n_s[s]
        if ns < 2:
            gamma_star[s] = (t2[s] * ns * gamma_hat[s] + gamma_bar[s]) / (t2[s] * ns + 1)
            delta_star[s] = 1.0
            continue
        g_old, d_old = gamma_hat[s], delta_hat[s]
        for _ in range(max_iter):
            g_new = (t2[s] * ns * gamma_hat[s] + d_old * gamma_bar[s]) / (t2[s] * ns + d_old)
            sum2 = ((rows - g_new) ** 2).sum(0)
            d_new = (0.5 * sum2 + b_prior[s]) / (ns / 2.0 + a_prior[s] - 1.0)
            change = max(np.max(np.abs(g_new - g_old) / np.maximum(np.abs(g_old), 1e-12)),
                         np.max(np.abs(d_new - d_old) / np.maximum(np.abs(d_old), 1e-12)))
            g_old, d_old = g_new, d_new
            if change < conv:
                break
        gamma_star[s], delta_star[s] = g_old, d_old
    return {"sites": levels, "grand_mean": grand_mean, "var_pooled": var_pooled,
            "cov_coef": cov_coef, "gamma": gamma_star, "delta": delta_star}


def apply_combat(X, sites, params, covariates=None):
    """Harmonise rows with fitted ComBat ``params``.

    Rows of a site seen in training: ``(z - gamma*_s) / sqrt(delta*_s)`` on the standardised
    scale. Rule for sites NOT seen in training: no site adjustment (gamma = 0, delta = 1), so
    those rows pass through unchanged, i.e. their site is treated as the pooled (grand-mean)
    site. Documented and tested.
    """
    X = np.asarray(X, float)
    sites = np.asarray(sites).astype(str)
    n = X.shape[0]
    cov = (np.zeros((n, 0)) if covariates is None
           else np.asarray(covariates, float).reshape(n, -1))
    stand_mean = params["grand_mean"] + cov @ params["cov_coef"]
    sd = np.sqrt(params["var_pooled"])
    out = X.copy()
    lookup = {s: i for i, s in enumerate(params["sites"].tolist())}
    for s in np.unique(sites):
        if s not in lookup:
            continue
        i = lookup[s]
        rows = sites == s
        z = (X[rows] - stand_mean[rows]) / sd
        out[rows] = (z - params["gamma"][i]) / np.sqrt(params["delta"][i]) * sd + stand_mean[rows]
    return out


# ---------------------------------------------------------------------------------------------
# scikit-learn transformers (column convention) over the same chain: the reference pipeline
# ---------------------------------------------------------------------------------------------
class CovariateRegressor(TransformerMixin, BaseEstimator):
    """Residualise features on covariates + intercept, fitted on the rows given to ``fit``.

    The scikit-learn counterpart of the engine's in-fold covariate regression (the tests'
    reference pipeline). Column convention: the LAST ``n_covariates`` columns of X are
    covariates; they are dropped from the output. With ``n_covariates=0`` this is feature
    centring.

    Parameters
    ----------
    n_covariates : int
        Number of trailing covariate columns.

    Attributes
    ----------
    coef_ : ndarray of shape (1 + n_covariates, p)
        Regression coefficients of each feature on ``[1, covariates]``.

    Examples
    --------
    >>> X = np.array([[1.0, 0.0], [3.0, 1.0], [5.0, 2.0]])   # feature = 1 + 2 x covariate
    >>> CovariateRegressor(n_covariates=1).fit_transform(X).round(12).ravel().tolist()
    [0.0, 0.0, 0.0]
    """

    def __init__(self, n_covariates=0):
        self.n_covariates = n_covariates

    def _split(self, X):
        X = np.asarray(X, float)
        k = self.n_covariates
        feats = X[:, : X.shape[1] - k]
        return feats, design_matrix(X[:, X.shape[1] - k:] if k else None, X.shape[0])

    def fit(self, X, y=None):
        feats, Z = self._split(X)
        self.coef_ = fit_preprocessing(feats, Z, None, None, slice(None))["cov_coef"]
        return self

    def transform(self, X):
        check_is_fitted(self)
        feats, Z = self._split(X)
        return feats - Z @ self.coef_


class ComBatTransformer(TransformerMixin, BaseEstimator):
    """ComBat site harmonisation as a scikit-learn transformer (the tests' reference pipeline).

    Column convention: the last column of X holds integer site codes, the ``n_covariates``
    columns before it hold covariates (kept in the output, for a following
    :class:`CovariateRegressor`); the site column is dropped.

    Parameters
    ----------
    n_covariates : int
        Number of covariate columns before the site column (preserved by ComBat).

    Attributes
    ----------
    params_ : dict
        The fitted ComBat parameters (:func:`fit_combat`).
    """

    def __init__(self, n_covariates=0):
        self.n_covariates = n_covariates

    def _split(self, X):
        X = np.asarray(X, float)
        k = self.n_covariates
        p = X.shape[1] - 1 - k
        cov = X[:, p:p + k] if k else None
        return X[:, :p], cov, X[:, -1].astype(np.int64).astype(str)

    def fit(self, X, y=None):
        feats, cov, sites = self._split(X)
        self.params_ = fit_combat(feats, sites, cov)
        return self

    def transform(self, X):
        check_is_fitted(self)
        feats, cov, sites = self._split(X)
        out = apply_combat(feats, sites, self.params_, cov)
        return out if cov is None else np.column_stack([out, cov])
