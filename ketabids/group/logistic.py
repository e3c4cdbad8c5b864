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

__all__ = ["LogisticFit", "fit_logistic", "likelihood_ratio_p", "logit"]

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


def _fit(X, y, offset, firth, max_iter, tol):
    beta = np.zeros(X.shape[1])
    ll = _loglik(X, y, beta, offset, firth)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        p = special.expit(X @ beta + offset)
        w = np.maximum(p * (1 - p), 1e-300)
        info = X.T @ (X * w[:, None])
        info_inv = np.linalg.pinv(info)
        resid = y - p
        if firth:
            xw = X * np.sqrt(w)[:, None]
            h = np.einsum("ij,jk,ik->i", xw, info_inv, xw)
            resid = resid + h * (0.5 - p)
        step = info_inv @ (X.T @ resid)
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
                 tol: float = 1e-10) -> LogisticFit:
    """Fit ``P(y = 1) = expit(X b + offset)``; ``X`` (n, k) includes the intercept column.

    ``firth``: True = Firth's penalised likelihood, False = maximum likelihood, None
    (default) = maximum likelihood unless it separates (see the module docstring).

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
    if firth is None:
        beta, cov, ll, ok, it, p = _fit(X, y, offset, False, max_iter, tol)
        separated = (not ok) or np.any((p < _SEPARATION_EPS) | (p > 1 - _SEPARATION_EPS))
        if not separated:
            return LogisticFit(beta, cov, ll, ok, "maximum likelihood", it)
        firth = True
    beta, cov, ll, ok, it, _ = _fit(X, y, offset, bool(firth), max_iter, tol)
    return LogisticFit(beta, cov, ll, ok, "Firth" if firth else "maximum likelihood", it)


def likelihood_ratio_p(full: LogisticFit, reduced: LogisticFit, df: int = 1) -> float:
    """Two-sided p of the likelihood-ratio test of nested fits (chi-square with ``df``);
    penalised likelihoods when the fits are Firth's (as in R's logistf)."""
    stat = max(0.0, 2.0 * (full.loglik - reduced.loglik))
    return float(stats.chi2.sf(stat, df))
