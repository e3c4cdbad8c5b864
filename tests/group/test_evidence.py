"""Treatment specificity, decision curves and calibration in real group runs (train + predict)
on synthetic derivatives with a ketamine-only planted effect, and the --arm-column errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from ketabids.errors import UsageError
from ketabids.group.predict import run_group_predict
from ketabids.group.train import run_group_train

pytestmark = pytest.mark.slow

EFFECT = 0.05
LABEL = dict(response_from=("madrs_pre", "madrs_24h"))


def make_study(root, table, *, seed, null=False):
    """A raw BIDS folder (participants.tsv only) and its synthetic derivatives."""
    from ketabids.demo.derivatives import write_synthetic_derivatives

    bids = root / "bids"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "synthetic", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    out = root / "out"
    write_synthetic_derivatives(bids, out, seed=seed, effect_size=EFFECT, null=null)
    return bids, out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on 80 ketamine participants (--include arm=ketamine); a two-arm trial
    (40 ketamine + 40 saline, saline images without effect) and its null twin."""
    from ketabids.demo.participants import make_participants_table

    root = tmp_path_factory.mktemp("evidence")
    disc = make_participants_table(100, seed=31, saline_fraction=0.2, site="A")
    bids, out = make_study(root / "discovery", disc, seed=31)
    summary = run_group_train(bids_dir=bids, output_dir=out, include=["arm=ketamine"],
                              n_repeats=2, n_outer=4, n_inner=3, c_grid=[2.0 ** -6, 1.0],
                              n_permutations=0, seed=1, progress=False, **LABEL)
    trial = make_participants_table(80, seed=32, saline_fraction=0.5, site="C",
                                    label_prefix="trial", saline_response_rate=0.45)
    trial_bids, trial_out = make_study(root / "trial", trial, seed=32)
    null_bids, null_out = make_study(root / "null", trial, seed=32, null=True)
    return {"summary": summary, "train": out / "group" / "train", "model": summary["model"],
            "trial": (trial_bids, trial_out), "null": (null_bids, null_out)}


def test_training_writes_the_out_of_fold_decision_curve(trained):
    train = trained["train"]
    curve = pd.read_csv(train / "decision_curve.tsv", sep="\t")
    assert list(curve.columns) == ["threshold", "net_benefit_model", "net_benefit_treat_all",
                                   "net_benefit_treat_none"]
    assert len(curve) == 99 and curve["threshold"].iloc[0] == 0.01
    prevalence = trained["summary"]["n_responders"] / trained["summary"]["n_subjects"]
    assert curve["net_benefit_treat_all"].iloc[0] == pytest.approx(
        prevalence - (1 - prevalence) / 99, abs=1e-5)
    # a model that works beats both references somewhere in the middle
    mid = curve[(curve.threshold >= 0.3) & (curve.threshold <= 0.6)]
    assert (mid.net_benefit_model > mid[["net_benefit_treat_all",
                                         "net_benefit_treat_none"]].max(axis=1)).any()
    sidecar = json.loads((train / "decision_curve.json").read_text())
    assert set(sidecar) == set(curve.columns)


def test_two_arm_prediction_detects_treatment_specificity(trained, tmp_path):
    bids, out = trained["trial"]
    s = run_group_predict(bids_dir=bids, output_dir=out, model=trained["model"],
                          arm_column="arm", n_permutations=200, seed=2, **LABEL)
    folder = out / "group" / "predict-bids"
    for name in ("metrics_by_arm", "specificity", "decision_curve"):
        assert (folder / f"{name}.tsv").is_file() and (folder / f"{name}.json").is_file()
    by_arm = pd.read_csv(folder / "metrics_by_arm.tsv", sep="\t").set_index("arm")
    assert list(by_arm.index) == ["ketamine", "saline"]   # inferred from the model's rule
    assert by_arm.loc["ketamine", "bac"] > 0.7 and by_arm.loc["ketamine", "n"] == 40
    assert by_arm.loc["saline", "bac_ci_low"] < 0.5 < by_arm.loc["saline", "bac_ci_high"]
    table = pd.read_csv(folder / "specificity.tsv", sep="\t").set_index("analysis")
    assert table.loc["interaction_log_odds", "p_value"] < 0.05
    assert table.loc["bac_difference", "estimate"] > 0.15
    assert table.loc["bac_difference", "p_value"] < 0.05
    metrics = json.loads((folder / "metrics.json").read_text())
    spec = metrics["specificity"]
    assert (spec["treatment_arm"], spec["reference_arm"]) == ("ketamine", "saline")
    assert "predicts response to ketamine specifically" in spec["interpretation"]
    assert s["specificity"]["interaction_log_odds"]["p_value"] == pytest.approx(
        table.loc["interaction_log_odds", "p_value"], rel=1e-5)
    for key in ("calibration_in_the_large", "calibration_slope"):
        assert set(metrics[key]) == {"value", "ci_low", "ci_high"}
        assert metrics[key]["ci_low"] <= metrics[key]["value"] <= metrics[key]["ci_high"]
    assert any("pools both arms" in note for note in metrics["notes"])


def test_null_trial_detects_no_specificity(trained):
    bids, out = trained["null"]
    run_group_predict(bids_dir=bids, output_dir=out, model=trained["model"], arm_column="arm",
                      treatment_arm="ketamine", n_permutations=200, seed=2, **LABEL)
    table = pd.read_csv(out / "group" / "predict-bids" / "specificity.tsv",
                        sep="\t").set_index("analysis")
    assert table.loc["interaction_log_odds", "p_value"] > 0.05
    assert table.loc["bac_difference", "p_value"] > 0.05


def test_arm_options_are_checked_before_any_work(trained):
    bids, out = trained["trial"]
    common = dict(bids_dir=bids, output_dir=out, model=trained["model"], **LABEL)
    with pytest.raises(UsageError, match=r"trained on participants with arm=ketamine, so "
                                         r"ketamine is the treatment arm"):
        run_group_predict(arm_column="arm", treatment_arm="saline", **common)
    with pytest.raises(UsageError, match=r"--arm-column group: .*no such column; available"):
        run_group_predict(arm_column="group", **common)
    with pytest.raises(UsageError, match="analysed have 1 \\(ketamine\\)"):
        run_group_predict(arm_column="arm", include=["arm=ketamine"], **common)
    with pytest.raises(UsageError, match="needs labels"):
        _predict_without_labels(bids, out, trained["model"])
    with pytest.raises(UsageError, match="give --arm-column too"):
        run_group_predict(treatment_arm="ketamine", **common)


def _predict_without_labels(bids, out, model):
    """participants.tsv without the label columns: --arm-column is refused."""
    import shutil

    nolabel = bids.parent / "nolabel"
    if not nolabel.exists():
        shutil.copytree(bids, nolabel)
        table = pd.read_csv(nolabel / "participants.tsv", sep="\t")
        table.drop(columns=["madrs_pre", "madrs_24h"]).to_csv(nolabel / "participants.tsv",
                                                             sep="\t", index=False)
    run_group_predict(bids_dir=nolabel, output_dir=out, model=model, arm_column="arm")
