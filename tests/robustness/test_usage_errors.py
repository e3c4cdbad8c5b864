"""Issue 11, findings 1, 11, 13, 14 and added cases: user errors end in one line and an exit code,
nothing is created before the checks pass, no traceback reaches the terminal.

These runs stop before any imaging, so they take a second each.
"""
from __future__ import annotations

import json

import pytest

from .conftest import assert_one_line_error, files_under, run_process, tmpfs
from .data import add_t1w, write_raw_dataset

BAD_FILTER = {"t1w": {"acquisitio": "mprage"}}


@pytest.fixture
def small_bids(tmp_path):
    """Two subjects with tiny (3 mm phantom) T1w images; no imaging runs in this module."""
    bids = write_raw_dataset(tmp_path / "bids", ["01", "02"],
                             participants={"age": [30, 40], "sex": ["F", "M"]})
    for i, subject in enumerate(["01", "02"]):
        add_t1w(bids, subject, seed=i)
    return bids


# --------------------------------------------------------------------------- finding 1
def test_filter_file_unknown_entity_participant(cli, small_bids, tmp_path):
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps(BAD_FILTER))
    res = cli(small_bids, tmp_path / "out", "participant", "--bids-filter-file", filt,
              "--skip-bids-validation")
    line = assert_one_line_error(res, str(filt), "acquisitio")
    assert res.code in (64, 65)
    assert "acquisition" in line  # the fix: the entity it should have been


def test_filter_file_unknown_entity_group(cli, study_copy, tmp_path):
    bids, out = study_copy
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps(BAD_FILTER))
    res = cli(bids, out, "group", "--response-from", "madrs_pre", "madrs_24h",
              "--bids-filter-file", filt, "--skip-bids-validation")
    assert_one_line_error(res, str(filt), "acquisitio")
    assert res.code in (64, 65)
    assert not (out / "group").exists()


def test_filter_file_not_json(cli, small_bids, tmp_path):
    filt = tmp_path / "filter.json"
    filt.write_text("{t1w: acquisition}")
    res = cli(small_bids, tmp_path / "out", "participant", "--bids-filter-file", filt,
              "--skip-bids-validation")
    assert_one_line_error(res, str(filt), "JSON", code=65)


# --------------------------------------------------------------------------- finding 11
def test_output_dir_not_created_unknown_participant(cli, small_bids, tmp_path):
    out = tmp_path / "out"
    res = cli(small_bids, out, "participant", "--participant-label", "99",
              "--skip-bids-validation")
    assert_one_line_error(res, "sub-99", code=18)
    assert not out.exists()


def test_output_dir_not_created_missing_template(cli, small_bids, tmp_path):
    out = tmp_path / "out"
    res = cli(small_bids, out, "participant", "--template", "NoSuchTemplate",
              "--skip-bids-validation")
    assert_one_line_error(res, "NoSuchTemplate")
    assert res.code in (64, 66)
    assert not out.exists()


def test_output_dir_not_created_validation_failed(cli, small_bids, tmp_path):
    import shutil

    if shutil.which("bids-validator-deno") is None and not (
            __import__("pathlib").Path(__import__("sys").executable).parent
            / "bids-validator-deno").exists():
        pytest.skip("bids-validator-deno is not installed")
    (small_bids / "dataset_description.json").write_text("{}")  # invalid: no Name/BIDSVersion
    out = tmp_path / "out"
    res = cli(small_bids, out, "participant")
    assert res.code == 16
    assert "Traceback" not in res.err
    assert not out.exists()


def test_output_dir_inside_bids_dir_refused(cli, small_bids):
    out = small_bids / "code" / "ketabids"
    res = cli(small_bids, out, "participant", "--skip-bids-validation")
    assert_one_line_error(res, "inside BIDS_DIR", "derivatives", code=64)
    assert not out.exists()


# --------------------------------------------------------------------------- finding 13
def test_unwritable_work_dir(cli, small_bids, tmp_path):
    """The work folder exists but cannot be written (a read-only file system; as root, mode
    bits do not stop writes, so a read-only tmpfs stands in for 'chmod a-w')."""
    import os

    out = tmp_path / "out"
    work = tmp_path / "work"
    with tmpfs(work, "1m", readonly=True) as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("root without mount permission: cannot make an unwritable folder")
            work.chmod(0o555)
        res = cli(small_bids, out, "participant", "-w", work, "--fast", "--skip-bids-validation")
        if not mounted:
            work.chmod(0o755)
    assert_one_line_error(res, str(work), "--work-dir", code=73)
    assert not list(out.glob("sub-*")) and not (out / "logs").exists()


def test_unwritable_output_dir(cli, small_bids, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "out"
    res = cli(small_bids, out, "participant", "--skip-bids-validation")
    assert_one_line_error(res, str(out), code=73)


# --------------------------------------------------------------------------- finding 14
def test_available_labels_say_how_many(cli, tmp_path):
    from ketabids.testing import make_bids_tree

    labels = [f"{i:02d}" for i in range(1, 26)]
    bids = make_bids_tree(tmp_path / "bids", {s: {"anat": ["T1w"]} for s in labels})
    res = cli(bids, tmp_path / "out", "participant", "--participant-label", "99",
              "--skip-bids-validation")
    line = assert_one_line_error(res, "sub-99", code=18)
    assert "25" in line


# --------------------------------------------------------------------------- added cases
def test_unknown_analysis_level(cli, small_bids, tmp_path):
    res = cli(small_bids, tmp_path / "out", "participants", "--skip-bids-validation")
    assert_one_line_error(res, "participants", code=17)
    assert not (tmp_path / "out").exists()


def test_missing_bids_dir(cli, tmp_path):
    res = cli(tmp_path / "nope", tmp_path / "out", "participant")
    assert_one_line_error(res, str(tmp_path / "nope"), code=66)
    assert not (tmp_path / "out").exists()


def test_unknown_option_is_usage_error(cli, small_bids, tmp_path):
    res = cli(small_bids, tmp_path / "out", "participant", "--n-outter", "3")
    assert_one_line_error(res, "--n-outter", code=64)
    assert not (tmp_path / "out").exists()


def test_unexpected_error_gives_line_and_crash_file(cli, small_bids, tmp_path, monkeypatch):
    import argparse

    def boom(self, *args, **kwargs):
        raise RuntimeError("injected fault")

    # a programming error inside the command (argparse is the one dependency every path uses)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", boom)
    try:
        res = cli(small_bids, tmp_path / "out", "participant", "--skip-bids-validation")
    except RuntimeError:
        pytest.fail("the exception escaped ketabids.cli.main")
    line = assert_one_line_error(res, "injected fault")
    assert res.code == 1
    crash = [w for w in line.split() if "crash" in w]
    assert crash, line


def test_tracebacks_never_reach_the_terminal(small_bids, tmp_path):
    """A subprocess with a bad option: the terminal shows one line, the code is 64."""
    res = run_process(small_bids, tmp_path / "out", "participant", "--nprocs", "zero")
    assert_one_line_error(res, "--nprocs", code=64)
    assert files_under(tmp_path / "out") == []
