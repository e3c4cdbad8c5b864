"""Generated cohorts and the plain scikit-learn pipeline the group engine is checked against
(shared by the tests of the estimator, the kernels, the CV splitters and the nested CV)."""
from __future__ import annotations

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ketabids.group.estimator import KernelScaler
from ketabids.group.preprocessing import ComBatTransformer, CovariateRegressor

#: libsvm's stopping tolerance in the reference SVCs (tight: exact agreement is asserted)
TOL = 1e-10


def cohort(rng, n=44, p=300, k=2, n_sites=0, effect=0.6):
    """n subjects x p features: 20 features carry the label effect, ``k`` covariates act on every
    feature, ``n_sites`` sites shift every feature; returns (X float32, y, covariates, sites)."""
    y = rng.permutation(np.r_[np.ones(n // 2 - 2), np.zeros(n - n // 2 + 2)]).astype(int)
    cov = rng.standard_normal((n, k)) if k else None
    X = rng.standard_normal((n, p)) + 0.5
    X[:, :20] += effect * (2 * y[:, None] - 1)
    if k:
        X += cov @ rng.standard_normal((k, p))           # covariate effects on every voxel
    sites = None
    if n_sites:
        sites = np.array([f"s{i % n_sites}" for i in range(n)])
        X += rng.standard_normal((n_sites, p))[np.arange(n) % n_sites] * 0.7
    return X.astype(np.float32), y, cov, sites


def sklearn_pipeline(X, cov, sites, settings):
    """Straightforward feature-space pipeline (data with covariates / site codes as columns)."""
    k = 0 if cov is None else cov.shape[1]
    Xa = X.astype(np.float64)
    steps = []
    if settings.harmonize:
        codes = np.unique(sites, return_inverse=True)[1]
        Xa = np.column_stack([Xa] + ([cov] if k else []) + [codes])
        steps.append(ComBatTransformer(n_covariates=k))
    elif k:
        Xa = np.column_stack([Xa, cov])
    steps.append(CovariateRegressor(n_covariates=k))
    if settings.standardize:
        steps.append(StandardScaler())
    if settings.scale_kernel:
        steps.append(KernelScaler())
    steps.append(SVC(kernel="linear", class_weight="balanced", tol=TOL))
    return Xa, make_pipeline(*steps)
