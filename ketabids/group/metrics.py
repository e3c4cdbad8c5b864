"""Classification metrics with 95% intervals, for CV results and external validation.

Intervals (be explicit about what they cover):

* one prediction per subject (``decision`` 1-D, aggregation ``single``/``consensus``):
  Wilson score intervals for the proportions (sensitivity, specificity, PPV, NPV, accuracy);
  DeLong's variance for the AUC (normal interval, clipped to [0, 1]); stratified bootstrap over
  subjects (percentile, ``n_bootstrap`` resamples, class sizes fixed) for BAC and Brier score.
* several CV repeats (``decision`` 2-D, aggregation ``pooled``): point estimates from all
  out-of-fold predictions of all repeats; because a subject contributes one prediction per
  repeat, predictions are not independent, so every interval is a stratified SUBJECT-CLUSTER
  bootstrap (a resampled subject brings all its repeats).
* ``mean_over_repeats``: mean of the per-repeat metrics; its interval is the 2.5-97.5 percentile
  range across repeats, i.e. the variability due to the random CV partition only - not a
  sampling interval (see Varoquaux 2018, NeuroImage 180:68 on CV error bars).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ketabids.stats import format_p, roc_auc

__all__ = ["classification_metrics", "repeat_metrics", "per_fold_table", "roc_auc",
           "balanced_accuracy", "balanced_accuracy_sets", "wilson_interval", "delong_interval",
           "calibration_table", "finite_or_none", "headline_metric", "format_p",
           "format_headline", "small_class_warning", "SMALL_CLASS"]

METRICS = ("bac", "sensitivity", "specificity", "auc", "ppv", "npv", "accuracy", "brier")


def wilson_interval(k, n, confidence=0.95):
    """Wilson score interval for k successes out of n.

    Used for proportions of one prediction per participant: unlike the normal interval it
    stays inside [0, 1] and keeps its coverage near 0 and 1 with a few dozen participants.

    Parameters
    ----------
    k : int
        Successes.
    n : int
        Trials.
    confidence : float
        Coverage of the interval.

    Returns
    -------
    low, high : float
        The interval (NaN, NaN when ``n == 0``).

    Examples
    --------
    >>> [round(float(v), 4) for v in wilson_interval(5, 10)]
    [0.2366, 0.7634]
    """
    if n == 0:
        return np.nan, np.nan
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def delong_interval(y_true, score, confidence=0.95):
    """AUC and DeLong (1988) normal interval, clipped to [0, 1].

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 1/0.
    score : array-like of shape (n,)
        Decision values or probabilities.
    confidence : float
        Coverage of the interval.

    Returns
    -------
    auc, low, high : float
        The AUC and its interval (NaN bounds with fewer than 2 members in a class).

    Examples
    --------
    >>> auc, low, high = delong_interval([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.3, 0.8, 0.9])
    >>> round(auc, 3), low < auc < high
    (0.889, True)
    """
    y_true = np.asarray(y_true)
    pos = np.asarray(score)[y_true == 1]
    neg = np.asarray(score)[y_true == 0]
    m, n = pos.size, neg.size
    if m < 2 or n < 2:
        return roc_auc(y_true, score), np.nan, np.nan
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = psi.mean()
    v10 = psi.mean(1)
    v01 = psi.mean(0)
    se = np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
    z = stats.norm.ppf(0.5 + confidence / 2)
    return float(auc), max(0.0, auc - z * se), min(1.0, auc + z * se)


def balanced_accuracy_sets(y_true, pred, groups):
    """Balanced accuracy of many predictions on many row sets at once.

    Mean recall over the classes present (as scikit-learn): ``(sensitivity + specificity) / 2``
    when both are. Vectorised for the inner CV, which scores every C of every split together.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 1/0.
    pred : array-like of bool, shape (T, L, n)
        Predictions (e.g. T splits x L values of C).
    groups : array-like of bool, shape (T, n)
        Rows scored in each of the T sets.

    Returns
    -------
    ndarray of shape (T, L)
        Balanced accuracies.
    """
    y_true = np.asarray(y_true)
    groups = np.asarray(groups, bool)
    pred = np.asarray(pred, bool)
    pos = (groups & (y_true == 1)).astype(float)
    neg = (groups & (y_true == 0)).astype(float)
    npos = pos.sum(1)[:, None]
    nneg = neg.sum(1)[:, None]
    tp = (pred.astype(float) @ pos[:, :, None])[..., 0]
    tn = ((~pred).astype(float) @ neg[:, :, None])[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / npos
        spec = tn / nneg
    both = (npos > 0) & (nneg > 0)
    return np.where(both, (spec + sens) / 2, np.where(npos > 0, sens, spec))


def balanced_accuracy(y_true, pred):
    """Balanced accuracy: mean recall over the classes present (as scikit-learn).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 1/0.
    pred : array-like of shape (n,)
        Predictions, 0/1 or bool.

    Returns
    -------
    float
        The balanced accuracy.

    Examples
    --------
    >>> balanced_accuracy([0, 0, 1, 1], [0, 1, 1, 1])
    0.75
    """
    y_true = np.asarray(y_true)
    pred = np.asarray(pred).astype(bool)
    return float(balanced_accuracy_sets(y_true, pred[None, None, :],
                                        np.ones((1, y_true.size), bool))[0, 0])


def _point(y, dec2, proba2, threshold):
    """Point metrics over all (repeat, subject) predictions; dec2 (R, n)."""
    R = dec2.shape[0]
    pred = dec2 > threshold
    yy = np.broadcast_to(y, dec2.shape)
    tp = np.sum(pred & (yy == 1))
    fn = np.sum(~pred & (yy == 1))
    tn = np.sum(~pred & (yy == 0))
    fp = np.sum(pred & (yy == 0))
    sens = tp / (tp + fn)
    spec = tn / (tn + fp)
    out = {"bac": (sens + spec) / 2, "sensitivity": sens, "specificity": spec,
           "auc": roc_auc(yy.ravel(), dec2.ravel()),
           "ppv": tp / (tp + fp) if tp + fp else np.nan,
           "npv": tn / (tn + fn) if tn + fn else np.nan,
           "accuracy": (tp + tn) / (R * y.size),
           "brier": float(np.mean((proba2 - yy) ** 2)) if proba2 is not None else np.nan}
    counts = {"tp": tp, "fn": fn, "tn": tn, "fp": fp}
    return out, counts


def _cluster_bootstrap(y, dec2, proba2, threshold, n_boot, rng):
    """(n_boot, metric) array of stratified subject-cluster bootstrap replicates."""
    R, n = dec2.shape
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    c = np.zeros((n_boot, n))
    for grp in (pos, neg):
        draws = rng.integers(0, grp.size, (n_boot, grp.size))
        np.add.at(c, (np.arange(n_boot)[:, None], grp[draws]), 1.0)
    pred = dec2 > threshold
    npred = pred.sum(0).astype(float)                 # positive predictions per subject
    is1 = (y == 1).astype(float)
    tp = c @ (npred * is1)
    fn = c @ ((R - npred) * is1)
    fp = c @ (npred * (1 - is1))
    tn = c @ ((R - npred) * (1 - is1))
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
        res = {"bac": (sens + spec) / 2, "sensitivity": sens, "specificity": spec,
               "ppv": tp / (tp + fp), "npv": tn / (tn + fn),
               "accuracy": (tp + tn) / (R * n)}
    if proba2 is not None:
        res["brier"] = c @ ((proba2 - y) ** 2).sum(0) / (R * n)
    else:
        res["brier"] = np.full(n_boot, np.nan)
    # weighted Mann-Whitney AUC over all R*n points, ties = 1/2
    vals = dec2.ravel()
    subj = np.tile(np.arange(n), R)
    order = np.argsort(vals, kind="stable")
    sv = vals[order]
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    wts = c[:, subj[order]]
    lab = y[subj[order]]
    wpos = np.add.reduceat(wts * (lab == 1), starts, axis=1)
    wneg = np.add.reduceat(wts * (lab == 0), starts, axis=1)
    below = np.cumsum(wneg, axis=1) - wneg
    with np.errstate(invalid="ignore", divide="ignore"):
        res["auc"] = (wpos * (below + 0.5 * wneg)).sum(1) / (wpos.sum(1) * wneg.sum(1))
    return res


def classification_metrics(y_true, decision, proba=None, *, threshold=0.0, confidence=0.95,
                           n_bootstrap=2000, random_state=0):
    """Every classification metric with its 95% interval; one row per metric.

    The intervals are those of the module docstring: for one prediction per participant,
    Wilson (proportions), DeLong (AUC) and a stratified bootstrap (BAC, Brier); for pooled CV
    repeats, a stratified subject-cluster bootstrap for all.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 1/0.
    decision : array-like of shape (n,) or (n_repeats, n)
        Decision values: 1-D gives aggregation ``single``, 2-D ``pooled`` over repeats.
    proba : array-like of the shape of ``decision``, or None
        Probabilities of response (for the Brier score; NaN without).
    threshold : float
        Decision values above it are predicted responders.
    confidence : float
        Coverage of the intervals.
    n_bootstrap : int
        Bootstrap resamples.
    random_state : int
        Seed of the bootstrap.

    Returns
    -------
    pandas.DataFrame
        Columns ``metric`` (bac, sensitivity, specificity, auc, ppv, npv, accuracy, brier),
        ``aggregation``, ``estimate``, ``ci_low``, ``ci_high``, ``method``; proportions 0-1.

    Examples
    --------
    >>> table = classification_metrics([0, 0, 1, 1], [-1.0, 0.5, 0.2, 2.0], n_bootstrap=200)
    >>> row = table.set_index("metric").loc["bac"]
    >>> float(row["estimate"]), row["method"]
    (0.75, 'stratified bootstrap over subjects')
    """
    y = np.asarray(y_true).astype(np.int64)
    dec = np.asarray(decision, float)
    single = dec.ndim == 1
    dec2 = dec[None] if single else dec
    pr2 = None if proba is None else np.asarray(proba, float).reshape(dec2.shape)
    point, cnt = _point(y, dec2, pr2, threshold)
    rng = np.random.default_rng(random_state)
    boot = _cluster_bootstrap(y, dec2, pr2, threshold, n_bootstrap, rng)
    a = (1 - confidence) / 2
    rows = []
    for name in METRICS:
        est = point[name]
        lo, hi = np.nanpercentile(boot[name], [100 * a, 100 * (1 - a)]) if np.isfinite(
            boot[name]).any() else (np.nan, np.nan)
        method = "stratified subject-cluster bootstrap" if not single else \
            "stratified bootstrap over subjects"
        if single:
            prop = {"sensitivity": (cnt["tp"], cnt["tp"] + cnt["fn"]),
                    "specificity": (cnt["tn"], cnt["tn"] + cnt["fp"]),
                    "ppv": (cnt["tp"], cnt["tp"] + cnt["fp"]),
                    "npv": (cnt["tn"], cnt["tn"] + cnt["fn"]),
                    "accuracy": (cnt["tp"] + cnt["tn"], y.size)}
            if name in prop:
                lo, hi = wilson_interval(*prop[name], confidence)
                method = "Wilson score"
            elif name == "auc":
                _, lo, hi = delong_interval(y, dec, confidence)
                method = "DeLong"
        if name == "brier" and pr2 is None:
            est, lo, hi, method = np.nan, np.nan, np.nan, "no probabilities"
        rows.append({"metric": name, "aggregation": "single" if single else "pooled",
                     "estimate": float(est), "ci_low": float(lo), "ci_high": float(hi),
                     "method": method})
    return pd.DataFrame(rows)


def _per_repeat(y, dec, proba):
    out = []
    for r in range(dec.shape[0]):
        p, _ = _point(y, dec[r:r + 1], None if proba is None else proba[r:r + 1], 0.0)
        out.append(p)
    return pd.DataFrame(out)


def repeat_metrics(y_true, decision, proba=None):
    """Mean of per-repeat metrics with the across-repeat 2.5-97.5 percentile range.

    The range shows the variability due to the random CV partition only, not the sampling
    uncertainty (module docstring).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 1/0.
    decision : array-like of shape (n_repeats, n)
        Out-of-fold decision values of each repeat.
    proba : array-like of shape (n_repeats, n) or None
        Out-of-fold probabilities.

    Returns
    -------
    pandas.DataFrame
        As :func:`classification_metrics`, aggregation ``mean_over_repeats``.
    """
    y = np.asarray(y_true).astype(np.int64)
    per = _per_repeat(y, np.asarray(decision, float), proba)
    rows = []
    for name in METRICS:
        v = per[name].to_numpy(float)
        ok = np.isfinite(v)
        lo, hi = (np.percentile(v[ok], [2.5, 97.5]) if ok.any() else (np.nan, np.nan))
        rows.append({"metric": name, "aggregation": "mean_over_repeats",
                     "estimate": float(v[ok].mean()) if ok.any() else np.nan,
                     "ci_low": float(lo), "ci_high": float(hi),
                     "method": "across-repeat percentile (CV-partition variability only)"})
    return pd.DataFrame(rows)


def per_fold_table(y, decision, proba, fold_of, chosen_C, inner_bac):
    """Tidy table of the outer folds: one row per (repeat, outer fold).

    Parameters
    ----------
    y : ndarray of shape (n,)
        Labels 1/0.
    decision, proba : ndarray of shape (n_repeats, n)
        Out-of-fold decision values and probabilities.
    fold_of : ndarray of shape (n_repeats, n)
        Outer fold of each participant in each repeat.
    chosen_C, inner_bac : ndarray of shape (n_repeats, n_outer)
        C chosen by each fold's inner CV and its inner balanced accuracy.

    Returns
    -------
    pandas.DataFrame
        ``repeat``, ``fold`` (0-based), ``n_train``, ``n_test``, ``n_train_pos``,
        ``n_test_pos``, ``C``, ``inner_bac``, ``bac``, ``sensitivity``, ``specificity``,
        ``auc``, ``brier``.
    """
    rows = []
    R, n = decision.shape
    for r in range(R):
        for o in range(chosen_C.shape[1]):
            test = fold_of[r] == o
            yt = y[test]
            d = decision[r, test]
            pred = d > 0
            with np.errstate(invalid="ignore"):
                sens = np.mean(pred[yt == 1]) if (yt == 1).any() else np.nan
                spec = np.mean(~pred[yt == 0]) if (yt == 0).any() else np.nan
            rows.append({
                "repeat": r, "fold": o, "n_train": int((~test).sum()), "n_test": int(test.sum()),
                "n_train_pos": int((y[~test] == 1).sum()), "n_test_pos": int((yt == 1).sum()),
                "C": float(chosen_C[r, o]), "inner_bac": float(inner_bac[r, o]),
                "bac": balanced_accuracy(yt, pred.astype(int)), "sensitivity": sens,
                "specificity": spec, "auc": roc_auc(yt, d),
                "brier": float(np.mean((proba[r, test] - yt) ** 2))})
    return pd.DataFrame(rows)


def calibration_table(y, proba, n_bins: int | None = None) -> pd.DataFrame:
    """Reliability table from quantile bins: participants sorted by probability and split into
    ``n_bins`` groups of (nearly) equal size, so no bin holds one person.

    ``n_bins`` defaults to ``n // 10`` clipped to 2..10 (about 10 participants per bin).
    Parameters
    ----------
    y : array-like of shape (n,)
        Labels 1/0.
    proba : array-like of shape (n,)
        Predicted probabilities of response (clipped to [0, 1]).
    n_bins : int or None
        Number of bins; ``None``: ``n // 10`` clipped to 2..10 (about 10 participants per
        bin).

    Returns
    -------
    pandas.DataFrame
        ``bin_low``, ``bin_high`` (lowest and highest probability in the bin), ``n``,
        ``mean_predicted``, ``observed_rate``; the Brier score ``mean((p - y)^2)`` is in the
        metrics tables.

    Examples
    --------
    >>> calibration_table([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_bins=2)["observed_rate"].tolist()
    [0.0, 1.0]
    """
    y = np.asarray(y, float)
    proba = np.clip(np.asarray(proba, float), 0.0, 1.0)
    if n_bins is None:
        n_bins = int(np.clip(y.size // 10, 2, 10))
    n_bins = max(1, min(int(n_bins), y.size))
    order = np.argsort(proba, kind="stable")
    rows = []
    for sel in np.array_split(order, n_bins):
        if sel.size:
            rows.append({"bin_low": float(proba[sel].min()), "bin_high": float(proba[sel].max()),
                         "n": int(sel.size), "mean_predicted": float(proba[sel].mean()),
                         "observed_rate": float(y[sel].mean())})
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "n", "mean_predicted",
                                       "observed_rate"])


def finite_or_none(value):
    """``float(value)``, or None when it is missing or not finite (JSON-friendly).

    Examples
    --------
    >>> finite_or_none("0.5"), finite_or_none(float("nan")), finite_or_none(None)
    (0.5, None, None)
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


# ------------------------------------------------------------------------ the headline result
#: The one headline metric of every analysis (report, metrics.json, closing line, demo table).
HEADLINE_METRIC = "bac"
#: Fewer members than this in a class: a visible warning (metrics are unstable).
SMALL_CLASS = 10
_AGGREGATION_TEXT = {
    "pooled": "pooled out-of-fold predictions of all {repeats} CV repeats",
    "single": "frozen model, one prediction per participant",
}


def small_class_warning(n_responders: int, n_nonresponders: int) -> str | None:
    """A warning when a class has fewer than :data:`SMALL_CLASS` members, else None.

    Parameters
    ----------
    n_responders, n_nonresponders : int
        Class sizes.

    Returns
    -------
    str or None
        The warning text.

    Examples
    --------
    >>> small_class_warning(12, 15) is None
    True
    >>> small_class_warning(4, 15).split(":")[0]
    'Small sample'
    """
    small = [(k, name) for k, name in ((n_responders, "responders"),
                                       (n_nonresponders, "non-responders")) if k < SMALL_CLASS]
    if not small:
        return None
    what = " and ".join(f"{k} {name}" for k, name in small)
    return (f"Small sample: only {what} (fewer than {SMALL_CLASS} per class). Balanced accuracy "
            "and AUC move by large steps with one participant and their intervals are very "
            "wide: do not read them as evidence either way.")


def headline_metric(metrics: pd.DataFrame, *, aggregation: str, y, p=None,
                    n_permutations: int = 0, n_repeats: int | None = None) -> dict:
    """THE headline result of an analysis: one balanced accuracy, its interval and its p.

    The same dict feeds ``metrics.json``, the report, the closing log line and the demo
    table, so the figure a user quotes is the same everywhere.

    Parameters
    ----------
    metrics : pandas.DataFrame
        From :func:`classification_metrics` (and :func:`repeat_metrics`).
    aggregation : str
        The row to report: ``pooled`` (training: all out-of-fold predictions of all repeats)
        or ``single`` (prediction).
    y : array-like of shape (n,)
        Labels 1/0 (class sizes).
    p : float or None
        Permutation p-value of that same statistic.
    n_permutations : int
        Number of permutations behind ``p``.
    n_repeats : int or None
        CV repeats (for the description).

    Returns
    -------
    dict
        ``metric`` ("bac"), ``name``, ``aggregation``, ``description``, ``estimate``,
        ``ci_low``, ``ci_high``, ``ci_method``, ``p``, ``n_permutations``, ``p_text``, ``n``,
        ``n_responders``, ``n_nonresponders``, ``warning`` (None or text), ``text`` (one line,
        :func:`format_headline`).
    """
    y = np.asarray(y).astype(int)
    row = metrics[(metrics["metric"] == HEADLINE_METRIC)
                  & (metrics["aggregation"] == aggregation)].iloc[0]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    out = {
        "metric": HEADLINE_METRIC, "name": "balanced accuracy", "aggregation": aggregation,
        "description": _AGGREGATION_TEXT.get(aggregation, aggregation).format(
            repeats=n_repeats if n_repeats is not None else "the"),
        "estimate": finite_or_none(row["estimate"]), "ci_low": finite_or_none(row["ci_low"]),
        "ci_high": finite_or_none(row["ci_high"]), "ci_method": str(row["method"]),
        "p": None if p is None else float(p), "n_permutations": int(n_permutations or 0),
        "n": int(y.size), "n_responders": n_pos, "n_nonresponders": n_neg,
        "warning": small_class_warning(n_pos, n_neg),
    }
    out["p_text"] = format_p(out["p"], out["n_permutations"])
    out["text"] = format_headline(out)
    return out


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_headline(h: dict) -> str:
    """The headline as one line, the same in the report, the closing log line and the demo.

    Parameters
    ----------
    h : dict
        From :func:`headline_metric`.

    Returns
    -------
    str
        E.g. ``balanced accuracy 72.2% (95% CI 60.0%-83.3%; pooled ...), p ..., n = 30 (15
        responders, 15 non-responders)``.
    """
    return (f"{h['name']} {_pct(h['estimate'])} (95% CI {_pct(h['ci_low'])}-"
            f"{_pct(h['ci_high'])}; {h['description']}), {h['p_text']}, n = {h['n']} "
            f"({h['n_responders']} responders, {h['n_nonresponders']} non-responders)")
