"""End-to-end participant runs on a tiny phantom BIDS dataset (fast mode, 3 mm phantoms).

One module-scoped run processes sub-01 (two T1w runs: the first is used), sub-02 (a 4D "T1w":
must fail without stopping the others) and sub-03 (one session). The tests then check the output
list against ``tests/data/participant_outputs.txt``, the BIDS validator, the sidecars, the
report, a rerun (nothing rewritten) and seed determinism (two fresh processes, 1 thread).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

TEMPLATE = "MNI152NLin2009aSym"
EXPECTED = Path(__file__).parents[1] / "data" / "participant_outputs.txt"


def phantom_t1w(seed: int = 0, zoom: float = 3.0, shift=(2.0, -3.0, 1.0)):
    """The embedded template brain resampled to ``zoom`` mm, shifted, with a little noise."""
    import nibabel as nib
    from nilearn.image import resample_img

    from ketabids.templates import get_template

    tpl = get_template(resolution=2)
    src = nib.load(tpl.brain)
    target = np.diag([zoom, zoom, zoom, 1.0])
    target[:3, 3] = np.asarray(src.affine[:3, 3]) + np.asarray(shift)
    shape = tuple(int(np.ceil(s * 2.0 / zoom)) for s in src.shape)
    img = resample_img(src, target_affine=target, target_shape=shape, interpolation="linear",
                       force_resample=True, copy_header=True)
    rng = np.random.default_rng(seed)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    data = data * 1000.0 / max(float(data.max()), 1e-6)
    data += rng.normal(0, 5, data.shape).astype(np.float32)
    data = np.clip(data, 0, None)
    out = nib.Nifti1Image(data.astype(np.float32), target)
    out.header.set_xyzt_units("mm", "sec")
    out.set_qform(target, code=1)
    out.set_sform(target, code=1)
    return out


def make_phantom_bids(root, spec: dict, *, bad: tuple = ()) -> Path:
    """A raw BIDS dataset: ``spec`` maps subject -> list of T1w name parts (e.g.
    ``["T1w", "run-2_T1w"]``) or -> {"ses-A": [...]}. Subjects in ``bad`` get a 4D T1w."""
    import nibabel as nib

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "phantom", "BIDSVersion": "1.10.0", "DatasetType": "raw",
         "Authors": ["ketabids tests"], "License": "CC0"}, indent=2))
    (root / "README").write_text("Phantom dataset for ketabids tests.\n")
    lines = ["participant_id\tage\tsex"] + [f"sub-{s}\t40\tF" for s in spec]
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    seed = 0
    for subject, content in spec.items():
        sessions = content if isinstance(content, dict) else {None: content}
        for session, items in sessions.items():
            folder = root / f"sub-{subject}" / (session or "") / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            prefix = f"sub-{subject}" + (f"_{session}" if session else "")
            for item in items:
                img = phantom_t1w(seed=seed)
                if subject in bad:
                    data = np.stack([np.asanyarray(img.dataobj)] * 2, axis=-1)
                    img = nib.Nifti1Image(data, img.affine)
                    img.header.set_xyzt_units("mm", "sec")
                nib.save(img, folder / f"{prefix}_{item}.nii.gz")
                (folder / f"{prefix}_{item}.json").write_text(json.dumps(
                    {"RepetitionTime": 2.3, "EchoTime": 0.003, "FlipAngle": 8,
                     "MagneticFieldStrength": 3}))
                seed += 1
    return root


def _outputs(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).parts[0] != "logs")


def _mtimes(root: Path) -> dict[str, int]:
    return {rel: (root / rel).stat().st_mtime_ns for rel in _outputs(root)}


def _toy_atlas(folder: Path) -> Path:
    """Two regions on the 2 mm template grid: left (x < 0 mm) and right hemisphere."""
    from ketabids.templates import get_template

    folder.mkdir(parents=True)
    grid = nib.load(get_template(TEMPLATE, 2).gm)
    i = np.arange(grid.shape[0])
    x = grid.affine[0, 0] * i + grid.affine[0, 3]
    labels = np.broadcast_to(np.where(x < 0, 1, 2)[:, None, None], grid.shape)
    path = folder / f"tpl-{TEMPLATE}_res-02_atlas-Toy_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels.astype("int16"), grid.affine), path)
    (folder / f"tpl-{TEMPLATE}_res-02_atlas-Toy_dseg.tsv").write_text(
        "index\tname\n1\tleft\n2\tright\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ketabids.runner import run_participant

    base = tmp_path_factory.mktemp("participant")
    bids = make_phantom_bids(base / "bids", {"01": ["T1w", "run-2_T1w"], "02": ["T1w"],
                                             "03": {"ses-1": ["T1w"]}}, bad=("02",))
    out, work = base / "out", base / "work"
    atlas = _toy_atlas(base / "atlas")
    # --keep-work: the rerun tests below check that finished steps are reused, not rewritten
    kwargs = dict(bids_dir=bids, output_dir=out, work_dir=work, subjects=["01", "02", "03"],
                  sessions=None, bids_filters=None, processing="fast", seed=7, omp_nthreads=1,
                  atlas=str(atlas), keep_work=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIPYPE_NO_ET", "1")
        summary = run_participant(**kwargs)
    return {"bids": bids, "out": out, "work": work, "summary": summary, "kwargs": kwargs}


def test_output_list_matches_expected(run):
    expected = [ln for ln in EXPECTED.read_text().splitlines() if ln and not ln.startswith("#")]
    assert _outputs(run["out"]) == expected


def test_failing_subject_does_not_stop_the_others(run):
    summary = run["summary"]
    assert summary["ok"] == ["01", "03"]
    assert summary["failed"] == ["02"]
    assert "4D" in summary["errors"]["02"]
    # found by the input check before the graph ran: no crash file, nothing of it in the graph
    assert summary["unusable"] == ["02"] and "02" not in summary["crash_files"]
    assert "sub-02_T1w.nii.gz" in summary["errors"]["02"]
    assert set(summary["reports"]) == {"01", "03"}
    assert summary["inputs"]["01"][0].endswith("sub-01_T1w.nii.gz")  # first in BIDS order


def test_summary_names_each_failed_subject_and_its_crash_file(run, caplog):
    import logging

    from ketabids.runner.participant import _log_summary

    with caplog.at_level(logging.INFO, logger="ketabids"):
        _log_summary(run["summary"], run["out"])
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and failed[0].startswith("sub-02 failed: ") and "4D" in failed[0]
    assert "sub-02_T1w.nii.gz" in failed[0]  # the file and the fix, not a crash file
    assert "2 of 3 subject(s) done" in caplog.records[-1].getMessage()


def test_bids_validator_accepts_the_outputs(run):
    exe = shutil.which("bids-validator-deno") or str(Path(sys.executable).parent /
                                                     "bids-validator-deno")
    if not Path(exe).exists():
        pytest.skip("bids-validator-deno is not installed")
    proc = subprocess.run([exe, str(run["out"]), "--format", "json"], capture_output=True,
                          text=True, timeout=300)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == []


def test_sidecars_and_tables(run):
    anat = run["out"] / "sub-01" / "anat"
    mod = anat / f"sub-01_space-{TEMPLATE}_label-GM_desc-modulated_probseg.json"
    meta = json.loads(mod.read_text())
    assert meta["Template"] == TEMPLATE and meta["Resolution"] == 2.0
    assert meta["Modulation"] == "jacobian" and meta["SoftwareVersion"]
    assert meta["Sources"] and meta["RawSources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    assert json.loads((anat / "sub-01_desc-preproc_T1w.json").read_text())["SkullStripped"] \
        in (True, False)
    for nifti in anat.glob("*.nii.gz"):
        assert nifti.with_name(nifti.name.replace(".nii.gz", ".json")).is_file()
    volumes = pd.read_csv(anat / "sub-01_desc-volumes_morph.tsv", sep="\t")
    assert list(volumes.columns) == ["tiv_ml", "gm_ml", "wm_ml", "csf_ml"] and len(volumes) == 1
    row = volumes.iloc[0]
    assert row.tiv_ml == pytest.approx(row.gm_ml + row.wm_ml + row.csf_ml, rel=1e-3)
    # modulation preserves volume: template-space GM integrates to the native GM volume
    gm_mod = nib.load(anat / f"sub-01_space-{TEMPLATE}_label-GM_desc-modulated_probseg.nii.gz")
    integral = gm_mod.get_fdata().sum() * np.prod(gm_mod.header.get_zooms()[:3]) / 1000
    assert integral == pytest.approx(row.gm_ml, rel=0.15)
    assert gm_mod.shape == (99, 117, 95)  # the 2 mm template grid
    regional = pd.read_csv(anat / f"sub-01_space-{TEMPLATE}_seg-Toy_desc-regional_morph.tsv",
                           sep="\t")
    assert regional["name"].tolist() == ["left", "right"]
    assert regional["gm_ml"].sum() == pytest.approx(integral, rel=1e-3)
    dictionary = json.loads((anat / "sub-01_desc-volumes_morph.json").read_text())
    assert set(dictionary) >= {"tiv_ml", "gm_ml", "wm_ml", "csf_ml", "Sources"}
    ses = run["out"] / "sub-03" / "ses-1" / "anat"
    assert (ses / f"sub-03_ses-1_space-{TEMPLATE}_label-GM_desc-modulated_probseg.nii.gz"
            ).is_file()


def test_group_level_finds_the_maps(run):
    from bids import BIDSLayout

    layout = BIDSLayout(run["out"], validate=False, is_derivative=True)
    maps = layout.get(space=TEMPLATE, label="GM", desc="modulated", suffix="probseg",
                      extension=".nii.gz", return_type="file")
    assert [Path(m).name.split("_")[0] for m in sorted(maps)] == ["sub-01", "sub-03"]


def test_report(run):
    text = (run["out"] / "sub-01.html").read_text()
    # 3 segmentation strips + 3 x (subject, template) strips of the normalisation flicker
    assert text.count("data:image/png;base64,") == 9
    assert 'class="verdict' in text.split("<section")[0]
    assert "sub-01_run-2_T1w.nii.gz" in text  # the skipped run is named
    assert "Jacobian determinant" in text and "partial-volume" in text  # methods paragraph
    assert "antspyx" in text and "fast" in text  # versions and settings
    assert "ses-1" in (run["out"] / "sub-03.html").read_text()
    # the failed subject: a page with its error in one line and the crash file
    failed = (run["out"] / "sub-02.html").read_text()
    # found by the input check before the graph: no crash file, the page says so
    assert "4D with shape" in failed and "02" not in run["summary"]["crash_files"]
    assert "No crash file was written" in failed
    assert run["summary"]["failure_reports"] == {"02": str(run["out"] / "sub-02.html")}
    qc = pd.read_csv(run["out"] / "qc.tsv", sep="\t").set_index("participant_id")
    assert qc.loc["sub-02", "verdict"] == "fail" and "4D" in qc.loc["sub-02", "reasons"]


def test_rerun_rewrites_nothing(run):
    from ketabids.runner import run_participant

    before = _mtimes(run["out"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIPYPE_NO_ET", "1")
        summary = run_participant(**run["kwargs"])
    assert summary["ok"] == ["01", "03"] and summary["failed"] == ["02"]
    # the failed subject's page too: its input check gives the same error, the same page
    after = _mtimes(run["out"])
    assert after == before


def test_deleted_outputs_come_back_on_rerun(run):
    from ketabids.runner import run_participant

    lost = run["out"] / "sub-01" / "anat" / f"sub-01_space-{TEMPLATE}_label-GM_probseg.nii.gz"
    report = run["out"] / "sub-03.html"
    lost.unlink()
    report.unlink()
    before = _mtimes(run["out"])
    before.pop("sub-02.html")  # names this run's crash file
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIPYPE_NO_ET", "1")
        run_participant(**run["kwargs"])
    assert lost.is_file() and report.is_file()
    assert {k: v for k, v in _mtimes(run["out"]).items() if k in before} == before


_RUN_ONE = """
import sys
from ketabids.runner import run_participant
s = run_participant(bids_dir=sys.argv[1], output_dir=sys.argv[2], work_dir=sys.argv[3],
                    subjects=["01"], sessions=None, bids_filters=None, processing="fast", seed=11,
                    omp_nthreads=1)
assert s["ok"] == ["01"], s
"""


def _image_hashes(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(np.ascontiguousarray(nib.load(p).get_fdata()).tobytes()
                                   ).hexdigest() for p in root.rglob("*.nii.gz")}


@pytest.fixture(scope="module")
def twin_runs(run, tmp_path_factory):
    """sub-01 processed twice from scratch in fresh processes with --seed and 1 thread."""
    hashes = []
    env = dict(os.environ, NIPYPE_NO_ET="1")
    env.pop("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", None)
    for index in range(2):
        base = tmp_path_factory.mktemp(f"twin{index}")
        subprocess.run([sys.executable, "-c", _RUN_ONE, str(run["bids"]), str(base / "out"),
                        str(base / "work")], check=True, env=env, timeout=900,
                       capture_output=True)
        hashes.append(_image_hashes(base / "out"))
    return hashes


def test_seed_gives_identical_bias_correction(twin_runs):
    first, second = twin_runs
    assert set(first) == set(second) and len(first) == 11
    assert first["sub-01_desc-preproc_T1w.nii.gz"] == second["sub-01_desc-preproc_T1w.nii.gz"]


def test_seed_gives_identical_segmentation_and_vbm_maps(twin_runs):
    first, second = twin_runs
    assert first == second


def test_skull_stripped_input_is_reported(real_t1w_dir, tmp_path):
    """The stroke scan is a skull-stripped (and cropped) brain: the report says so and the
    T1w sidecars carry SkullStripped: true."""
    from ketabids.runner import run_participant

    scan = real_t1w_dir / "cstar-stroke_desc-brain_T1w.nii.gz"
    if not scan.is_file():
        pytest.skip(f"{scan} is absent")
    bids = tmp_path / "bids"
    anat = bids / "sub-stroke" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(scan, anat / "sub-stroke_T1w.nii.gz")
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "stroke", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIPYPE_NO_ET", "1")
        summary = run_participant(bids_dir=bids, output_dir=tmp_path / "out",
                                  work_dir=tmp_path / "work", subjects=["stroke"],
                                  sessions=None, bids_filters=None, processing="fast", seed=1,
                                  omp_nthreads=1)
    assert summary["ok"] == ["stroke"], summary
    out = tmp_path / "out"
    assert "The input was already skull-stripped" in (out / "sub-stroke.html").read_text()
    for name in ("sub-stroke_desc-preproc_T1w.json",
                 f"sub-stroke_space-{TEMPLATE}_desc-preproc_T1w.json"):
        assert json.loads((out / "sub-stroke" / "anat" / name).read_text())["SkullStripped"] \
            is True
