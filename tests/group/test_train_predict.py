"""Group level end to end on synthetic cohorts: train, predict, nulls, determinism, user errors.

Cohorts come from ``ketabids.demo.derivatives.write_synthetic_derivatives`` (template-space maps
with a planted frontal/cerebellar effect for ketamine responders, none in the saline arm);
protocols are reduced (2 x 5-fold outer, 3-fold inner, 4 C values) so the whole module runs in
about a minute or two.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ketabids.config import TrainConfig
from ketabids.errors import BadDataError, MissingInputError, NoDataError, UsageError
from ketabids.group import model_io
from ketabids.group.predict import run_group_predict
from ketabids.group.train import run_group_train

pytestmark = pytest.mark.slow

EFFECT = 0.05
PROTOCOL = dict(n_repeats=2, n_outer=5, n_inner=3, c_grid=[2.0 ** -6, 2.0 ** -3, 1.0, 8.0])
TRAIN = dict(response_from=("madrs_pre", "madrs_24h"), include=["arm=ketamine"],
             covariates=["age", "sex", "tiv"], site_column="site", seed=3, **PROTOCOL)


def make_study(root, table, *, seed, site_effect=0.02):
    """A raw BIDS folder (participants.tsv only) and its synthetic derivatives."""
    from ketabids.demo.derivatives import write_synthetic_derivatives

    bids = root / "bids"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "synthetic", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    out = root / "out"
    write_synthetic_derivatives(bids, out, seed=seed, effect_size=EFFECT,
                                site_effect=site_effect)
    return bids, out


def make_atlas(root):
    """A 2-region atlas on the template's 1 mm grid: 1 = frontal, 2 = cerebellar effect zone."""
    import nibabel as nib

    from ketabids.demo.phantom import effect_regions
    from ketabids.templates import get_template

    tpl = nib.load(get_template(resolution=1).gm)
    regions = effect_regions(get_template(resolution=1))
    labels = np.zeros(tpl.shape, np.int16)
    labels[regions["frontal"]] = 1
    labels[regions["cerebellar"]] = 2
    nib.save(nib.Nifti1Image(labels, tpl.affine), root / "atlas.nii.gz")
    (root / "atlas.tsv").write_text("index\tname\n1\tfrontal\n2\tcerebellar\n")
    return root / "atlas.nii.gz", root / "atlas.tsv"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Discovery (100 ketamine + 60 saline, site A), trained once; external cohort (site C)."""
    from ketabids.demo.participants import make_participants_table

    root = tmp_path_factory.mktemp("group")
    disc = make_participants_table(160, seed=21, saline_fraction=60 / 160, site="A",
                                   saline_response_rate=0.45)
    bids, out = make_study(root / "discovery", disc, seed=21)
    ext = make_participants_table(40, seed=22, site="C", label_prefix="ext")
    ext_bids, ext_out = make_study(root / "external", ext, seed=22)
    atlas, atlas_labels = make_atlas(root)
    summary = run_group_train(bids_dir=bids, output_dir=out, n_permutations=19, nprocs=2,
                              progress=False, atlas=atlas, atlas_labels=atlas_labels, **TRAIN)
    return {"bids": bids, "out": out, "ext_bids": ext_bids, "ext_out": ext_out,
            "summary": summary, "root": root}


def test_train_recovers_planted_effect(study):
    s = study["summary"]
    train = study["out"] / "group" / "train"
    assert s["n_subjects"] == 100 and s["n_responders"] == 45 and s["n_excluded"] == 0
    assert s["bac_mean"] >= 0.8 and s["bac_pooled"] >= 0.8 and s["auc"] >= 0.85
    assert s["p_bac"] == pytest.approx(0.05)  # 19 permutations: the smallest p possible
    tables = {"cohort", "cv_predictions", "cv_folds", "metrics", "permutations",
              "calibration", "final_model_decisions", "regions", "tripod_ai",
              "decision_curve", "metrics_by_site", "audit"}
    maps = {"space-MNI152NLin2009aSym_res-2_desc-analysis_mask"} | {
        f"space-MNI152NLin2009aSym_desc-{m}_statmap"
        for m in ("weight", "cvratio", "signconsistency", "pattern", "finalweight")}
    expected = ({"report.html", "ketabids_model.skops", "ketabids_model.json", "metrics.json",
                 "model_card.md"}
                | {f"{t}.tsv" for t in tables} | {f"{m}.nii.gz" for m in maps}
                | {f"{name}.json" for name in tables | maps})  # every table/map: a sidecar
    assert {p.name for p in train.iterdir()} == expected
    folds = pd.read_csv(train / "cv_folds.tsv", sep="\t")
    assert len(folds) == 10 and set(folds["C"]) <= set(PROTOCOL["c_grid"])
    assert len(pd.read_csv(train / "permutations.tsv", sep="\t")) == 19
    manifest = json.loads((train / "ketabids_model.json").read_text())
    assert manifest["covariates"]["columns"] == ["age", "sex[M]", "tiv"]
    assert manifest["features"]["mask_source"] == "template"
    assert manifest["cv"]["cv_hash"] == s["cv_hash"]
    assert manifest["model_sha256"] == model_io.sha256_file(train / "ketabids_model.skops")
    report = (train / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 5  # brain maps: PNG
    assert report.count("data:image/svg+xml;base64,") >= 5  # charts: SVG
    assert "Haufe" in report and 'src="http' not in report
    assert "published" not in report        # the paper's figures belong to the demo table
    assert not any(p.name.startswith(".") for p in (study["out"] / "group").iterdir())
    # wall times differ between identical runs: in the run record, not in the outputs
    assert "timing" not in json.loads((train / "metrics.json").read_text())
    timings = json.loads((Path(s["logs"]) / "timings.json").read_text())
    assert set(timings) == {"features_s", "nested_cv_s", "audit_s"}


def test_region_table_from_atlas(study):
    regions = pd.read_csv(study["out"] / "group" / "train" / "regions.tsv", sep="\t")
    assert list(regions["name"]) in (["frontal", "cerebellar"], ["cerebellar", "frontal"])
    signs = dict(zip(regions["name"], regions["sign"]))
    assert signs == {"frontal": "+", "cerebellar": "-"}
    assert "frontal" in (study["out"] / "group" / "train" / "report.html").read_text()


def test_compatibility_checks():
    from types import SimpleNamespace

    from ketabids.group.cohort import check_compatibility

    manifest = {"template": "MNI152NLin2009aSym",
                "pipeline": {"template": "MNI152NLin2009aSym", "resolution": 2.0,
                             "version": "0.1.0"}}
    ok = SimpleNamespace(pipeline=dict(manifest["pipeline"]))
    assert check_compatibility(manifest, ok, model_path="m") == []
    newer = SimpleNamespace(pipeline={**manifest["pipeline"], "version": "0.2.0"})
    assert "0.2.0" in check_compatibility(manifest, newer, model_path="m")[0]
    finer = SimpleNamespace(pipeline={**manifest["pipeline"], "resolution": 1.0})
    with pytest.raises(BadDataError, match="2.0 mm maps, these are 1.0 mm"):
        check_compatibility(manifest, finer, model_path="m")
    other = SimpleNamespace(pipeline={**manifest["pipeline"], "template": "MNI152NLin6Asym"})
    with pytest.raises(BadDataError, match="--template MNI152NLin2009aSym"):
        check_compatibility(manifest, other, model_path="m")


def test_pattern_map_points_at_planted_regions(study):
    import nibabel as nib

    from ketabids.demo.phantom import effect_regions

    pattern = nib.load(study["out"] / "group" / "train" /
                       "space-MNI152NLin2009aSym_desc-pattern_statmap.nii.gz").get_fdata()
    regions = effect_regions()
    # responders have more frontal and less cerebellar GM
    assert pattern[regions["frontal"]].mean() > 0 > pattern[regions["cerebellar"]].mean()


def test_predict_external_cohort(study):
    s = run_group_predict(bids_dir=study["ext_bids"], output_dir=study["ext_out"],
                          model=study["summary"]["model"], include=["arm=ketamine"],
                          n_permutations=1000, seed=1)
    assert s["labelled"] and s["n_subjects"] == 40
    assert s["bac"] >= 0.70 and s["p_bac"] <= 0.05 and s["p_auc"] <= 0.05
    out = study["ext_out"] / "group" / "predict-bids-arm-ketamine"
    assert s["output_dir"] == str(out)
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert list(pred.columns) == ["participant_id", "decision", "proba", "predicted", "y_true"]
    assert ((pred["decision"] > 0).astype(int) == pred["predicted"]).all()
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert {"bac", "sensitivity", "specificity", "auc", "ppv", "npv", "brier"} <= set(
        metrics["metric"])
    assert metrics[["ci_low", "ci_high"]].notna().all().all()
    report = (out / "report.html").read_text()
    assert "Model provenance" in report and s["model_sha256"] in report


def test_saline_arm_and_null_labels_are_chance(study):
    """Saline arm (no planted effect) with its own labels, then 20 seeded null label draws."""
    import ketabids.group as engine

    s = run_group_predict(bids_dir=study["bids"], output_dir=study["out"],
                          model=study["summary"]["model"], include=["arm=saline"],
                          n_permutations=1000, seed=2)
    assert s["n_subjects"] == 60 and abs(s["bac"] - 0.5) <= 0.15 and s["p_bac"] > 0.05
    pred = pd.read_csv(study["out"] / "group" / "predict-bids-arm-saline" / "predictions.tsv",
                       sep="\t")
    decision = pred["decision"].to_numpy()
    ok = 0
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        y = np.zeros(decision.size, int)
        y[rng.permutation(decision.size)[:27]] = 1  # 45 % "responders", independent of images
        m = engine.classification_metrics(y, decision, n_bootstrap=200, random_state=seed)
        bac = float(m.loc[m.metric == "bac", "estimate"].iloc[0])
        p = engine.external_permutation_test(y, decision, n_permutations=1000,
                                             random_state=seed).p_bac
        ok += abs(bac - 0.5) <= 0.15 and p > 0.05
    assert ok >= 17


def test_own_training_data_reproduces_final_decisions(study):
    s = run_group_predict(bids_dir=study["bids"], output_dir=study["out"],
                          model=study["out"] / "group" / "train", include=["arm=ketamine"],
                          n_permutations=0, name="predict-self")
    pred = pd.read_csv(s["predictions"], sep="\t")
    final = pd.read_csv(study["out"] / "group" / "train" / "final_model_decisions.tsv",
                        sep="\t")
    assert list(pred["participant_id"]) == list(final["participant_id"])
    np.testing.assert_array_equal(pred["decision"].to_numpy(), final["decision"].to_numpy())
    assert s["p_bac"] is None and s["bac"] is not None


def test_rerun_same_seed_is_identical_and_replaces_cleanly(study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(study["out"], out, ignore=shutil.ignore_patterns("predict-*"))
    train = out / "group" / "train"
    (train / "stale.txt").write_text("left by an older run")
    again = run_group_train(bids_dir=study["bids"], output_dir=out, n_permutations=0,
                            progress=False, overwrite=True, **TRAIN)
    assert not (train / "stale.txt").exists() and not (train / "permutations.tsv").exists()
    assert again["cv_hash"] == study["summary"]["cv_hash"]
    for name in ("cv_predictions.tsv", "cv_folds.tsv", "metrics.tsv", "final_model_decisions.tsv"):
        assert (train / name).read_text() == (
            study["out"] / "group" / "train" / name).read_text(), name
    # the model file too: skops's id()-based member names and zip times are made canonical
    assert (train / "ketabids_model.skops").read_bytes() == (
        study["out"] / "group" / "train" / "ketabids_model.skops").read_bytes()
    assert sorted(p.name for p in (out / "group").iterdir()) == ["train"]


def test_predict_without_labels_and_unseen_category(study, tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(study["ext_bids"], bids)
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    table.drop(columns=["madrs_pre", "madrs_24h"]).to_csv(bids / "participants.tsv", sep="\t",
                                                          index=False)
    s = run_group_predict(bids_dir=bids, output_dir=study["ext_out"],
                          model=study["summary"]["model"], name="predict-nolab")
    assert not s["labelled"] and s["bac"] is None and s["n_subjects"] == 40
    assert "y_true" not in pd.read_csv(s["predictions"], sep="\t").columns
    table["sex"] = table["sex"].replace({"F": "X"})
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    with pytest.raises(BadDataError, match="categories \\['x'\\] were not seen"):
        run_group_predict(bids_dir=bids, output_dir=study["ext_out"],
                          model=study["summary"]["model"], name="predict-x")


def test_user_errors(study, tmp_path):
    # overwrite=True: the study's group/train exists; every call below must fail on its own error
    common = dict(bids_dir=study["bids"], output_dir=study["out"], progress=False,
                  n_permutations=0, overwrite=True, **PROTOCOL)
    with pytest.raises(MissingInputError, match="no column 'responded'"):
        run_group_train(target="responded", **common)
    with pytest.raises(UsageError, match="--site-column"):
        # checked once, by the estimator's input validation (the CLI checks the option)
        run_group_train(response_from=("madrs_pre", "madrs_24h"), combat=True, **common)
    with pytest.raises(NoDataError, match="no participant left"):
        run_group_train(target="arm", include=["arm=placebo"], **common)
    # a missing covariate value names the participants
    bids = tmp_path / "bids"
    shutil.copytree(study["bids"], bids)
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    table.loc[[3, 7], "age"] = np.nan
    table.to_csv(bids / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    who = ", ".join(table.loc[[3, 7], "participant_id"])
    with pytest.raises(BadDataError, match=f"'age' is missing for {who}"):
        run_group_train(**{**common, "bids_dir": bids},
                        response_from=("madrs_pre", "madrs_24h"), covariates=["age"])
    # not a ketabids model
    with pytest.raises(BadDataError, match="not a ketabids model"):
        run_group_predict(bids_dir=study["ext_bids"], output_dir=study["ext_out"],
                          model=bids / "participants.tsv")


def test_missing_maps_and_labels_are_listed(study, tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("ketabids"), "propagate", True)  # the CLI turns it off
    """Participants without map or label are left out with a warning and listed in cohort.tsv."""
    from ketabids.group import labels as lab
    from ketabids.group.cohort import build_cohort, warn_excluded

    out = tmp_path / "out"
    shutil.copytree(study["out"], out, ignore=shutil.ignore_patterns("group"))
    bids = tmp_path / "bids"
    shutil.copytree(study["bids"], bids)
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    ket = table.index[table["arm"] == "ketamine"]
    no_label, no_map = table.loc[ket[0], "participant_id"], table.loc[ket[1], "participant_id"]
    table.loc[ket[0], "madrs_24h"] = np.nan
    table.to_csv(bids / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    shutil.rmtree(out / no_map)
    rule = lab.make_label_rule(response_from=("madrs_pre", "madrs_24h"), include=["arm=ketamine"])
    cohort = build_cohort(TrainConfig(bids_dir=bids, output_dir=out), rule=rule,
                          template="MNI152NLin2009aSym", covariates=["tiv"], site_column="site")
    assert len(cohort.maps) == 98 and cohort.filtered_out == 60
    assert len(cohort.y) == 98 and cohort.covariates.shape == (98, 1)
    with caplog.at_level("WARNING", logger="ketabids"):
        warn_excluded(cohort.excluded)
    assert "2 participant(s) left out" in caplog.text
    listed = cohort.table_tsv("site")
    reasons = dict(zip(listed["participant_id"], listed["reason"]))
    assert "missing" in reasons[no_label] and "no space-" in reasons[no_map]
    assert (listed["status"] == "included").sum() == 98


def test_combat_model_and_unseen_site(tmp_path):
    """ComBat fitted within folds on two sites; a new site follows the engine's rule."""
    from ketabids.demo.participants import make_participants_table

    disc = make_participants_table(32, seed=31, site=["A", "B"])
    bids, out = make_study(tmp_path / "disc", disc, seed=31)
    ext = make_participants_table(12, seed=32, site=["A", "D"], label_prefix="x")
    ext_bids, ext_out = make_study(tmp_path / "ext", ext, seed=32)
    s = run_group_train(bids_dir=bids, output_dir=out, response_from=("madrs_pre", "madrs_24h"),
                        site_column="site", combat=True, n_repeats=1, n_outer=3, n_inner=2,
                        analysis_resolution=4.0,
                        c_grid=[0.01, 1.0], n_permutations=0, progress=False, seed=1)
    manifest = json.loads((out / "group" / "train" / "ketabids_model.json").read_text())
    assert manifest["site"]["combat"] and manifest["site"]["training_sites"] == ["A", "B"]
    # 4 mm is not a template grid: the mask is the mean GM of all participants (no labels)
    assert manifest["features"]["mask_source"] == "sample-mean"
    assert manifest["features"]["grid_shape"] == [50, 59, 48]
    p = run_group_predict(bids_dir=ext_bids, output_dir=ext_out, model=s["model"],
                          n_permutations=0)
    report = (ext_out / "group" / "predict-bids" / "report.html").read_text()
    assert p["n_subjects"] == 12 and "sites unseen at training (D)" in report
    table = pd.read_csv(ext_bids / "participants.tsv", sep="\t").drop(columns=["site"])
    table.to_csv(ext_bids / "participants.tsv", sep="\t", index=False)
    with pytest.raises(MissingInputError, match="no column 'site'"):
        run_group_predict(bids_dir=ext_bids, output_dir=ext_out, model=s["model"],
                          n_permutations=0)
