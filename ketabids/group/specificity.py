"""Treatment specificity of a frozen model: does it predict response to the treatment it was
trained on, rather than response (or improvement) in general?

A model applied to a two-arm cohort (e.g. a randomised ketamine vs saline trial) gives every
participant a decision value. Three analyses compare the arms (all pure functions of ``y``,
``decision`` and the arm of each participant; no images):

1. **Per arm**: n, responders, participants predicted to respond, balanced accuracy (stratified
   bootstrap interval) and AUC (DeLong interval), as for any prediction
   (:func:`ketabids.group.metrics.classification_metrics`).
2. **Difference between arms** (treatment - reference) in BAC and AUC: percentile interval
   from a bootstrap stratified by arm and label (each arm x label cell resampled with its own
   size), and a permutation p: the arm labels are permuted within each label class (so each
   arm keeps its numbers of responders and non-responders) and the difference recomputed;
   ``p = (1 + #(|null| >= |observed|)) / (1 + n_permutations)`` (two-sided).
3. **Interaction** in the logistic model ``logit P(response) = b0 + b1 z + b2 arm + b3 z arm``,
   ``z`` = decision value standardised over the cohort (mean 0, SD 1), ``arm`` = 1 for the
   treatment arm: ``b3`` is how much more the log odds of response rise per SD of the decision
   value in the treatment arm than in the reference arm. ``b3`` > 0 with a small p: the
   marker is *predictive* (treatment-specific); ``b1`` (the reference arm's slope) clearly
   non-zero with ``b3`` near 0: the marker is *prognostic* (it predicts response whatever the
   treatment). Profile-likelihood 95 % interval and likelihood-ratio p (model with vs without
   ``z arm``; they agree: the interval excludes 0 exactly when p < 0.05);
   maximum likelihood, or Firth's penalised likelihood when an arm is separated
   (:mod:`ketabids.group.logistic`).

:func:`specificity_analysis` runs the three and writes the plain-language interpretation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ketabids.group.logistic import fit_logistic, likelihood_ratio_p, profile_interval
from ketabids.group.metrics import SMALL_CLASS, classification_metrics, finite_or_none

__all__ = ["SpecificityResult", "specificity_analysis", "interaction_test", "arm_differences",
           "format_points", "format_p_value", "metrics_by_arm", "resolve_arms", "trained_arm",
           "BY_ARM_COLUMNS", "TABLE_COLUMNS", "ALPHA"]

#: Columns of metrics_by_arm.tsv and specificity.tsv (docs/schemas agreed with the report).
BY_ARM_COLUMNS = ["arm", "n", "n_responders", "n_nonresponders", "n_predicted_responders", "bac",
                  "bac_ci_low", "bac_ci_high", "auc", "auc_ci_low", "auc_ci_high"]
TABLE_COLUMNS = ["analysis", "estimate", "ci_low", "ci_high", "p_value", "detail"]
#: Significance level of the interpretation sentence.
ALPHA = 0.05
#: Interaction (log odds ratio per SD of the decision value) the interpretation calls clearly
#: treatment-specific: 0.5 = the odds of response rise 1.65 times more per SD under treatment.
RELEVANT_LOG_ODDS = 0.5


def trained_arm(arm_column: str, trained_include) -> str | None:
    """The arm the model was trained on, read from its training rule.

    Parameters
    ----------
    arm_column : str
        The participants.tsv column holding the arm.
    trained_include : iterable of str or None
        The model's ``--include`` rules (``COL=VALUE``, ``COL!=VALUE``).

    Returns
    -------
    str or None
        The one value of ``arm_column`` the rules kept (case as written in the rule), else
        None.

    Examples
    --------
    >>> trained_arm("arm", ["arm=ketamine", "site!=B"])
    'ketamine'
    >>> trained_arm("arm", ["arm!=saline"]) is None
    True
    """
    from ketabids.group.labels import parse_filter

    for spec in trained_include or ():
        column, op, values = parse_filter(spec)
        if column == arm_column and op == "=" and len(values) == 1:
            return next(iter(values))
    return None


def resolve_arms(arm_column: str, values, *, treatment_arm: str | None = None,
                 trained_include=()) -> tuple[str, str]:
    """The treatment and reference arms, checked so that they cannot be swapped by mistake.

    The treatment arm is the one the model was trained on when its training rule says so
    (``--include ARM=VALUE``); ``treatment_arm`` must then agree. Otherwise ``treatment_arm``
    is required. Exactly two arms must be present. Values compare case-insensitively; the
    spelling of ``values`` is returned.

    Parameters
    ----------
    arm_column : str
        The column holding the arm (for the messages).
    values : iterable
        The arm of every participant analysed.
    treatment_arm : str or None
        ``--treatment-arm``.
    trained_include : iterable of str
        The model's ``--include`` rules (:func:`trained_arm`).

    Returns
    -------
    treatment, reference : str
        The two arms.

    Raises
    ------
    UsageError
        Not exactly two arms, a treatment arm that contradicts the training rule, is missing
        or is not among the arms; one line naming the column, its values and the fix.

    Examples
    --------
    >>> resolve_arms("arm", ["Ketamine", "saline", "saline"], trained_include=["arm=ketamine"])
    ('Ketamine', 'saline')
    """
    from ketabids.errors import UsageError

    present = sorted({str(v) for v in values})
    flag = f"--arm-column {arm_column}"
    if len(present) != 2:
        others = ", ".join(present) or "none"
        raise UsageError(
            f"{flag}: the specificity analysis compares two arms, but the participants "
            f"analysed have {len(present)} ({others}); keep two with --include "
            f"{arm_column}=A,B (or fill the column)")
    by_lower = {v.lower(): v for v in present}
    trained = trained_arm(arm_column, trained_include)
    if trained is not None and treatment_arm is not None \
            and str(treatment_arm).lower() != trained.lower():
        raise UsageError(
            f"--treatment-arm {treatment_arm}: the model was trained on participants with "
            f"{arm_column}={trained}, so {trained} is the treatment arm; drop --treatment-arm "
            f"or give --treatment-arm {trained}")
    chosen = treatment_arm if treatment_arm is not None else trained
    if chosen is None:
        raise UsageError(
            f"{flag}: say which arm the model predicts response to with --treatment-arm "
            f"({' or '.join(present)}); the model's training rule names no {arm_column}")
    if str(chosen).lower() not in by_lower:
        raise UsageError(
            f"{flag}: the treatment arm {chosen!r} is not among the arms of the participants "
            f"analysed ({', '.join(present)}); check --treatment-arm and --include")
    treatment = by_lower[str(chosen).lower()]
    reference = next(v for v in present if v != treatment)
    return treatment, reference


def metrics_by_arm(y, decision, arm, *, arms, proba=None, n_bootstrap=2000,
                   random_state=0) -> pd.DataFrame:
    """Metrics of each arm (the rows of ``metrics_by_arm.tsv``).

    Parameters
    ----------
    y : array-like of shape (n,)
        Outcomes 1/0.
    decision : array-like of shape (n,)
        Decision values of the frozen model (> 0: predicted responder).
    arm : array-like of shape (n,)
        Arm of each participant.
    arms : sequence of str
        The arms to report, in row order (treatment first).
    proba : array-like of shape (n,) or None
        Probabilities (for the Brier score of the underlying metrics).
    n_bootstrap : int
        Bootstrap resamples of the BAC intervals.
    random_state : int
        Seed of the bootstrap.

    Returns
    -------
    pandas.DataFrame
        One row per arm, columns :data:`BY_ARM_COLUMNS`; BAC and AUC (and their intervals)
        are NaN in an arm without both classes.
    """
    y = np.asarray(y).astype(int)
    decision = np.asarray(decision, float)
    arm = np.asarray(arm).astype(str)
    rows = []
    for name in arms:
        sel = arm == str(name)
        ya, da = y[sel], decision[sel]
        row = {"arm": str(name), "n": int(sel.sum()), "n_responders": int(ya.sum()),
               "n_nonresponders": int((ya == 0).sum()),
               "n_predicted_responders": int((da > 0).sum())}
        values = {f"{m}{s}": np.nan for m in ("bac", "auc") for s in ("", "_ci_low", "_ci_high")}
        if len(set(ya.tolist())) == 2:
            m = classification_metrics(ya, da, None if proba is None else
                                       np.asarray(proba, float)[sel],
                                       n_bootstrap=n_bootstrap, random_state=random_state)
            for metric in ("bac", "auc"):
                r = m[m["metric"] == metric].iloc[0]
                values.update({metric: r["estimate"], f"{metric}_ci_low": r["ci_low"],
                               f"{metric}_ci_high": r["ci_high"]})
        rows.append({**row, **values})
    return pd.DataFrame(rows, columns=BY_ARM_COLUMNS)


def _weighted_bac_auc(w, y, pred, psi, pos, neg):
    """BAC and AUC for weight vectors ``w`` (K, n): replicate k counts participant i w[k, i]
    times (bootstrap counts, or 0/1 arm membership)."""
    wp, wn = w[:, pos], w[:, neg]
    sp, sn = wp.sum(1), wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (wp * pred[pos]).sum(1) / sp
        spec = (wn * ~pred[neg]).sum(1) / sn
        auc = np.einsum("ki,ij,kj->k", wp, psi, wn) / (sp * sn)
    return (sens + spec) / 2, auc


def arm_differences(y, decision, is_treatment, *, n_bootstrap=2000, n_permutations=1000,
                    random_state=0, confidence=0.95) -> dict:
    """BAC and AUC differences (treatment - reference) with a bootstrap interval and a p.

    The bootstrap is stratified by arm and label; the two-sided permutation p permutes the arm
    labels within each label class (module docstring). The same ``random_state`` gives the
    same intervals and p-values.

    Parameters
    ----------
    y : array-like of shape (n,)
        Outcomes 1/0.
    decision : array-like of shape (n,)
        Decision values (> 0: predicted responder).
    is_treatment : array-like of bool, shape (n,)
        True in the treatment arm.
    n_bootstrap, n_permutations : int
        Resamples of the interval and of the null distribution.
    random_state : int
        Seed.
    confidence : float
        Coverage of the intervals.

    Returns
    -------
    dict
        ``{"bac_difference" | "auc_difference": {"estimate", "ci_low", "ci_high", "p_value",
        "null": array, "boot": array}, "n_bootstrap", "n_permutations"}``.
    """
    y = np.asarray(y).astype(int)
    d = np.asarray(decision, float)
    t = np.asarray(is_treatment, bool)
    pred = d > 0
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    psi = (d[pos][:, None] > d[neg][None, :]) + 0.5 * (d[pos][:, None] == d[neg][None, :])

    def difference(member_t, member_r):
        bac_t, auc_t = _weighted_bac_auc(member_t, y, pred, psi, pos, neg)
        bac_r, auc_r = _weighted_bac_auc(member_r, y, pred, psi, pos, neg)
        return bac_t - bac_r, auc_t - auc_r

    obs_bac, obs_auc = (float(v[0]) for v in difference(t[None].astype(float),
                                                        (~t)[None].astype(float)))
    rng = np.random.default_rng([int(random_state), 23])
    # bootstrap: every arm x label cell resampled with replacement at its own size
    counts = np.zeros((int(n_bootstrap), y.size))
    for cell in (np.flatnonzero((t == a) & (y == c)) for a in (True, False) for c in (0, 1)):
        if cell.size:
            draws = cell[rng.integers(0, cell.size, (int(n_bootstrap), cell.size))]
            np.add.at(counts, (np.arange(int(n_bootstrap))[:, None], draws), 1.0)
    boot_bac, boot_auc = difference(counts * t, counts * ~t)
    # permutation: arm labels shuffled within each label class
    perm_t = np.empty((int(n_permutations), y.size), bool)
    for k in range(int(n_permutations)):
        tk = t.copy()
        for cls in (pos, neg):
            tk[cls] = t[cls][rng.permutation(cls.size)]
        perm_t[k] = tk
    null_bac, null_auc = difference(perm_t.astype(float), (~perm_t).astype(float))
    a = 100 * (1 - confidence) / 2
    out = {"n_bootstrap": int(n_bootstrap), "n_permutations": int(n_permutations)}
    for key, obs, boot, null in (("bac_difference", obs_bac, boot_bac, null_bac),
                                 ("auc_difference", obs_auc, boot_auc, null_auc)):
        ok = np.isfinite(boot)
        lo, hi = np.percentile(boot[ok], [a, 100 - a]) if ok.any() and np.isfinite(obs) \
            else (np.nan, np.nan)
        p = (float((1 + np.sum(np.abs(null) >= abs(obs) - 1e-12)) / (1 + null.size))
             if null.size and np.isfinite(obs) else np.nan)
        out[key] = {"estimate": obs, "ci_low": float(lo), "ci_high": float(hi), "p_value": p,
                    "null": null, "boot": boot}
    return out


def interaction_test(y, decision, is_treatment, *, confidence=0.95) -> dict:
    """The ``decision x arm`` interaction: ``logit P(y) = b0 + b1 z + b2 arm + b3 z arm``.

    ``z`` is the decision value standardised over the cohort (module docstring). ``b3`` gets a
    profile-likelihood interval and a likelihood-ratio p (penalised with Firth when an arm is
    separated: both agree); the slope of each arm (``b1``, ``b1 + b3``: log odds ratio per SD
    of the decision value) a Wald interval and p.

    Parameters
    ----------
    y : array-like of shape (n,)
        Outcomes 1/0 (both classes in each arm).
    decision : array-like of shape (n,)
        Decision values.
    is_treatment : array-like of bool, shape (n,)
        True in the treatment arm.
    confidence : float
        Coverage of the intervals.

    Returns
    -------
    dict
        ``{"interaction_log_odds", "slope_reference_arm", "slope_treatment_arm": {"estimate",
        "ci_low", "ci_high", "p_value"}, "method": "maximum likelihood" or "Firth", "scale": SD
        used for z}``.
    """
    y = np.asarray(y).astype(float)
    d = np.asarray(decision, float)
    a = np.asarray(is_treatment, bool).astype(float)
    scale = float(d.std())
    z = (d - d.mean()) / scale if scale > 0 else np.zeros_like(d)
    one = np.ones_like(z)
    X = np.column_stack([one, z, a, z * a])
    full = fit_logistic(X, y)
    firth = full.method == "Firth"
    reduced = fit_logistic(X, y, firth=firth, zero=[3])   # b3 held at 0, same penalty
    est = float(full.coef[3])
    lo, hi = profile_interval(X, y, 3, firth=firth, confidence=confidence)
    out = {"interaction_log_odds": {"estimate": est, "ci_low": lo, "ci_high": hi,
                                    "p_value": likelihood_ratio_p(full, reduced)},
           "method": full.method, "scale": scale}
    est, lo, hi, p = full.wald(1, confidence)
    out["slope_reference_arm"] = {"estimate": est, "ci_low": lo, "ci_high": hi, "p_value": p}
    # b1 + b3 and its variance from the covariance matrix
    c = np.array([0.0, 1.0, 0.0, 1.0])
    est = float(c @ full.coef)
    se = float(np.sqrt(max(c @ full.cov @ c, 0.0)))
    from scipy import stats

    q = stats.norm.ppf(0.5 + confidence / 2)
    out["slope_treatment_arm"] = {"estimate": est, "ci_low": est - q * se,
                                  "ci_high": est + q * se,
                                  "p_value": float(2 * stats.norm.sf(abs(est) / se))
                                  if se > 0 else float("nan")}
    return out


@dataclass
class SpecificityResult:
    """What :func:`specificity_analysis` found.

    Attributes
    ----------
    treatment_arm, reference_arm : str
        The two arms.
    by_arm : pandas.DataFrame
        ``metrics_by_arm.tsv`` (:func:`metrics_by_arm`).
    table : pandas.DataFrame
        ``specificity.tsv``: columns :data:`TABLE_COLUMNS`, rows ``bac_difference``,
        ``auc_difference``, ``interaction_log_odds``, ``slope_treatment_arm``,
        ``slope_reference_arm``.
    interpretation : str
        Plain-language reading (:func:`interpret`).
    settings : dict
        Resamples, seed, confidence, logistic method, the decision SD, alpha.
    """

    treatment_arm: str
    reference_arm: str
    by_arm: pd.DataFrame
    table: pd.DataFrame
    interpretation: str
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The ``specificity`` block of metrics.json."""
        def row(name):
            r = self.table[self.table["analysis"] == name].iloc[0]
            return {k: finite_or_none(r[k]) for k in ("estimate", "ci_low", "ci_high",
                                                      "p_value")}

        return {"reference_arm": self.reference_arm, "treatment_arm": self.treatment_arm,
                "interpretation": self.interpretation,
                **{name: row(name) for name in self.table["analysis"]},
                "settings": self.settings}


def _fmt_num(v) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.2f}"


def format_points(v) -> str:
    """A difference of proportions in signed percentage points (``+38.5``; ``n/a`` for None
    or NaN): the reports', log's and demo table's form."""
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:+.1f}"


def format_p_value(p) -> str:
    """``p = 0.03`` / ``p < 0.001`` / ``p n/a`` (None or NaN): the reports', log's and demo
    table's form."""
    if p is None or not np.isfinite(p):
        return "p n/a"
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def interpret(table: pd.DataFrame, by_arm: pd.DataFrame, *, treatment_arm: str,
              reference_arm: str, alpha: float = ALPHA) -> str:
    """Plain sentences: what the result means and what it cannot mean at this n.

    Parameters
    ----------
    table : pandas.DataFrame
        ``specificity.tsv`` (:attr:`SpecificityResult.table`).
    by_arm : pandas.DataFrame
        ``metrics_by_arm.tsv``.
    treatment_arm, reference_arm : str
        The arms' names, as written in the sentences.
    alpha : float
        Significance level.

    Returns
    -------
    str
        A few sentences for the report and ``metrics.json``: predictive, prognostic or not
        shown, with the figures, and a caution when a class of an arm is small.
    """
    r = table.set_index("analysis")
    inter, bac = r.loc["interaction_log_odds"], r.loc["bac_difference"]
    ref_slope = r.loc["slope_reference_arm"]
    n = int(by_arm["n"].sum())
    smallest = int(by_arm[["n_responders", "n_nonresponders"]].to_numpy().min())
    figures = (f"interaction {format_p_value(inter['p_value'])}; BAC {treatment_arm} - "
               f"{reference_arm} = {format_points(bac['estimate'])} percentage points, 95% CI "
               f"{format_points(bac['ci_low'])} to {format_points(bac['ci_high'])}, permutation "
               f"{format_p_value(bac['p_value'])}")
    significant = np.isfinite(inter["p_value"]) and inter["p_value"] < alpha
    if significant and inter["estimate"] > 0:
        text = (f"The decision value tracks response more strongly in the {treatment_arm} arm "
                f"than in the {reference_arm} arm ({figures}): evidence that the model "
                f"predicts response to {treatment_arm} specifically (a predictive marker), not "
                "response in general (a prognostic marker). ")
        if np.isfinite(ref_slope["p_value"]) and ref_slope["p_value"] < alpha \
                and ref_slope["estimate"] > 0:
            text += (f"It also predicts response in the {reference_arm} arm, so part of it is "
                     "prognostic. ")
        text += (f"With n = {n} this is one comparison in one sample, not a validated "
                 "treatment-selection rule: the size of the difference is uncertain (see the "
                 "interval) and needs replication in an independent randomised sample.")
    elif significant:
        text = (f"The decision value tracks response more strongly in the {reference_arm} arm "
                f"than in the {treatment_arm} arm ({figures}): the model is not specific to "
                f"{treatment_arm} in this sample.")
    elif np.isfinite(bac["p_value"]) and bac["p_value"] < alpha and bac["estimate"] > 0:
        text = (f"The model classifies the {treatment_arm} arm better than the {reference_arm} "
                f"arm ({figures}), but the logistic test over the whole decision scale does not "
                f"confirm that the decision value tracks response more strongly under "
                f"{treatment_arm}: the evidence of specificity rests on the classification at "
                f"the model's threshold. With n = {n} the interaction's interval (up to "
                f"{_fmt_num(inter['ci_high'])} log odds per SD) is wide; a larger randomised "
                "sample is needed before calling the marker treatment-specific.")
    else:
        text = (f"This sample does not show that the model works better in the {treatment_arm} "
                f"arm than in the {reference_arm} arm ({figures}). ")
        high = inter["ci_high"]
        if not np.isfinite(high) or high >= RELEVANT_LOG_ODDS:
            text += (f"Nor does it show that the model performs the same in both arms: at n = "
                     f"{n} the interaction's 95% interval (up to {_fmt_num(high)} log odds per "
                     "SD) still includes a clearly treatment-specific marker, so a specific "
                     "(predictive) marker, a prognostic one and no marker cannot be told apart; "
                     "absence of evidence is not evidence of absence.")
        else:
            text += (f"The interaction's 95% interval ends at {_fmt_num(high)} log odds per SD: "
                     "if the marker is specific to the treatment at all, the specificity is "
                     "small.")
        if np.isfinite(ref_slope["p_value"]) and ref_slope["p_value"] < alpha \
                and ref_slope["estimate"] > 0:
            text += (f" The decision value does predict response in the {reference_arm} arm: "
                     "a prognostic marker fits these data.")
    if smallest < SMALL_CLASS:
        text += (f" Caution: an arm has only {smallest} participants in its smaller class "
                 f"(fewer than {SMALL_CLASS}); the estimates move by large steps with one "
                 "participant.")
    return text


def specificity_analysis(y, decision, arm, *, treatment_arm: str, reference_arm: str,
                         proba=None, n_bootstrap: int = 2000, n_permutations: int = 1000,
                         random_state: int = 0, confidence: float = 0.95) -> SpecificityResult:
    """Per-arm metrics, arm differences and the ``decision x arm`` interaction.

    The three analyses of the module docstring, and their interpretation. Deterministic for
    ``random_state``.

    Parameters
    ----------
    y : array-like of shape (n,)
        Outcomes 1/0.
    decision : array-like of shape (n,)
        Decision values of the frozen model.
    arm : array-like of shape (n,)
        Each participant's arm; only ``treatment_arm`` and ``reference_arm`` may occur.
    treatment_arm, reference_arm : str
        From :func:`resolve_arms`.
    proba : array-like of shape (n,) or None
        Probabilities of response.
    n_bootstrap, n_permutations : int
        Resamples of the intervals and of the permutation test.
    random_state : int
        Seed.
    confidence : float
        Coverage of the intervals.

    Returns
    -------
    SpecificityResult
        The tables, the interpretation and the settings.

    Raises
    ------
    ValueError
        Another arm in ``arm``, or the same name for both arms.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> arm = np.repeat(["ketamine", "saline"], 150)
    >>> d = rng.normal(size=300)
    >>> slope = np.where(arm == "ketamine", 3.0, 0.0)
    >>> y = (rng.random(300) < 1 / (1 + np.exp(-slope * d))).astype(int)
    >>> res = specificity_analysis(y, d, arm, treatment_arm="ketamine", reference_arm="saline",
    ...                            n_bootstrap=200, n_permutations=200)
    >>> res.as_dict()["interaction_log_odds"]["p_value"] < 0.001
    True
    """
    y = np.asarray(y).astype(int)
    decision = np.asarray(decision, float)
    arm = np.asarray(arm).astype(str)
    treatment_arm, reference_arm = str(treatment_arm), str(reference_arm)
    unknown = sorted(set(arm.tolist()) - {treatment_arm, reference_arm})
    if unknown or treatment_arm == reference_arm:
        raise ValueError(f"arms must be {treatment_arm!r} and {reference_arm!r}; found "
                         f"{sorted(set(arm.tolist()))}")
    is_t = arm == treatment_arm
    by_arm = metrics_by_arm(y, decision, arm, arms=(treatment_arm, reference_arm), proba=proba,
                            n_bootstrap=n_bootstrap, random_state=random_state)
    diffs = arm_differences(y, decision, is_t, n_bootstrap=n_bootstrap,
                            n_permutations=n_permutations, random_state=random_state,
                            confidence=confidence)
    estimable = all(len(set(y[arm == a].tolist())) == 2 for a in (treatment_arm, reference_arm))
    nan4 = {"estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}
    if estimable:
        inter = interaction_test(y, decision, is_t, confidence=confidence)
    else:
        inter = {k: dict(nan4) for k in ("interaction_log_odds", "slope_reference_arm",
                                         "slope_treatment_arm")}
        inter.update(method="not estimable (an arm has one class only)", scale=np.nan)
    perm_text = (f"{diffs['n_permutations']} permutations of the arm labels within label class, "
                 "two-sided") if diffs["n_permutations"] else "no permutation (--n-permutations 0)"
    boot_text = f"{diffs['n_bootstrap']} bootstrap resamples stratified by arm and label"
    logit_text = (f"logistic response ~ z * arm, z = decision / {inter['scale']:.4g} (SD) "
                  f"centred, arm = 1 for {treatment_arm}; {inter['method']}")
    rows = [
        {"analysis": "bac_difference", **{k: v for k, v in diffs["bac_difference"].items()
                                          if k in nan4},
         "detail": f"BAC({treatment_arm}) - BAC({reference_arm}); percentile interval of "
                   f"{boot_text}; p from {perm_text}"},
        {"analysis": "auc_difference", **{k: v for k, v in diffs["auc_difference"].items()
                                          if k in nan4},
         "detail": f"AUC({treatment_arm}) - AUC({reference_arm}); percentile interval of "
                   f"{boot_text}; p from {perm_text}"},
        {"analysis": "interaction_log_odds", **inter["interaction_log_odds"],
         "detail": f"decision x arm coefficient (log odds ratio per SD of the decision value, "
                   f"{treatment_arm} minus {reference_arm}); profile-likelihood interval, "
                   f"likelihood-ratio p; {logit_text}"},
        {"analysis": "slope_treatment_arm", **inter["slope_treatment_arm"],
         "detail": f"log odds ratio of response per SD of the decision value in the "
                   f"{treatment_arm} arm; Wald interval and p; same model"},
        {"analysis": "slope_reference_arm", **inter["slope_reference_arm"],
         "detail": f"log odds ratio of response per SD of the decision value in the "
                   f"{reference_arm} arm (prognostic if clearly > 0); Wald interval and p; "
                   "same model"},
    ]
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    text = interpret(table, by_arm, treatment_arm=treatment_arm, reference_arm=reference_arm)
    settings = {"n_bootstrap": diffs["n_bootstrap"], "n_permutations": diffs["n_permutations"],
                "random_state": int(random_state), "confidence": confidence,
                "logistic_method": inter["method"], "decision_sd": finite_or_none(inter["scale"]),
                "alpha": ALPHA}
    return SpecificityResult(treatment_arm, reference_arm, by_arm, table, text, settings)
