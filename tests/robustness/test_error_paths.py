"""Issue 11, added cases: options per mode, crash files, signals, disk full in the error path,
input checks and publishing as units (fast: no imaging)."""
from __future__ import annotations

import errno
import os
import signal
import time

import numpy as np
import pytest

from .conftest import assert_one_line_error, files_under, tmpfs
from .data import add_t1w, write_raw_dataset


@pytest.fixture
def small_bids(tmp_path):
    bids = write_raw_dataset(tmp_path / "bids", ["01"], participants={"age": [30]})
    add_t1w(bids, "01")
    return bids


# --------------------------------------------------------------------------- options per mode
@pytest.mark.parametrize("option", [["--target", "responder"], ["--n-outer", "3"],
                                    ["--overwrite"], ["--smoothing-fwhm", "4"]])
def test_group_options_refused_at_participant_level(cli, small_bids, tmp_path, option):
    out = tmp_path / "out"
    res = cli(small_bids, out, "participant", *option, "--skip-bids-validation")
    assert_one_line_error(res, option[0], "group level", code=64)
    assert not out.exists()


@pytest.mark.parametrize("option", [["--fast"], ["--omp-nthreads", "2"], ["-w", "somewhere"]])
def test_participant_options_refused_at_group_level(cli, small_bids, tmp_path, option):
    res = cli(small_bids, tmp_path / "out", "group", "--target", "x", *option)
    assert_one_line_error(res, "participant level", code=64)
    assert not (tmp_path / "out").exists()


def test_overwrite_refused_with_model(cli, small_bids, tmp_path):
    model = tmp_path / "m.skops"
    model.write_bytes(b"x")
    res = cli(small_bids, tmp_path / "out", "group", "--model", model, "--overwrite")
    assert_one_line_error(res, "--overwrite", "--model", code=64)


# --------------------------------------------------------------------------- one error path
def test_crash_file_under_output_logs(cli, small_bids, tmp_path, monkeypatch):
    """An unexpected error once OUTPUT_DIR exists: one line, crash file in OUTPUT_DIR/logs."""
    import ketabids.bids.layout as layout

    out = tmp_path / "out"
    out.mkdir()

    def boom(*args, **kwargs):
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(layout, "select_subjects", boom)
    res = cli(small_bids, out, "participant", "--skip-bids-validation")
    line = assert_one_line_error(res, "ZeroDivisionError", "injected", code=1)
    crashes = list((out / "logs").glob("crash-*-ketabids.txt"))
    assert len(crashes) == 1 and str(crashes[0]) in line
    assert "Traceback" in crashes[0].read_text()


def test_enospc_anywhere_is_exit_73(cli, small_bids, tmp_path, monkeypatch):
    import ketabids.bids.layout as layout

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(layout, "select_subjects", full)
    res = cli(small_bids, tmp_path / "out", "participant", "--skip-bids-validation")
    assert_one_line_error(res, "no space left", code=73)


def test_sigterm_inside_run_temp_dir_is_143(cli, small_bids, tmp_path, monkeypatch, tmpdir_env):
    """SIGTERM during the run: one line, exit 143, the run's temp folder gone."""
    import ketabids.runner.participant as participant

    def killed(self, stage_root):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(participant._ParticipantRun, "_run_graph", killed)
    res = cli(small_bids, tmp_path / "out", "participant", "-w", tmp_path / "work",
              "--skip-bids-validation")
    assert res.code == 143 and "Traceback" not in res.err
    assert "terminated by SIGTERM" in res.err
    assert [p for p in files_under(tmp_path / "work") if "ketabids-tmp" in p] == []
    assert [p.name for p in (tmp_path / "out").iterdir() if "stage" in p.name] == []
    assert files_under(tmpdir_env) == []


def test_unwritable_output_dir_readonly_fs(cli, small_bids, tmp_path):
    out = tmp_path / "ro"
    with tmpfs(out, "1m", readonly=True) as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs is not permitted here")
        res = cli(small_bids, out / "derivatives", "participant", "--skip-bids-validation")
    assert_one_line_error(res, "OUTPUT_DIR", code=73)


# --------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("kind,needle", [("dangling", "datalad get"), ("empty", "0 bytes"),
                                         ("text", "NIfTI"), ("truncated", "truncated"),
                                         ("4d", "4D"), ("nan", "non-finite")])
def test_check_t1w_one_line(tmp_path, kind, needle):
    from ketabids.anat.conform import check_t1w
    from ketabids.errors import BadDataError

    path = add_t1w(write_raw_dataset(tmp_path / "bids", ["01"]), "01", kind=kind)
    with pytest.raises(BadDataError) as info:
        check_t1w(path)
    message = str(info.value)
    assert message.startswith(str(path)) and needle in message and "\n" not in message
    assert int(info.value.exit_code) == 65


def test_check_t1w_accepts_a_good_image(tmp_path):
    from ketabids.anat.conform import check_t1w

    check_t1w(add_t1w(write_raw_dataset(tmp_path / "bids", ["01"]), "01"))


# --------------------------------------------------------------------------- publishing
def test_publish_subject_keeps_other_sessions_and_mtimes(tmp_path):
    from ketabids.runner.publish import new_stage_root, publish_subject

    out = tmp_path / "out"
    (out / "sub-01" / "ses-1" / "anat").mkdir(parents=True)
    (out / "sub-01" / "ses-1" / "anat" / "a.txt").write_text("session 1")
    (out / "sub-01" / "ses-2" / "anat").mkdir(parents=True)
    same = out / "sub-01" / "ses-2" / "anat" / "b.txt"
    same.write_text("unchanged")
    os.utime(same, (1_000_000, 1_000_000))
    stage = new_stage_root(out)
    (stage / "sub-01" / "ses-2" / "anat").mkdir(parents=True)
    (stage / "sub-01" / "ses-2" / "anat" / "b.txt").write_text("unchanged")
    (stage / "sub-01" / "ses-2" / "anat" / "c.txt").write_text("new")
    (stage / "sub-01.html").write_text("<html/>")
    (stage / "sub-010.html").write_text("another subject")
    publish_subject(stage, out, "01")
    assert (out / "sub-01" / "ses-1" / "anat" / "a.txt").read_text() == "session 1"
    assert (out / "sub-01" / "ses-2" / "anat" / "c.txt").read_text() == "new"
    assert same.stat().st_mtime == 1_000_000
    assert (out / "sub-01.html").is_file() and not (out / "sub-010.html").exists()
    assert sorted(p.name for p in stage.iterdir()) == ["sub-010.html"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".sub-01")] == []


def test_stale_stage_of_dead_run_is_cleaned(tmp_path):
    """A killed run's staging folder (dead pid in its name) goes on the next run's clean."""
    import subprocess
    import sys

    from ketabids import io

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    dead = int(proc.stdout)
    host = io.owner_tag().rsplit("-", 1)[0]
    stale = tmp_path / f".participant.stage-{host}-{dead}-1"
    (stale / "sub-01").mkdir(parents=True)
    mine = tmp_path / f".participant.stage-{io.owner_tag()}-2"
    mine.mkdir()
    removed = io.clean_stale(tmp_path, recursive=True)
    assert stale in removed and not stale.exists() and mine.exists()


# --------------------------------------------------------------------------- folds
def test_max_folds_known_answers():
    from ketabids.group.cv import max_folds

    assert max_folds([0] * 4 + [1] * 4, 3) == (4, 2)
    assert max_folds([0] * 10 + [1] * 10, 2) == (10, 5)
    assert max_folds([0] * 12 + [1] * 3, 3) == (3, 2)
    assert max_folds(np.array([0] * 5 + [1] * 5), 6)[1] == 0
