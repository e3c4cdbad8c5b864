"""Run configurations (ketabids.config) and the participant graph's manifest."""
from __future__ import annotations

import dataclasses

import pytest

from ketabids.anat.settings import ProcessingSettings
from ketabids.bids.layout import T1wInput
from ketabids.config import ParticipantConfig, PredictConfig, TrainConfig
from ketabids.errors import UsageError
from ketabids.templates import DEFAULT_TEMPLATE


def test_participant_config_defaults_and_mode_names():
    config = ParticipantConfig(bids_dir="/bids", output_dir="/out", subjects=["01"])
    assert config.template == DEFAULT_TEMPLATE and config.processing.mode == "default"
    assert config.subjects == ("01",) and not config.fast
    fast = ParticipantConfig(bids_dir="/bids", output_dir="/out", processing="fast")
    assert fast.processing == ProcessingSettings.for_fast(True) and fast.fast
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.seed = 3
    with pytest.raises(UsageError, match="mode 'slow'"):
        ParticipantConfig(bids_dir="/bids", output_dir="/out", processing="slow")
    with pytest.raises(UsageError, match="nprocs must be >= 1"):
        ParticipantConfig(bids_dir="/bids", output_dir="/out", nprocs=0)


def test_record_is_the_command_lines_or_the_configuration():
    config = ParticipantConfig(bids_dir="/bids", output_dir="/out", seed=4)
    record = config.record()
    assert record["argv"] is None and record["config"]["seed"] == 4
    assert record["config"]["processing"]["mode"] == "default"
    given = {"argv": ["ketabids", "/bids", "/out", "participant"], "config": {"seed": 4}}
    assert dataclasses.replace(config, run_record=given).record() == given


def test_train_config_checks_in_one_place():
    base = dict(bids_dir="/bids", output_dir="/out", target="response")
    config = TrainConfig(**base, c_grid=[1, 2], covariates=["age"], n_repeats=2)
    cv = config.cv_settings()
    assert (cv.n_repeats, cv.C_grid, cv.scheme) == (2, (1.0, 2.0), "stratified")
    assert config.covariates == ("age",) and config.feature_settings().template == \
        DEFAULT_TEMPLATE
    with pytest.raises(UsageError, match="--n-permutations must be >= 0"):
        TrainConfig(**base, n_permutations=-1)
    with pytest.raises(UsageError, match="--smoothing-fwhm"):
        TrainConfig(**base, smoothing_fwhm=-1)
    with pytest.raises(UsageError, match="--group-column cohort groups the folds"):
        TrainConfig(**base, group_column="cohort")
    with pytest.raises(UsageError, match="needs groups"):
        TrainConfig(**base, outer_cv="group-kfold")


def test_predict_config_checks():
    with pytest.raises(UsageError, match="needs the model"):
        PredictConfig(bids_dir="/bids", output_dir="/out")
    with pytest.raises(UsageError, match="--treatment-arm"):
        PredictConfig(bids_dir="/bids", output_dir="/out", model="m.skops",
                      treatment_arm="ketamine")


def test_entry_points_take_a_config_or_its_fields_not_both(tmp_path):
    from ketabids.group.predict import run_group_predict
    from ketabids.group.train import run_group_train
    from ketabids.runner import run_participant

    train = TrainConfig(bids_dir=tmp_path, output_dir=tmp_path, target="response")
    with pytest.raises(UsageError, match="not both"):
        run_group_train(train, seed=3)
    with pytest.raises(UsageError, match="expected a PredictConfig"):
        run_group_predict(train)
    with pytest.raises(UsageError, match="not both"):
        run_participant(ParticipantConfig(bids_dir=tmp_path, output_dir=tmp_path), seed=1)


def test_participant_manifest_names_what_the_runner_needs(tmp_path):
    from ketabids.workflows.base import init_participant_wf

    inputs = [T1wInput("01", None, "/bids/sub-01/anat/sub-01_T1w.nii.gz"),
              T1wInput("02", "a", "/bids/sub-02/ses-a/anat/sub-02_ses-a_T1w.nii.gz"),
              T1wInput("02", "b", "/bids/sub-02/ses-b/anat/sub-02_ses-b_T1w.nii.gz")]
    config = ParticipantConfig(bids_dir="/bids", output_dir=tmp_path, processing="fast")
    wf = init_participant_wf(inputs=inputs, config=config)
    manifest = wf.manifest
    names = set(wf.list_node_names())
    tops = {name.split(".")[0] for name in names}
    elements = manifest.element_subjects()
    assert set(elements) == tops  # every top-level element belongs to one subject
    assert elements["single_subject_02_sesb_wf"] == "02"
    assert manifest.subject_of("single_subject_01_wf") == "01"
    assert manifest.subject_of("elsewhere") is None
    for done, subject in manifest.done_nodes().items():
        assert done in names and elements[done] == subject
    qc = {graph.subject: graph.qc for graph in manifest.subjects}
    assert qc["01"] == {"single_subject_01_wf.subject_qc": ""}
    assert set(qc["02"].values()) == {"a", "b"}
    for subject_qc in (*qc["01"], *qc["02"]):
        assert subject_qc in names
        assert manifest.qc_session(subject_qc)[0] == subject_qc[15:17]
    assert manifest.qc_session("single_subject_01_wf.anat_wf.n4") is None
    single = wf.get_node("single_subject_01_wf")
    assert manifest.methods == single.visit_desc() and "N4" in manifest.methods
    without_qc = init_participant_wf(inputs=inputs[:1], config=config, qc=False)
    assert without_qc.manifest.subjects[0].qc == {}
