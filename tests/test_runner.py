"""The runner's settings: plugin choice and Nipype execution settings set on nodes only."""
from __future__ import annotations

import pytest

from ketabids.bids.layout import T1wInput
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
    wf = init_participant_wf(inputs=inputs, output_dir=tmp_path, bids_dir="/bids")
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
