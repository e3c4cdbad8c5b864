"""Tests of the T1w phantoms (ketabids.demo.head.simulate_subject), the demo BIDS writer
(ketabids.demo.cohort) and the demo command's pieces (ketabids.cli.demo)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
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

from ketabids.demo import cohort as dm
from ketabids.demo import phantom as ph
from ketabids.demo.head import Acquisition, PoseAndWarp, SubjectTraits, simulate_subject
from ketabids.demo.participants import PARTICIPANT_COLUMNS
from ketabids.group.labels import is_response
from ketabids.templates import get_template


@pytest.fixture(scope="module")
def tpl2():
    return get_template(resolution=2)


@pytest.fixture(scope="module")
def subject(tpl2):
    return simulate_subject(tpl2, seed=7, traits=SubjectTraits(responder=True, age=50, sex="M"),
                            acquisition=Acquisition(orientation="LIA"))


def _data(img):
    return np.asarray(img.dataobj)


def _validator():
    exe = (shutil.which("bids-validator-deno")
           or str(Path(sys.executable).parent / "bids-validator-deno"))
    return exe if Path(exe).is_file() else None


def _validate(path):
    exe = _validator()
    if exe is None:
        pytest.skip("bids-validator-deno not installed")
    out = subprocess.run(
        [exe, str(path), "--format", "json"], capture_output=True, text=True, timeout=300
    )
    issues = json.loads(out.stdout)["issues"]["issues"]
    return [i for i in issues if i["severity"] == "error"], issues


# ------------------------------------------------------------------------ simulate_subject
def test_subject_images_share_one_grid(subject):
    assert nib.aff2axcodes(subject.t1w.affine) == ("L", "I", "A")
    assert subject.t1w.get_data_dtype() == np.int16
    assert subject.t1w.header.get_xyzt_units() == ("mm", "sec")
    assert subject.t1w.header["qform_code"] > 0 and subject.t1w.header["sform_code"] > 0
    for img in (subject.gm, subject.wm, subject.csf, subject.brain_mask):
        assert img.shape == subject.t1w.shape
        assert np.allclose(img.affine, subject.t1w.affine)
    assert np.allclose(subject.t1w.header.get_zooms(), 2.0)


def test_volume_bookkeeping(subject, tpl2):
    """sum(template-space modulated GM) == native GM volume; TIV = GM + WM + CSF."""
    vol = subject.volumes
    gm = _data(subject.gm).astype(np.float64)
    assert vol["gm_ml"] == pytest.approx(gm.sum() * 8 / 1000, rel=1e-6)
    assert vol["tiv_ml"] == pytest.approx(vol["gm_ml"] + vol["wm_ml"] + vol["csf_ml"], rel=1e-4)
    tpl = subject.template_gm
    maps, affine = ph.template_maps(tpl2)
    assert tpl.shape == maps["gm"].shape and np.allclose(tpl.affine, affine)
    tpl_ml = _data(tpl).astype(np.float64).sum() * 8 / 1000
    assert tpl_ml == pytest.approx(vol["gm_ml"], rel=0.01)
    for key in ("gm", "wm", "csf"):
        arr = _data(getattr(subject, key))
        assert arr.min() >= 0 and arr.max() <= 1
    # brain mask volume ~ TIV
    mask_ml = _data(subject.brain_mask).sum() * 8 / 1000
    assert mask_ml == pytest.approx(vol["tiv_ml"], rel=0.03)
    # head size drives TIV: a 1.1 x head has 1.1**3 the volume
    # (no non-linear warp, whose local volume changes depend on the field of view)
    kw = dict(acquisition=Acquisition(skull=False), pose=PoseAndWarp(warp_mm=0.0))
    small = simulate_subject(tpl2, seed=1, traits=SubjectTraits(head_scale=1.0), **kw)
    big = simulate_subject(tpl2, seed=1, traits=SubjectTraits(head_scale=1.1), **kw)
    ratio = big.volumes["tiv_ml"] / small.volumes["tiv_ml"]
    assert ratio == pytest.approx(1.1**3, rel=0.01)


def test_tissue_contrast_skull_and_neck(tpl2):
    subject = simulate_subject(tpl2, seed=7,
                               acquisition=Acquisition(orientation="LIA", bias_strength=0.0))
    canon = nib.as_closest_canonical(subject.t1w)
    t1 = np.asarray(canon.dataobj, dtype=np.float64)
    maps = {k: np.asarray(nib.as_closest_canonical(getattr(subject, k)).dataobj)
            for k in ("gm", "wm", "csf")}
    mask = np.asarray(nib.as_closest_canonical(subject.brain_mask).dataobj) > 0
    med = {k: np.median(t1[maps[k] > 0.95]) for k in maps}
    assert med["csf"] < med["gm"] < med["wm"]
    assert med["gm"] / med["wm"] == pytest.approx(0.6 / 0.85, abs=0.05)
    assert med["csf"] / med["wm"] == pytest.approx(0.2 / 0.85, abs=0.1)
    # a head around the brain: bright fat and dark skull inside a few cm of the brain
    from scipy import ndimage

    shell = ndimage.binary_dilation(mask, iterations=7) & ~mask
    vals = t1[shell]
    assert np.percentile(vals, 90) > 0.9 * med["wm"]  # scalp fat
    assert np.percentile(vals, 10) < 0.3 * med["wm"]  # skull / CSF
    # a neck: signal below the lowest brain voxel, down to the edge of the field of view
    lowest = np.nonzero(mask.any(axis=(0, 1)))[0].min()
    assert lowest > 5
    assert (t1[:, :, 1] > 0.3 * med["wm"]).sum() > 200
    # air is dark, noise is Rician (non-negative, not zero)
    corner = t1[:4, :4, -4:]
    assert 0 < corner.mean() < 0.1 * med["wm"]


def test_subject_is_deterministic(tpl2, subject):
    a = subject
    kw = dict(traits=SubjectTraits(responder=True, age=50, sex="M"),
              acquisition=Acquisition(orientation="LIA"))
    b = simulate_subject(tpl2, seed=7, **kw)
    c = simulate_subject(tpl2, seed=8, **kw)
    assert a.t1w.to_bytes() == b.t1w.to_bytes()
    assert a.template_gm.to_bytes() == b.template_gm.to_bytes()
    assert a.params == b.params and a.volumes == b.volumes
    assert a.t1w.to_bytes() != c.t1w.to_bytes()
    assert a.params["rotation_deg"] != c.params["rotation_deg"]


@pytest.fixture(scope="module")
def ras_subject(tpl2):
    return simulate_subject(tpl2, seed=2,
                            acquisition=Acquisition(orientation="RAS", skull=False, noise=0.0))


@pytest.mark.parametrize("codes", ["LPS", "PIL", "ASL"])
def test_orientation_is_consistent(tpl2, ras_subject, codes):
    """Another header orientation stores the same image: canonical data and affine agree."""
    ref = ras_subject
    other = simulate_subject(tpl2, seed=2,
                             acquisition=Acquisition(orientation=codes, skull=False, noise=0.0))
    assert "".join(nib.aff2axcodes(other.t1w.affine)) == codes
    canon = nib.as_closest_canonical(other.t1w)
    assert np.allclose(canon.affine, ref.t1w.affine)
    assert np.array_equal(np.asarray(canon.dataobj), np.asarray(ref.t1w.dataobj))


@pytest.mark.slow
def test_planted_effect_survives_imaging(tpl2):
    """In the phantoms' template-space truth, responders have more frontal, less cerebellar GM."""
    regions = ph.effect_regions(tpl2)
    ratio = {True: [], False: []}
    for i in range(8):
        label = bool(i % 2)
        s = simulate_subject(
            tpl2, seed=300 + i, traits=SubjectTraits(responder=label, effect_size=0.15),
            acquisition=Acquisition(skull=False), pose=PoseAndWarp(warp_mm=0.5),
        )
        gm = _data(s.template_gm)
        ratio[label].append(np.log(gm[regions["frontal"]].mean()
                                   / gm[regions["cerebellar"]].mean()))
    t, p = stats.ttest_ind(ratio[True], ratio[False])
    assert t > 0 and p < 0.01


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_effect_as_probability_or_volume_change(tpl2, share):
    """Whether planted as GM probability (share 0) or local expansion (share 1), the true
    regional GM volume changes by ~effect_size/2 each way; the rest of the brain barely moves."""
    regions = ph.effect_regions(tpl2)
    kw = dict(acquisition=Acquisition(skull=False, noise=0.0), pose=PoseAndWarp(warp_mm=0.0))
    traits = SubjectTraits(variation=0.0, effect_size=0.12)
    base = _data(simulate_subject(tpl2, seed=5, traits=traits, **kw).template_gm)
    resp = _data(
        simulate_subject(
            tpl2, seed=5, traits=replace(traits, responder=True, effect_volume_share=share), **kw
        ).template_gm
    )
    rest = ~(regions["frontal"] | regions["cerebellar"])
    frac = {k: resp[m].sum() / base[m].sum() for k, m in {**regions, "rest": rest}.items()}
    assert frac["frontal"] == pytest.approx(1.06, abs=0.015)
    assert frac["cerebellar"] == pytest.approx(0.94, abs=0.015)
    assert frac["rest"] == pytest.approx(1.0, abs=0.005)


@pytest.mark.slow
def test_one_mm_subject(tmp_path):
    tpl1 = get_template(resolution=1)
    s = simulate_subject(tpl1, seed=1, acquisition=Acquisition(resolution=1.0, orientation="PIL"))
    assert np.allclose(s.t1w.header.get_zooms(), 1.0)
    tpl_ml = _data(s.template_gm).astype(np.float64).sum() / 1000
    assert tpl_ml == pytest.approx(s.volumes["gm_ml"], rel=0.01)


# ------------------------------------------------------------------------ generate_demo
@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    design = dm.DemoDesign(n_discovery=4, n_external=1)
    a = dm.generate_demo(root / "a", design, seed=4)
    dm.generate_demo(root / "b", design, seed=4, nprocs=2)  # in parallel: the same bytes
    dm.generate_demo(root / "c", dm.DemoDesign(n_discovery=1, n_external=0), seed=5)
    return root, a


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_demo_is_deterministic(tiny_demo):
    root, _ = tiny_demo
    files = _files(root / "a")
    assert files == _files(root / "b")
    for rel in files:
        assert (root / "a" / rel).read_bytes() == (root / "b" / rel).read_bytes(), rel
    t1 = "bids/discovery/sub-001/anat/sub-001_T1w.nii.gz"
    assert (root / "a" / t1).read_bytes() != (root / "c" / t1).read_bytes()
    assert not [p for p in (root / "a").rglob(".*") if p.is_file()], "temporary files left"


@pytest.mark.slow
def test_demo_layout_and_metadata(tiny_demo):
    root, demo = tiny_demo
    base = root / "a"
    assert demo.bids == {"discovery": base / "bids/discovery", "external": base / "bids/external"}
    for cohort, bids in demo.bids.items():
        desc = json.loads((bids / "dataset_description.json").read_text())
        assert desc["BIDSVersion"] == "1.10.0" and desc["DatasetType"] == "raw"
        assert desc["Name"] and desc["Authors"] and desc["License"]
        assert (bids / "README.md").is_file()
        table = pd.read_csv(bids / "participants.tsv", sep="\t")
        assert list(table.columns) == PARTICIPANT_COLUMNS
        pjson = json.loads((bids / "participants.json").read_text())
        assert set(pjson) == set(table.columns)
        for col in ("sex", "site", "arm"):
            assert set(table[col]) <= set(pjson[col]["Levels"]), col
        assert pjson["age"]["Units"] == "year"
        for sub in table["participant_id"]:
            img = nib.load(bids / sub / "anat" / f"{sub}_T1w.nii.gz")
            assert img.header.get_xyzt_units() == ("mm", "sec")
            side = json.loads((bids / sub / "anat" / f"{sub}_T1w.json").read_text())
            for key in ("MagneticFieldStrength", "Manufacturer", "RepetitionTime", "EchoTime"):
                assert key in side
        # ground truth lives outside the BIDS tree
        truth = pd.read_csv(demo.truth[cohort] / "truth.tsv", sep="\t")
        assert truth["participant_id"].tolist() == table["participant_id"].tolist()
        assert not any("truth" in str(p) for p in _files(bids))
        merged = table.merge(truth, on=["participant_id", "arm", "site"])
        resp = is_response(merged.madrs_pre, merged.madrs_24h)
        assert (resp == merged.responder).all()
        ket = merged.arm == "ketamine"
        assert (merged.planted[~ket] == "none").all()
        assert (merged.planted[ket] == np.where(resp[ket], "responder", "nonresponder")).all()
        assert ((truth.template_gm_ml - truth.gm_ml).abs() < 0.01 * truth.gm_ml).all()
    ext = demo.participants["external"]
    assert set(ext.site) == {"C"} and set(ext.arm) == {"ketamine"}
    assert set(demo.participants["discovery"].arm) == {"ketamine", "saline"}


@pytest.mark.slow
def test_demo_passes_bids_validator(tiny_demo):
    _, demo = tiny_demo
    for bids in demo.bids.values():
        errors, _ = _validate(bids)
        assert errors == [], errors[:5]


def test_demo_rejects_bad_options(tmp_path):
    from ketabids.errors import UsageError

    with pytest.raises(UsageError, match="site"):
        dm.generate_demo(tmp_path, dm.DemoDesign(n_discovery=2, n_external=0,
                                                 discovery_sites=("Z",)))
    with pytest.raises(UsageError, match="saline_fraction"):
        dm.generate_demo(tmp_path, dm.DemoDesign(n_discovery=2, saline_fraction=1.5))
    with pytest.raises(UsageError, match="n_discovery"):
        dm.generate_demo(tmp_path, dm.DemoDesign(n_discovery=0))


@pytest.mark.slow
def test_demo_refuses_to_mix_demos(tmp_path, tiny_demo):
    from ketabids.errors import OutputError

    root, _ = tiny_demo
    with pytest.raises(OutputError, match="other options"):
        dm.generate_demo(root / "a", dm.DemoDesign(n_discovery=3, n_external=1), seed=4)
    (tmp_path / "bids").mkdir()
    with pytest.raises(OutputError, match="not written by generate_demo"):
        dm.generate_demo(tmp_path, dm.DemoDesign(n_discovery=2, n_external=0))


@pytest.mark.slow
def test_default_demo_truth_is_learnable(tmp_path):
    """The default demo: header orientations vary; on the truth maps a LinearSVC reaches
    discovery CV BAC >= 0.8 (ketamine arm) and external BAC >= 0.7."""
    demo = dm.generate_demo(tmp_path)
    tpl = get_template(resolution=2)
    maps, _ = ph.template_maps(tpl)
    mask = maps["gm"] > 0.1

    def features(cohort):
        truth = demo.truth_tables[cohort]
        X = []
        for sub in truth.participant_id:
            img = nib.load(
                demo.truth[cohort] / sub
                / f"{sub}_space-MNI152NLin2009aSym_label-GM_desc-modulated_probseg.nii.gz"
            )
            X.append(np.asarray(img.dataobj)[mask])
        return np.asarray(X), truth

    Xd, td = features("discovery")
    Xe, te = features("external")
    codes = {
        "".join(nib.aff2axcodes(
            nib.load(demo.bids["discovery"] / s / "anat" / f"{s}_T1w.nii.gz").affine))
        for s in td.participant_id
    }
    assert len(codes) >= 4
    ket = (td.arm == "ketamine").to_numpy()
    yd, ye = td.responder.to_numpy(), te.responder.to_numpy()
    model = make_pipeline(StandardScaler(), SVC(kernel="linear"))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    bac_cv = balanced_accuracy_score(yd[ket], cross_val_predict(model, Xd[ket], yd[ket], cv=cv))
    bac_ext = balanced_accuracy_score(ye, model.fit(Xd[ket], yd[ket]).predict(Xe))
    print(f"default demo truth: discovery CV BAC {bac_cv:.3f}, external BAC {bac_ext:.3f}")
    assert bac_cv >= 0.8 and bac_ext >= 0.7
    errors, _ = _validate(demo.bids["discovery"])
    assert errors == []


# ------------------------------------------------------------------------ the demo command
def test_results_table_shows_headlines_beside_the_papers_figures(rng):
    """Each row: the analysis' headline (value, interval, p text of that same BAC) and the
    paper's figures of the SAME analysis (discovery 72.2%, external 60.0%, saline 41.1%)."""
    from ketabids.cli.demo import results_table
    from ketabids.demo.published import PUBLISHED
    from ketabids.group.metrics import classification_metrics, headline_metric

    y = np.array([0, 1] * 10)
    metrics = classification_metrics(y, rng.normal(size=20) + y)
    h = headline_metric(metrics, aggregation="single", y=y, p=1 / 201, n_permutations=200)
    lines = results_table({name: h for name in PUBLISHED}).splitlines()
    assert len(lines) == 2 + len(PUBLISHED)
    assert "paper" in lines[0]
    assert lines[2].startswith("discovery") and lines[2].endswith("| 99, 72.2%, 0.72, -")
    assert lines[3].startswith("external") and lines[3].endswith("| 51, 60.0%, 0.65, 0.01")
    assert lines[4].startswith("saline") and lines[4].endswith("| 49, 41.1%, 0.45, -")
    ours = f"{100 * h['estimate']:.1f}% ({100 * h['ci_low']:.1f}%-{100 * h['ci_high']:.1f}%)"
    assert all(ours in line and "p <= 0.005 (floor of 200 permutations)" in line
               for line in lines[2:])


def test_results_table_gains_the_specificity_row(rng):
    """The two-arm prediction's summary becomes the table's last line: BAC difference with its
    interval and permutation p, and the interaction p; no line without it."""
    from ketabids.cli.demo import results_table, specificity_row
    from ketabids.demo.published import PUBLISHED
    from ketabids.group.metrics import classification_metrics, headline_metric
    from ketabids.group.specificity import specificity_analysis

    y = np.array([0, 1] * 20)
    d = rng.normal(size=40) + 2 * y * (np.arange(40) < 20)     # ketamine rows only
    arm = np.where(np.arange(40) < 20, "ketamine", "saline")
    spec = specificity_analysis(y, d, arm, treatment_arm="ketamine", reference_arm="saline",
                                n_bootstrap=100, n_permutations=100).as_dict()
    line = specificity_row({"n_subjects": 40, "specificity": spec})
    bac = spec["bac_difference"]
    assert line.startswith("specificity (ext. trial)") and " 40  BAC ketamine - saline " in line
    assert f"{100 * bac['estimate']:+.1f} points (95% CI {100 * bac['ci_low']:+.1f} to " in line
    assert "decision x arm interaction p " in line and "not tested" in line
    assert re.search(r"interaction p (=|<) 0\.\d+  \|", line) and "p = <" not in line
    assert specificity_row({"n_subjects": 40, "specificity": None}) is None
    assert specificity_row(None) is None
    h = headline_metric(classification_metrics(y, d), aggregation="single", y=y)
    table = results_table({name: h for name in PUBLISHED}, line).splitlines()
    assert len(table) == 3 + len(PUBLISHED) and table[-1] == line


@pytest.mark.slow
def test_external_saline_arm_leaves_the_ketamine_participants_unchanged(tmp_path):
    """--n-external-saline appends saline rows (numbered after the ketamine ones, no planted
    effect) to the external cohort; the ketamine rows and T1w images are byte-identical."""
    design = dm.DemoDesign(n_discovery=1, n_external=2)
    plain = dm.generate_demo(tmp_path / "plain", design, seed=6)
    trial = dm.generate_demo(tmp_path / "trial", replace(design, n_external_saline=2), seed=6)
    ext = trial.participants["external"]
    assert list(ext.participant_id) == ["sub-ext001", "sub-ext002", "sub-ext003", "sub-ext004"]
    assert list(ext.arm) == ["ketamine", "ketamine", "saline", "saline"]
    pd.testing.assert_frame_equal(ext.iloc[:2], plain.participants["external"])
    assert set(trial.truth_tables["external"].set_index("participant_id")
               .loc[["sub-ext003", "sub-ext004"], "planted"]) == {"none"}
    for sub in ("sub-ext001", "sub-ext002"):
        rel = f"bids/external/{sub}/anat/{sub}_T1w.nii.gz"
        assert (tmp_path / "plain" / rel).read_bytes() == (tmp_path / "trial" / rel).read_bytes()
    assert "randomised ketamine vs saline trial" in (trial.bids["external"] / "README.md") \
        .read_text()
    from ketabids.errors import UsageError

    with pytest.raises(UsageError, match="n_external_saline"):
        dm.generate_demo(tmp_path / "bad", dm.DemoDesign(n_discovery=1, n_external_saline=-1))


def _plan(*argv):
    from ketabids.cli.demo import demo_design, get_demo_parser, plan_demo

    opts = get_demo_parser().parse_args(["out", *argv])
    design = demo_design(opts)
    return opts, design, plan_demo(opts, design)


def _fold_counts_hold(table, folds, seed):
    """Reference check on the group level's own partitions: its rule (no more outer folds than
    members of the smaller class, every outer training set at least ``n_inner`` of each class),
    and every training set the engine fits holds both classes: the inner ones of each outer
    fold (``make_scheme``) and those of the final model's C search (seeded [seed, 99991])."""
    import numpy as np

    from ketabids.group.cv import StratifiedFolds
    from ketabids.group.labels import is_response
    from ketabids.group.nested import NestedCVSettings, make_scheme

    ketamine = table[table["arm"] == "ketamine"]
    y = np.asarray(is_response(ketamine["madrs_pre"], ketamine["madrs_24h"])).astype(int)
    sites = ketamine["site"].to_numpy()
    if folds.n_outer > np.bincount(y, minlength=2).min():
        return False
    outer = StratifiedFolds(folds.n_outer, n_repeats=folds.n_repeats, random_state=seed)
    if any(np.bincount(y[train], minlength=2).min() < folds.n_inner
           for train, _ in outer.split(None, y, sites)):
        return False
    settings = NestedCVSettings(n_repeats=folds.n_repeats, n_outer=folds.n_outer,
                                n_inner=folds.n_inner, random_state=seed)
    _, inner = make_scheme(y, sites, settings)
    for r, o in np.ndindex(inner.shape[:2]):
        for i in range(folds.n_inner):
            if len(set(y[(inner[r, o] >= 0) & (inner[r, o] != i)])) < 2:
                return False
    final = StratifiedFolds(folds.n_inner, random_state=(seed, 99991))
    return all(len(set(y[train])) == 2 for train, _ in final.split(None, y, sites))


@pytest.mark.parametrize("seed", [0, 1])
def test_demo_folds_fit_every_accepted_cohort_size(seed):
    """For every --n-discovery from the smallest accepted to 60, the folds chosen up front are
    valid on the group level's own partitions and as large as they can be (up to the study's
    10 outer, 5 inner); smaller sizes are refused up front, naming the smallest."""
    from ketabids.cli.demo import DemoFolds
    from ketabids.demo.cohort import demo_tables
    from ketabids.errors import UsageError

    smallest = None
    for n in range(1, 61):
        try:
            _, design, folds = _plan("--n-discovery", str(n), "--seed", str(seed))
        except UsageError as exc:
            assert smallest is None, f"--n-discovery {n} refused after {smallest} was accepted"
            refused = str(exc)
            continue
        smallest = smallest or n
        table = demo_tables(design, seed=seed)["discovery"]
        assert folds.n_repeats == 10 and 2 <= folds.n_inner <= 5 and 2 <= folds.n_outer <= 10
        assert _fold_counts_hold(table, folds, seed), (n, folds)
        if folds.n_outer < 10:  # one more outer fold would not work, whatever the inner
            assert not any(_fold_counts_hold(table, DemoFolds(10, folds.n_outer + 1, k, 0, 0),
                                             seed) for k in range(2, 6)), (n, folds)
        if folds.n_inner < 5:
            more = DemoFolds(10, folds.n_outer, folds.n_inner + 1, 0, 0)
            assert not _fold_counts_hold(table, more, seed), (n, folds)
    assert smallest is not None and smallest > 1
    assert f"use --n-discovery {smallest} or more" in refused
    # the defaults keep the study's protocol
    assert _plan("--seed", str(seed))[2].options() == ["--n-repeats", "10", "--n-outer", "10",
                                                       "--n-inner", "5"]


def test_demo_of_the_issue_gets_fitted_folds():
    """``--n-discovery 16 --n-external 6``: the study's 5 inner folds do not fit (the group level
    refused them after the participant level); the demo now picks folds that do, and says so.
    The smallest demo (10) gets 3 outer / 2 inner folds: 4 / 2 leaves an inner training set
    of one class, and the group level's own check refuses it up front, naming 3 / 2."""
    folds = _plan("--n-discovery", "16", "--n-external", "6")[2]
    assert folds.reduced and folds.n_inner < 5
    text = folds.describe()
    assert f"{folds.n_outer} outer folds, {folds.n_inner} inner folds" in text
    assert "reduced" in text and "responders" in text
    opts, design, smallest = _plan("--n-discovery", "10", "--n-external", "1")
    assert (smallest.n_outer, smallest.n_inner) == (3, 2)
    import numpy as np

    from ketabids.demo.cohort import demo_tables
    from ketabids.errors import UsageError
    from ketabids.group.labels import is_response
    from ketabids.group.nested import NestedCVSettings, check_scheme

    table = demo_tables(design, seed=opts.seed)["discovery"]
    ket = table[table["arm"] == "ketamine"]
    y = np.asarray(is_response(ket["madrs_pre"], ket["madrs_24h"])).astype(int)
    with pytest.raises(UsageError, match="one class only.*use --n-outer 3 --n-inner 2$"):
        check_scheme(y, ket["site"].to_numpy(), NestedCVSettings(n_outer=4, n_inner=2))


def test_demo_refuses_an_unsupported_size_before_any_work(tmp_path, capsys):
    from ketabids.cli.demo import run

    out = tmp_path / "demo"
    result = run([str(out), "--n-discovery", "4", "--n-external", "2"])
    assert result.exit_code == 64
    err = capsys.readouterr().err
    assert "--n-discovery 4" in err and "or more" in err and "Traceback" not in err
    assert not out.exists()  # nothing generated
    result = run([str(out), "--n-discovery", "30", "--saline-fraction", "0"])
    assert result.exit_code == 64 and "saline" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("code", [143, 129, 130])
def test_demo_stops_with_the_signal_exit_code_of_a_killed_step(monkeypatch, tmp_path, code,
                                                                capsys):
    """A step of the demo killed by SIGTERM/SIGHUP (exit 128 + signal) or Ctrl-C (130): the
    demo exits with the same code and its one line, not with a crash report (it raised
    ValueError: 143 is not a valid ExitCode)."""
    from ketabids.cli import demo as demo_cli
    from ketabids.cli.app import RunResult

    monkeypatch.setattr(demo_cli, "run_app", lambda argv: RunResult(code, error="stopped"))
    monkeypatch.setattr(demo_cli, "run_demo", lambda opts: demo_cli._cli(["participant"]))
    monkeypatch.chdir(tmp_path)
    result = demo_cli.run([str(tmp_path / "demo")])
    assert result.exit_code == code
    err = capsys.readouterr().err
    assert "unexpected" not in err and "crash" not in err  # no crash file named
