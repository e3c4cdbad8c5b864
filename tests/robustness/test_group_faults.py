"""Issue 11, findings 2, 3, 4, 9, 10, 12, 14 and added cases at the group level.

Cohorts are 16 synthetic participants (template-space maps written without imaging) and the
protocol is 1 x 2-fold outer, 2-fold inner, 2 C values, no permutations: a training takes
seconds.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat

import pandas as pd
import pytest

from ketabids.io import sha256_file

from .conftest import (
    FAST_GROUP,
    LABEL,
    assert_one_line_error,
    files_under,
    fill,
    start_process,
    stray_files,
    tmpfs,
)


def _ids(bids, n):
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    return [p.removeprefix("sub-") for p in table["participant_id"][:n]]


# --------------------------------------------------------------------------- finding 2
def test_disk_full_during_training_injected(cli, study_copy, monkeypatch):
    import skops.io

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(skops.io, "dump", no_space)
    bids, out = study_copy
    res = cli(bids, out, "group", *LABEL, *FAST_GROUP)
    assert_one_line_error(res, str(out), code=73)
    assert not (out / "group").exists()
    assert stray_files(out) == []


@pytest.mark.slow
def test_disk_full_during_training_tmpfs(cli, group_study, tmp_path):
    out = tmp_path / "mnt"
    with tmpfs(out, "40m") as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs is not permitted here (the injected case covers it)")
        shutil.copytree(group_study["out"], out, dirs_exist_ok=True)
        fill(out, 64 * 1024)
        res = cli(group_study["bids"], out, "group", *LABEL, *FAST_GROUP)
        assert_one_line_error(res, str(out), code=73)
        assert not (out / "group").exists()
        assert stray_files(out) == []


# --------------------------------------------------------------------------- finding 3
@pytest.mark.parametrize("option", [
    ["--analysis-resolution", "3"],
    ["--smoothing-fwhm", "4"],
    ["--template", "MNI152NLin2009cAsym"],
    ["--n-outer", "3"],
    ["--covariates", "age"],
])
def test_training_options_with_model_refused(cli, trained, option):
    res = cli(trained["bids"], trained["out"], "group", "--model", trained["model"], *option,
              "--prediction-name", f"opt{option[0].strip('-').replace('-', '')}",
              "--skip-bids-validation", "--n-permutations", "0")
    assert_one_line_error(res, option[0], "--model", code=64)
    assert not list((trained["out"] / "group").glob("predict-opt*"))


# --------------------------------------------------------------------------- finding 4
def test_infeasible_fold_counts_refused(cli, study_copy):
    bids, out = study_copy
    labels = _ids(bids, 8)
    res = cli(bids, out, "group", *LABEL, *FAST_GROUP, "--n-outer", "3", "--n-inner", "5",
              "--participant-label", *labels)
    line = assert_one_line_error(res, "--n-inner", code=64)
    assert any(ch.isdigit() for ch in line.split("--n-inner", 1)[1])  # the largest valid value
    assert not (out / "group").exists()


def test_more_outer_folds_than_participants_refused(cli, study_copy):
    bids, out = study_copy
    res = cli(bids, out, "group", *LABEL, *FAST_GROUP, "--n-outer", "40")
    assert "Traceback" not in res.err
    assert res.code == 64 or res.code == 65, res.err[-2000:]
    assert not (out / "group").exists()


# --------------------------------------------------------------------------- finding 9
def test_retraining_does_not_replace_model(cli, trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained["out"], out)
    model = out / "group" / "train" / "ketabids_model.skops"
    before = sha256_file(model)
    res = cli(trained["bids"], out, "group", *LABEL, *FAST_GROUP, "--smoothing-fwhm", "4")
    assert_one_line_error(res, "group/train", "--overwrite")
    assert res.code in (64, 73)
    assert sha256_file(model) == before


@pytest.mark.slow
def test_retraining_with_overwrite_replaces_model(cli, trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained["out"], out)
    model = out / "group" / "train" / "ketabids_model.skops"
    before = sha256_file(model)
    res = cli(trained["bids"], out, "group", *LABEL, *FAST_GROUP, "--smoothing-fwhm", "4",
              "--overwrite")
    assert res.code == 0, res.err[-2000:]
    assert sha256_file(model) != before
    assert stray_files(out) == []


@pytest.mark.slow
def test_concurrent_trainings_one_refused(group_study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(group_study["out"], out)
    argv = [group_study["bids"], out, "group", *LABEL, *FAST_GROUP]
    procs = [start_process(*argv, tmpdir=tmp_path, log=tmp_path / f"log{i}") for i in range(2)]
    codes = sorted(p.wait(timeout=600) for p in procs)
    logs = [(tmp_path / f"log{i}").read_text() for i in range(2)]
    assert codes[0] == 0 and codes[1] != 0, (codes, logs)
    refused = [text for text in logs if "ketabids: error:" in text]
    assert len(refused) == 1 and "Traceback" not in refused[0]
    assert stray_files(out) == []


# --------------------------------------------------------------------------- finding 10
def test_group_outputs_follow_umask(cli, trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained["out"], out)
    shutil.rmtree(out / "group")
    old = os.umask(0o002)
    try:
        res = cli(trained["bids"], out, "group", *LABEL, *FAST_GROUP)
    finally:
        os.umask(old)
    assert res.code == 0, res.err[-2000:]
    for path in [out / "group", *(out / "group").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = 0o775 if path.is_dir() else 0o664
        assert mode == want, (str(path), oct(mode))


# --------------------------------------------------------------------------- finding 12
def test_group_level_keeps_dataset_description(cli, study_copy, tmp_path, tmpdir_env):
    bids, out = study_copy
    other_bids = tmp_path / "elsewhere" / "bids"  # the same data under another path
    shutil.copytree(bids, other_bids)
    before = (out / "dataset_description.json").read_bytes()
    res = cli(other_bids, out, "group", *LABEL, *FAST_GROUP)
    assert res.code == 0, res.err[-2000:]
    assert (out / "dataset_description.json").read_bytes() == before
    assert files_under(tmpdir_env) == []  # a training leaves nothing in $TMPDIR


# --------------------------------------------------------------------------- finding 14
def test_other_template_one_short_line(cli, study_copy):
    bids, out = study_copy
    res = cli(bids, out, "group", *LABEL, *FAST_GROUP, "--template", "MNI152NLin2009cAsym")
    line = assert_one_line_error(res, "MNI152NLin2009cAsym", code=18)
    assert line.count("sub-") <= 3, line


def test_failed_participant_named_once_with_its_crash_file(cli, study_copy):
    bids, out = study_copy
    subject = f"sub-{_ids(bids, 1)[0]}"
    for path in (out / subject).rglob("*label-GM_desc-modulated_probseg.*"):
        path.unlink()
    crash = out / "logs" / subject / "crash-20261130-000000-root-n4-abc.txt"
    crash.parent.mkdir(parents=True)
    crash.write_text("Traceback (most recent call last):\nRuntimeError: N4 failed\n")
    res = cli(bids, out, "group", *LABEL, *FAST_GROUP)
    assert res.code == 0, res.err[-2000:]
    about = [ln for ln in res.err.splitlines() if subject in ln]
    assert len(about) == 1, about
    assert "participant level first" not in about[0] and "crash" in about[0], about[0]


# --------------------------------------------------------------------------- added cases
def test_model_file_that_is_not_a_model(cli, trained, tmp_path):
    fake = tmp_path / "ketabids_model.skops"
    fake.write_bytes(os.urandom(2048))
    res = cli(trained["bids"], trained["out"], "group", "--model", fake,
              "--prediction-name", "fake", "--skip-bids-validation")
    assert_one_line_error(res, str(fake), code=65)
    assert not (trained["out"] / "group" / "predict-fake").exists()


def test_tampered_model_refused(cli, trained, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained["model"].parent, folder)
    model = folder / "ketabids_model.skops"
    raw = bytearray(model.read_bytes())
    raw[-10] ^= 0xFF
    model.write_bytes(bytes(raw))
    res = cli(trained["bids"], trained["out"], "group", "--model", model,
              "--prediction-name", "tampered", "--skip-bids-validation")
    assert_one_line_error(res, "ketabids_model.skops", code=65)
    assert not (trained["out"] / "group" / "predict-tampered").exists()


def test_predictions_record_model_hash(cli, trained, tmpdir_env):
    res = cli(trained["bids"], trained["out"], "group", "--model", trained["model"],
              "--prediction-name", "hash", "--skip-bids-validation", "--n-permutations", "0")
    assert res.code == 0, res.err[-2000:]
    folder = trained["out"] / "group" / "predict-hash"
    meta = json.loads((folder / "metrics.json").read_text())
    assert meta["model_sha256"] == sha256_file(trained["model"])
    assert stray_files(trained["out"]) == []
    assert files_under(tmpdir_env) == []


def test_duplicate_participant_ids(cli, study_copy, tmp_path):
    bids, out = study_copy
    dup = tmp_path / "bids"
    shutil.copytree(bids, dup)
    lines = (dup / "participants.tsv").read_text().splitlines()
    (dup / "participants.tsv").write_text("\n".join(lines + [lines[1]]) + "\n")
    res = cli(dup, out, "group", *LABEL, *FAST_GROUP)
    assert_one_line_error(res, "participants.tsv", "repeated", code=65)
    assert not (out / "group").exists()


def test_missing_label_column(cli, study_copy):
    bids, out = study_copy
    res = cli(bids, out, "group", "--target", "responder", *FAST_GROUP)
    assert_one_line_error(res, "responder")
    assert res.code in (65, 66)
    assert not (out / "group").exists()


def test_no_derivatives_for_group(cli, group_study, tmp_path):
    out = tmp_path / "empty-out"
    out.mkdir()
    res = cli(group_study["bids"], out, "group", *LABEL, *FAST_GROUP)
    assert_one_line_error(res, str(out))
    assert res.code in (18, 66)
    assert not (out / "group").exists()
