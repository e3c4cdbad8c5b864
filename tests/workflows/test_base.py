"""Build-only tests of the participant workflow graph, input selection and atlas resolution."""
from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from ketabids.anat.atlas import Atlas, resolve_atlas
from ketabids.anat.settings import ProcessingSettings
from ketabids.bids.layout import T1wInput, collect_t1w
from ketabids.config import ParticipantConfig
from ketabids.errors import MissingInputError
from ketabids.workflows.anatomical import init_anat_wf
from ketabids.workflows.base import init_participant_wf

ANAT_NODES = {
    "inputnode", "outputnode", "conform", "prepare", "n4", "brain_extraction", "warp_priors",
    "brain_n4", "restore_grid",
    "segmentation", "std_t1w", "modulate", "volumes",
}
SINK_NODES = {
    "ds_anat_wf": {"ds_t1w_preproc", "ds_t1w_mask", "ds_t1w_dseg", "ds_t1w_tpms"},
    "ds_template_wf": {"ds_std_t1w", "ds_std_tpms", "ds_std_mod", "ds_anat2std_xfm",
                       "ds_std2anat_xfm"},
}


def _inputs(sessions: bool):
    if sessions:
        return [T1wInput("01", "A", "/bids/sub-01/ses-A/anat/sub-01_ses-A_T1w.nii.gz"),
                T1wInput("01", "B", "/bids/sub-01/ses-B/anat/sub-01_ses-B_T1w.nii.gz"),
                T1wInput("02", "A", "/bids/sub-02/ses-A/anat/sub-02_ses-A_T1w.nii.gz")]
    return [T1wInput("01", None, "/bids/sub-01/anat/sub-01_T1w.nii.gz",
                     skipped=("/bids/sub-01/anat/sub-01_run-2_T1w.nii.gz",)),
            T1wInput("02", None, "/bids/sub-02/anat/sub-02_T1w.nii.gz")]


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("atlas", [None, "Toy"])
@pytest.mark.parametrize("sessions", [False, True])
@pytest.mark.parametrize("template", ["MNI152NLin2009aSym", "MNI152NLin6Asym"])
def test_participant_wf_builds(tmp_path, fast, atlas, sessions, template):
    inputs = _inputs(sessions)
    if atlas:
        image, labels = tmp_path / "atlas.nii.gz", tmp_path / "atlas.tsv"
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), "int16"), np.eye(4)), image)
        labels.write_text("index\tname\n1\ta\n")
        atlas = Atlas(atlas, str(image), str(labels))
    config = ParticipantConfig(bids_dir="/bids", output_dir=tmp_path / "out",
                               template=template, processing=ProcessingSettings.for_fast(fast),
                               omp_nthreads=2, seed=3)
    wf = init_participant_wf(inputs=inputs, config=config, atlas=atlas)
    names = wf.list_node_names()
    keys = sorted({i.key.replace("-", "") for i in inputs})
    tops = sorted({n.split(".")[0] for n in names if n.startswith("single_subject_")})
    assert tops == [f"single_subject_{k}_wf" for k in keys]
    for key in keys:
        prefix = f"single_subject_{key}_wf."
        anat = {n[len(prefix + "anat_wf."):] for n in names if n.startswith(prefix + "anat_wf.")}
        assert anat == ANAT_NODES | ({"regional_volumes"} if atlas else set())
        for sub_wf, sinks in SINK_NODES.items():
            assert sinks <= {n.rsplit(".", 1)[1] for n in names
                             if n.startswith(prefix + sub_wf + ".")}
        has_regional = prefix + "ds_volumes_wf.ds_regional" in names
        assert has_regional is bool(atlas)
    for subject in sorted({i.subject for i in inputs}):
        assert {f"merge_{subject}", f"report_{subject}", f"ds_report_{subject}_wf.ds_report"} \
            <= set(names)

    single = wf.get_node(tops[0])
    anat_wf = single.get_node("anat_wf")
    brain = anat_wf.get_node("brain_extraction")
    assert brain.inputs.mode == ("fast" if fast else "default")
    assert brain.inputs.template == template
    assert brain.inputs.template_resolution == (2 if fast else 1)
    assert brain.inputs.seed == 3 and brain.n_procs == 2
    mod_sink = single.get_node("ds_template_wf").get_node("ds_std_mod")
    assert mod_sink.inputs.meta_dict["Template"] == template
    assert mod_sink.inputs.meta_dict["Resolution"] == (2.0 if fast else 1.0)
    assert mod_sink.inputs.meta_dict["Modulation"] == "jacobian"
    assert mod_sink.inputs.space == template and mod_sink.inputs.desc == "modulated"
    methods = single.visit_desc()
    assert template in methods and "Jacobian" in methods
    assert ("atlas" in methods) is bool(atlas)
    report = wf.get_node(f"report_{inputs[0].subject}")
    assert report.inputs.methods.startswith("Results included in this report")


def test_anat_wf_step_order():
    """The one step order: head N4 -> brain extraction (whose registration is reused by every
    warp) -> priors -> N4 inside the mask weighted by the GM + WM priors -> segmentation."""
    wf = init_anat_wf(processing=ProcessingSettings.for_fast(True), seed=5, omp_nthreads=1)

    def sources(node_name, field):
        node = wf.get_node(node_name)
        return {(u.name, c[0] if isinstance(c[0], str) else c[0][0])
                for u, _, d in wf._graph.in_edges(node, data=True)
                for c in d["connect"] if c[1] == field}

    assert sources("brain_extraction", "in_file") == {("n4", "out_file")}
    assert sources("brain_n4", "in_file") == {("n4", "out_file")}
    assert sources("brain_n4", "in_mask") == {("brain_extraction", "out_mask")}
    assert sources("brain_n4", "in_weights") == {("warp_priors", "priors")}
    assert sources("segmentation", "in_file") == {("brain_n4", "out_file")}
    assert sources("segmentation", "priors") == {("warp_priors", "priors")}
    # truncation and the field-of-view crop come before N4; every native step works on the
    # prepared grid, and the native outputs go back to the conformed grid
    assert sources("prepare", "in_file") == {("conform", "out_file")}
    assert sources("n4", "in_file") == {("prepare", "out_file")}
    assert sources("warp_priors", "reference") == {("prepare", "out_file")}
    assert sources("restore_grid", "reference") == {("prepare", "out_reference")}
    assert sources("restore_grid", "tpms") == {("segmentation", "probsegs")}
    for warp in ("warp_priors", "std_t1w", "modulate"):  # no second registration
        assert sources(warp, "forward_transforms") == {("brain_extraction",
                                                        "forward_transforms")}
    assert sources("std_t1w", "in_file") == {("n4", "out_file")}  # desc-preproc = head N4
    assert wf.get_node("brain_extraction").inputs.seed == 5
    # the mode's numbers reach the steps that use them (ketabids.anat.settings), and only those
    assert wf.get_node("n4").inputs.grid_mm == 8.0  # the default mode's head-wide N4
    assert wf.get_node("brain_n4").inputs.grid_mm == 8.0
    assert wf.get_node("brain_n4").inputs.spline_mm == 200.0
    assert wf.get_node("brain_n4").inputs.iterations == [50, 50, 50, 50]
    assert wf.get_node("n4").inputs.spline_mm is None
    for name in ("warp_priors", "std_t1w", "modulate", "segmentation"):
        assert not {"mode", "seed"} & set(wf.get_node(name).inputs.copyable_trait_names())


def test_anat_wf_outputs_connected():
    wf = init_anat_wf(processing=ProcessingSettings.for_fast(True))
    outputnode = wf.get_node("outputnode")
    connected = {c[1] for _, _, d in wf._graph.in_edges(outputnode, data=True)
                 for c in d["connect"]}
    assert connected == set(outputnode.inputs.copyable_trait_names()) - {"regional"}


def test_collect_t1w_runs_sessions_and_filters(tmp_path, caplog):
    from bids import BIDSLayout

    from ketabids.testing import make_bids_tree

    root = make_bids_tree(tmp_path / "bids", {
        "01": {"anat": ["run-1_T1w", "run-2_T1w"]},
        "02": {"ses-B": {"anat": ["T1w"]}, "ses-A": {"anat": ["T1w"]}},
    })
    layout = BIDSLayout(root, validate=False)
    with caplog.at_level(logging.WARNING, logger="ketabids"):
        found = collect_t1w(layout, ["01", "sub-02"])
    assert [(f.subject, f.session) for f in found] == [("01", None), ("02", "A"), ("02", "B")]
    assert found[0].t1w.endswith("sub-01_run-1_T1w.nii.gz")
    assert [p.rsplit("/", 1)[1] for p in found[0].skipped] == ["sub-01_run-2_T1w.nii.gz"]
    assert "sub-01_run-2_T1w.nii.gz" in caplog.text and "first in BIDS order" in caplog.text
    # a filter selects the other run; the flat form is accepted too
    for filters in ({"t1w": {"run": 2}}, {"run": 2}):
        chosen = collect_t1w(layout, ["01"], bids_filters=filters)
        assert [f.t1w.rsplit("/", 1)[1] for f in chosen] == ["sub-01_run-2_T1w.nii.gz"]
    only_b = collect_t1w(layout, ["02"], sessions=["ses-B"])
    assert [(f.session, f.key) for f in only_b] == [("B", "02_ses-B")]


def test_resolve_atlas(tmp_path):
    assert resolve_atlas(None, None) is None
    image = tmp_path / "tpl-MNI152NLin2009aSym_atlas-Toy_dseg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), "int16"), np.eye(4)), image)
    with pytest.raises(MissingInputError, match="--atlas-labels"):
        resolve_atlas(str(image), None)
    (tmp_path / "tpl-MNI152NLin2009aSym_atlas-Toy_dseg.tsv").write_text("index\tname\n1\ta\n")
    atlas = resolve_atlas(str(image), None)
    assert atlas.name == "Toy" and atlas.labels.endswith("_dseg.tsv")
    other = tmp_path / "regions.tsv"
    other.write_text("index\tname\n1\ta\n")
    named = resolve_atlas(str(tmp_path / "my_toy-atlas.nii.gz"), str(other))
    assert named.name == "mytoyatlas" and named.labels == str(other)
