"""Site and confound audit of a training run, and per-site metrics (pure functions).

A cross-validated accuracy says how well the labels were predicted, not from what. In
multi-site imaging a classifier can reach a high stratified accuracy by recognising the
scanner of a site that happens to carry most responders. The audit puts numbers on that
(``group/train/audit.tsv``, one row per check; columns ``check, value, reference, status,
detail``; status ``pass``, ``warn`` or ``info``):

* ``leave_site_out_bac``: the same nested CV with one site held out per outer fold (inner CV
  grouped the same way), beside the headline BAC. Warn when it falls to or below chance (its
  interval reaches 0.5 while the headline's lies above; below chance happens when each site's
  predictions follow its scanner); info when it drops by :data:`BAC_DROP` or more.
* ``response_rate_by_site``: whether the responder share differs between sites (Fisher's exact
  test for two sites, chi-squared otherwise); value = p.
* ``site_predictability``: balanced accuracy of a linear SVC (C = 1 on the scaled kernel, same
  in-fold preprocessing) predicting the site from the features, over ``n_outer`` folds
  stratified by site; reference = chance (1 / number of sites). Warn when the site is
  predictable (>= chance + :data:`SITE_MARGIN`) AND carries responders (the row above p < 0.05).
* ``decision_vs_<variable>``: association of the out-of-fold decision values with site, TIV,
  age, sex and the QC metrics (CJV, CNR, SNR, EFC, FBER, INU, mask-rim brightness, ...),
  *beyond the label*: decision and variable are each centred within the two classes (so a
  variable that merely differs between responders and non-responders does not count) and
  correlated (Pearson r; for site the share of variance between sites, eta squared, ANOVA).
  Warn when p < 0.05 / (number of such checks) (Bonferroni) and the effect is at least the
  reference (|r| >= 0.3, eta squared >= 0.06).
* ``qc_covariates_only_bac``: the same nested CV (z-scored in-fold), one repeat of it (every
  participant predicted once out of fold), on the QC metrics and the covariates alone. Warn when
  its interval lies above 0.5: scan quality or demographics predict response, and the imaging
  model may be learning them. One repeat: a few z-scored features give low-rank kernels whose
  exact SVC solutions are slow at the large-C end of the grid, and a screening check needs no
  averaging over splits (cost: docs/benchmarks.md, "Site-robust validation and C selection").

:func:`metrics_by_site` is ``metrics_by_site.tsv`` of training and prediction runs.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import sklearn
from scipy import stats

from ketabids.errors import UsageError
from ketabids.group.metrics import classification_metrics

LOGGER = logging.getLogger("ketabids")

__all__ = ["metrics_by_site", "site_predictability", "decision_associations", "run_audit",
           "AUDIT_COLUMNS", "QC_AUDIT_METRICS", "BAC_DROP", "SITE_MARGIN"]

AUDIT_COLUMNS = ["check", "value", "reference", "status", "detail"]
#: qc.tsv columns audited (those present, complete and not constant)
QC_AUDIT_METRICS = ("tiv_ml", "cjv", "cnr", "snr_total", "efc", "fber", "inu_range",
                    "mask_rim_bright", "brain_dice", "template_correlation", "wm2max")
#: leave-site-out BAC this much below the headline: a warning
BAC_DROP = 0.10
#: site predicted this much above chance: "predictable"
SITE_MARGIN = 0.20
R_REFERENCE = 0.3
ETA2_REFERENCE = 0.06


def _pct(v):
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"


# ---------------------------------------------------------------------------------------------
# per-site metrics
# ---------------------------------------------------------------------------------------------
SITE_COLUMNS = ["site", "n", "n_responders", "n_nonresponders", "bac", "bac_ci_low",
                "bac_ci_high", "auc", "auc_ci_low", "auc_ci_high"]


def metrics_by_site(y, decision, sites, *, random_state=0) -> pd.DataFrame:
    """One row per site: n, responders, BAC and AUC with 95 % intervals.

    ``decision`` (n,) for a frozen model (Wilson/bootstrap and DeLong intervals, as
    :func:`~ketabids.group.metrics.classification_metrics`) or (R, n) out-of-fold decisions of
    R repeats (pooled, subject-cluster bootstrap). A site with one class: BAC is the recall of
    that class without an interval, AUC n/a.
    """
    y = np.asarray(y).astype(int)
    dec = np.asarray(decision, float)
    dec2 = dec[None] if dec.ndim == 1 else dec
    sites = np.asarray(sites).astype(str)
    rows = []
    for s in np.unique(sites):
        m = sites == s
        ys, ds = y[m], dec2[:, m]
        row = {"site": s, "n": int(m.sum()), "n_responders": int(ys.sum()),
               "n_nonresponders": int((ys == 0).sum())}
        if np.unique(ys).size == 2:
            met = classification_metrics(ys, ds[0] if dec.ndim == 1 else ds,
                                         random_state=random_state).set_index("metric")
            for k in ("bac", "auc"):
                row.update({k: met.loc[k, "estimate"], f"{k}_ci_low": met.loc[k, "ci_low"],
                            f"{k}_ci_high": met.loc[k, "ci_high"]})
        else:
            correct = (ds > 0) == (ys[None] == 1)
            row.update(bac=float(correct.mean()), bac_ci_low=np.nan, bac_ci_high=np.nan,
                       auc=np.nan, auc_ci_low=np.nan, auc_ci_high=np.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=SITE_COLUMNS)


# ---------------------------------------------------------------------------------------------
# site predictability
# ---------------------------------------------------------------------------------------------
def site_predictability(X, sites, *, covariates=None, n_folds=10, random_state=0,
                        standardize=False, scale_kernel=True, gram=None) -> dict:
    """Balanced accuracy (mean recall over sites) of predicting the site from the features.

    Linear SVC (``C = 1``, balanced class weights, one-vs-one as libsvm) on the kernel of the
    in-fold preprocessed features (covariate regression / z-scoring / kernel scaling fitted on
    each training set; no ComBat: it would remove what is measured), ``n_folds`` folds
    stratified by site. ``gram``: ``X X^T`` when the caller has it (the training's).
    Returns ``{"bac", "chance", "n_sites", "n_folds"}``.
    """
    from sklearn.svm import SVC

    from ketabids.group.cv import StratifiedFolds
    from ketabids.group.estimator import KernelProvider

    sites = np.asarray(sites).astype(str)
    names, codes = np.unique(sites, return_inverse=True)
    k = int(min(n_folds, np.bincount(codes).min()))
    if names.size < 2 or k < 2:
        return {"bac": np.nan, "chance": 1.0 / max(names.size, 1), "n_sites": int(names.size),
                "n_folds": 0}
    splits = list(StratifiedFolds(k, random_state=(random_state, 4242)).split(None, codes))
    masks = np.zeros((len(splits), codes.size), bool)
    for t, (tr, _) in enumerate(splits):
        masks[t, tr] = True
    kern = KernelProvider(np.asarray(X), covariates, None, standardize=standardize,
                          scale_kernel=scale_kernel, gram=gram)
    Ks, _ = kern.kernels(masks)
    pred = np.empty(codes.size, np.int64)
    for t, (tr, te) in enumerate(splits):
        svc = SVC(kernel="precomputed", C=1.0, class_weight="balanced")
        svc.fit(Ks[t][np.ix_(tr, tr)], codes[tr])
        pred[te] = svc.predict(Ks[t][np.ix_(te, tr)])
    recall = [np.mean(pred[codes == c] == c) for c in range(names.size)]
    return {"bac": float(np.mean(recall)), "chance": 1.0 / names.size,
            "n_sites": int(names.size), "n_folds": k}


# ---------------------------------------------------------------------------------------------
# associations of the decision values
# ---------------------------------------------------------------------------------------------
def _within_class(v, y):
    v = np.asarray(v, float).copy()
    for c in (0, 1):
        m = y == c
        v[m] -= v[m].mean()
    return v


def decision_associations(decision, y, variables: pd.DataFrame, sites=None) -> list[dict]:
    """Association of the decision values with each column of ``variables`` (numbers; a
    two-level text column is coded 0/1) and with ``sites``, beyond the label (module
    docstring). Returns rows ``{"check", "value", "reference", "p", "detail"}``; columns with
    missing values or no variance are skipped."""
    y = np.asarray(y).astype(int)
    d = _within_class(decision, y)
    rows = []
    if sites is not None and np.unique(sites).size >= 2:
        sites = np.asarray(sites).astype(str)
        groups = [d[sites == s] for s in np.unique(sites)]
        ss_b = sum(g.size * g.mean() ** 2 for g in groups)
        ss_t = float((d ** 2).sum())
        eta2 = ss_b / ss_t if ss_t > 0 else 0.0
        p = float(stats.f_oneway(*groups).pvalue) if all(g.size > 1 for g in groups) else np.nan
        rows.append({"check": "decision_vs_site", "value": eta2, "reference": ETA2_REFERENCE,
                     "p": p, "detail": f"share of the decision's within-class variance between "
                     f"sites (eta squared) {eta2:.3f}, ANOVA p = {p:.2g}"})
    for name in variables.columns:
        col = variables[name]
        if not pd.api.types.is_numeric_dtype(col):
            levels = sorted(col.dropna().astype(str).unique())
            if len(levels) != 2:
                continue
            x = (col.astype(str) == levels[1]).astype(float).where(col.notna())
            what = f"{name} ({levels[1]} = 1)"
        else:
            x, what = pd.to_numeric(col, errors="coerce"), name
        x = x.to_numpy(float)
        if not np.isfinite(x).all() or np.nanstd(x) == 0:
            continue
        xr = _within_class(x, y)
        if xr.std() == 0 or d.std() == 0:
            continue
        r, p = stats.pearsonr(d, xr)
        rows.append({"check": f"decision_vs_{name}", "value": float(r), "reference": R_REFERENCE,
                     "p": float(p), "detail": f"within-class correlation of the decision with "
                     f"{what}: r = {r:.2f}, p = {p:.2g}"})
    return rows


# ---------------------------------------------------------------------------------------------
# the audit
# ---------------------------------------------------------------------------------------------
def _pooled(result, name):
    m = result.metrics
    row = m[(m.metric == name) & (m.aggregation == "pooled")].iloc[0]
    return float(row.estimate), float(row.ci_low), float(row.ci_high)


def run_audit(data, *, result, settings, variables: pd.DataFrame | None = None,
              qc: pd.DataFrame | None = None, random_state=0, progress=None
              ) -> tuple[pd.DataFrame, list[str], dict]:
    """All checks of the module docstring for a training run.

    Parameters
    ----------
    data : CVData
        The training's features, labels, covariates, sites, groups and ``X X^T`` when the
        training computed it (else computed here, as needed)
        (:class:`~ketabids.group.nested.CVData`).
    result : NestedCVResult
        The headline nested CV.
    settings : NestedCVSettings
        Its settings.
    variables : DataFrame, optional
        Participant variables (age, sex, TIV, ...; rows in the order of ``data.y``).
    qc : DataFrame, optional
        QC metrics (same rows).
    random_state : int
        Seed of the site-predictability CV.
    progress : callable, optional
        Called as ``progress(done, 4)`` after each check.

    Returns
    -------
    tuple
        (audit table, warning sentences, extra results ``{"leave_site_out": result or
        None}``).
    """
    from ketabids.group.estimator import linear_kernel
    from ketabids.group.nested import check_scheme, nested_cv

    X, covariates, sites, groups, gram = (data.X, data.covariates, data.sites, data.groups,
                                          data.gram)
    y = np.asarray(data.y).astype(int)
    rows, extra = [], {"leave_site_out": None}
    head = _pooled(result, "bac")
    n_sites = 0 if sites is None else int(np.unique(sites).size)
    if gram is None and n_sites >= 2 and not settings.standardize:
        gram = linear_kernel(np.asarray(X))      # one X X^T for the two checks that need it

    # 1. leave-site-out beside the headline
    if settings.scheme == "leave-site-out":
        rows.append({"check": "leave_site_out_bac", "value": head[0], "reference": head[0],
                     "status": "info", "detail": "the headline is already leave-site-out"})
    elif n_sites >= 2:
        loso_settings = replace(settings, scheme="leave-site-out")
        try:
            check_scheme(y, sites, loso_settings)
            loso = nested_cv(X, y, covariates=covariates, sites=sites, settings=loso_settings,
                             gram=gram)
        except UsageError as exc:
            rows.append({"check": "leave_site_out_bac", "value": np.nan, "reference": head[0],
                         "status": "info", "detail": f"not computable: {exc}"})
        else:
            extra["leave_site_out"] = loso
            est, lo, hi = _pooled(loso, "bac")
            fell = np.isfinite(lo) and lo <= 0.5 and not (np.isfinite(head[1])
                                                       and head[1] <= 0.5)
            drop = head[0] - est >= BAC_DROP
            rows.append({
                "check": "leave_site_out_bac", "value": est, "reference": head[0],
                "status": "warn" if fell else "info" if drop else "pass",
                "detail": f"one of {n_sites} sites held out per outer fold: BAC {_pct(est)} "
                f"(95% CI {_pct(lo)}-{_pct(hi)}) vs headline {_pct(head[0])} (95% CI "
                f"{_pct(head[1])}-{_pct(head[2])})" + (
                    "; at or below chance: the accuracy does not carry over to an unseen site"
                    if fell
                    else f"; {100 * (head[0] - est):.0f} points lower: part of the accuracy "
                    "may be site-specific (each model also trains on fewer participants)"
                    if drop else "")})
    else:
        rows.append({"check": "leave_site_out_bac", "value": np.nan, "reference": head[0],
                     "status": "info", "detail": "one site (or no --site-column): leave-site-"
                     "out cross-validation is not possible"})
    if progress is not None:
        progress(1, 4)

    # 2. site carries responders / site predictable from the features
    site_label_p = np.nan
    if n_sites >= 2:
        table = pd.crosstab(np.asarray(sites).astype(str), y).reindex(columns=[0, 1],
                                                                      fill_value=0)
        if table.shape == (2, 2):
            site_label_p = float(stats.fisher_exact(table.to_numpy()).pvalue)
            test = "Fisher's exact test"
        else:
            site_label_p = float(stats.chi2_contingency(table.to_numpy())[1])
            test = "chi-squared test"
        shares = ", ".join(f"{s} {int(r[1])}/{int(r.sum())}" for s, r in table.iterrows())
        rows.append({"check": "response_rate_by_site", "value": site_label_p,
                     "reference": 0.05, "status": "warn" if site_label_p < 0.05 else "pass",
                     "detail": f"responders per site: {shares}; {test} p = "
                     f"{site_label_p:.2g}"})
        sp = site_predictability(X, sites, covariates=covariates, n_folds=settings.n_outer,
                                 random_state=random_state, standardize=settings.standardize,
                                 gram=gram)
        predictable = np.isfinite(sp["bac"]) and sp["bac"] >= sp["chance"] + SITE_MARGIN
        status = ("warn" if predictable and site_label_p < 0.05 else
                  "info" if predictable else "pass")
        rows.append({"check": "site_predictability", "value": sp["bac"],
                     "reference": sp["chance"], "status": status,
                     "detail": f"the features predict the site with balanced accuracy "
                     f"{_pct(sp['bac'])} ({sp['n_folds']} folds stratified by site; chance "
                     f"{_pct(sp['chance'])})" + (
                         "; and the sites differ in responders: the model can score by "
                         "recognising the site" if status == "warn" else "")})
    if progress is not None:
        progress(2, 4)

    # 3. associations of the out-of-fold decision values
    variables = pd.DataFrame(index=range(y.size)) if variables is None else \
        variables.reset_index(drop=True)
    if qc is not None:
        variables = pd.concat([variables, qc.reset_index(drop=True).drop(
            columns=[c for c in qc.columns if c in variables.columns])], axis=1)
    assoc = decision_associations(result.subjects["decision"].to_numpy(float), y, variables,
                                  sites if n_sites >= 2 else None)
    alpha = 0.05 / max(len(assoc), 1)
    for a in assoc:
        effect = abs(a["value"])
        warn = np.isfinite(a["p"]) and a["p"] < alpha and effect >= a["reference"]
        rows.append({"check": a["check"], "value": a["value"], "reference": a["reference"],
                     "status": "warn" if warn else "pass",
                     "detail": a["detail"] + f" (warn at p < {alpha:.2g}, Bonferroni over "
                     f"{len(assoc)} checks, and |effect| >= {a['reference']})"})
    if progress is not None:
        progress(3, 4)

    # 4. QC metrics and covariates alone
    if qc is not None or len(variables.columns):
        Q, used = _numeric_matrix(variables)
        if Q is not None:
            qsettings = replace(settings, standardize=True, harmonize=False, n_repeats=1)
            try:
                # libsvm solves many of these low-rank problems: skip scikit-learn's per-call
                # input checks (the inputs are the engine's own finite arrays; same results)
                with sklearn.config_context(assume_finite=True,
                                            skip_parameter_validation=True):
                    qres = nested_cv(Q, y, sites=sites, settings=qsettings, groups=groups)
            except UsageError as exc:
                rows.append({"check": "qc_covariates_only_bac", "value": np.nan,
                             "reference": 0.5, "status": "info",
                             "detail": f"not computable: {exc}"})
            else:
                est, lo, hi = _pooled(qres, "bac")
                above = np.isfinite(lo) and lo > 0.5
                rows.append({
                    "check": "qc_covariates_only_bac", "value": est, "reference": 0.5,
                    "status": "warn" if above else "pass",
                    "detail": f"the same nested CV (one repeat) on {', '.join(used)} alone: BAC "
                    f"{_pct(est)} (95% CI {_pct(lo)}-{_pct(hi)})" + (
                        "; scan quality or demographics predict response, the imaging model "
                        "may be learning them" if above else "")})
    if progress is not None:
        progress(4, 4)

    table = pd.DataFrame(rows, columns=AUDIT_COLUMNS)
    warnings = [_warning_sentence(r) for r in rows if r["status"] == "warn"]
    return table, warnings, extra


def _numeric_matrix(variables: pd.DataFrame):
    cols, used = [], []
    for name in variables.columns:
        col = variables[name]
        if not pd.api.types.is_numeric_dtype(col):
            levels = sorted(col.dropna().astype(str).unique())
            if len(levels) != 2 or col.isna().any():
                continue
            x = (col.astype(str) == levels[1]).to_numpy(float)
        else:
            x = pd.to_numeric(col, errors="coerce").to_numpy(float)
        if np.isfinite(x).all() and x.std() > 0:
            cols.append(x)
            used.append(name)
    if not cols:
        return None, []
    return np.column_stack(cols), used


_WARNINGS = {
    "leave_site_out_bac": "Leave-site-out balanced accuracy ({value}) is at or below chance, "
    "unlike the "
    "headline ({reference}): the result may reflect site, not response.",
    "response_rate_by_site": "The share of responders differs between sites (p = {p}): site "
    "and response are confounded.",
    "site_predictability": "The features predict the site (balanced accuracy {value}, chance "
    "{reference}) and sites differ in responders: the model can score by recognising the site.",
    "qc_covariates_only_bac": "QC metrics and covariates alone predict response (balanced "
    "accuracy {value}): the imaging model may be learning scan quality or demographics.",
}


def _warning_sentence(row) -> str:
    fmt = _WARNINGS.get(row["check"])
    if fmt is not None:
        return fmt.format(value=_pct(row["value"]), reference=_pct(row["reference"]),
                          p=f"{row['value']:.2g}")
    name = row["check"].removeprefix("decision_vs_")
    stat = "eta squared" if name == "site" else "within-class r"
    return (f"The out-of-fold decision values track {name} beyond the label ({stat} "
            f"{row['value']:.2f}): check it as a confound.")
