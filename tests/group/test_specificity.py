"""Treatment specificity (ketabids.group.specificity) and its logistic engine
(ketabids.group.logistic): known answers on generated two-arm cohorts."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from ketabids.group.logistic import fit_logistic, likelihood_ratio_p
from ketabids.group.metrics import balanced_accuracy, classification_metrics, roc_auc
from ketabids.group.specificity import (
    BY_ARM_COLUMNS,
    TABLE_COLUMNS,
    arm_differences,
    interaction_test,
    specificity_analysis,
)


def two_arms(seed, n=150, treatment_slope=2.5, reference_slope=0.0, intercept=-0.3):
    """Decision values N(0, 1); response drawn from a logistic with a slope per arm."""
    rng = np.random.default_rng(seed)
    arm = np.repeat(["ketamine", "saline"], n)
    d = rng.normal(size=2 * n)
    slope = np.where(arm == "ketamine", treatment_slope, reference_slope)
    y = (rng.random(2 * n) < special.expit(intercept + slope * d)).astype(int)
    return y, d, arm


# ------------------------------------------------------------------------------- logistic
def test_maximum_likelihood_matches_scikit_learn_and_closed_forms():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    y = (rng.random(300) < special.expit(X @ [1.0, -0.5, 0.2] + 0.3)).astype(int)
    fit = fit_logistic(np.column_stack([np.ones(300), X]), y)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(X, y)
    assert fit.method == "maximum likelihood" and fit.converged
    np.testing.assert_allclose(fit.coef, np.r_[ref.intercept_, ref.coef_.ravel()], atol=1e-5)
    # 2 x 2 table: log odds ratio and its SE sqrt(1/a + 1/b + 1/c + 1/d) (Woolf)
    a, b, c, d = 12, 5, 7, 15           # exposed responders/non, unexposed responders/non
    x = np.r_[np.ones(a + b), np.zeros(c + d)]
    yy = np.r_[np.ones(a), np.zeros(b), np.ones(c), np.zeros(d)]
    fit = fit_logistic(np.column_stack([np.ones(x.size), x]), yy)
    assert fit.coef[1] == pytest.approx(np.log(a * d / (b * c)), abs=1e-8)
    assert fit.se[1] == pytest.approx(np.sqrt(1 / a + 1 / b + 1 / c + 1 / d), abs=1e-6)


def test_firth_on_a_two_by_two_table_adds_one_half_to_each_cell_and_handles_separation():
    a, b, c, d = 9, 0, 3, 8             # no exposed non-responder: ML log OR is infinite
    x = np.r_[np.ones(a + b), np.zeros(c + d)]
    yy = np.r_[np.ones(a), np.zeros(b), np.ones(c), np.zeros(d)]
    X = np.column_stack([np.ones(x.size), x])
    fit = fit_logistic(X, yy)           # automatic switch
    assert fit.method == "Firth" and np.all(np.isfinite(fit.coef))
    expected = np.log((a + .5) * (d + .5) / ((b + .5) * (c + .5)))
    assert fit.coef[1] == pytest.approx(expected, abs=1e-6)
    assert fit_logistic(X, yy, firth=True).coef[1] == pytest.approx(expected, abs=1e-6)


def test_offset_and_likelihood_ratio():
    rng = np.random.default_rng(2)
    lp = rng.normal(size=5000)
    y = (rng.random(5000) < special.expit(lp - 0.7)).astype(int)
    fit = fit_logistic(np.ones((5000, 1)), y, offset=lp)
    est, lo, hi, _ = fit.wald(0)
    assert lo < -0.7 < hi and abs(est + 0.7) < 0.1
    full = fit_logistic(np.column_stack([np.ones(5000), lp]), y)
    null = fit_logistic(np.ones((5000, 1)), y)
    assert likelihood_ratio_p(full, null) < 1e-10
    assert likelihood_ratio_p(full, full) == 1.0


# ---------------------------------------------------------------------------- specificity
def test_treatment_specific_effect_gives_a_significant_interaction():
    y, d, arm = two_arms(0)
    res = specificity_analysis(y, d, arm, treatment_arm="ketamine", reference_arm="saline",
                               n_bootstrap=500, n_permutations=500, random_state=4)
    s = res.as_dict()
    assert s["interaction_log_odds"]["p_value"] < 0.001
    assert s["interaction_log_odds"]["ci_low"] > 0
    assert s["bac_difference"]["estimate"] > 0.15 and s["bac_difference"]["ci_low"] > 0
    assert s["bac_difference"]["p_value"] == pytest.approx(1 / 501)   # the floor
    assert s["auc_difference"]["ci_low"] > 0
    assert s["slope_reference_arm"]["p_value"] > 0.05                  # saline: nothing
    assert "predicts response to ketamine specifically" in res.interpretation
    assert list(res.by_arm.columns) == BY_ARM_COLUMNS
    assert list(res.table.columns) == TABLE_COLUMNS
    assert {"bac_difference", "auc_difference", "interaction_log_odds"} <= set(
        res.table["analysis"])


def test_prognostic_effect_in_both_arms_gives_no_interaction():
    y, d, arm = two_arms(0, treatment_slope=2.0, reference_slope=2.0)
    res = specificity_analysis(y, d, arm, treatment_arm="ketamine", reference_arm="saline",
                               n_bootstrap=500, n_permutations=500, random_state=4)
    s = res.as_dict()
    assert s["interaction_log_odds"]["p_value"] > 0.05
    assert s["interaction_log_odds"]["ci_low"] < 0 < s["interaction_log_odds"]["ci_high"]
    assert s["slope_reference_arm"]["p_value"] < 0.001       # prognostic
    assert "does not show" in res.interpretation and "prognostic marker fits" in \
        res.interpretation


def test_interaction_p_is_calibrated_under_a_prognostic_null():
    """Type I error of the likelihood-ratio interaction test at 5 %: 400 prognostic cohorts."""
    p = np.array([interaction_test(*_as_indicator(*two_arms(k, n=100, treatment_slope=1.5,
                                                            reference_slope=1.5)))
                  ["interaction_log_odds"]["p_value"] for k in range(400)])
    assert 0.025 <= np.mean(p < 0.05) <= 0.08


def _as_indicator(y, d, arm):
    return y, d, arm == "ketamine"


def test_per_arm_metrics_and_differences_equal_direct_computation():
    y, d, arm = two_arms(3, n=60)
    res = specificity_analysis(y, d, arm, treatment_arm="ketamine", reference_arm="saline",
                               n_bootstrap=300, n_permutations=300, random_state=1)
    rows = res.by_arm.set_index("arm")
    for name in ("ketamine", "saline"):
        sel = arm == name
        direct = classification_metrics(y[sel], d[sel], random_state=1, n_bootstrap=300)
        bac = direct[direct.metric == "bac"].iloc[0]
        assert rows.loc[name, "bac"] == pytest.approx(balanced_accuracy(y[sel], d[sel] > 0))
        assert rows.loc[name, "bac_ci_low"] == pytest.approx(bac["ci_low"])
        assert rows.loc[name, "auc"] == pytest.approx(roc_auc(y[sel], d[sel]))
        assert rows.loc[name, "n_predicted_responders"] == int((d[sel] > 0).sum())
        assert rows.loc[name, "n_responders"] == int(y[sel].sum())
    table = res.table.set_index("analysis")
    k, s = arm == "ketamine", arm == "saline"
    assert table.loc["bac_difference", "estimate"] == pytest.approx(
        balanced_accuracy(y[k], d[k] > 0) - balanced_accuracy(y[s], d[s] > 0))
    assert table.loc["auc_difference", "estimate"] == pytest.approx(
        roc_auc(y[k], d[k]) - roc_auc(y[s], d[s]))


def test_bootstrap_and_permutations_are_reproducible_with_a_seed():
    y, d, arm = two_arms(5, n=40, treatment_slope=1.0)
    t = arm == "ketamine"
    a = arm_differences(y, d, t, n_bootstrap=200, n_permutations=200, random_state=7)
    b = arm_differences(y, d, t, n_bootstrap=200, n_permutations=200, random_state=7)
    c = arm_differences(y, d, t, n_bootstrap=200, n_permutations=200, random_state=8)
    for key in ("bac_difference", "auc_difference"):
        np.testing.assert_array_equal(a[key]["null"], b[key]["null"])
        np.testing.assert_array_equal(a[key]["boot"], b[key]["boot"])
        assert a[key]["p_value"] == b[key]["p_value"]
        assert not np.array_equal(a[key]["null"], c[key]["null"])
    # the permutation keeps each arm's numbers of responders: the null BAC difference is
    # centred on 0
    assert abs(np.mean(a["bac_difference"]["null"])) < 0.03


def test_interval_and_p_of_the_interaction_agree_and_firth_keeps_power_under_separation():
    """The profile-likelihood interval excludes 0 exactly when the likelihood-ratio p < 0.05,
    for maximum likelihood and for Firth; a demo-sized trial whose ketamine arm is perfectly
    separated (20 + 20, 4 saline responders) still shows the interaction (the penalised
    null model keeps the full design's penalty: dropping the column instead gave p = 1)."""
    for seed in range(12):
        y, d, arm = two_arms(seed, n=40, treatment_slope=1.5)
        r = interaction_test(y, d, arm == "ketamine")["interaction_log_odds"]
        assert (r["ci_low"] > 0 or r["ci_high"] < 0) == (r["p_value"] < 0.05), seed
        assert r["ci_low"] < r["estimate"] < r["ci_high"]
    rng = np.random.default_rng(0)
    y = np.r_[np.repeat([1, 0], [9, 11]), np.repeat([1, 0], [4, 16])]
    d = np.r_[np.where(y[:20] == 1, 1.0, -1.0) + rng.normal(0, 0.3, 20), rng.normal(size=20)]
    r = interaction_test(y, d, np.arange(40) < 20)
    assert r["method"] == "Firth"
    i = r["interaction_log_odds"]
    assert i["p_value"] < 0.05 and 0 < i["ci_low"] < i["estimate"] < i["ci_high"]


def test_separation_in_the_treatment_arm_and_a_one_class_arm():
    rng = np.random.default_rng(0)
    d = rng.normal(size=40)
    arm = np.repeat(["ketamine", "saline"], 20)
    y = np.where(arm == "ketamine", d > 0, rng.random(40) < 0.4).astype(int)  # separated
    res = specificity_analysis(y, d, arm, treatment_arm="ketamine", reference_arm="saline",
                               n_bootstrap=100, n_permutations=100)
    assert res.settings["logistic_method"] == "Firth"
    assert np.isfinite(res.as_dict()["interaction_log_odds"]["estimate"])
    y1 = np.where(arm == "saline", 0, y)                    # saline: no responder
    res = specificity_analysis(y1, d, arm, treatment_arm="ketamine", reference_arm="saline",
                               n_bootstrap=100, n_permutations=100)
    assert np.isnan(res.by_arm.set_index("arm").loc["saline", "bac"])
    assert res.as_dict()["interaction_log_odds"]["p_value"] is None
    with pytest.raises(ValueError, match="arms must be"):
        specificity_analysis(y, d, np.where(arm == "saline", "placebo", arm),
                             treatment_arm="ketamine", reference_arm="saline")


def test_interpretation_names_which_test_found_what():
    """BAC difference significant, interaction not (the demo-sized case): the sentence says the
    evidence rests on the classification, never that nothing was shown."""
    import pandas as pd

    from ketabids.group.specificity import TABLE_COLUMNS, interpret

    def table(bac_p, inter_p, inter_high):
        rows = [("bac_difference", 0.47, 0.22, 0.66, bac_p),
                ("auc_difference", 0.41, 0.14, 0.70, 0.005),
                ("interaction_log_odds", 1.7, -2.9, inter_high, inter_p),
                ("slope_treatment_arm", 2.8, 0.6, 5.1, 0.01),
                ("slope_reference_arm", 1.2, -3.0, 5.3, 0.58)]
        return pd.DataFrame([(*r, "") for r in rows], columns=TABLE_COLUMNS)

    by_arm = pd.DataFrame({"n": [20, 20], "n_responders": [9, 4], "n_nonresponders": [11, 16]})
    text = interpret(table(0.01, 0.47, 6.7), by_arm, treatment_arm="ketamine",
                     reference_arm="saline")
    assert text.startswith("The model classifies the ketamine arm better than the saline arm")
    assert "does not show" not in text and "rests on the classification" in text
    assert "only 4 participants" in text
    text = interpret(table(0.31, 0.47, 0.3), by_arm, treatment_arm="ketamine",
                     reference_arm="saline")
    assert text.startswith("This sample does not show") and "the specificity is small" in text


# ------------------------------------------------------------------------------- the demo
def _demo_decisions(null: bool, effect_size=0.1, seed=0):
    """The demo's cohorts at its default sizes and response rates (``demo_tables``: 40
    discovery, 3/4 ketamine; external trial 30 ketamine + 30 saline, 45 % / 35 % responders) as
    synthetic template-space GM maps (the generator of ``write_synthetic_derivatives``; effect
    0.1, about what the participant level recovers of the demo's 0.2); the group level's final
    model (default grid, kernel scaling) trained on the discovery ketamine arm; its decision
    values on the external trial."""
    from ketabids.demo.cohort import DemoDesign, demo_tables
    from ketabids.demo.participants import planted_label
    from ketabids.demo.phantom import simulate_template_gm, subject_rng, template_maps
    from ketabids.group.labels import is_response
    from ketabids.group.nested import NestedCVSettings, fit_final_model
    from ketabids.templates import get_template

    tables = demo_tables(DemoDesign(n_external_saline=30), seed=seed)
    template = get_template(resolution=2)
    mask = template_maps(template)[0]["gm"] > 0.2
    null_rng = np.random.default_rng([seed, 7919])

    def cohort(table):
        X = np.stack([simulate_template_gm(
            template, seed=subject_rng(seed, row.participant_id), effect_size=effect_size,
            responder=planted_label(row._asdict(), null=null, rng=null_rng), age=row.age,
            site=row.site)[mask] for row in table.itertuples()])
        return X, np.asarray(is_response(table.madrs_pre, table.madrs_24h)).astype(int)

    disc = tables["discovery"]
    X, y = cohort(disc[disc.arm == "ketamine"])
    model = fit_final_model(X, y, settings=NestedCVSettings(n_inner=5))
    trial = tables["external"]
    Xe, ye = cohort(trial)
    return ye, model.decision_function(Xe), trial.arm.to_numpy()


@pytest.mark.slow
def test_demo_trial_detects_the_ketamine_specific_effect_and_not_the_null():
    """Known truth at the demo's default sizes: the planted effect is ketamine-only, so the
    decision x arm interaction is detected (p < 0.05); with ``--null`` (images unrelated to
    response) it is not."""
    y, d, arm = _demo_decisions(null=False)
    assert (arm == "saline").sum() == 30 and y[arm == "saline"].sum() == round(0.35 * 30)
    inter = interaction_test(y, d, arm == "ketamine")["interaction_log_odds"]
    print(f"demo trial: interaction {inter}")
    assert inter["p_value"] < 0.05 and inter["estimate"] > 0
    y, d, arm = _demo_decisions(null=True)
    null = interaction_test(y, d, arm == "ketamine")["interaction_log_odds"]
    print(f"demo trial, --null: interaction {null}")
    assert null["p_value"] >= 0.05
