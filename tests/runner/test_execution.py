"""The runner's settings: plugin choice and Nipype execution settings set on nodes only."""
from __future__ import annotations

import pytest

from ketabids.bids.layout import T1wInput
from ketabids.config import ParticipantConfig
from ketabids.errors import BadDataError, UsageError
from ketabids.runner.config import configure_workflow, plugin_settings
from ketabids.workflows.base import init_participant_wf


def test_plugin_settings(tmp_path):
    assert plugin_settings(nprocs=1) == ("Linear", {})
    assert plugin_settings(nprocs=3, mem_gb=6) == (
        "MultiProc", {"n_procs": 3, "raise_insufficient": False, "memory_gb": 6.0})
    good = tmp_path / "plugin.yml"
    good.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 2\n  memory_gb: 4\n")
    assert plugin_settings(nprocs=8, plugin_file=good) == ("MultiProc",
                                                           {"n_procs": 2, "memory_gb": 4})
    bad = tmp_path / "bad.yml"
    bad.write_text("plugin: NoSuchThing\n")
    with pytest.raises(UsageError, match="unknown Nipype plugin"):
        plugin_settings(plugin_file=bad)
    bad.write_text("plugin_args: {n_procs: 2}\n")
    with pytest.raises(BadDataError, match="plugin:"):
        plugin_settings(plugin_file=bad)


def test_configure_workflow_is_local(tmp_path):
    from nipype import config as nipype_config

    before = {s: dict(nipype_config._sections[s]) for s in nipype_config._sections}
    inputs = [T1wInput(s, None, f"/bids/sub-{s}/anat/sub-{s}_T1w.nii.gz") for s in ("01", "02")]
    wf = init_participant_wf(inputs=inputs, config=ParticipantConfig(bids_dir="/bids",
                                                                  output_dir=tmp_path))
    logs = tmp_path / "logs"
    configure_workflow(wf, crashdump_dirs={"single_subject_01_wf": logs / "sub-01",
                                           "single_subject_02_wf": logs / "sub-02"},
                       default_crashdump=logs)
    node = wf.get_node("single_subject_02_wf").get_node("anat_wf").get_node("conform")
    assert node.config["execution"]["crashdump_dir"] == str(logs / "sub-02")
    # the user's T1w is hashed by content, the work folder's intermediates by time stamp
    assert node.config["execution"]["hash_method"] == "content"
    n4 = wf.get_node("single_subject_02_wf").get_node("anat_wf").get_node("n4")
    assert n4.config["execution"]["hash_method"] == "timestamp"
    assert node.config["execution"]["remove_unnecessary_outputs"] is False
    assert wf.get_node("report_01").config["execution"]["crashdump_dir"] == str(logs)
    # the scheduler polls often enough for 1-3 s nodes (Nipype's default is 2 s)
    assert float(wf.config["execution"]["poll_sleep_duration"]) <= 0.2
    after = {s: dict(nipype_config._sections[s]) for s in nipype_config._sections}
    assert after == before  # Nipype's global configuration untouched


def _mean_of(in_file):
    import nibabel as nib
    import numpy as np

    return float(np.asarray(nib.load(in_file).dataobj).mean())


@pytest.mark.parametrize("conform_hash", ["input", "timestamp"])
def test_changed_input_with_same_size_and_time_reruns(tmp_path, conform_hash):
    """The user's T1w is hashed by content: replaced in place by an image of the same size and
    modification time, it is read again on rerun (the intermediates, hashed by time stamp,
    follow); with time-stamp hashing the stale result would be reused (the control)."""
    import os

    import nibabel as nib
    import numpy as np
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from ketabids.interfaces.anatomical import Conform
    from ketabids.workflows.anatomical import INPUT_HASH

    t1w = tmp_path / "sub-01_T1w.nii"
    data = np.linspace(50.0, 150.0, 12 ** 3, dtype=np.float32).reshape(12, 12, 12)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), t1w)
    wf = pe.Workflow(name="wf", base_dir=str(tmp_path / "work"))
    conform = pe.Node(Conform(in_file=str(t1w)), name="conform")
    if conform_hash == "input":
        conform.config = {k: dict(v) for k, v in INPUT_HASH.items()}
    mean = pe.Node(niu.Function(function=_mean_of, input_names=["in_file"],
                                output_names=["mean"]), name="mean")
    wf.connect(conform, "out_file", mean, "in_file")
    configure_workflow(wf, crashdump_dirs={}, default_crashdump=tmp_path / "logs")

    def run():
        graph = wf.run()
        return next(n for n in graph.nodes() if n.name == "mean").result.outputs.mean

    assert run() == pytest.approx(100.0)
    stat = t1w.stat()
    img = nib.load(t1w)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine, img.header), t1w)
    os.utime(t1w, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert t1w.stat().st_size == stat.st_size and t1w.stat().st_mtime_ns == stat.st_mtime_ns
    assert run() == pytest.approx(200.0 if conform_hash == "input" else 100.0)


def test_a_bad_session_is_left_out_alone(tmp_path):
    """Sessions are isolated like subjects: sub-01's truncated ses-2 fails alone (sub-01 runs
    with ses-1), sub-02 with only bad T1w is unusable (its first error, and how many more)."""
    import nibabel as nib
    import numpy as np

    from ketabids.runner.participant import check_inputs, split_failures

    def t1w(name, bad=False):
        path = tmp_path / name
        data = np.random.default_rng(0).uniform(50, 150, (12, 13, 14)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
        if bad:
            raw = path.read_bytes()
            path.write_bytes(raw[: len(raw) // 2])
        return str(path)

    inputs = [T1wInput("01", "1", t1w("a.nii.gz")), T1wInput("01", "2", t1w("b.nii.gz", True)),
              T1wInput("02", "1", t1w("c.nii.gz", True)),
              T1wInput("02", "2", t1w("d.nii.gz", True))]
    good, bad = check_inputs(inputs)
    assert good == inputs[:1]
    assert set(bad) == set(inputs[1:]) and "b.nii.gz" in bad[inputs[1]]
    unusable, failed_sessions = split_failures(good, bad)
    assert list(failed_sessions) == ["01"] and list(failed_sessions["01"]) == ["ses-2"]
    assert "b.nii.gz" in failed_sessions["01"]["ses-2"]
    assert list(unusable) == ["02"] and "c.nii.gz" in unusable["02"]
    assert "and 1 more T1w" in unusable["02"]


def test_exit_code_says_some_failed_for_a_failed_session():
    from ketabids.cli.app import _exit_code_of

    ok = {"ok": ["01"], "failed": [], "unusable": []}
    assert _exit_code_of(ok) == 0
    assert _exit_code_of(dict(ok, failed_sessions={"01": {"ses-2": "truncated"}})) == 1
    assert _exit_code_of({"ok": [], "failed": ["01"], "unusable": ["01"]}) == 65
    assert _exit_code_of({"ok": ["02"], "failed": ["01"], "unusable": ["01"]}) == 1


class _Published:
    def __init__(self, published):
        self.published = list(published)


class _Progress:
    def __init__(self, done, failed=()):
        self.done, self.failed = list(done), {s: "anat_wf.n4" for s in failed}


def _work_tree(root, subjects):
    folders = {}
    for s in subjects:
        folders[s] = [f"single_subject_{s}_wf", f"report_{s}", f"done_{s}"]
        for name in folders[s]:
            (root / name / "node").mkdir(parents=True)
            (root / name / "node" / "result.pklz").write_bytes(b"x")
    return folders


def test_work_cleaner_removes_a_subject_once_published_and_finished(tmp_path):
    """A subject's work folders go once it is published and all its steps ended; a failed one
    keeps them (resume), and --keep-work keeps all."""
    from ketabids.runner.workdir import WorkCleaner

    root = tmp_path / "ketabids_participant_wf"
    folders = _work_tree(root, ["01", "02", "03"])
    publisher, progress = _Published(["01"]), _Progress(["02", "03"], failed=["03"])
    cleaner = WorkCleaner(root, folders, publisher, progress)
    cleaner(None, "end")
    assert sorted(p.name for p in root.iterdir()) == sorted(folders["01"] + folders["02"]
                                                           + folders["03"])  # 01 not finished
    progress.done.append("01")
    publisher.published.append("03")  # (cannot happen) a failed subject is never cleaned
    cleaner(None, "end")
    assert cleaner.removed == ["01"]
    assert sorted(p.name for p in root.iterdir()) == sorted(folders["02"] + folders["03"])
    kept = WorkCleaner(root, folders, _Published(["02"]), _Progress(["02"]), keep=True)
    kept(None, "end")
    assert kept.removed == [] and (root / "report_02").is_dir()


def test_empty_work_folders_removed_only_when_empty(tmp_path):
    from ketabids.runner.workdir import remove_empty_work

    work = tmp_path / "ketabids_work"
    (work / "wf").mkdir(parents=True)
    remove_empty_work(work, "wf", default=False)  # a folder given with -w stays
    assert work.is_dir() and not (work / "wf").exists()
    (work / "wf" / "single_subject_01_wf").mkdir(parents=True)
    remove_empty_work(work, "wf", default=True)  # a failed subject's work is kept
    assert (work / "wf" / "single_subject_01_wf").is_dir()
    (work / "wf" / "single_subject_01_wf").rmdir()
    remove_empty_work(work, "wf", default=True)
    assert not work.exists()


def test_stop_crash_files_removed(tmp_path):
    """After SIGTERM/SIGINT the crash files of the interrupted steps (this run's) go; an
    earlier run's stay, and so do other subjects' logs."""
    import os
    import time

    from ketabids.runner.workdir import remove_stop_crash_files

    logs = tmp_path / "logs"
    for s in ("01", "02"):
        (logs / f"sub-{s}").mkdir(parents=True)
    old = logs / "sub-01" / "crash-old.txt"
    old.write_text("earlier failure")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    started = time.time()
    new = logs / "sub-01" / "crash-new.txt"
    new.write_text("Terminated")
    (logs / "sub-02" / "crash-new.txt").write_text("Terminated")
    other = logs / "sub-03" / "crash-new.txt"
    other.parent.mkdir()
    other.write_text("another job's failure")
    removed = remove_stop_crash_files(logs, ["01", "02"], started)
    assert sorted(removed) == sorted([new, logs / "sub-02" / "crash-new.txt"])
    assert old.is_file() and other.is_file() and not (logs / "sub-02").exists()


def test_publishing_clears_stale_crash_files(tmp_path):
    """A successful rerun removes the subject's crash files and superseded failure records, so
    the group level no longer reads them as "its participant run failed"."""
    from ketabids.group.features import missing_map_reason
    from ketabids.runner.publish import clear_stale_logs

    out = tmp_path / "out"
    logs = out / "logs" / "sub-01"
    logs.mkdir(parents=True)
    (logs / "crash-20261207-x.txt").write_text("Traceback ...")
    (logs / "sub-01_desc-qc_metrics.json").write_text("{}")
    (out / "logs" / "sub-02").mkdir()
    (out / "logs" / "sub-02" / "crash-1.txt").write_text("Traceback ...")
    assert "its participant run failed" in missing_map_reason(out, "01", "MNI152NLin2009aSym")
    anat = out / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_desc-qc_metrics.json").write_text("{}")
    removed = clear_stale_logs(out, "01")
    assert sorted(p.name for p in removed) == ["crash-20261207-x.txt",
                                               "sub-01_desc-qc_metrics.json"]
    assert not logs.exists() and (out / "logs" / "sub-02" / "crash-1.txt").is_file()
    assert "its participant run failed" not in missing_map_reason(out, "01",
                                                                  "MNI152NLin2009aSym")
