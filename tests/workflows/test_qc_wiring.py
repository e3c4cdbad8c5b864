"""QC wired into the participant level: the graph, the progress lines, the end-of-run hook.

Fast tests (no ANTs): the graph holds ``subject_qc`` and its sink; :class:`Progress` on a real
Nipype run of a toy graph prints one line per subject with its verdict and a failed subject's
line; :func:`finish_participant` writes a failed subject's QC record (verdict fail) and report,
and rebuilds qc.tsv/qc.html.
"""
from __future__ import annotations

import json
import logging
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketabids.bids.layout import T1wInput
from ketabids.config import ParticipantConfig
from ketabids.runner.cohort_qc import finish_participant
from ketabids.runner.progress import Progress
from ketabids.workflows.base import ParticipantManifest, SubjectGraph, init_participant_wf


def _inputs():
    return [T1wInput("01", None, "/bids/sub-01/anat/sub-01_T1w.nii.gz"),
            T1wInput("02", "a", "/bids/sub-02/ses-a/anat/sub-02_ses-a_T1w.nii.gz")]


@pytest.mark.parametrize("qc", [True, False])
def test_qc_node_and_sink_in_the_graph(tmp_path, qc):
    wf = init_participant_wf(inputs=_inputs(), config=ParticipantConfig(
        bids_dir="/bids", output_dir=tmp_path / "out", processing="fast"), qc=qc)
    names = set(wf.list_node_names())
    for key in ("01", "02_sesa"):
        prefix = f"single_subject_{key}_wf."
        assert (prefix + "subject_qc" in names) is qc
        assert (prefix + "ds_qc_wf.ds_qc_metrics" in names) is qc
    if not qc:
        return
    single = wf.get_node("single_subject_02_sesa_wf")
    node = single.get_node("subject_qc")
    assert node.inputs.subject == "02" and node.inputs.session == "a"
    assert node.inputs.template_resolution == 2
    sources = {dst: (src.name, field) for src, _, data in single._graph.in_edges(node, data=True)
               for field, dst in data["connect"]}
    assert sources["raw_t1w"] == ("bidssrc", "t1w")
    for field in ("t1w", "bias", "brain_mask", "tpms", "anat2std_xfm", "jacobian", "std_t1w"):
        assert sources[field][0] == "anat_wf", field
    sink = single.get_node("ds_qc_wf").get_node("ds_qc_metrics")
    assert (sink.inputs.desc, sink.inputs.suffix, sink.inputs.extension) == \
        ("qc", "metrics", ".json")
    assert sink.inputs.sidecar is False
    report = single.get_node("report_section")
    assert any(d == "qc_metrics" for _, _, data in single._graph.in_edges(report, data=True)
               for _, d in data["connect"])


def _verdict(x):
    return "warn", ["slice thickness 6 mm"]


def _same(x):
    return x


def _boom(x):
    raise RuntimeError("segmentation exploded")


def _toy_graph(base):
    """Two 'subjects' shaped like the participant graph: 01 ends with a QC node (warn), 02
    fails in its second node."""
    top = pe.Workflow(name="ketabids_participant_wf", base_dir=str(base))
    top.config["execution"].update(crashdump_dir=str(base), remove_unnecessary_outputs=False)
    for subject, second in (("01", _verdict), ("02", _boom)):
        single = pe.Workflow(name=f"single_subject_{subject}_wf")
        bidssrc = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="bidssrc")
        bidssrc.inputs.t1w = 1
        step = pe.Node(niu.Function(function=_same, input_names=["x"],
                                    output_names=["y"]), name="step")
        qc = pe.Node(niu.Function(function=second, input_names=["x"],
                                  output_names=["verdict", "reasons"]), name="subject_qc")
        single.connect([(bidssrc, step, [("t1w", "x")]), (step, qc, [("y", "x")])])
        report = pe.Node(niu.Function(function=_same, input_names=["x"],
                                      output_names=["y"]), name=f"report_{subject}")
        top.connect(single, "subject_qc.verdict", report, "x")
    top.manifest = ParticipantManifest(subjects=tuple(
        SubjectGraph(subject=s, done=f"report_{s}", qc={f"single_subject_{s}_wf.subject_qc": ""},
                     elements=(f"single_subject_{s}_wf", f"report_{s}")) for s in ("01", "02")),
        methods="")
    return top


class _Recorder:
    def __init__(self):
        self.lines = []

    def info(self, msg, *args):
        self.lines.append(msg % args)

    warning = error = info


def test_progress_lines_from_a_real_run(tmp_path, caplog):
    top = _toy_graph(tmp_path)
    ticks = iter(range(0, 1000, 60))
    progress = Progress(top, clock=lambda: next(ticks))
    assert progress.total == 2
    log = _Recorder()
    # one subject's steps all ended in 120 s, all of the other's to run (MultiProc, one by one)
    clock = iter([0, 120])
    eta = Progress(top, clock=lambda: next(clock), logger=log)
    eta.verdicts["01"] = ("pass", [])
    eta.pending["01"].clear()
    eta._finish("01")
    # subjects ending together (the Linear plugin): 150 s, 02 has one of its steps to run
    clock = iter([0, 150])
    eta = Progress(top, clock=lambda: next(clock), logger=log)
    eta.verdicts["01"] = ("pass", [])
    eta.pending["01"].clear()
    eta.pending["02"] = {sorted(eta.expected["02"])[0]}
    eta._finish("01")
    n = len(eta.expected["02"])
    assert n == 3 and log.lines == ["sub-01 done, QC pass (1/2, ~2 min left)",
                                    f"sub-01 done, QC pass (1/2, ~{150 / (2 * n - 1):.0f} s left)"]
    # two of five subjects finished at 320 s: 160 s per subject, 3 left
    clock = iter([0, 200, 320])
    eta = Progress(top, clock=lambda: next(clock), logger=log)
    eta.total = 5  # the toy graph has two subjects: three more stand for a cohort
    eta.verdicts["01"] = eta.verdicts["02"] = ("pass", [])
    eta._finish("01")
    eta._finish("02")
    assert log.lines[-1] == "sub-02 done, QC pass (2/5, ~8 min left)"
    with caplog.at_level(logging.INFO, logger="ketabids"):
        with pytest.raises(RuntimeError):
            top.run(plugin="Linear", plugin_args={"status_callback": progress})
    lines = [r.getMessage() for r in caplog.records if r.name == "ketabids"]
    lines = [ln for ln in lines if ln.startswith("sub-")]
    assert len(lines) == 2  # one line per subject, in the order they finished
    # 02 failed first: the time left is that of 01's steps still to run, at the pace of the
    # steps that ended (clock ticks of 60 s)
    assert lines[0].startswith("sub-02") and lines[0].endswith(" s left)")
    assert lines[1].endswith("(2/2)")
    done = [ln for ln in lines if ln.startswith("sub-01")]
    assert done[0].startswith("sub-01 done, QC warn: slice thickness 6 mm (")
    failed = [ln for ln in lines if ln.startswith("sub-02")]
    assert failed[0].startswith("sub-02 failed in single_subject_02_wf.subject_qc, QC fail (")
    assert progress.verdicts["01"] == ("warn", ["slice thickness 6 mm"])
    assert progress.failed == {"02": "single_subject_02_wf.subject_qc"}
    assert progress.finished_steps["02"] == ["single_subject_02_wf.step"]


def _raw(path, zooms=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ones((8, 9, 10), np.float32), np.diag([*zooms, 1.0]))
    nib.save(img, path)
    return str(path)


def test_finish_writes_failed_subject_record_report_and_cohort_qc(tmp_path, caplog):
    from ketabids.qc.table import write_subject_qc

    out = tmp_path / "out"
    write_subject_qc(out, "01", None, {"slice_thickness_mm": 1.0, "tiv_ml": 1500.0})
    raw = _raw(tmp_path / "bids" / "sub-02_T1w.nii.gz", zooms=(1.0, 1.0, 6.0))
    inputs = [T1wInput("01", None, "x"), T1wInput("02", None, raw)]
    summary = {"ok": ["01"], "failed": ["02"], "errors": {"02": "ValueError: empty mask\nmore"},
               "crash_files": {"02": [str(out / "logs" / "sub-02" / "crash-x.txt")]},
               "reports": {}}
    with caplog.at_level(logging.INFO, logger="ketabids"):
        summary = finish_participant(summary, inputs=inputs, output_dir=out)
    record = json.loads((out / "logs" / "sub-02" / "sub-02_desc-qc_metrics.json").read_text())
    assert record["verdict"] == "fail" and record["error"] == "ValueError: empty mask"
    assert record["reasons"][0] == "processing failed: ValueError: empty mask"
    assert record["slice_thickness_mm"] == 6.0  # the raw header's metrics are kept
    table = pd.read_csv(out / "qc.tsv", sep="\t")
    assert table.set_index("participant_id")["verdict"].to_dict() == \
        {"sub-01": "pass", "sub-02": "fail"}
    page = (out / "qc.html").read_text()
    assert "sub-02" in page and 'href="sub-02.html"' in page
    report = (out / "sub-02.html").read_text()
    assert "ValueError: empty mask" in report and "crash-x.txt" in report
    assert 'id="errors"' in report and "more" not in report.split('id="errors"')[1][:300]
    assert summary["qc"]["counts"] == {"pass": 1, "warn": 0, "fail": 1}
    closing = [r.getMessage() for r in caplog.records if r.getMessage().startswith("QC of")]
    assert closing == [f"QC of OUTPUT_DIR: 1 pass, 0 warn, 1 fail; review {out / 'qc.html'}"]
    bidsignore = (out / ".bidsignore").read_text().splitlines()
    assert "*_desc-qc_metrics.json" in bidsignore and "/qc.html" in bidsignore


def test_bidsignore_has_the_qc_lines():
    from ketabids.bids.derivatives import BIDSIGNORE
    from ketabids.qc.table import QC_BIDSIGNORE

    assert set(QC_BIDSIGNORE) <= set(BIDSIGNORE)


def test_cached_smoothing_gives_the_same_homogeneity(tmp_path, rng):
    from ketabids.qc.homogeneity import sample_homogeneity, smoothed_maps_cached

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    base = rng.random((14, 16, 12)).astype(np.float32)
    paths = []
    for k in range(6):
        path = tmp_path / f"sub-{k}_space-X_label-GM_desc-modulated_probseg.nii.gz"
        data = base + 0.3 * rng.random(base.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(data * (1 + 0.05 * k), affine), path)
        paths.append(path)
    ids = [f"sub-{k}" for k in range(6)]
    direct = sample_homogeneity(paths, ids)
    arrays, totals = smoothed_maps_cached(paths, tmp_path / "cache")
    cached = sample_homogeneity(*smoothed_maps_cached(paths, tmp_path / "cache")[:1], ids,
                                totals=smoothed_maps_cached(paths, tmp_path / "cache")[1])
    for frame in (sample_homogeneity(arrays, ids, totals=totals), cached):
        np.testing.assert_allclose(frame["mean_corr"], direct["mean_corr"], rtol=1e-6)
        np.testing.assert_allclose(frame["total_ml"], direct["total_ml"], rtol=1e-6)
    # a changed map is smoothed again (the cache key holds size and mtime)
    nib.save(nib.Nifti1Image(base[::-1].copy(), affine), paths[0])
    os.utime(paths[0], ns=(1, 1))
    again, _ = smoothed_maps_cached(paths, tmp_path / "cache")
    assert not np.allclose(again[0], arrays[0])


def test_progress_attributes_a_failed_mapnode_subjob_and_flushes(tmp_path):
    top = _toy_graph(tmp_path)
    log = _Recorder()
    progress = Progress(top, clock=lambda: 0, logger=log)

    class SubJob:  # what MultiProc hands the callback for a MapNode's sub-job
        fullname = name = "_ds_t1w_tpms0"
        base_dir = str(tmp_path / "ketabids_participant_wf" / "single_subject_02_wf" /
                       "ds_anat_wf" / "ds_t1w_tpms" / "mapflow")

    progress(SubJob(), "end")
    assert progress.done == []  # a sub-job ending says nothing about the subject
    progress(SubJob(), "exception")
    assert progress.failed == {"02": "single_subject_02_wf.ds_anat_wf.ds_t1w_tpms"}
    progress.flush(failed=["02"])  # 01's nodes never reported: the run ended anyway
    assert progress.done == ["02", "01"]
    assert log.lines[0].startswith("sub-02 failed in single_subject_02_wf.ds_anat_wf.ds_t1w_tpms")
    assert log.lines[1].startswith("sub-01 done, no QC (2/2")
