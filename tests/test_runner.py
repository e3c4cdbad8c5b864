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
    assert node.config["execution"]["hash_method"] == "content"
    assert node.config["execution"]["remove_unnecessary_outputs"] is False
    assert wf.get_node("report_01").config["execution"]["crashdump_dir"] == str(logs)
    # the scheduler polls often enough for 1-3 s nodes (Nipype's default is 2 s)
    assert float(wf.config["execution"]["poll_sleep_duration"]) <= 0.2
    after = {s: dict(nipype_config._sections[s]) for s in nipype_config._sections}
    assert after == before  # Nipype's global configuration untouched
