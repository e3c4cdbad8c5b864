"""The group level honours QC: failing scans are left out of training and prediction
by default and listed everywhere; --qc-policy warn/ignore and --exclude-file change that.

Cohorts are synthetic derivatives
(``ketabids.demo.derivatives.write_synthetic_derivatives``) with
per-subject QC JSONs written by ``ketabids.qc.table.write_subject_qc`` from metrics whose
verdicts are known (slice thickness 6 mm -> fail, 3 mm -> warn, 1 mm -> pass; orientation codes
0 -> fail).
"""
from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from ketabids.config import TrainConfig
from ketabids.errors import BadDataError, ExitCode, UsageError
from ketabids.qc.gate import apply_qc_gate, read_exclude_file
from ketabids.qc.table import write_subject_qc

PASS = {"slice_thickness_mm": 1.0, "cnr": 3.0}
WARN = {"slice_thickness_mm": 3.0}
FAIL_THICK = {"slice_thickness_mm": 6.0}
FAIL_ORIENT = {"orientation_missing": True}
SMALL = dict(response_from=("madrs_pre", "madrs_24h"), n_repeats=1, n_outer=3, n_inner=2,
             c_grid=[0.01, 1.0], analysis_resolution=4.0, n_permutations=0, progress=False,
             seed=1)


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _write_qc(out, verdicts: dict) -> None:
    for sub, metrics in verdicts.items():
        write_subject_qc(out, sub, None, metrics)


@pytest.fixture(scope="module")
def cohort_dirs(tmp_path_factory):
    """24 ketamine patients with maps; QC: 2 fail, 1 warn, 1 without a record, 20 pass."""
    from ketabids.demo.derivatives import write_synthetic_derivatives
    from ketabids.demo.participants import make_participants_table
    from ketabids.testing import make_bids_tree

    root = tmp_path_factory.mktemp("qcgroup")
    table = make_participants_table(24, seed=5)
    subjects = [p.removeprefix("sub-") for p in table["participant_id"]]
    bids = make_bids_tree(root / "bids", {s: {"anat": ["T1w"]} for s in subjects},
                          participants={c: list(table[c]) for c in table.columns
                                        if c != "participant_id"})
    out = root / "out"
    write_synthetic_derivatives(bids, out, seed=5, effect_size=0.05)
    ids = list(table["participant_id"])
    verdicts = {pid: PASS for pid in ids[4:]}
    verdicts.update({ids[0]: FAIL_THICK, ids[1]: FAIL_ORIENT, ids[2]: WARN})  # ids[3]: none
    _write_qc(out, verdicts)
    return {"bids": bids, "out": out, "ids": ids, "root": root}


# ------------------------------------------------------------------ the exclusion file (fast)
def _tsv(path, text):
    path.write_text(text)
    return path


def test_exclude_file_is_read_and_checked(tmp_path):
    known = ["01", "02", "sub-03"]
    (tmp_path / "sub-02" / "ses-a").mkdir(parents=True)
    good = _tsv(tmp_path / "ex.tsv", "participant_id\tsession\treason\n"
                                     "01\tn/a\tmotion in qc.html\nsub-02\tses-a\tghosting\n")
    decisions = read_exclude_file(good, known_participants=known, roots=[tmp_path])
    assert [(d.participant_id, d.session, d.reason) for d in decisions] == [
        ("sub-01", None, "motion in qc.html"), ("sub-02", "ses-a", "ghosting")]
    assert decisions[1].matches("02", "a") and not decisions[1].matches("02", "b")
    assert decisions[0].matches("sub-01", "b") and decisions[0].matches("01", None)
    # the ratings exported by qc.html: rows rated 'exclude', the comment as reason
    ratings = _tsv(tmp_path / "qc_ratings.tsv",
                   "participant_id\tsession\trating\tcomment\nsub-01\tn/a\texclude\tcut cerebellum"
                   "\nsub-02\tn/a\taccept\tn/a\nsub-03\tn/a\texclude\tn/a\n")
    decisions = read_exclude_file(ratings, known_participants=known)
    assert [(d.participant_id, d.reason) for d in decisions] == [
        ("sub-01", "cut cerebellum"), ("sub-03", "rated exclude in qc.html")]


@pytest.mark.parametrize("text, message", [
    ("participant_id\tsession\nsub-01\tn/a\n", "no column 'reason'"),
    ("subject\treason\nsub-01\tmotion\n", "no column 'participant_id'"),
    ("participant_id\treason\nsub-01\tmotion\nsub-77\tx\nsub-78\ty\n",
     "2 participant\\(s\\) not in participants.tsv: sub-77, sub-78"),
    ("participant_id\treason\nsub-01\t\n", "line 2 \\(sub-01\\) has no reason"),
    ("participant_id\treason\n\tmotion\n", "line 2 has no participant_id"),
    ("participant_id\tsession\treason\nsub-01\tses-zz\tmotion\n", "has no session ses-zz"),
    ("", "cannot be read as a TSV"),
])
def test_bad_exclude_files_are_one_line_errors(tmp_path, text, message):
    path = _tsv(tmp_path / "bad.tsv", text)
    with pytest.raises(BadDataError, match=message) as err:
        read_exclude_file(path, known_participants=["01", "02"], roots=[tmp_path])
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == ExitCode.BAD_DATA == 65


# ------------------------------------------------------------------------ the gate (fast)
def test_gate_policies(tmp_path, caplog):
    _write_qc(tmp_path, {"sub-a": FAIL_THICK, "sub-b": WARN, "sub-c": PASS})
    candidates = {"a": None, "b": None, "c": None, "d": None}
    with caplog.at_level(logging.INFO, logger="ketabids"):
        kept, gate = apply_qc_gate(candidates, output_dir=tmp_path)
    assert kept == ["b", "c", "d"]
    assert gate.excluded == [{"participant_id": "sub-a", "session": None, "by": "qc",
                              "reason": "QC fail: slice thickness 6 mm"}]
    assert gate.counts() == {"pass": 1, "warn": 1, "fail": 1, "no_record": 1}
    assert [f["participant_id"] for f in gate.kept_flagged] == ["sub-b"]
    assert gate.no_record == ["sub-d"]
    log = caplog.text
    assert "QC (--qc-policy exclude): 1 pass, 1 warn, 1 fail, 1 without a QC record; 1 left " \
           "out for failing QC" in log
    assert "1 participant(s) have no QC record" in log and "sub-d" in log

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ketabids"):
        kept, gate = apply_qc_gate(candidates, output_dir=tmp_path, policy="warn")
    assert kept == ["a", "b", "c", "d"] and gate.excluded == []
    assert {f["participant_id"]: f["verdict"] for f in gate.kept_flagged} == {
        "sub-a": "fail", "sub-b": "warn"}
    assert "failing QC verdict kept: sub-a (slice thickness 6 mm)" in caplog.text

    caplog.clear()
    ex = _tsv(tmp_path / "ex.tsv", "participant_id\treason\nsub-c\tringing seen in report\n")
    with caplog.at_level(logging.INFO, logger="ketabids"):
        kept, gate = apply_qc_gate(candidates, output_dir=tmp_path, policy="ignore",
                                   exclude_file=ex, known_participants=list("abcd"))
    assert kept == ["a", "b", "d"]  # verdicts not read; the review still applies
    assert gate.excluded[0]["reason"] == "excluded by review (ex.tsv): ringing seen in report"
    assert gate.counts() == {"pass": 0, "warn": 0, "fail": 0, "no_record": 0}
    assert gate.no_record == [] and "no QC record" not in caplog.text
    record = gate.as_dict()
    assert record["policy"] == "ignore" and record["source"] is None
    assert len(record["exclude_file_sha256"]) == 64
    with pytest.raises(UsageError, match="--qc-policy 'drop' is unknown"):
        apply_qc_gate(candidates, output_dir=tmp_path, policy="drop")


def test_derivatives_without_qc_records_are_kept_with_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ketabids"):
        kept, gate = apply_qc_gate({"a": None, "b": None}, output_dir=tmp_path)
    assert kept == ["a", "b"] and gate.no_record == ["sub-a", "sub-b"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["QC: none of the 2 participants has a QC record (derivatives from a "
                        "ketabids without QC?): all kept unchecked; rerun the participant level "
                        "to check them"]


def test_sessions_are_matched(tmp_path):
    write_subject_qc(tmp_path, "a", "1", FAIL_THICK)
    write_subject_qc(tmp_path, "a", "2", PASS)
    assert apply_qc_gate({"a": "2"}, output_dir=tmp_path)[0] == ["a"]
    assert apply_qc_gate({"a": "1"}, output_dir=tmp_path)[0] == []


# --------------------------------------------------------------- training and prediction
@pytest.mark.slow
def test_training_leaves_failing_scans_out_and_says_so(cohort_dirs, caplog):
    from ketabids.group.train import run_group_train

    ids, out = cohort_dirs["ids"], cohort_dirs["out"]
    with caplog.at_level(logging.INFO, logger="ketabids"):
        s = run_group_train(bids_dir=cohort_dirs["bids"], output_dir=out, **SMALL)
    # said once, as a log line (not also as a Python warning)
    assert sum("2 participant(s) left out" in r.getMessage() for r in caplog.records) == 1
    assert s["n_subjects"] == 22 and s["n_excluded"] == 2
    train = out / "group" / "train"
    cohort = _read(train / "cohort.tsv").set_index("participant_id")
    assert list(cohort.columns[:4]) == ["status", "reason", "qc_verdict", "qc_reasons"]
    assert cohort.loc[ids[0], "status"] == "excluded"
    assert cohort.loc[ids[0], "reason"] == "QC fail: slice thickness 6 mm"
    assert cohort.loc[ids[1], "reason"].startswith("QC fail: orientation missing")
    assert cohort.loc[ids[2], ["status", "qc_verdict"]].tolist() == ["included", "warn"]
    assert cohort.loc[ids[3], ["status", "qc_verdict"]].tolist() == ["included", "n/a"]
    assert (cohort["status"] == "included").sum() == 22
    decisions = pd.read_csv(train / "final_model_decisions.tsv", sep="\t")
    assert not set(ids[:2]) & set(decisions["participant_id"])
    manifest = json.loads((train / "ketabids_model.json").read_text())
    qc = manifest["qc"]
    assert qc["policy"] == "exclude" and qc["exclude_file"] is None
    assert qc["counts"] == {"pass": 20, "warn": 1, "fail": 2, "no_record": 1}
    assert [(e["participant_id"], e["by"]) for e in qc["excluded"]] == [
        (ids[0], "qc"), (ids[1], "qc")]
    assert [f["participant_id"] for f in qc["kept_flagged"]] == [ids[2]]
    assert qc["no_record"] == [ids[3]]
    assert json.loads((train / "metrics.json").read_text())["qc"] == qc
    report = (train / "report.html").read_text()
    assert "<h3>Left out</h3>" in report and "QC fail: slice thickness 6 mm" in report
    assert "Quality control" in report and "slice thickness 3 mm" in report
    assert "--qc-policy exclude, 2 training scan(s) left out" in report
    log = caplog.text
    assert "20 pass, 1 warn, 2 fail, 1 without a QC record; 2 left out" \
        in log
    assert f"{ids[0]} (QC fail: slice thickness 6 mm)" in log


@pytest.mark.slow
def test_warn_keeps_and_lists_ignore_keeps_and_records(cohort_dirs, tmp_path, caplog):
    import shutil

    from ketabids.group.train import run_group_train

    ids = cohort_dirs["ids"]
    out = tmp_path / "out"
    shutil.copytree(cohort_dirs["out"], out, ignore=shutil.ignore_patterns("group"))
    with caplog.at_level(logging.INFO, logger="ketabids"):
        s = run_group_train(bids_dir=cohort_dirs["bids"], output_dir=out, qc_policy="warn",
                            **SMALL)
    assert s["n_subjects"] == 24 and s["n_excluded"] == 0
    train = out / "group" / "train"
    cohort = _read(train / "cohort.tsv").set_index("participant_id")
    assert (cohort["status"] == "included").all()
    assert cohort.loc[ids[0], "qc_verdict"] == "fail"
    assert cohort.loc[ids[0], "qc_reasons"] == "slice thickness 6 mm"
    qc = json.loads((train / "ketabids_model.json").read_text())["qc"]
    assert qc["policy"] == "warn" and qc["excluded"] == []
    assert {f["participant_id"]: f["verdict"] for f in qc["kept_flagged"]} == {
        ids[0]: "fail", ids[1]: "fail", ids[2]: "warn"}
    report = (train / "report.html").read_text()
    assert "Kept although their QC verdict is warn or fail" in report
    assert "orientation missing" in report
    assert "failing QC verdict kept" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ketabids"):
        s = run_group_train(bids_dir=cohort_dirs["bids"], output_dir=out, qc_policy="ignore",
                            overwrite=True, **SMALL)
    assert s["n_subjects"] == 24
    qc = json.loads((train / "ketabids_model.json").read_text())["qc"]
    assert qc["policy"] == "ignore" and qc["kept_flagged"] == [] and qc["no_record"] == []
    cohort = _read(train / "cohort.tsv")
    assert set(cohort["qc_verdict"]) == {"n/a"}
    assert "verdicts not read" in caplog.text and "no QC record" not in caplog.text


@pytest.mark.slow
def test_exclude_file_and_prediction(cohort_dirs, tmp_path):
    import hashlib
    import shutil

    from ketabids.group.predict import run_group_predict
    from ketabids.group.train import run_group_train

    ids = cohort_dirs["ids"]
    out = tmp_path / "out"
    shutil.copytree(cohort_dirs["out"], out, ignore=shutil.ignore_patterns("group"))
    ex = _tsv(tmp_path / "review.tsv", f"participant_id\tsession\treason\n"
                                       f"{ids[5]}\tn/a\tmotion rings in the report\n"
                                       f"{ids[0]}\tn/a\tslab\n")
    s = run_group_train(bids_dir=cohort_dirs["bids"], output_dir=out, exclude_file=ex, **SMALL)
    assert s["n_subjects"] == 21  # two QC fails (one also reviewed) and one reviewed pass
    train = out / "group" / "train"
    cohort = _read(train / "cohort.tsv").set_index("participant_id")
    assert cohort.loc[ids[5], "reason"] == \
        "excluded by review (review.tsv): motion rings in the report"
    assert cohort.loc[ids[5], "qc_verdict"] == "pass"
    assert cohort.loc[ids[0], "reason"] == "excluded by review (review.tsv): slab"
    qc = json.loads((train / "ketabids_model.json").read_text())["qc"]
    assert qc["exclude_file_sha256"] == hashlib.sha256(ex.read_bytes()).hexdigest()
    assert {e["participant_id"]: e["by"] for e in qc["excluded"]} == {
        ids[0]: "review", ids[1]: "qc", ids[5]: "review"}

    # prediction on the same derivatives: failing scans get no prediction and are listed
    p = run_group_predict(bids_dir=cohort_dirs["bids"], output_dir=out, model=s["model"],
                          n_permutations=0, name="qc")
    assert p["n_subjects"] == 22 and p["n_excluded"] == 2
    pred = pd.read_csv(p["predictions"], sep="\t")
    assert not set(ids[:2]) & set(pred["participant_id"])
    folder = out / "group" / "predict-qc"
    listed = _read(folder / "cohort.tsv").set_index("participant_id")
    assert listed.loc[ids[1], "reason"].startswith("QC fail: orientation missing")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["qc"]["policy"] == "exclude" and len(metrics["qc"]["excluded"]) == 2
    assert "QC fail: slice thickness 6 mm" in (folder / "report.html").read_text()
    p = run_group_predict(bids_dir=cohort_dirs["bids"], output_dir=out, model=s["model"],
                          n_permutations=0, name="qc-warn", qc_policy="warn")
    assert p["n_subjects"] == 24


# ---------------------------------------------------------------------- the command line
def test_cli_passes_qc_options(cohort_dirs, tmp_path, monkeypatch):
    import ketabids.group.train as group_train
    from ketabids.cli import main

    seen = {}
    monkeypatch.setattr(group_train, "run_group_train",
                        lambda config, **kw: seen.update(vars(config)) or {})
    ex = _tsv(tmp_path / "ex.tsv", "participant_id\treason\nsub-001\tx\n")
    assert main([str(cohort_dirs["bids"]), str(tmp_path / "o"), "group",
                 "--skip-bids-validation", "--target", "arm", "--qc-policy", "warn",
                 "--exclude-file", str(ex)]) == 0
    assert seen["qc_policy"] == "warn" and seen["exclude_file"] == ex
    assert main([str(cohort_dirs["bids"]), str(tmp_path / "o"), "group",
                 "--skip-bids-validation", "--target", "arm"]) == 0
    assert seen["qc_policy"] == "exclude" and seen["exclude_file"] is None
    assert main([str(cohort_dirs["bids"]), str(tmp_path / "o"), "group", "--target", "arm",
                 "--qc-policy", "drop"]) == ExitCode.USAGE
    assert main([str(cohort_dirs["bids"]), str(tmp_path / "o"), "group", "--target", "arm",
                 "--exclude-file", str(tmp_path / "none.tsv")]) == ExitCode.NO_INPUT


def test_cli_bad_exclude_file_exits_65_with_one_line(cohort_dirs, tmp_path, capsys):
    from ketabids.cli import main

    bad = _tsv(tmp_path / "review.tsv", "participant_id\treason\nsub-999\tmotion\n")
    code = main([str(cohort_dirs["bids"]), str(cohort_dirs["out"]), "group",
                 "--skip-bids-validation", "--response-from", "madrs_pre", "madrs_24h",
                 "--exclude-file", str(bad), "--n-permutations", "0"])
    assert code == ExitCode.BAD_DATA == 65
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == [f"ketabids: error: {bad}: 1 participant(s) not in participants.tsv: "
                   "sub-999; fix the participant_id column"]
    group = cohort_dirs["out"] / "group"
    assert not any(".tmp-" in p.name for p in group.glob(".*"))  # failed before staging


def test_no_participant_left_after_the_gate(cohort_dirs, tmp_path):
    from ketabids.errors import NoDataError
    from ketabids.group import labels as lab
    from ketabids.group.cohort import build_cohort

    ex = _tsv(tmp_path / "all.tsv", "participant_id\treason\n" + "".join(
        f"{pid}\treviewed: unusable\n" for pid in cohort_dirs["ids"][2:]))
    rule = lab.make_label_rule(response_from=("madrs_pre", "madrs_24h"))
    with pytest.raises(NoDataError, match="24 left out: sub-001 \\(QC fail: slice thickness "
                                          "6 mm\\)"):
        build_cohort(TrainConfig(bids_dir=cohort_dirs["bids"], output_dir=cohort_dirs["out"],
                                 exclude_file=ex), template="MNI152NLin2009aSym", rule=rule)
