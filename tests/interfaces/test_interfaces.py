"""Interfaces on tiny images: the derivatives sink (names, sidecars, atomicity, no rewrite) and
the thin wrappers over the pure functions."""
from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest

from ketabids.bids.derivatives import derivative_relpath, source_entities
from ketabids.errors import BadDataError
from ketabids.interfaces.bids import DerivativesDataSink

SRC = "/bids/sub-01/ses-A/anat/sub-01_ses-A_run-2_T1w.nii.gz"


def _img(shape=(7, 8, 9), value=None, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    data = rng.random(shape).astype(dtype) if value is None else np.full(shape, value, dtype)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.set_data_dtype(dtype)
    return img


@pytest.fixture
def nifti(tmp_path):
    path = tmp_path / "in.nii.gz"
    nib.save(_img(), path)
    return path


def _sink(tmp_path, in_file, **kwargs):
    kwargs.setdefault("source_file", SRC)
    sink = DerivativesDataSink(base_directory=str(tmp_path / "out"), in_file=str(in_file),
                               **kwargs)
    return sink.run(cwd=str(tmp_path)).outputs


@pytest.mark.parametrize("entities, suffix, ext, expected", [
    ({"desc": "preproc"}, "T1w", ".nii.gz", "sub-01_ses-A_desc-preproc_T1w.nii.gz"),
    ({"label": "GM"}, "probseg", ".nii.gz", "sub-01_ses-A_label-GM_probseg.nii.gz"),
    ({"space": "MNI152NLin2009aSym", "label": "WM", "desc": "modulated"}, "probseg", ".nii.gz",
     "sub-01_ses-A_space-MNI152NLin2009aSym_label-WM_desc-modulated_probseg.nii.gz"),
    ({"desc": "modulated", "label": "GM", "space": "X"}, "probseg", ".nii.gz",  # order fixed
     "sub-01_ses-A_space-X_label-GM_desc-modulated_probseg.nii.gz"),
    ({"from_": "T1w", "to": "MNI152NLin2009aSym", "mode": "image"}, "xfm", ".h5",
     "sub-01_ses-A_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5"),
    ({"desc": "volumes"}, "morph", ".tsv", "sub-01_ses-A_desc-volumes_morph.tsv"),
])
def test_derivative_names(entities, suffix, ext, expected):
    rel = derivative_relpath(SRC, suffix=suffix, extension=ext, **entities)
    assert rel == f"sub-01/ses-A/anat/{expected}"  # run- of the source is dropped


def test_names_without_session_and_bad_labels():
    assert source_entities("sub-02_acq-fast_T1w.nii") == {"sub": "02"}
    assert derivative_relpath("sub-02_T1w.nii", suffix="dseg", extension=".nii.gz") == \
        "sub-02/anat/sub-02_dseg.nii.gz"
    with pytest.raises(ValueError, match="letters and digits"):
        derivative_relpath(SRC, suffix="probseg", extension=".nii.gz", label="G_M")
    with pytest.raises(ValueError, match="unknown entity"):
        derivative_relpath(SRC, suffix="probseg", extension=".nii.gz", hemi="L")
    with pytest.raises(ValueError, match="no sub- entity"):
        source_entities("T1w.nii.gz")


def test_sink_writes_bids_name_and_sidecar(tmp_path, nifti):
    out = _sink(tmp_path, nifti, suffix="probseg", space="MNI152NLin2009aSym", label="GM",
                desc="modulated", raw_sources=["bids:raw:sub-01/anat/x.nii.gz"],
                sources=["bids::sub-01/anat/y.nii.gz"], skull_stripped=False,
                meta_dict={"Modulation": "jacobian", "Resolution": 2.0})
    assert out.out_file.endswith(
        "out/sub-01/ses-A/anat/sub-01_ses-A_space-MNI152NLin2009aSym_label-GM_desc-modulated_"
        "probseg.nii.gz")
    meta = json.loads(open(out.out_meta).read())
    assert meta == {"Modulation": "jacobian", "Resolution": 2.0, "SkullStripped": False,
                    "Sources": ["bids::sub-01/anat/y.nii.gz"],
                    "RawSources": ["bids:raw:sub-01/anat/x.nii.gz"]}
    stored = nib.load(out.out_file)
    np.testing.assert_array_equal(stored.get_fdata(), nib.load(nifti).get_fdata())
    assert stored.header.get_xyzt_units()[0] == "mm"
    assert out.written is True


def test_sink_does_not_rewrite_identical_content(tmp_path, nifti):
    first = _sink(tmp_path, nifti, suffix="T1w", desc="preproc")
    mtimes = {p: os.stat(p).st_mtime_ns for p in (first.out_file, first.out_meta)}
    # the same image saved again (new gzip header timestamp): still not rewritten
    again = tmp_path / "again.nii.gz"
    os.utime(nifti, (1, 1))
    nib.save(nib.load(nifti), again)
    second = _sink(tmp_path, again, suffix="T1w", desc="preproc")
    assert second.written is False
    assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes
    # different content: rewritten
    changed = tmp_path / "changed.nii.gz"
    nib.save(_img(seed=1), changed)
    third = _sink(tmp_path, changed, suffix="T1w", desc="preproc")
    assert third.written is True
    np.testing.assert_array_equal(nib.load(third.out_file).get_fdata(),
                                  nib.load(changed).get_fdata())


def test_sink_output_bytes_are_deterministic(tmp_path, nifti):
    out = _sink(tmp_path, nifti, suffix="mask", desc="brain", data_dtype="uint8")
    raw = open(out.out_file, "rb").read()
    assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field is zero
    assert nib.load(out.out_file).get_data_dtype() == np.uint8
    assert gzip.decompress(raw)[:4] == (348).to_bytes(4, "little")  # a NIfTI-1 header


def test_sink_is_atomic(tmp_path, nifti, monkeypatch):
    """Files are written under a temporary name in the destination folder, then renamed."""
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    out = _sink(tmp_path, nifti, suffix="dseg")
    targets = {dst for _, dst in renames}
    assert {out.out_file, out.out_meta} <= targets
    for src, dst in renames:
        assert os.path.dirname(src) == os.path.dirname(dst)
        assert os.path.basename(src).startswith(".")
    leftovers = [p for p in (tmp_path / "out").rglob(".*") if p.is_file()]
    assert leftovers == []


def test_sink_failed_write_leaves_no_partial_file(tmp_path, nifti, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        _sink(tmp_path, nifti, suffix="dseg")
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_sink_root_file_and_tsv(tmp_path):
    report = tmp_path / "r.html"
    report.write_text("<html></html>")
    out = _sink(tmp_path, report, suffix="report", root_name="sub-01.html")
    assert out.out_file == str(tmp_path / "out" / "sub-01.html")
    assert not (tmp_path / "out" / "sub-01.json").exists()
    table = tmp_path / "v.tsv"
    table.write_text("tiv_ml\tgm_ml\n1.0\t0.5\n")
    out = _sink(tmp_path, table, suffix="morph", desc="volumes",
                meta_dict={"tiv_ml": {"Units": "mL"}})
    assert out.out_file.endswith("sub-01_ses-A_desc-volumes_morph.tsv")
    assert json.loads(open(out.out_meta).read()) == {"tiv_ml": {"Units": "mL"}}


# ----------------------------------------------------------------------------- thin wrappers
def test_conform_interface(tmp_path):
    from ketabids.interfaces.anatomical import Conform

    src = tmp_path / "sub-01_T1w.nii.gz"
    img = _img()
    nib.save(nib.Nifti1Image((np.asanyarray(img.dataobj) * 100).astype("int16"),
                             np.diag([-1.0, 1.0, 1.0, 1.0])), src)
    out = Conform(in_file=str(src)).run(cwd=str(tmp_path)).outputs
    conformed = nib.load(out.out_file)
    assert conformed.get_data_dtype() == np.float32
    assert nib.aff2axcodes(conformed.affine) == ("R", "A", "S")
    assert json.loads(open(out.out_info).read())  # info written


def test_conform_interface_refuses_4d(tmp_path):
    from ketabids.interfaces.anatomical import Conform

    src = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((7, 8, 9, 2), "float32"), np.eye(4)), src)
    with pytest.raises(BadDataError, match="4D"):
        Conform(in_file=str(src)).run(cwd=str(tmp_path))


def test_tissue_volumes_interface(tmp_path):
    """Volumes = sum of probabilities x voxel volume (2 mm voxels = 0.008 mL)."""
    import pandas as pd

    from ketabids.interfaces.anatomical import TissueVolumes

    shape = (7, 8, 9)
    files = {}
    for name, value in (("gm", 0.5), ("wm", 0.25), ("csf", 0.25)):
        files[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(_img(shape, value=value), files[name])
    out = TissueVolumes(**files).run(cwd=str(tmp_path)).outputs
    table = pd.read_csv(out.out_file, sep="\t")
    assert list(table.columns) == ["tiv_ml", "gm_ml", "wm_ml", "csf_ml"]
    n = np.prod(shape) * 0.008
    assert table.loc[0, "gm_ml"] == pytest.approx(0.5 * n, abs=1e-3)
    assert table.loc[0, "tiv_ml"] == pytest.approx(n, abs=1e-3)


def test_regional_volumes_interface(tmp_path):
    import pandas as pd

    from ketabids.interfaces.anatomical import RegionalVolumes

    shape = (7, 8, 9)
    gm = tmp_path / "gm.nii.gz"
    nib.save(_img(shape, value=1.0), gm)
    atlas = np.zeros(shape, "int16")
    atlas[:3] = 1
    atlas[3:5] = 2
    nib.save(nib.Nifti1Image(atlas, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "atlas.nii.gz")
    (tmp_path / "atlas.tsv").write_text("index\tname\n1\tleft\n2\tright\n")
    out = RegionalVolumes(in_file=str(gm), atlas=str(tmp_path / "atlas.nii.gz"),
                          atlas_labels=str(tmp_path / "atlas.tsv")).run(cwd=str(tmp_path))
    table = pd.read_csv(out.outputs.out_file, sep="\t")
    assert list(table["name"]) == ["left", "right"]
    assert table["gm_ml"].tolist() == pytest.approx([3 * 8 * 9 * 0.008, 2 * 8 * 9 * 0.008],
                                                    abs=1e-3)


def test_atlas_labels_need_index_and_name(tmp_path):
    from ketabids.anat.atlas import read_atlas_labels

    bad = tmp_path / "labels.tsv"
    bad.write_text("id\tlabel\n1\tx\n")
    with pytest.raises(BadDataError, match="index and name"):
        read_atlas_labels(bad)


def test_report_interfaces(tmp_path):
    from ketabids.interfaces.reports import AssembleReport, ReportSection

    t1w, mask, dseg = (tmp_path / f"{n}.nii.gz" for n in ("t1w", "mask", "dseg"))
    nib.save(_img((16, 17, 18)), t1w)
    m = np.zeros((16, 17, 18), "uint8")
    m[4:12, 4:13, 4:14] = 1
    nib.save(nib.Nifti1Image(m, np.eye(4)), mask)
    nib.save(nib.Nifti1Image(m * 2, np.eye(4)), dseg)
    volumes = tmp_path / "v.tsv"
    volumes.write_text("tiv_ml\tgm_ml\twm_ml\tcsf_ml\n1500.0\t700.0\t600.0\t200.0\n")
    section = ReportSection(subject="01", session="A", source_file="sub-01_ses-A_T1w.nii.gz",
                            template="MNI152NLin2009aSym", t1w_preproc=str(t1w),
                            t1w_mask=str(mask), t1w_dseg=str(dseg), skull_stripped=True,
                            volumes=str(volumes), notes=["2 T1w <matched>"]
                            ).run(cwd=str(tmp_path)).outputs.out_file
    report = AssembleReport(subject="01", sections=[section], methods="We did X & Y.",
                            settings={"seed": 1}, versions={"ketabids": "0.1"}
                            ).run(cwd=str(tmp_path)).outputs.out_file
    text = open(report).read()
    # no std_t1w given: the segmentation strips only, one per axis
    assert text.count("data:image/png;base64,") == 3
    assert "already skull-stripped" in text
    assert "2 T1w &lt;matched&gt;" in text  # escaped
    assert "We did X &amp; Y." in text and "1500.00" in text and "ses-A" in text
