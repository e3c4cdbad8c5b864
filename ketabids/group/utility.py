"""Clinical utility (decision curves) and calibration of predicted probabilities.

* **Decision curve** (Vickers & Elkin 2006, Med Decis Making 26:565). A clinician who would
  treat when the probability of response is at least ``pt`` (the threshold probability) weighs a
  false positive as ``pt / (1 - pt)`` true positives. Treating those with ``p >= pt``::

      net benefit(pt) = TP / n - FP / n * pt / (1 - pt)

  against treating everyone (``prevalence - (1 - prevalence) pt / (1 - pt)``) and no one (0).
  A perfect model has net benefit = prevalence at every ``pt``. With several CV repeats (2-D
  probabilities) the counts are pooled over repeats (= the mean of the repeats' curves).
* **Calibration of external predictions** (Van Calster et al. 2019, BMC Med 17:230):
  calibration-in-the-large = intercept ``a`` of ``logit P(y) = a + logit(p)`` (``logit(p)`` as
  offset; 0 = the mean predicted probability matches the observed rate, < 0 = probabilities too
  high); calibration slope = ``b`` of ``logit P(y) = a + b logit(p)`` (1 = ideal, < 1 =
  predictions too extreme, the usual sign of overfitting). Wald 95 % intervals; maximum
  likelihood, or Firth's when the data separate (:mod:`ketabids.group.logistic`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ketabids.group.logistic import fit_logistic, logit
from ketabids.group.metrics import finite_or_none

__all__ = ["decision_curve", "calibration_intercept_slope", "DEFAULT_THRESHOLDS",
           "DECISION_CURVE_COLUMNS"]

#: Threshold probabilities of decision_curve.tsv: 0.01 to 0.99 in steps of 0.01.
DEFAULT_THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)
DECISION_CURVE_COLUMNS = ["threshold", "net_benefit_model", "net_benefit_treat_all",
                          "net_benefit_treat_none"]


def decision_curve(y, proba, thresholds=None) -> pd.DataFrame:
    """Net benefit of the model, treat-all and treat-none at each threshold probability.

    A participant is treated when ``proba >= pt``; formulas in the module docstring.

    Parameters
    ----------
    y : array-like of shape (n,)
        Outcomes 1/0 (responder / non-responder).
    proba : array-like of shape (n,) or (n_repeats, n)
        Predicted probabilities of response; 2-D: counts pooled over repeats.
    thresholds : array-like or None
        Threshold probabilities, strictly between 0 and 1 (default 0.01 to 0.99,
        :data:`DEFAULT_THRESHOLDS`).

    Returns
    -------
    pandas.DataFrame
        ``threshold``, ``net_benefit_model``, ``net_benefit_treat_all``,
        ``net_benefit_treat_none`` (the columns of ``decision_curve.tsv``).

    Raises
    ------
    ValueError
        ``proba`` of another length than ``y``, or a threshold outside (0, 1).

    Examples
    --------
    >>> t = decision_curve([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3], thresholds=[0.2, 0.5])
    >>> t["net_benefit_model"].round(4).tolist(), t["net_benefit_treat_all"].round(4).tolist()
    ([0.4375, 0.5], [0.375, 0.0])
    """
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(proba, float)
    p2 = p[None] if p.ndim == 1 else p
    if p2.shape[1] != y.size:
        raise ValueError("proba must be (n,) or (n_repeats, n) with n = len(y)")
    pt = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, float)
    if np.any((pt <= 0) | (pt >= 1)):
        raise ValueError("threshold probabilities must lie strictly between 0 and 1")
    n = p2.size
    treated = p2.ravel()[None, :] >= pt[:, None]              # (T, R*n)
    yy = np.tile(y, p2.shape[0])
    tp = (treated & (yy == 1)).sum(1)
    fp = (treated & (yy == 0)).sum(1)
    odds = pt / (1 - pt)
    prevalence = y.mean()
    return pd.DataFrame({"threshold": pt, "net_benefit_model": tp / n - fp / n * odds,
                         "net_benefit_treat_all": prevalence - (1 - prevalence) * odds,
                         "net_benefit_treat_none": np.zeros(pt.size)},
                        columns=DECISION_CURVE_COLUMNS)


def calibration_intercept_slope(y, proba, *, confidence: float = 0.95) -> dict:
    """Calibration-in-the-large and calibration slope of predicted probabilities.

    Definitions in the module docstring (Van Calster et al. 2019).

    Parameters
    ----------
    y : array-like of shape (n,)
        Outcomes 1/0.
    proba : array-like of shape (n,)
        Predicted probabilities of response.
    confidence : float
        Coverage of the Wald intervals.

    Returns
    -------
    dict
        ``{"calibration_in_the_large": {"value", "ci_low", "ci_high"}, "calibration_slope":
        {...}, "method": str}``; the values are None when the outcome has one class only.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> lp = rng.normal(0, 2, 20000)
    >>> y = rng.random(20000) < 1 / (1 + np.exp(-0.5 * lp))     # true slope 0.5
    >>> c = calibration_intercept_slope(y, 1 / (1 + np.exp(-lp)))
    >>> abs(c["calibration_slope"]["value"] - 0.5) < 0.05
    True
    """
    y = np.asarray(y).astype(float).ravel()
    lp = logit(np.asarray(proba, float).ravel())
    empty = {"value": None, "ci_low": None, "ci_high": None}
    if y.size == 0 or len(set(y.tolist())) < 2:
        return {"calibration_in_the_large": dict(empty), "calibration_slope": dict(empty),
                "method": "not estimable: the outcome has one class only"}
    one = np.ones((y.size, 1))
    citl = fit_logistic(one, y, offset=lp)
    slope = fit_logistic(np.column_stack([one, lp]), y)

    def block(fit, index):
        est, lo, hi, _ = fit.wald(index, confidence)
        return {"value": finite_or_none(est), "ci_low": finite_or_none(lo),
                "ci_high": finite_or_none(hi)}

    methods = {citl.method, slope.method}
    return {"calibration_in_the_large": block(citl, 0), "calibration_slope": block(slope, 1),
            "method": (f"logistic regression on logit(p) (offset for calibration-in-the-large), "
                       f"{' / '.join(sorted(methods))}, Wald {100 * confidence:g}% intervals")}
