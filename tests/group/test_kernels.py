"""The dual solvers, fold-wise residual kernels and Platt scaling of ketabids.group.kernels,
against libsvm, explicit residualisation and a generic optimiser."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_sample_weight

from ketabids.group.kernels import (
    balanced_weights,
    libsvm_solve,
    platt_fit,
    platt_predict,
    residual_kernels,
    solve_c_path,
)
from tests.group.reference import TOL


def test_solver_matches_libsvm_on_soft_and_hard_margins(rng):
    Ks, ys = [], []
    for i in range(12):
        n, p = 40, [10, 60, 400][i % 3]
        X = rng.standard_normal((n, p))
        y = (rng.random(n) < 0.45).astype(int)
        y[:2] = [0, 1]
        X[:, 0] += y
        X -= X.mean(0)
        Ks.append(X @ X.T)
        ys.append(y)
    K = np.stack(Ks)
    y01 = np.stack(ys)
    grid = 2.0 ** np.arange(-6, 5)
    beta, b, _ = solve_c_path(K, 2.0 * y01 - 1, balanced_weights(y01), grid)
    for i in range(K.shape[0]):
        yy = 2.0 * y01[i] - 1
        for li, C in enumerate(grid):
            ref = SVC(kernel="precomputed", C=C, class_weight="balanced", tol=TOL)
            ref.fit(K[i], y01[i])
            ref_beta = np.zeros(K.shape[1])
            ref_beta[ref.support_] = ref.dual_coef_[0]
            up = C * balanced_weights(y01[i])

            def kkt(beta, b, Ki=K[i], yy=yy, up=up):  # max |margin residual| of free SVs
                g = Ki @ beta + b - yy
                free = (np.abs(beta) > 1e-9 * up) & (np.abs(beta) < up * (1 - 1e-9))
                return np.abs(g[free]).max() if free.any() else 0.0

            mine = K[i] @ beta[i, li] + b[i, li]
            diff = np.abs(ref.decision_function(K[i]) - mine).max()
            # exact optimum, or the problem was handed to libsvm (identical then)
            assert kkt(beta[i, li], b[i, li]) <= 1e-9 or diff <= 1e-9
            # libsvm caches kernel values in float32: its own KKT residual bounds the agreement
            assert diff <= 1e-6 or diff <= 20 * kkt(ref_beta, ref.intercept_[0]), (i, C, diff)
            if i % 3 == 2:       # p >> n (the VBM regime): hard margin, tight agreement
                assert diff <= 1e-6


def test_libsvm_fallback_equals_svc_and_ignores_padding(rng):
    """Problems handed to libsvm: the solution of SVC(kernel='precomputed') with balanced class
    weights, padding entries untouched."""
    for i in range(6):
        n, p = 30, [5, 40, 500][i % 3]
        X = rng.standard_normal((n, p))
        X -= X.mean(0)
        y01 = (rng.random(n) < 0.45).astype(int)
        y01[:2] = [0, 1]
        yy = np.r_[2.0 * y01 - 1, 0.0]                  # one padding entry
        K = np.zeros((n + 1, n + 1))
        K[:n, :n] = X @ X.T
        C = [2.0 ** -6, 1.0, 16.0][i % 3]
        beta, b = libsvm_solve(K, yy, C * np.r_[balanced_weights(y01), 0.0], TOL)
        assert beta[-1] == 0 and abs(beta[:n].sum()) <= 1e-9
        ref = SVC(kernel="precomputed", C=C, tol=TOL, class_weight="balanced").fit(K[:n, :n],
                                                                                  y01)
        np.testing.assert_allclose(ref.decision_function(K[:n, :n]), K[:n, :n] @ beta[:n] + b,
                                   atol=1e-9)


def test_balanced_weights_are_scikit_learns_and_ignore_invalid_entries(rng):
    y = (rng.random((5, 23)) < 0.3).astype(int)
    y[:, :2] = [0, 1]
    w = balanced_weights(y)
    for row, wr in zip(y, w):
        np.testing.assert_allclose(wr, compute_sample_weight("balanced", row), rtol=1e-12)
    valid = rng.random(y.shape) < 0.8
    valid[:, :2] = True
    wv = balanced_weights(y, valid)
    assert (wv[~valid] == 0).all()
    for row, v, wr in zip(y, valid, wv):
        np.testing.assert_allclose(wr[v], compute_sample_weight("balanced", row[v]), rtol=1e-12)


def test_residual_kernels_equal_kernels_of_explicit_in_fold_residuals(rng):
    """M K M^T from one kernel = the kernel of features residualised on [1, covariates] with
    coefficients fitted on each training set's rows (least squares), for every row."""
    n, p = 25, 60
    X = rng.standard_normal((n, p))
    Z = np.column_stack([np.ones(n), rng.standard_normal((n, 2))])
    masks = rng.random((4, n)) < 0.7
    Ks, G = residual_kernels(X @ X.T, Z, masks)
    assert Ks.shape == (4, n, n) and G.shape == (4, 3, n)
    for t, m in enumerate(masks):
        coef = np.linalg.lstsq(Z[m], X[m], rcond=None)[0]
        R = X - Z @ coef
        np.testing.assert_allclose(Ks[t], R @ R.T, atol=1e-9)
    # Z = 1: fold-wise centring
    Kc, _ = residual_kernels(X @ X.T, np.ones((n, 1)), masks[:1])
    Xc = X - X[masks[0]].mean(0)
    np.testing.assert_allclose(Kc[0], Xc @ Xc.T, atol=1e-9)


def _platt_reference(f, y):
    """Platt's smoothed-target negative log-likelihood minimised by a generic optimiser."""
    n1, n0 = (y == 1).sum(), (y != 1).sum()
    t = np.where(y == 1, (n1 + 1.0) / (n1 + 2.0), 1.0 / (n0 + 2.0))

    def nll(ab):
        z = ab[0] * f + ab[1]                        # P(y=1) = 1 / (1 + exp(z))
        return np.sum(t * z + np.logaddexp(0, -z))

    return minimize(nll, [0.0, 0.0], method="Nelder-Mead",
                    options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000}).x


def test_platt_fit_finds_the_minimum_of_the_smoothed_likelihood(rng):
    for shift in (0.5, 1.5, 3.0):
        y = (rng.random(80) < 0.4).astype(int)
        f = rng.standard_normal(80) + shift * (2 * y - 1)
        A, B = platt_fit(f, y)
        np.testing.assert_allclose([A, B], _platt_reference(f, y), atol=1e-4)
        assert A < 0                                 # larger decision -> more likely responder
        p = platt_predict(f, A, B)
        np.testing.assert_allclose(p, 1 / (1 + np.exp(A * f + B)), rtol=1e-12)


def test_platt_predict_is_stable_far_from_the_boundary():
    p = platt_predict(np.array([-1e6, -50.0, 0.0, 50.0, 1e6]), -1.0, 0.0)
    assert np.isfinite(p).all() and p[0] == 0.0 and p[-1] == 1.0 and p[2] == 0.5
    assert (np.diff(p) >= 0).all()
