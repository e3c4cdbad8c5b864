"""Exact linear-SVC fits on precomputed kernels, many problems at once.

The support vector classifier of libsvm (``sklearn.svm.SVC``) solves the dual

.. math::

    \\min_\\beta \\tfrac12 \\beta^\\top K \\beta - y^\\top \\beta
    \\quad\\text{s.t.}\\quad 1^\\top \\beta = 0,\\;
    \\min(0, y_i C_i) \\le \\beta_i \\le \\max(0, y_i C_i)

with :math:`\\beta = \\alpha \\circ y`, :math:`y_i \\in \\{-1, +1\\}` and, for balanced class
weights, :math:`C_i = C\\, n / (2 n_{y_i})`. The decision function is
:math:`f(x) = \\sum_j \\beta_j k(x, x_j) + b`.

At n ~ 100 a libsvm call costs ~2 ms of overhead, so a nested CV with permutations is dominated
by call overhead. Here the dual is solved by a primal-dual active-set (semismooth Newton) method
vectorised over a batch of problems: each iteration fixes every variable at a bound or frees it,
solves the equality-constrained KKT system of all problems with one batched LU
(``numpy.linalg.solve``) and moves variables whose bound or multiplier sign is violated. It ends
at the exact optimum of each problem (KKT verified on the unregularised system, tolerance
``kkt_tol`` in decision units); the rare problem that does not converge is handed to libsvm
itself (public ``SVC(kernel='precomputed')``). The intercept follows libsvm's rule (mean over free
support vectors, else the midpoint of the feasible interval), so decision values equal libsvm's to
its tolerance. A problem whose optimum has no free support vector (every alpha at 0 or C, typical
for very small C) has a whole
interval of optimal intercepts; libsvm's pick then depends on its iteration order, so such
problems are handed to libsvm to reproduce it.

Along a C path a solution with no variable at its upper bound is also the solution for every
smaller C down to ``max(alpha_i / w_i)`` (its KKT conditions do not involve C), so in the
p >> n regime of VBM one solve often serves the whole grid.
"""
from __future__ import annotations

import numpy as np

__all__ = ["balanced_weights", "solve_dual", "solve_c_path", "libsvm_solve", "platt_fit",
           "platt_predict", "residual_kernels"]


def balanced_weights(y01, valid=None):
    """Per-sample class weights ``n / (2 n_c)`` (scikit-learn ``class_weight='balanced'``).

    ``y01`` is (..., m) of 0/1; entries where ``valid`` is False get weight 0.
    """
    y01 = np.asarray(y01)
    if valid is None:
        valid = np.ones(y01.shape, bool)
    n = valid.sum(-1, keepdims=True).astype(float)
    n1 = ((y01 == 1) & valid).sum(-1, keepdims=True).astype(float)
    n0 = n - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(y01 == 1, n / (2 * n1), n / (2 * n0))
    return np.where(valid, w, 0.0)


def _libsvm_intercept(g0, yy, status, valid):
    """libsvm's ``calculate_rho`` when no variable is free; returns b = -rho.

    ``g0`` = (K beta)_i - y_i (libsvm's y_i G_i); status 0 = lower, 2 = upper bound of alpha.
    """
    # alpha at 0 (beta at the bound nearest 0) or at C
    alpha_zero = np.where(yy > 0, status == 0, status == 2)
    alpha_upper = ~alpha_zero
    # libsvm: upper & y=-1 -> ub ; upper & y=+1 -> lb ; lower & y=+1 -> ub ; lower & y=-1 -> lb
    to_ub = valid & ((alpha_upper & (yy < 0)) | (alpha_zero & (yy > 0)))
    to_lb = valid & ((alpha_upper & (yy > 0)) | (alpha_zero & (yy < 0)))
    ub = np.where(to_ub, g0, np.inf).min(-1)
    lb = np.where(to_lb, g0, -np.inf).max(-1)
    ub = np.where(np.isfinite(ub), ub, lb)
    lb = np.where(np.isfinite(lb), lb, ub)
    return -(ub + lb) / 2


def _pdas(K, yy, lo, hi, status, *, max_iter, kkt_tol, ridge, init_ridge=1e-3):
    """Primal-dual active-set iterations on a batch; returns beta, b, ok."""
    B, m = yy.shape
    valid = yy != 0
    locked = ~valid | (lo == hi)
    scale = np.maximum(np.einsum("bii->b", K) / np.maximum(valid.sum(1), 1), 1e-300)
    eps = scale
    beta = np.zeros((B, m))
    b = np.zeros(B)
    ok = np.zeros(B, bool)
    todo = np.arange(B)
    box_tol = 1e-12 * np.maximum(np.abs(hi - lo).max(1), 1e-300)
    for it in range(max_iter):
        if todo.size == 0:
            break
        # first iteration from a cold start: a least-squares SVM (ridge init_ridge) guesses the
        # active sets; later iterations are exact up to a negligible ridge
        cold = it == 0 and init_ridge > 0
        eps_it = eps * (init_ridge if cold else ridge)
        Kt, yt, lot, hit, st = K[todo], yy[todo], lo[todo], hi[todo], status[todo]
        f = st == 1
        v = np.where(st == 2, hit, lot)
        v = np.where(f, 0.0, v)
        n_free = f.sum(1)
        A = np.zeros((todo.size, m + 1, m + 1))
        ff = f[:, :, None] & f[:, None, :]
        np.multiply(Kt, ff, out=A[:, :m, :m])
        ar = np.arange(m)
        A[:, ar, ar] = np.where(f, Kt[:, ar, ar] + eps_it[todo, None], 1.0)
        A[:, :m, m] = f
        A[:, m, :m] = f
        A[:, m, m] = np.where(n_free == 0, 1.0, 0.0)
        rhs = np.empty((todo.size, m + 1))
        rhs[:, :m] = np.where(f, yt - (Kt @ v[..., None])[..., 0], v)
        rhs[:, m] = np.where(n_free == 0, 0.0, -v.sum(1))
        try:
            sol = np.linalg.solve(A, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:
            sol = np.stack([np.linalg.lstsq(a, r, rcond=None)[0] for a, r in zip(A, rhs)])
        bt = np.where(f, sol[:, :m], v)
        kb = (Kt @ bt[..., None])[..., 0]
        g0 = kb - yt
        bb = np.where(n_free == 0, _libsvm_intercept(g0, yt, st, yt != 0), sol[:, m])
        g = g0 + bb[:, None]
        new = st.copy()
        tol_b = box_tol[todo, None]
        new[f & (bt > hit + tol_b)] = 2
        new[f & (bt < lot - tol_b)] = 0
        new[(st == 0) & (g < -kkt_tol) & ~locked[todo]] = 1
        new[(st == 2) & (g > kkt_tol) & ~locked[todo]] = 1
        new[locked[todo]] = 0
        same = (new == st).all(1) & (not cold)
        beta[todo] = np.clip(bt, lot, hit)
        b[todo] = bb
        status[todo] = new
        ok[todo[same]] = True
        todo = todo[~same]
    return beta, b, ok


def _kkt_ok(K, yy, lo, hi, beta, b, kkt_tol):
    valid = yy != 0
    g = np.einsum("bij,bj->bi", K, beta) - yy + b[:, None]
    span = np.maximum(np.abs(hi - lo), 1e-300)
    at_lo = (beta - lo) <= 1e-9 * span
    at_hi = (hi - beta) <= 1e-9 * span
    free = ~at_lo & ~at_hi
    bad = valid & ((free & (np.abs(g) > kkt_tol)) | (at_lo & ~at_hi & (g < -kkt_tol))
                   | (at_hi & ~at_lo & (g > kkt_tol)))
    eq = np.abs(np.where(valid, beta, 0).sum(1)) <= 1e-9 * np.maximum(np.abs(hi).sum(1), 1e-300)
    return ~bad.any(1) & eq


def libsvm_solve(K, y_pm, upper, tol):
    """One problem through libsvm (``SVC(kernel='precomputed')``, public API); returns beta
    (m,), b. Padding entries (``y_pm == 0``) get beta 0.

    libsvm caches kernel rows in float32: below ~1e-8 its stopping rule may never be met; then
    retry at 1e-7 instead of spinning to its 10^7-iteration limit. (Calling scikit-learn's
    private libsvm binding directly saves ~5 ms per call but ~4 % of a nested CV, where only
    ~2 of ~5,600 problems reach libsvm: benchmarks/group.py ``libsvm``.)
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import SVC

    idx = np.flatnonzero(y_pm != 0)
    Kv = np.ascontiguousarray(K[np.ix_(idx, idx)], dtype=np.float64)
    yv = y_pm[idx]
    w = upper[idx]
    class_weight = {0: float(w[yv < 0][0]), 1: float(w[yv > 0][0])}
    for t_, it_ in ((tol, 200_000), (max(tol, 1e-7), -1)):
        svc = SVC(kernel="precomputed", C=1.0, class_weight=class_weight, tol=t_, max_iter=it_)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            svc.fit(Kv, (yv > 0).astype(np.int64))
        if np.max(svc.n_iter_) < 200_000:
            break
    beta = np.zeros(K.shape[0])
    beta[idx[svc.support_]] = svc.dual_coef_[0]
    return beta, float(svc.intercept_[0])


def solve_dual(K, yy, upper, *, status=None, tol=1e-10, kkt_tol=1e-9, max_iter=60,
               ridge=1e-13):
    """Solve a batch of SVC duals exactly.

    Parameters
    ----------
    K : (B, m, m) kernels (padding rows/columns arbitrary)
    yy : (B, m) labels in {-1, +1}; 0 marks padding
    upper : (B, m) per-sample C_i (alpha upper bounds)
    status : optional (B, m) int8 warm start (0 = alpha at 0 side, 1 free, 2 at C side, in beta
        terms: 0 = beta at its lower bound, 2 = at its upper bound)

    Returns
    -------
    beta (B, m), b (B,), status (B, m), n_fallback (int)
    """
    K = np.asarray(K, float)
    yy = np.asarray(yy, float)
    upper = np.where(yy != 0, np.asarray(upper, float), 0.0)
    lo = np.minimum(0.0, yy * upper)
    hi = np.maximum(0.0, yy * upper)
    init_ridge = 0.1 if status is None else 0.0
    if status is None:
        status = np.where(yy != 0, 1, 0).astype(np.int8)
    else:
        status = status.astype(np.int8, copy=True)
    beta, b, ok = _pdas(K, yy, lo, hi, status, max_iter=max_iter, kkt_tol=kkt_tol, ridge=ridge,
                        init_ridge=init_ridge)
    ok &= _kkt_ok(K, yy, lo, hi, beta, b, 10 * kkt_tol)
    # No free support vector: every b in an interval is optimal and libsvm's pick depends on
    # its iteration order (rounding leaves one alpha "free"), so let libsvm decide.
    span = np.maximum(hi - lo, 1e-300)
    inside = (yy != 0) & (beta - lo > 1e-9 * span) & (hi - beta > 1e-9 * span)
    ok &= inside.any(1)
    bad = np.flatnonzero(~ok)
    for i in bad:
        beta[i], b[i] = libsvm_solve(K[i], yy[i], upper[i], tol)
        s = np.where(np.isclose(beta[i], lo[i], rtol=0, atol=1e-12 * (hi[i] - lo[i]).max()), 0, 1)
        s = np.where(np.isclose(beta[i], hi[i], rtol=0, atol=1e-12 * (hi[i] - lo[i]).max()), 2, s)
        status[i] = np.where(yy[i] != 0, s, 0)
    return beta, b, status, int(bad.size)


def solve_c_path(K, yy, weights, C_grid, *, chunk=256, **kw):
    """Solutions for every C of an ascending grid, reusing solutions down the path.

    K (T, m, m), yy (T, m) in {-1, 0, +1}, weights (T, m) class weights (0 = padding).
    Returns beta (T, L, m), b (T, L) and the number of libsvm fallbacks.
    """
    C_grid = np.asarray(C_grid, float)
    T, m = yy.shape
    L = C_grid.size
    beta = np.zeros((T, L, m))
    b = np.zeros((T, L))
    n_fb = 0
    status = np.where(yy != 0, 1, 0).astype(np.int8)
    need = np.arange(T)
    cur_beta = np.zeros((T, m))
    cur_b = np.zeros(T)
    for li in range(L - 1, -1, -1):
        C = C_grid[li]
        upper = C * weights
        if li < L - 1:
            # reuse when the previous solution stays feasible with no alpha at the new bound
            at_c = (yy != 0) & (status == np.where(yy > 0, 2, 0))
            fits = (np.abs(cur_beta) <= upper * (1 - 1e-12)) | (yy == 0)
            reuse = ~at_c.any(1) & fits.all(1)
            need = np.flatnonzero(~reuse)
        for start in range(0, need.size, chunk):
            sel = need[start:start + chunk]
            warm = None if li == L - 1 else status[sel]
            bt, bb, st, fb = solve_dual(K[sel], yy[sel], upper[sel], status=warm, **kw)
            cur_beta[sel], cur_b[sel], status[sel] = bt, bb, st
            n_fb += fb
        beta[:, li] = cur_beta
        b[:, li] = cur_b
    return beta, b, n_fb


def residual_kernels(K, Z, train_masks):
    """Kernels of in-fold covariate residuals, exactly, from the full linear kernel.

    For a training set T, residualising every voxel on ``Z = [1, covariates]`` with coefficients
    fitted on T maps the data by ``M = I - Z G`` with ``G = pinv(Z_T) S_T`` (n x n, sample
    space), so the kernel of the residuals is ``M K M^T``. With Z = 1 this is fold-wise centring.

    K (n, n); Z (n, q); train_masks (T, n) bool. Returns (T, n, n) kernels and G (T, q, n).
    """
    masks = np.asarray(train_masks, bool)
    Zm = Z[None, :, :] * masks[:, :, None]          # (T, n, q), rows outside T zeroed
    G = np.linalg.pinv(Zm).astype(float)             # (T, q, n), zero columns outside T
    GK = G @ K                                       # (T, q, n)
    GKG = GK @ G.transpose(0, 2, 1)                  # (T, q, q)
    H = GK - 0.5 * (GKG @ Z.T)                       # M K M^T = K - Z H - (Z H)^T
    ZH = Z @ H
    out = K - ZH
    out -= ZH.transpose(0, 2, 1)
    return out, G


# ---------------------------------------------------------------------------------------------
# Platt scaling (Platt 1999; Lin, Lin & Weng 2007, Mach Learn 68:267 - libsvm's algorithm)
# ---------------------------------------------------------------------------------------------
def platt_fit(decision, y01, max_iter=100):
    """Fit P(y=1|f) = 1 / (1 + exp(A f + B)) by Newton's method with Platt's target smoothing.

    Returns (A, B). Used on out-of-sample (inner-CV) decision values only.
    """
    f = np.asarray(decision, float)
    y = np.asarray(y01)
    prior1 = float((y == 1).sum())
    prior0 = float((y != 1).sum())
    hi_t = (prior1 + 1.0) / (prior1 + 2.0)
    lo_t = 1.0 / (prior0 + 2.0)
    t = np.where(y == 1, hi_t, lo_t)
    A, B = 0.0, np.log((prior0 + 1.0) / (prior1 + 1.0))
    sigma, eps = 1e-12, 1e-5

    def fval(A, B):
        fApB = f * A + B
        return np.sum(np.where(fApB >= 0, t * fApB + np.log1p(np.exp(-np.abs(fApB))),
                               (t - 1) * fApB + np.log1p(np.exp(-np.abs(fApB)))))

    obj = fval(A, B)
    for _ in range(max_iter):
        fApB = f * A + B
        e = np.exp(-np.abs(fApB))
        p = np.where(fApB >= 0, e / (1 + e), 1 / (1 + e))
        q = 1 - p
        d2 = p * q
        h11 = sigma + np.sum(f * f * d2)
        h22 = sigma + np.sum(d2)
        h21 = np.sum(f * d2)
        d1 = t - p
        g1 = np.sum(f * d1)
        g2 = np.sum(d1)
        if abs(g1) < eps and abs(g2) < eps:
            break
        det = h11 * h22 - h21 * h21
        dA = -(h22 * g1 - h21 * g2) / det
        dB = -(-h21 * g1 + h11 * g2) / det
        gd = g1 * dA + g2 * dB
        step = 1.0
        while step >= 1e-10:
            nA, nB = A + step * dA, B + step * dB
            nobj = fval(nA, nB)
            if nobj < obj + 1e-4 * step * gd:
                A, B, obj = nA, nB, nobj
                break
            step /= 2
        else:
            break
    return float(A), float(B)


def platt_predict(decision, A, B):
    """P(y = 1) = 1 / (1 + exp(A f + B)), computed stably."""
    z = np.asarray(decision, float) * A + B
    return np.where(z >= 0, np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))),
                    1 / (1 + np.exp(-np.abs(z))))
