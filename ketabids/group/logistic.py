"""Binary logistic regression by iteratively reweighted least squares (IRLS), with Firth's
bias-reduced variant for small samples and separation.

Used by the treatment-specificity analysis (:mod:`ketabids.group.specificity`: ``response ~
decision * arm``) and the calibration of external predictions (:mod:`ketabids.group.utility`:
calibration-in-the-large and slope). Plain numpy/scipy, no statsmodels.

* Maximum likelihood: Newton-Raphson (= IRLS) on ``l(b) = sum y eta - log(1 + exp(eta))`` with
  ``eta = X b + offset``; covariance ``(X' W X)^-1``, ``W = diag(p (1 - p))``.
* Firth (1993): maximises ``l(b) + 1/2 log det(X' W X)``; the score gains ``X' h (1/2 - p)``
  with ``h`` the diagonal of the weighted hat matrix. Estimates stay finite under (quasi-)
  separation, e.g. when a decision value separates responders from non-responders perfectly in
  a small arm, where maximum likelihood diverges (Heinze & Schemper 2002, Stat Med 21:2409).
* :func:`fit_logistic` with ``firth=None`` uses maximum likelihood and switches to Firth when
  maximum likelihood does not converge or a fitted probability reaches 0 or 1 (separation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

__all__ = ["LogisticFit", "fit_logistic", "likelihood_ratio_p", "profile_interval",
           "logit"]

#: Fitted probabilities this close to 0 or 1 mean (quasi-)separation under maximum likelihood.
_SEPARATION_EPS = 1e-7


def logit(p, eps: float = 1e-8):
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]`` (finite for 0 and 1).

    >>> float(logit(0.5))
    0.0
    """
    p = np.clip(np.asarray(p, float), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class LogisticFit:
    """A fitted logistic model: coefficients, their covariance and the (penalised) log
    likelihood; ``method`` is ``"maximum likelihood"`` or ``"Firth"``."""

    coef: np.ndarray
    cov: np.ndarray
    loglik: float
    converged: bool
    method: str
    n_iter: int

    @property
    def se(self) -> np.ndarray:
        """Standard errors (square roots of the covariance's diagonal)."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))

    def wald(self, index: int, confidence: float = 0.95) -> tuple[float, float, float, float]:
        """``(estimate, ci_low, ci_high, p)`` of coefficient ``index``: Wald interval and
        two-sided Wald p-value."""
        est, se = float(self.coef[index]), float(self.se[index])
        z = stats.norm.ppf(0.5 + confidence / 2)
        p = float(2 * stats.norm.sf(abs(est) / se)) if se > 0 else float("nan")
        return est, est - z * se, est + z * se, p


def _loglik(X, y, beta, offset, firth):
    eta = X @ beta + offset
    ll = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    if firth:
        p = special.expit(eta)
        w = p * (1 - p)
        sign, logdet = np.linalg.slogdet(X.T @ (X * w[:, None]))
        ll += 0.5 * logdet if sign > 0 else -np.inf
    return ll


def _fit(X, y, offset, firth, max_iter, tol, free=None):
    free = np.ones(X.shape[1], bool) if free is None else free
    beta = np.zeros(X.shape[1])
    ll = _loglik(X, y, beta, offset, firth)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        p = special.expit(X @ beta + offset)
        w = np.maximum(p * (1 - p), 1e-300)
        info = X.T @ (X * w[:, None])
        resid = y - p
        if firth:  # hat values of the whole design, also when coefficients are held at 0
            xw = X * np.sqrt(w)[:, None]
            h = np.einsum("ij,jk,ik->i", xw, np.linalg.pinv(info), xw)
            resid = resid + h * (0.5 - p)
        step = np.zeros(X.shape[1])
        step[free] = np.linalg.pinv(info[np.ix_(free, free)]) @ (X[:, free].T @ resid)
        # step halving: the (penalised) log likelihood must not decrease
        for _ in range(30):
            new = beta + step
            ll_new = _loglik(X, y, new, offset, firth)
            if ll_new >= ll - 1e-12:
                break
            step = step / 2
        beta, ll_old, ll = new, ll, ll_new
        if np.max(np.abs(step)) < tol or abs(ll - ll_old) < tol * 1e-2:
            converged = np.max(np.abs(step)) < np.sqrt(tol)
            if converged:
                break
    p = special.expit(X @ beta + offset)
    info = X.T @ (X * (p * (1 - p))[:, None])
    return beta, np.linalg.pinv(info), ll, converged, it, p


def fit_logistic(X, y, *, offset=None, firth: bool | None = None, max_iter: int = 100,
                 tol: float = 1e-10, zero=()) -> LogisticFit:
    """Fit ``P(y = 1) = expit(X b + offset)``; ``X`` (n, k) includes the intercept column.

    ``firth``: True = Firth's penalised likelihood, False = maximum likelihood, None
    (default) = maximum likelihood unless it separates (see the module docstring).
    ``zero``: indices of coefficients held at 0 (the null model of a likelihood-ratio test;
    with Firth the penalty keeps the whole design, as R's logistf does, so that the penalised
    likelihoods of the two fits are comparable).

    >>> X = np.column_stack([np.ones(8), [0, 0, 0, 0, 1, 1, 1, 1]])
    >>> fit = fit_logistic(X, np.array([0, 0, 0, 1, 0, 1, 1, 1]))
    >>> round(float(fit.coef[1]), 4), fit.method     # log odds ratio log(3 * 3 / 1)
    (2.1972, 'maximum likelihood')
    """
    X = np.asarray(X, float)
    y = np.asarray(y, float).ravel()
    offset = np.zeros(y.size) if offset is None else np.asarray(offset, float).ravel()
    if X.ndim != 2 or X.shape[0] != y.size or offset.size != y.size:
        raise ValueError("X must be (n, k) with n = len(y) = len(offset)")
    free = np.ones(X.shape[1], bool)
    free[list(zero)] = False
    if firth is None:
        beta, cov, ll, ok, it, p = _fit(X, y, offset, False, max_iter, tol, free)
        separated = (not ok) or np.any((p < _SEPARATION_EPS) | (p > 1 - _SEPARATION_EPS))
        if not separated:
            return LogisticFit(beta, cov, ll, ok, "maximum likelihood", it)
        firth = True
    beta, cov, ll, ok, it, _ = _fit(X, y, offset, bool(firth), max_iter, tol, free)
    return LogisticFit(beta, cov, ll, ok, "Firth" if firth else "maximum likelihood", it)


def likelihood_ratio_p(full: LogisticFit, reduced: LogisticFit, df: int = 1) -> float:
    """Two-sided p of the likelihood-ratio test of nested fits (chi-square with ``df``);
    penalised likelihoods when the fits are Firth's (fit the null with ``zero``, as R's
    logistf)."""
    stat = max(0.0, 2.0 * (full.loglik - reduced.loglik))
    return float(stats.chi2.sf(stat, df))


def profile_interval(X, y, index: int, *, firth: bool, offset=None,
                     confidence: float = 0.95) -> tuple[float, float]:
    """Profile (penalised, with ``firth``) likelihood interval of coefficient ``index``: the
    values ``c`` where ``2 (l(b_hat) - max l(b | b_index = c))`` equals the chi-square(1)
    quantile; the interval that matches the likelihood-ratio p (a bound is +/-inf when the
    likelihood never drops that far, as under separation without Firth)."""
    from scipy.optimize import brentq

    X = np.asarray(X, float)
    y = np.asarray(y, float).ravel()
    offset = np.zeros(y.size) if offset is None else np.asarray(offset, float).ravel()
    full = fit_logistic(X, y, offset=offset, firth=firth)
    crit = float(stats.chi2.ppf(confidence, 1))
    est = float(full.coef[index])

    def excess(c):
        held = fit_logistic(X, y, offset=offset + c * X[:, index], firth=firth, zero=[index])
        return 2.0 * (full.loglik - held.loglik) - crit

    bounds = []
    for sign in (-1.0, 1.0):
        step = max(float(full.se[index]), 0.1)
        while excess(est + sign * step) < 0:
            step *= 2
            if step > 1e3:
                break
        if step > 1e3:
            bounds.append(sign * np.inf)
            continue
        bounds.append(brentq(excess, est, est + sign * step, xtol=1e-6))
    return float(bounds[0]), float(bounds[1])
