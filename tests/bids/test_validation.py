"""ketabids.bids.validation: the official BIDS validator, run offline, summarised, errors
raised."""
import json
import os
import stat
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ketabids.bids.validation import find_validator, parse_report, validate_bids
from ketabids.errors import BIDSValidationError, ExitCode, KetabidsError, MissingInputError


def _nifti(path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((7, 8, 9), dtype=np.int16), np.diag([1.0, 1.1, 1.2, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def make_tree(root: Path, files: dict) -> Path:
    """Write ``{relative path: content}``: dict -> JSON, str -> text, None -> tiny NIfTI."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            _nifti(path)
        elif isinstance(content, dict):
            path.write_text(json.dumps(content))
        else:
            path.write_text(content)
    return root


RAW = {
    "dataset_description.json": {"Name": "tiny", "BIDSVersion": "1.10.0", "Authors": ["A", "B"]},
    "README.md": "A tiny dataset written by the ketabids tests.\n" * 5,
    "participants.tsv": "participant_id\tage\tsex\nsub-01\t30\tF\nsub-02\t41\tM\n",
    "sub-01/anat/sub-01_T1w.nii.gz": None,
    "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz": None,
}


@pytest.fixture
def validator():
    try:
        return find_validator()
    except MissingInputError as exc:
        pytest.skip(f"official validator not installed: {exc}")


@pytest.fixture
def raw_tree(tmp_path):
    return make_tree(tmp_path / "raw dataset", RAW)  # a space in the path on purpose


def test_valid_tree_passes_with_warnings(validator, raw_tree):
    summary = validate_bids(raw_tree)
    assert summary.ok and summary.n_errors == 0 and summary.errors == ()
    assert summary.n_warnings >= 1  # recommended sidecar keys are missing
    assert "SIDECAR_KEY_RECOMMENDED" in summary.warning_codes
    assert set(summary.subjects) == {"01", "02"}
    assert summary.schema_version and summary.seconds > 0
    assert str(summary).startswith(f"BIDS validation of {raw_tree}: 0 error(s)")


def test_broken_tree_raises_exit_16(validator, raw_tree):
    (raw_tree / "dataset_description.json").unlink()
    (raw_tree / "sub-01/anat/sub-01_T1w.nii.gz").rename(raw_tree / "sub-01/anat/sub-01_T1x.nii.gz")
    with pytest.raises(BIDSValidationError) as info:
        validate_bids(raw_tree)
    error = info.value
    assert error.exit_code == ExitCode.VALIDATION_FAILED == 16
    message = str(error)
    assert "\n" not in message
    assert str(raw_tree) in message
    assert "MISSING_DATASET_DESCRIPTION" in message and "NOT_INCLUDED" in message
    assert message.endswith("fix the dataset or rerun with --skip-bids-validation")
    summary = error.summary
    assert summary.n_errors == 2 and set(summary.error_codes) == {
        "MISSING_DATASET_DESCRIPTION",
        "NOT_INCLUDED",
    }
    not_included = next(i for i in summary.errors if i.code == "NOT_INCLUDED")
    assert not_included.files == ("/sub-01/anat/sub-01_T1x.nii.gz",)


def test_derivative_dataset(validator, tmp_path, raw_tree):
    deriv = make_tree(
        tmp_path / "out",
        {
            "dataset_description.json": {
                "Name": "ketabids",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "ketabids"}],
            },
            "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz": None,
            "sub-01/anat/sub-01_desc-preproc_T1w.json": {"SkullStripped": False},
            "sub-01/anat/sub-01_desc-volumes_morph.tsv": "tiv_ml\n1500\n",
        },
    )
    # the custom TSV is not in the specification: an error unless .bidsignore'd
    with pytest.raises(BIDSValidationError, match="NOT_INCLUDED"):
        validate_bids(deriv, derivative=True)
    (deriv / ".bidsignore").write_text("*_morph.tsv\n*_morph.json\n")
    assert validate_bids(deriv, derivative=True).ok
    # a raw dataset given where a derivative one is expected: refused before running anything
    with pytest.raises(BIDSValidationError, match='DatasetType is "raw"'):
        validate_bids(raw_tree, derivative=True)


def test_parse_report_groups_and_formats():
    report = {
        "issues": {
            "issues": [
                {"code": "NOT_INCLUDED", "severity": "error", "location": f"/sub-0{i}/x.nii"}
                for i in range(1, 6)
            ]
            + [
                {"code": "MISSING_DATASET_DESCRIPTION", "severity": "error",
                 "affects": ["/dataset_description.json"]},
                {"code": "SIDECAR_KEY_RECOMMENDED", "subCode": "Manufacturer",
                 "severity": "warning", "location": "/sub-01/x.nii"},
                {"code": "SIDECAR_KEY_RECOMMENDED", "subCode": "StationName",
                 "severity": "warning", "location": "/sub-01/x.nii"},
                {"code": "SOMETHING_IGNORED", "severity": "ignore", "location": "/x"},
            ]
            + [{"code": f"W{i}", "severity": "warning"} for i in range(4)],
            "codeMessages": {
                "NOT_INCLUDED": "Files with such naming scheme are not part of BIDS "
                "specification. "
                "This error is most commonly caused by typos.\nMore text.",
            },
        },
        "summary": {"schemaVersion": "1.2.7", "subjects": ["01"]},
    }
    summary = parse_report(report, "/data", seconds=1.25)
    assert summary.n_errors == 6 and summary.n_warnings == 6
    assert summary.error_codes == ("NOT_INCLUDED", "MISSING_DATASET_DESCRIPTION")
    first = summary.errors[0]
    assert first.count == 5 and len(first.files) == 5
    assert first.message == "Files with such naming scheme are not part of BIDS specification."
    assert summary.errors[1].files == ("/dataset_description.json",)  # from "affects"
    sidecar = summary.warnings[0]
    assert sidecar.count == 2 and sidecar.files == ("/sub-01/x.nii",)
    assert sidecar.sub_codes == ("Manufacturer", "StationName")
    text = summary.format(max_issues=3, max_files=2)
    lines = text.splitlines()
    assert lines[0] == "BIDS validation of /data: 6 error(s), 6 warning(s) in 1.2 s " + (
        f"(bids-validator {summary.validator_version}, schema 1.2.7)"
        if summary.validator_version
        else "(schema 1.2.7)"
    )
    assert lines[1].startswith("  ERROR NOT_INCLUDED (x5): Files with such naming")
    assert lines[2] == "      files: /sub-01/x.nii, /sub-02/x.nii and 3 more"
    assert "WARNING SIDECAR_KEY_RECOMMENDED (x2) [Manufacturer, StationName]" in text
    assert lines[-1] == "  ... and 4 more code(s): W0, W1, W2, W3"
    with pytest.raises(KetabidsError, match="unexpected output"):
        parse_report({"summary": {}}, "/data")


def _fake_python_dir(tmp_path, monkeypatch, script: str | None) -> Path:
    """Pretend Python lives in tmp_path/bin, with ``script`` as its validator; empty PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    if script is not None:
        exe = bindir / "bids-validator-deno"
        exe.write_text(script)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bindir


def test_missing_validator(tmp_path, monkeypatch, raw_tree):
    _fake_python_dir(tmp_path, monkeypatch, None)
    with pytest.raises(MissingInputError) as info:
        validate_bids(raw_tree)
    assert info.value.exit_code == 66
    assert "pip install bids-validator-deno" in str(info.value)
    assert "--skip-bids-validation" in str(info.value)


def test_validator_next_to_python_wins_over_path(tmp_path, monkeypatch):
    bindir = _fake_python_dir(tmp_path, monkeypatch, "#!/bin/sh\nexit 0\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "bids-validator-deno").write_text("#!/bin/sh\nexit 0\n")
    (other / "bids-validator-deno").chmod(0o755)
    monkeypatch.setenv("PATH", str(other))
    assert find_validator() == bindir / "bids-validator-deno"
    (bindir / "bids-validator-deno").unlink()
    assert find_validator() == other / "bids-validator-deno"


def test_argument_list_and_failures(tmp_path, monkeypatch, raw_tree):
    argv_file = tmp_path / "argv.txt"
    report = json.dumps({"issues": {"issues": [], "codeMessages": {}}, "summary": {}})
    script = (
        "#!/bin/sh\n"
        f"for a in \"$@\"; do echo \"$a\" >> '{argv_file}'; done\n"
        f"echo '{report}'\n"
    )
    _fake_python_dir(tmp_path, monkeypatch, script)
    assert validate_bids(raw_tree).ok
    # one argument per line: the path with a space arrived whole (no shell word splitting)
    assert argv_file.read_text().splitlines() == [str(raw_tree), "--format", "json"]

    exe = Path(sys.executable).parent / "bids-validator-deno"
    exe.write_text("#!/bin/sh\necho 'error: Uncaught UnknownIssueCodeError: boom' >&2\nexit 1\n")
    crash = "failed .exit 1: error: Uncaught UnknownIssueCodeError"
    with pytest.raises(KetabidsError, match=crash) as info:
        validate_bids(raw_tree)
    assert info.value.exit_code == 1 and "--skip-bids-validation" in str(info.value)

    exe.write_text("#!/bin/sh\nexec /bin/sleep 5\n")
    with pytest.raises(KetabidsError, match="did not finish within 0.3 s"):
        validate_bids(raw_tree, timeout=0.3)


def test_missing_dataset(tmp_path):
    with pytest.raises(MissingInputError, match="no such dataset folder"):
        validate_bids(tmp_path / "nope")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_read_only_dataset_is_fine(validator, raw_tree):
    """Containers mount the dataset read-only: validation must not need to write into it."""
    modes = {}
    for path in [raw_tree, *raw_tree.rglob("*")]:
        modes[path] = path.stat().st_mode
        path.chmod(modes[path] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        before = sorted(p.relative_to(raw_tree) for p in raw_tree.rglob("*"))
        assert validate_bids(raw_tree).ok
        assert sorted(p.relative_to(raw_tree) for p in raw_tree.rglob("*")) == before
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
