"""Site-robust validation: CV schemes, a C that is chosen, per-site metrics and the audit.

Known truth on generated cohorts: a site-confounded cohort (one site's scanner shifts GM and
that site carries most responders, no response effect) scores well under stratified CV, falls
to chance when sites are left out, and the audit says so; a planted response effect that is
the same at every site survives leave-site-out; QC metrics that carry the label are caught.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ketabids.errors import UsageError
from ketabids.group.audit import decision_associations, metrics_by_site, run_audit
from ketabids.group.nested import (
    CVData,
    NestedCVSettings,
    c_selection_summary,
    check_scheme,
    nested_cv,
)

SETTINGS = dict(n_repeats=2, n_outer=5, n_inner=3, random_state=1)


def _sites(n, k):
    return np.array([f"s{i % k}" for i in range(n)])


def test_parser_choices_are_the_engine_schemes():
    from ketabids.cli.parser import OUTER_SCHEMES as parser_schemes
    from ketabids.group.cv import OUTER_SCHEMES

    assert parser_schemes == OUTER_SCHEMES


def test_metrics_by_site_known_values():
    y = np.array([1, 1, 0, 0, 1, 1, 1, 1])
    sites = np.array(["a"] * 4 + ["b"] * 4)
    dec = np.array([2.0, 1.0, -1.0, -2.0, 1.0, -1.0, 3.0, 2.0])
    t = metrics_by_site(y, dec, sites).set_index("site")
    assert list(t.columns) == ["n", "n_responders", "n_nonresponders", "bac", "bac_ci_low",
                               "bac_ci_high", "auc", "auc_ci_low", "auc_ci_high"]
    assert (t.loc["a", "bac"], t.loc["a", "auc"]) == (1.0, 1.0)
    assert t.loc["a", "n_responders"] == 2 and t.loc["a", "n_nonresponders"] == 2
    # one class at site b: BAC = recall of that class (3 of 4), no AUC, no interval
    assert t.loc["b", "bac"] == 0.75 and np.isnan(t.loc["b", "auc"])
    assert np.isnan(t.loc["b", "bac_ci_low"])
    # (R, n) out-of-fold decisions are pooled over repeats
    t2 = metrics_by_site(y, np.stack([dec, -dec]), sites).set_index("site")
    assert t2.loc["a", "bac"] == 0.5 and t2.loc["b", "bac"] == 0.5


def test_decision_associations_are_beyond_the_label(rng):
    n = 200
    y = np.repeat([0, 1], n // 2)
    tiv = rng.normal(1500, 100, n) + 80 * y          # differs by class only
    cjv = rng.normal(0.4, 0.05, n)
    decision = 2.0 * y - 1 + 0.02 * (cjv - 0.4) / 0.05 * 10 + 0.1 * rng.standard_normal(n)
    rows = {r["check"]: r for r in decision_associations(
        decision, y, pd.DataFrame({"tiv": tiv, "cjv": cjv, "sex": ["M", "F"] * (n // 2)}))}
    assert rows["decision_vs_cjv"]["value"] > 0.8 and rows["decision_vs_cjv"]["p"] < 1e-10
    assert abs(rows["decision_vs_tiv"]["value"]) < 0.2      # a class difference is not counted
    assert "decision_vs_sex" in rows


def _confounded(rng, n=120, p=2000, shift=1.0):
    """Two sites; site B's scanner shifts 300 voxels and B holds 80 % of the responders; no
    response effect in the images."""
    sites = np.array(["A"] * (n // 2) + ["B"] * (n // 2))
    y = np.r_[np.arange(n // 2) < 0.2 * n / 2, np.arange(n // 2) < 0.8 * n / 2].astype(int)
    X = rng.standard_normal((n, p))
    X[sites == "B", :300] += shift
    return X, y, sites


def test_site_confounded_cohort_is_caught(rng):
    X, y, sites = _confounded(rng)
    settings = NestedCVSettings(**SETTINGS)
    res = nested_cv(X, y, sites=sites, settings=settings)
    assert res.bac_pooled > 0.7                      # stratified CV: a "good" classifier
    variables = pd.DataFrame({"age": rng.normal(45, 10, y.size)})
    table, warnings, extra = run_audit(CVData(X, y, sites=sites), result=res, settings=settings,
                                       variables=variables)
    rows = table.set_index("check")
    loso = rows.loc["leave_site_out_bac"]
    # at or below chance: trained on one site, each held-out site gets its scanner's prediction
    assert loso["value"] <= 0.55 and loso["status"] == "warn"
    assert rows.loc["site_predictability", "status"] == "warn"
    assert rows.loc["site_predictability", "reference"] == 0.5       # chance, stated
    assert rows.loc["response_rate_by_site", "status"] == "warn"
    assert any(w.startswith("Leave-site-out balanced accuracy") for w in warnings)
    assert extra["leave_site_out"].fold_of.shape == (1, y.size)


def test_unconfounded_effect_survives_leave_site_out(rng):
    n, p = 120, 2000
    sites = _sites(n, 3)
    y = np.tile(np.repeat([0, 1], 2), n // 4)         # balanced within every site
    X = rng.standard_normal((n, p))
    X[:, :200] += 0.4 * (2 * y[:, None] - 1)         # the same effect at every site
    X += 0.3 * rng.standard_normal((3, p))[np.arange(n) % 3]    # scanner offsets
    settings = NestedCVSettings(**SETTINGS)
    res = nested_cv(X, y, sites=sites, settings=settings)
    table, warnings, _ = run_audit(CVData(X, y, sites=sites), result=res, settings=settings)
    loso = table.set_index("check").loc["leave_site_out_bac"]
    assert loso["value"] > 0.8 and loso["status"] == "pass"
    assert table.set_index("check").loc["response_rate_by_site", "status"] == "pass"
    assert not any("Leave-site-out" in w for w in warnings)
    # the scheme itself: whole sites held out, labels permuted within sites
    loso_res = nested_cv(X, y, sites=sites, settings=NestedCVSettings(
        **SETTINGS, scheme="leave-site-out"))
    assert loso_res.fold_of.shape == (1, n) and loso_res.bac_pooled > 0.8
    for o in range(3):
        assert np.unique(sites[loso_res.fold_of[0] == o]).size == 1


def test_qc_metrics_that_predict_response_are_flagged(rng):
    n, p = 100, 500
    y = np.repeat([0, 1], n // 2)
    X = rng.standard_normal((n, p))
    X[:, :50] += 0.5 * (2 * y[:, None] - 1)
    qc = pd.DataFrame({"cjv": 0.4 + 0.05 * y + 0.02 * rng.standard_normal(n),
                       "cnr": rng.normal(3, 0.3, n)})
    settings = NestedCVSettings(**SETTINGS)
    res = nested_cv(X, y, settings=settings)
    table, warnings, _ = run_audit(CVData(X, y), result=res, settings=settings, qc=qc)
    row = table.set_index("check").loc["qc_covariates_only_bac"]
    assert row["value"] > 0.75 and row["status"] == "warn" and "cjv, cnr" in row["detail"]
    assert any("QC metrics and covariates alone" in w for w in warnings)
    # no site column: leave-site-out is stated as not possible, not silently absent
    assert table.set_index("check").loc["leave_site_out_bac", "status"] == "info"


def test_audit_on_the_training_kernel_equals_the_audit_on_its_own(rng):
    """The training shares its X X^T with the permutations and the audit (and the audit's QC
    nested CV skips scikit-learn's input checks): every number equals a computation from
    scratch, check by check."""
    from ketabids.group.audit import _numeric_matrix, site_predictability
    from ketabids.group.estimator import linear_kernel
    from ketabids.group.permutation import permutation_test

    n, p = 60, 800
    sites = _sites(n, 3)
    y = np.tile([0, 1, 1, 0, 0], n // 5)
    X = rng.standard_normal((n, p)) + 0.4 * rng.standard_normal((3, p))[np.arange(n) % 3]
    X[:, :80] += 0.3 * (2 * y[:, None] - 1)
    cov = rng.normal(45, 10, (n, 1))
    variables = pd.DataFrame({"age": cov[:, 0], "sex": rng.choice(["F", "M"], n)})
    qc = pd.DataFrame({"cjv": rng.normal(0.4, 0.05, n), "cnr": rng.normal(3, 0.3, n)})
    settings = NestedCVSettings(**SETTINGS)
    gram = linear_kernel(X)
    kw = dict(covariates=cov, sites=sites, settings=settings)
    res = nested_cv(X, y, gram=gram, **kw)
    assert np.array_equal(res.decision, nested_cv(X, y, **kw).decision)
    data, with_gram = CVData(X, y, covariates=cov, sites=sites), CVData(
        X, y, covariates=cov, sites=sites, gram=gram)
    perm = dict(n_permutations=3, observed=res, settings=settings)
    assert np.array_equal(permutation_test(with_gram, **perm).null_bac,
                          permutation_test(data, **perm).null_bac)
    table, _, _ = run_audit(with_gram, result=res, variables=variables, qc=qc,
                            settings=settings)
    rows = table.set_index("check")["value"]
    loso = nested_cv(X, y, covariates=cov, sites=sites,
                     settings=NestedCVSettings(**SETTINGS, scheme="leave-site-out"))
    assert rows["leave_site_out_bac"] == loso.bac_pooled
    assert rows["site_predictability"] == site_predictability(
        X, sites, covariates=cov, n_folds=settings.n_outer)["bac"]
    Q, _ = _numeric_matrix(pd.concat([variables, qc], axis=1))
    qres = nested_cv(Q, y, sites=sites, settings=NestedCVSettings(
        **{**SETTINGS, "n_repeats": 1}, standardize=True))
    assert rows["qc_covariates_only_bac"] == qres.bac_pooled
    assert table.equals(run_audit(data, result=res, variables=variables, qc=qc,
                                  settings=settings)[0])


def test_kernel_scaling_makes_the_c_grid_choose():
    """VBM-like features (p >> n, GM fractions ~0.5 +- 0.05): unscaled, every C of the default
    grid is the hard-margin solution (flat inner curves, lower edge, warning); scaled, the
    grid spans the regularisation path."""
    rng = np.random.default_rng(0)
    n, p, k = 60, 20000, 50
    y = np.repeat([0, 1], n // 2)
    anatomy = rng.standard_normal((n, k)) @ (0.05 * rng.standard_normal((k, p))) * 3 / k ** 0.5
    X = 0.5 + anatomy + 0.05 * rng.standard_normal((n, p))     # correlated, as smoothed GM
    X[:, :2000] += 0.01 * (2 * y[:, None] - 1)
    unscaled = nested_cv(X, y, settings=NestedCVSettings(**SETTINGS, scale_kernel=False))
    summary = c_selection_summary(unscaled)
    assert summary["share_flat_inner_curve"] > 0.5 and "--raw-c-grid" in summary["warning"]
    scaled = nested_cv(X, y, settings=NestedCVSettings(**SETTINGS, scale_kernel=True))
    summary = c_selection_summary(scaled, kernel_scale=1.0)
    assert summary["share_flat_inner_curve"] < 0.5 and summary["share_lower_edge"] < 0.5
    assert summary["warning"] is None
    assert set(scaled.folds.columns) >= {"at_lower_edge", "at_upper_edge", "flat_inner_curve",
                                         "n_best_C"}


def test_schemes_refused_with_the_largest_valid_value(rng):
    y = np.tile([0, 1], 30)
    sites = _sites(60, 3)
    with pytest.raises(UsageError, match="use --n-outer 3 or less"):
        check_scheme(y, sites, NestedCVSettings(n_outer=5, scheme="group-kfold"))
    with pytest.raises(UsageError, match=r"use --n-inner 2 or less"):
        check_scheme(y, sites, NestedCVSettings(n_outer=3, n_inner=3, scheme="group-kfold"))
    with pytest.raises(UsageError, match="at least 2 sites"):
        check_scheme(y, np.array(["a"] * 60), NestedCVSettings(scheme="leave-site-out"))
    with pytest.raises(UsageError, match="needs the site"):
        check_scheme(y, None, NestedCVSettings(scheme="leave-site-out"))
    one_class_site = np.where(y == 1, "a", "b")
    with pytest.raises(UsageError, match="only one class is left"):
        check_scheme(y, one_class_site, NestedCVSettings(scheme="leave-site-out"))
    check_scheme(y, sites, NestedCVSettings(n_outer=3, n_inner=2, scheme="group-kfold"))
    # two sites: leave-site-out trains on one site; its inner CV falls back to stratified folds
    check_scheme(y, np.repeat(["a", "b"], 30), NestedCVSettings(scheme="leave-site-out"))


def test_fold_counts_checked_on_the_engines_own_partitions(rng):
    """Counting the smaller class per outer training set is not enough: stratified by site, the
    deal can leave an inner training set with one class (the engine then failed). The check
    draws the engine's partitions and names fold counts that work; those train."""
    y = np.array([1] * 4 + [0] * 6)
    sites = np.array(["A", "B"] * 5)
    settings = NestedCVSettings(n_repeats=10, n_outer=4, n_inner=2, random_state=29)
    _, inner = __import__("ketabids.group.nested", fromlist=["make_scheme"]).make_scheme(
        y, sites, settings)
    one_class = [(r, o) for r in range(10) for o in range(4) for i in range(2)
                 if np.unique(y[(inner[r, o] >= 0) & (inner[r, o] != i)]).size < 2]
    assert one_class                                   # the case is real
    with pytest.raises(UsageError, match=r"^--n-inner 2: an inner training set \(repeat "
                       r"\d+, outer fold \d+\) holds participants of one class only .*; use "
                       r"--n-outer 3 --n-inner 2$"):
        check_scheme(y, sites, settings)
    with pytest.raises(UsageError, match=r"use --n-inner 2 \(the largest that works\)$"):
        check_scheme(y, sites, NestedCVSettings(n_repeats=10, n_outer=3, n_inner=3,
                                                random_state=29))
    fixed = NestedCVSettings(n_repeats=10, n_outer=3, n_inner=2, random_state=29)
    check_scheme(y, sites, fixed)
    X = rng.standard_normal((10, 30))
    assert nested_cv(X, y, sites=sites, settings=fixed).decision.shape == (10, 10)


def test_permutations_stay_within_groups(rng):
    from ketabids.group.permutation import permutation_test

    X, y, sites = _confounded(rng, n=60, p=300)
    cohorts = np.where(np.arange(60) % 2 == 0, "c1", "c2")
    settings = NestedCVSettings(n_repeats=1, n_outer=2, n_inner=2, scheme="group-kfold",
                                C_grid=(0.25, 1.0))
    seen = []
    import ketabids.group.permutation as perm_mod

    original = perm_mod.permute_within

    def spy(labels, groups, rng_):
        seen.append(np.asarray(groups).copy())
        return original(labels, groups, rng_)

    perm_mod.permute_within = spy
    try:
        permutation_test(CVData(X, y, sites=sites, groups=cohorts), settings=settings,
                         n_permutations=3)
    finally:
        perm_mod.permute_within = original
    assert len(seen) == 3 and all((g == cohorts).all() for g in seen)


# ---------------------------------------------------------------------------------------------
# through run_group_train / run_group_predict on synthetic derivatives
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_and_predict_write_audit_site_metrics_and_c_selection(tmp_path):
    from ketabids.demo.derivatives import write_synthetic_derivatives
    from ketabids.demo.participants import make_participants_table
    from ketabids.group.dictionaries import sidecar_for
    from ketabids.group.labels import is_response
    from ketabids.group.predict import run_group_predict
    from ketabids.group.train import run_group_train

    table = make_participants_table(80, seed=5, ketamine_response_rate=0.5)
    resp = np.array([bool(is_response(a, b, 0.5)) for a, b in
                     zip(table["madrs_pre"], table["madrs_24h"])])
    order = np.argsort(np.arange(80) % 5)            # 80 % of responders at site B
    site = np.where(resp, np.where(order % 5 < 4, "B", "A"), np.where(order % 5 < 1, "B", "A"))
    table["site"] = site
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "confounded", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    out = tmp_path / "out"
    write_synthetic_derivatives(bids, out, seed=5, null=True, site_effect=0.15)
    summary = run_group_train(
        bids_dir=bids, output_dir=out, response_from=("madrs_pre", "madrs_24h"),
        site_column="site", covariates=["age", "sex"], n_repeats=2, n_outer=5, n_inner=3,
        n_permutations=9, progress=False, seed=2)
    folder = out / "group" / "train"
    for name in ("audit", "metrics_by_site"):
        assert (folder / f"{name}.tsv").is_file() and (folder / f"{name}.json").is_file()
        columns = pd.read_csv(folder / f"{name}.tsv", sep="\t").columns
        assert set(json.loads((folder / f"{name}.json").read_text())) == set(columns)
        assert sidecar_for(f"{name}.tsv", columns=list(columns))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["cv_scheme"]["outer"] == "stratified"
    assert metrics["c_selection"]["kernel_scale"] > 0             # scaled unless --raw-c-grid
    assert set(metrics["c_selection"]) >= {"grid", "share_lower_edge", "share_upper_edge",
                                           "share_flat_inner_curve", "warning"}
    assert summary["bac_pooled"] > 0.65                       # site, not response
    assert summary["leave_site_out"]["estimate"] < 0.62
    assert metrics["audit_warnings"] and metrics["audit_warnings"] == summary["audit_warnings"]
    audit = pd.read_csv(folder / "audit.tsv", sep="\t", keep_default_na=False)
    assert set(audit["status"]) <= {"pass", "warn", "info"}
    assert {"leave_site_out_bac", "site_predictability", "decision_vs_site", "decision_vs_age",
            "qc_covariates_only_bac"} <= set(audit["check"])
    folds = pd.read_csv(folder / "cv_folds.tsv", sep="\t")
    # C at the lower edge in most folds is never silent
    assert folds["at_lower_edge"].mean() <= 0.5 or metrics["c_selection"]["warning"]
    assert metrics["c_selection"]["share_lower_edge"] == folds["at_lower_edge"].mean()
    by_site = pd.read_csv(folder / "metrics_by_site.tsv", sep="\t")
    assert list(by_site["site"]) == ["A", "B"] and by_site["n"].sum() == 80
    # leave-site-out as the headline scheme, from the same command
    loso = run_group_train(
        bids_dir=bids, output_dir=out, response_from=("madrs_pre", "madrs_24h"),
        site_column="site", n_repeats=2, n_outer=5, n_inner=3, n_permutations=9,
        progress=False, seed=2, outer_cv="leave-site-out", overwrite=True, audit=False)
    assert loso["cv_scheme"]["n_groups"] == 2 and loso["cv_scheme"]["n_repeats"] == 1
    assert not (folder / "audit.tsv").exists()
    with pytest.raises(UsageError, match="--group-column"):
        run_group_train(bids_dir=bids, output_dir=out, response_from=("madrs_pre", "madrs_24h"),
                        group_column="site", overwrite=True)
    # prediction with the model's site column: metrics_by_site.tsv too
    pred = run_group_predict(bids_dir=bids, output_dir=out, model=loso["model"],
                             n_permutations=9, name="self")
    ptable = pd.read_csv(out / "group" / "predict-self" / "metrics_by_site.tsv", sep="\t")
    assert list(ptable["site"]) == ["A", "B"] and pred["labelled"]
    assert (out / "group" / "predict-self" / "metrics_by_site.json").is_file()


def test_demo_table_has_a_leave_site_out_row(rng):
    """The demo's results table shows the audit's leave-site-out row (no paper figure)."""
    from ketabids.cli.demo import results_table
    from ketabids.group.metrics import classification_metrics, headline_metric

    y = np.array([0, 1] * 10)
    h = headline_metric(classification_metrics(y, rng.normal(size=20) + y),
                        aggregation="single", y=y)
    lines = results_table({"discovery (nested CV)": h,
                           "discovery leave-site-out": h}).splitlines()
    assert lines[3].startswith("discovery leave-site-out")
    assert lines[3].endswith("| not reported")


def test_cli_passes_the_cv_options_and_refuses_them_with_a_model():
    from ketabids.cli.app import build_config, check_mode_options
    from ketabids.cli.parser import get_parser

    parser = get_parser()
    opts = parser.parse_args(["bids", "out", "group", "--outer-cv", "group-kfold",
                              "--group-column", "cohort", "--raw-c-grid", "--skip-audit"])
    check_mode_options(opts, parser)
    seen = build_config(opts, bids_dir="bids", output_dir="out", subjects=[], sessions=None)
    assert (seen.outer_cv, seen.group_column, seen.scale_kernel, seen.audit) == \
        ("group-kfold", "cohort", False, False)
    for extra in (["--outer-cv", "leave-site-out"], ["--group-column", "c"], ["--raw-c-grid"]):
        with pytest.raises(UsageError, match="applies to training"):
            check_mode_options(parser.parse_args(["b", "o", "group", "--model", "m.skops",
                                                  *extra]), parser)
        with pytest.raises(UsageError, match="group level only"):
            check_mode_options(parser.parse_args(["b", "o", "participant", *extra]), parser)
