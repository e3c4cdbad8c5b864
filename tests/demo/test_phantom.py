"""Tests of the template-space subject model (ketabids.demo.phantom), the participants table
(ketabids.demo.participants) and the synthetic derivatives writer (ketabids.demo.derivatives):
the planted effect, bookkeeping, determinism, the response rule shared with the group level."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ketabids.bids.derivatives import BIDS_VERSION, VOLUMES_DICTIONARY
from ketabids.demo import phantom as ph
from ketabids.demo.derivatives import write_synthetic_derivatives
from ketabids.demo.participants import (
    PARTICIPANT_COLUMNS,
    make_participants_table,
    planted_label,
)
from ketabids.group.labels import LabelRule, get_labels, is_response, read_participants
from ketabids.templates import get_template


@pytest.fixture(scope="module")
def tpl2():
    return get_template(resolution=2)


def _world(template):
    maps, affine = ph.template_maps(template)
    return [np.diag(affine)[i] * np.arange(maps["gm"].shape[i]) + affine[i, 3] for i in range(3)]


def _region_means(gm, regions):
    return {k: float(gm[m].mean()) for k, m in regions.items()}


# ------------------------------------------------------------------------------- regions
def test_effect_regions_follow_documented_coordinates(tpl2):
    regions = ph.effect_regions(tpl2)
    maps, _ = ph.template_maps(tpl2)
    x, y, z = _world(tpl2)
    for name, mask in regions.items():
        assert mask.dtype == bool and mask.shape == maps["gm"].shape
        assert mask.sum() > 5000, name
        assert (maps["gm"][mask] > ph.REGION_GM_MIN).all()
    i, j, k = np.nonzero(regions["frontal"])
    assert y[j].min() >= ph.FRONTAL_Y_MIN and z[k].min() >= ph.FRONTAL_Z_MIN
    i, j, k = np.nonzero(regions["cerebellar"])
    assert y[j].max() <= ph.CEREBELLAR_Y_MAX and z[k].max() <= ph.CEREBELLAR_Z_MAX
    assert not (regions["frontal"] & regions["cerebellar"]).any()


# ------------------------------------------------------------------- template-space maps
def test_simulate_template_gm_is_deterministic(tpl2):
    kw = dict(responder=True, age=50, head_scale=0.9)
    a = ph.simulate_template_gm(tpl2, seed=3, **kw)
    b = ph.simulate_template_gm(tpl2, seed=3, **kw)
    c = ph.simulate_template_gm(tpl2, seed=4, **kw)
    assert a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.slow
def test_planted_effect_direction_and_size(tpl2):
    """Responders: more frontal, less cerebellar GM (t-test); ratio ~ (1+es/2)/(1-es/2)."""
    regions = ph.effect_regions(tpl2)
    es = 0.08
    means = {True: [], False: []}
    for i in range(24):
        label = bool(i % 2)
        gm = ph.simulate_template_gm(tpl2, seed=100 + i, responder=label, effect_size=es)
        means[label].append(_region_means(gm, regions))
    frame = {k: pd.DataFrame(v) for k, v in means.items()}
    t_f, p_f = stats.ttest_ind(frame[True]["frontal"], frame[False]["frontal"])
    t_c, p_c = stats.ttest_ind(frame[True]["cerebellar"], frame[False]["cerebellar"])
    assert t_f > 0 and p_f < 1e-3
    assert t_c < 0 and p_c < 1e-3
    ratio = frame[True]["frontal"].mean() / frame[False]["frontal"].mean()
    assert ratio == pytest.approx((1 + es / 2) / (1 - es / 2), abs=0.03)


def test_no_effect_when_responder_is_none(tpl2):
    """Same seed, responder None vs True: identical outside the effect regions' soft edges."""
    regions = ph.effect_regions(tpl2)
    none = ph.simulate_template_gm(tpl2, seed=5, responder=None, variation=0.0)
    resp = ph.simulate_template_gm(tpl2, seed=5, responder=True, variation=0.0)
    maps, _ = ph.template_maps(tpl2)
    assert np.allclose(none, np.minimum(maps["gm"], 1.0))  # age 45, scale 1: the prior itself
    assert resp[regions["frontal"]].sum() > none[regions["frontal"]].sum() * 1.03
    assert resp[regions["cerebellar"]].sum() < none[regions["cerebellar"]].sum() * 0.97


def test_head_scale_and_age_scale_volume(tpl2):
    base = ph.simulate_template_gm(tpl2, seed=1, variation=0.0)
    big = ph.simulate_template_gm(tpl2, seed=1, variation=0.0, head_scale=1.1)
    old = ph.simulate_template_gm(tpl2, seed=1, variation=0.0, age=65)
    assert big.sum() / base.sum() == pytest.approx(1.1**3, rel=1e-4)
    # 20 years older: 6 % less GM (a few voxels are capped at 1)
    assert old.sum() / base.sum() == pytest.approx(1 - 20 * ph.ATROPHY_PER_YEAR, abs=0.005)


def test_smooth_field_is_standardised_and_smooth():
    axes = [np.arange(40) * 2.0, np.arange(30) * 2.0, np.arange(20) * 2.0]
    field = ph.smooth_field(axes, np.random.default_rng(0), fwhm=20.0)
    assert field.shape == (40, 30, 20)
    assert abs(field.mean()) < 1e-5 and field.std() == pytest.approx(1.0, abs=1e-4)
    # neighbouring voxels are strongly correlated
    r = np.corrcoef(field[:-1].ravel(), field[1:].ravel())[0, 1]
    assert r > 0.9


# ------------------------------------------------------------------- participants table
def test_participants_table_rule_and_counts():
    table = make_participants_table(
        40, seed=2, saline_fraction=0.25, site=["A", "B"], ketamine_response_rate=0.5,
        saline_response_rate=0.2,
    )
    assert list(table.columns) == PARTICIPANT_COLUMNS
    assert table["participant_id"].is_unique
    assert set(table["sex"]) == {"M", "F"} and set(table["site"]) == {"A", "B"}
    resp = is_response(table["madrs_pre"], table["madrs_24h"])
    ket = table["arm"] == "ketamine"
    assert ket.sum() == 30 and resp[ket].sum() == 15
    assert resp[~ket].sum() == 2
    drop = (table["madrs_pre"] - table["madrs_24h"]) / table["madrs_pre"]
    assert ((drop >= 0.5) == resp).all()
    assert table["madrs_pre"].between(28, 44).all() and (table["madrs_24h"] >= 0).all()
    assert table.equals(
        make_participants_table(
            40, seed=2, saline_fraction=0.25, site=["A", "B"], ketamine_response_rate=0.5,
            saline_response_rate=0.2,
        )
    )


def test_demo_labels_are_the_group_levels(tmp_path):
    """The label planted in the images is the one ``--response-from madrs_pre madrs_24h``
    reads back from participants.tsv."""
    table = make_participants_table(60, seed=3, saline_fraction=0.3)
    table.to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    labels, excluded = get_labels(read_participants(tmp_path),
                                  LabelRule(response_from=("madrs_pre", "madrs_24h")))
    assert excluded == [] and len(labels) == 60
    ids = table["participant_id"].str.removeprefix("sub-")
    for (_, row), subject in zip(table.iterrows(), ids):
        planted = planted_label(row)
        if row["arm"] == "ketamine":
            assert planted is bool(labels[subject])
        else:
            assert planted is None
    assert 0 < labels.sum() < 60


def test_planted_label_rule():
    row = {"arm": "ketamine", "madrs_pre": 30, "madrs_24h": 15}
    assert planted_label(row) is True
    assert planted_label({**row, "madrs_24h": 16}) is False
    assert planted_label({**row, "arm": "saline"}) is None


# ------------------------------------------------------------------- derivative writer
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    bids = root / "bids"
    bids.mkdir()
    table = make_participants_table(40, seed=11, saline_fraction=0.25, site=["A", "B"])
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    truth = write_synthetic_derivatives(
        bids, root / "deriv", seed=3, truth_tsv=root / "truth.tsv"
    )
    return root, table, truth


@pytest.mark.slow
def test_write_synthetic_derivatives_layout(synthetic, tpl2):
    root, table, truth = synthetic
    deriv = root / "deriv"
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "ketabids"
    assert desc["BIDSVersion"] == BIDS_VERSION
    assert "no imaging was run" in desc["GeneratedBy"][0]["Description"]
    assert desc["SourceDatasets"][0]["URL"] == (root / "bids").resolve().as_uri()
    assert "*_morph.tsv" in (deriv / ".bidsignore").read_text().splitlines()
    sub = table["participant_id"].iloc[0]
    anat = deriv / sub / "anat"
    stem = f"{sub}_space-MNI152NLin2009aSym_label-GM_desc-modulated_probseg"
    img = nib.load(anat / f"{stem}.nii.gz")
    maps, affine = ph.template_maps(tpl2)
    assert img.shape == maps["gm"].shape and np.allclose(img.affine, affine)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    side = json.loads((anat / f"{stem}.json").read_text())
    assert side["Template"] == "MNI152NLin2009aSym" and side["Resolution"] == 2.0
    assert side["Modulation"] == "jacobian" and side["Sources"]
    vols = pd.read_csv(anat / f"{sub}_desc-volumes_morph.tsv", sep="\t")
    assert list(vols.columns) == ["tiv_ml", "gm_ml", "wm_ml", "csf_ml"] and len(vols) == 1
    gm_ml = float(np.asarray(img.dataobj, dtype=np.float64).sum() * 8 / 1000)
    assert vols["gm_ml"].iloc[0] == pytest.approx(gm_ml, rel=1e-4)
    row = vols.iloc[0]
    assert row.tiv_ml == pytest.approx(row.gm_ml + row.wm_ml + row.csf_ml, abs=0.01)
    assert 1000 < row.tiv_ml < 2000 and 0.4 < row.gm_ml / row.tiv_ml < 0.65
    side = json.loads((anat / f"{sub}_desc-volumes_morph.json").read_text())
    assert side == VOLUMES_DICTIONARY
    assert len(truth) == len(table)
    on_disk = pd.read_csv(root / "truth.tsv", sep="\t")
    assert on_disk["participant_id"].tolist() == truth["participant_id"].tolist()


@pytest.mark.slow
def test_synthetic_truth_follows_arm_and_madrs(synthetic):
    _, table, truth = synthetic
    merged = table.merge(truth, on=["participant_id", "arm"])
    ket = merged["arm"] == "ketamine"
    assert (merged.loc[~ket, "planted"] == "none").all()
    expected = np.where(merged.loc[ket, "responder"], "responder", "nonresponder")
    assert (merged.loc[ket, "planted"] == expected).all()
    resp = is_response(merged["madrs_pre"], merged["madrs_24h"])
    assert (resp == merged["responder"]).all()


@pytest.mark.slow
def test_synthetic_maps_carry_effect_in_ketamine_arm_only(synthetic, tpl2):
    root, table, truth = synthetic
    regions = ph.effect_regions(tpl2)
    index = []
    for sub in table["participant_id"]:
        img = nib.load(
            root / "deriv" / sub / "anat"
            / f"{sub}_space-MNI152NLin2009aSym_label-GM_desc-modulated_probseg.nii.gz"
        )
        gm = np.asarray(img.dataobj)
        m = _region_means(gm, regions)
        index.append(np.log(m["frontal"] / m["cerebellar"]))
    merged = truth.assign(ratio=index)
    ket = merged[merged.arm == "ketamine"]
    sal = merged[merged.arm == "saline"]
    t, p = stats.ttest_ind(ket.ratio[ket.responder], ket.ratio[~ket.responder])
    assert t > 0 and p < 1e-4
    # saline: responders (placebo) exist but the images carry nothing
    assert sal.responder.sum() >= 2
    d_sal = sal.ratio[sal.responder].mean() - sal.ratio[~sal.responder].mean()
    d_ket = ket.ratio[ket.responder].mean() - ket.ratio[~ket.responder].mean()
    assert abs(d_sal) < 0.5 * d_ket


@pytest.mark.slow
def test_null_option_gives_no_association(tmp_path, tpl2):
    table = make_participants_table(50, seed=5)
    truth = write_synthetic_derivatives(
        None, tmp_path / "deriv", participants=table, seed=5, null=True
    )
    planted = truth["planted"] == "responder"
    assert 12 < planted.sum() < 38  # coin flips, both labels present
    # the planted label is unrelated to the MADRS label (Fisher exact test)
    ct = pd.crosstab(planted, truth["responder"])
    assert stats.fisher_exact(ct.to_numpy())[1] > 0.05
    regions = ph.effect_regions(tpl2)
    index = []
    for sub in truth["participant_id"]:
        gm = np.asarray(
            nib.load(
                tmp_path / "deriv" / sub / "anat"
                / f"{sub}_space-MNI152NLin2009aSym_label-GM_desc-modulated_probseg.nii.gz"
            ).dataobj
        )
        m = _region_means(gm, regions)
        index.append(np.log(m["frontal"] / m["cerebellar"]))
    index = np.asarray(index)
    # the images still carry the (hidden) planted label ...
    assert stats.ttest_ind(index[planted], index[~planted])[1] < 1e-4
    # ... but not the reported response
    assert stats.ttest_ind(index[truth.responder], index[~truth.responder])[1] > 0.05


def test_write_synthetic_derivatives_is_deterministic(tmp_path):
    table = make_participants_table(3, seed=1)
    a = write_synthetic_derivatives(None, tmp_path / "a", participants=table, seed=9)
    b = write_synthetic_derivatives(None, tmp_path / "b", participants=table, seed=9)
    write_synthetic_derivatives(None, tmp_path / "c", participants=table, seed=10)
    assert a.equals(b)
    desc = json.loads((tmp_path / "a" / "dataset_description.json").read_text())
    assert "SourceDatasets" not in desc  # no BIDS dataset given: nothing to cite
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert len(files) == 2 + 4 * 3
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    nii = [r for r in files if r.name.endswith(".nii.gz")][0]
    assert (tmp_path / "a" / nii).read_bytes() != (tmp_path / "c" / nii).read_bytes()
    # a subject's map does not depend on who else is in the table
    write_synthetic_derivatives(None, tmp_path / "d", participants=table.iloc[[2]], seed=9)
    last = [r for r in files
            if r.name.endswith(".nii.gz") and table.participant_id.iloc[2] in str(r)][0]
    assert (tmp_path / "a" / last).read_bytes() == (tmp_path / "d" / last).read_bytes()


def test_missing_participants_tsv_is_a_clear_error(tmp_path):
    from ketabids.errors import BadDataError, MissingInputError

    with pytest.raises(MissingInputError, match="participants.tsv"):
        write_synthetic_derivatives(tmp_path, tmp_path / "out")
    with pytest.raises(BadDataError, match="madrs_pre"):
        write_synthetic_derivatives(
            None, tmp_path / "out", participants=pd.DataFrame({"participant_id": ["sub-1"]})
        )


@pytest.mark.slow
def test_synthetic_derivatives_pass_bids_validator(synthetic):
    exe = shutil.which("bids-validator-deno") or str(
        Path(__import__("sys").executable).parent / "bids-validator-deno"
    )
    if not Path(exe).is_file():
        pytest.skip("bids-validator-deno not installed")
    root, _, _ = synthetic
    out = subprocess.run(
        [exe, str(root / "deriv"), "--format", "json"], capture_output=True, text=True,
        timeout=300,
    )
    report = json.loads(out.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == [], errors[:5]


# ------------------------------------------------------------------- planted effect: SVC
def _cohort_features(tpl2, n, *, seed, site, site_effect, effect_size, prefix, saline=0.0):
    table = make_participants_table(
        n, seed=seed, site=site, saline_fraction=saline, label_prefix=prefix
    )
    maps, _ = ph.template_maps(tpl2)
    mask = maps["gm"] > 0.1
    X = []
    for _, row in table.iterrows():
        rng = ph.subject_rng(seed, row.participant_id)
        scale = ph.draw_head_scale(row.sex, rng, tpl2)
        gm = ph.simulate_template_gm(
            tpl2, seed=rng, responder=planted_label(row), effect_size=effect_size,
            age=row.age, head_scale=scale, site=row.site, site_effect=site_effect,
        )
        X.append(gm[mask])
    y = is_response(table.madrs_pre, table.madrs_24h)
    return np.asarray(X), np.asarray(y), table.arm.to_numpy()


@pytest.mark.slow
def test_default_effect_is_learnable_on_truth_maps(tpl2):
    """LinearSVC on template-space truth: discovery CV BAC >= 0.8, external (site C) >= 0.7,
    and a ketamine-trained model is at chance on the saline arm."""
    es = ph.DEFAULT_EFFECT_SIZE
    Xd, yd, arm = _cohort_features(
        tpl2, 50, seed=21, site=["A", "B"], site_effect=0.02, effect_size=es, prefix="",
        saline=0.4,
    )
    Xe, ye, _ = _cohort_features(
        tpl2, 16, seed=22, site="C", site_effect=0.02, effect_size=es, prefix="ext"
    )
    ket = arm == "ketamine"
    # the planted effect is learnable (not the study's nested protocol): a linear SVC on
    # z-scored voxels, stratified 5-fold CV on the ketamine arm, then fitted on all of it
    model = make_pipeline(StandardScaler(), SVC(kernel="linear"))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    bac_cv = balanced_accuracy_score(yd[ket], cross_val_predict(model, Xd[ket], yd[ket], cv=cv))
    model.fit(Xd[ket], yd[ket])
    bac_ext = balanced_accuracy_score(ye, model.predict(Xe))
    dec_sal = model.decision_function(Xd[~ket])
    assert bac_cv >= 0.8, bac_cv
    assert bac_ext >= 0.7, bac_ext
    # saline: decision values do not separate placebo responders from non-responders
    assert stats.ttest_ind(dec_sal[yd[~ket]], dec_sal[~yd[~ket]])[1] > 0.05

