"""The BIDS-App contract: parsing, cross-option checks and every exit code."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest

from ketabids import __version__
from ketabids.cli import main
from ketabids.cli.app import get_parser
from ketabids.cli.demo import get_demo_parser
from ketabids.errors import ExitCode

HAS_VALIDATOR = shutil.which("bids-validator-deno") is not None or (
    __import__("pathlib").Path(__import__("sys").executable).with_name("bids-validator-deno").exists()
)


@pytest.fixture
def dataset(bids_tree):
    return bids_tree({"01": {"anat": ["T1w"]}, "02": {"anat": ["T1w"]}, "03": {"anat": ["T2w"]}})


@pytest.fixture
def captured(monkeypatch):
    """Replace the participant/group runners by recorders: tests the CLI layer alone."""
    calls = {}

    def recorder(name, result=None):
        def _run(config, **kwargs):  # the run configuration, built once by the CLI
            calls[name] = config
            return result if result is not None else {"failed": []}
        return _run

    import ketabids.group.predict as group_predict
    import ketabids.group.train as group_train
    import ketabids.runner as participant

    monkeypatch.setattr(participant, "run_participant", recorder("participant"))
    monkeypatch.setattr(group_train, "run_group_train", recorder("train"))
    monkeypatch.setattr(group_predict, "run_group_predict", recorder("predict"))
    return calls


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ketabids {__version__}"


def test_help_lists_every_option_once():
    text = get_parser().format_help()
    for option in ("--participant-label", "--session-label", "--bids-filter-file", "--work-dir",
                   "--nprocs", "--omp-nthreads", "--mem-gb", "--skip-bids-validation", "--seed",
                   "--template", "--fast", "--model", "--response-from", "--n-permutations"):
        assert text.count(option + " ") + text.count(option + "\n") >= 1, option
    options = [s for a in get_parser()._actions for s in a.option_strings]
    assert len(options) == len(set(options))
    assert "OUTPUT_DIR" in get_demo_parser().format_help()


@pytest.mark.parametrize("argv, code", [
    (["a", "b"], ExitCode.USAGE),  # missing analysis level
    (["a", "b", "subject"], ExitCode.UNKNOWN_LEVEL),
    (["a", "b", "participant", "--nprocs", "0"], ExitCode.USAGE),
    (["a", "b", "participant", "--omp-nthreads", "0"], ExitCode.USAGE),
    (["a", "b", "participant", "--nipype-plugin-file", "/no/such.yml"], ExitCode.NO_INPUT),
    (["a", "b", "participant", "--atlas", "/no/such_atlas.nii.gz"], ExitCode.NO_INPUT),
    (["a", "b", "participant", "--no-such-option"], ExitCode.USAGE),
    (["a", "b", "group", "--combat", "--target", "r"], ExitCode.USAGE),
    (["a", "b", "group", "--target", "r", "--response-from", "x", "y"], ExitCode.USAGE),
    (["a", "b", "group"], ExitCode.USAGE),  # training without a label
    (["a", "b", "group", "--model", "/no/such/model.skops"], ExitCode.NO_INPUT),
    (["a", "b", "group", "--target", "r", "--arm-column", "arm"], ExitCode.USAGE),  # no --model
    (["a", "b", "group", "--target", "r", "--treatment-arm", "ketamine"], ExitCode.USAGE),
    (["a", "b", "participant", "--arm-column", "arm"], ExitCode.USAGE),
])
def test_usage_errors(argv, code, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ketabids: error:")


def test_missing_bids_dir(tmp_path, capsys):
    code = main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"])
    assert code == ExitCode.NO_INPUT
    assert "nope" in capsys.readouterr().err


def test_not_a_bids_root(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    assert main([str(tmp_path / "raw"), str(tmp_path / "out"), "participant"]) == ExitCode.NO_INPUT
    assert "dataset_description.json" in capsys.readouterr().err


@pytest.mark.parametrize("where", [".", "..", "code/out", "sub-01/out", "derivatives"])
def test_output_in_the_raw_dataset_refused(dataset, capsys, where):
    """BIDS_DIR, a folder above it, its raw folders and derivatives/ itself are refused (exit
    64, nothing created); BIDS_DIR/derivatives/<name> is accepted (test_check_output_dir)."""
    before = sorted(p.relative_to(dataset.parent) for p in dataset.parent.rglob("*"))
    code = main([str(dataset), str(dataset / where), "participant", "--skip-bids-validation"])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "never writes" in err and str(dataset / "derivatives" / "ketabids") in err
    assert sorted(p.relative_to(dataset.parent) for p in dataset.parent.rglob("*")) == before


def test_check_output_dir(dataset, tmp_path):
    """OUTPUT_DIR in BIDS_DIR/derivatives/ (fMRIPrep's layout) or outside BIDS_DIR is accepted,
    resolved and not created."""
    from ketabids.bids.layout import check_output_dir

    bids_dir = dataset.resolve()
    for out in (bids_dir / "derivatives" / "ketabids", bids_dir / "derivatives" / "a" / "b",
                tmp_path / "elsewhere"):
        assert check_output_dir(out, bids_dir) == out.resolve()
        assert not out.exists()


def test_output_not_creatable(dataset, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main([str(dataset), str(blocker / "out"), "participant", "--skip-bids-validation"])
    assert code == ExitCode.CANT_CREATE
    assert "cannot create" in capsys.readouterr().err


@pytest.mark.parametrize("labels", [["04"], ["sub-01", "sub-09"]])
def test_unknown_participant(dataset, tmp_path, labels, capsys):
    code = main([str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--participant-label", *labels])
    assert code == ExitCode.NO_DATA
    assert "sub-0" in capsys.readouterr().err


def test_filters_select_nothing(dataset, tmp_path, capsys):
    code = main([str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--participant-label", "03"])  # sub-03 has a T2w only
    assert code == ExitCode.NO_DATA
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"t1w": {"acquisition": "nothing"}}))
    code = main([str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--bids-filter-file", str(filt)])
    assert code == ExitCode.NO_DATA


def test_bad_filter_files(dataset, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    common = [str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
    assert main(common + ["--bids-filter-file", str(bad)]) == ExitCode.BAD_DATA
    assert "bad.json" in capsys.readouterr().err
    bad.write_text(json.dumps({"bold": {}}))
    assert main(common + ["--bids-filter-file", str(bad)]) == ExitCode.BAD_DATA
    assert main(common + ["--bids-filter-file", str(tmp_path / "none.json")]) == ExitCode.NO_INPUT


def test_participant_dispatch(dataset, tmp_path, captured):
    labels = tmp_path / "labels.txt"
    labels.write_text("sub-02  # second\n01\n")
    out = tmp_path / "out"
    code = main([str(dataset), str(out), "participant", "--skip-bids-validation",
                 "--participant-label", str(labels), "--fast", "--seed", "7",
                 "--omp-nthreads", "1", "-w", str(tmp_path / "work")])
    assert code == 0
    config = captured["participant"]
    assert config.subjects == ("01", "02")  # sorted, sub- stripped, comments ignored
    assert config.fast is True and config.processing.mode == "fast" and config.seed == 7
    assert config.work_dir == (tmp_path / "work").resolve()
    assert config.keep_work is False  # a published subject's work folder is removed
    assert config.record()["argv"][:3] == ["ketabids", str(dataset), str(out)]
    # the runner writes dataset_description.json, once: not the command line
    assert not (out / "dataset_description.json").exists()


def test_failed_subjects_give_exit_1(dataset, tmp_path, monkeypatch):
    import ketabids.runner as participant

    monkeypatch.setattr(participant, "run_participant",
                        lambda *a, **kw: {"succeeded": ["01"], "failed": ["02"]})
    assert main([str(dataset), str(tmp_path / "out"), "participant",
                 "--skip-bids-validation"]) == ExitCode.FAILURE


def test_group_dispatch(dataset, tmp_path, captured):
    out = tmp_path / "out"
    assert main([str(dataset), str(out), "group", "--skip-bids-validation",
                 "--response-from", "madrs_pre", "madrs_24h", "--include", "arm=ketamine",
                 "--covariates", "age", "tiv", "--n-permutations", "10"]) == 0
    train = captured["train"]
    assert train.response_from == ("madrs_pre", "madrs_24h")
    assert train.include == ("arm=ketamine",) and train.covariates == ("age", "tiv")
    assert train.n_permutations == 10 and train.template == "MNI152NLin2009aSym"
    model = tmp_path / "m.skops"
    model.write_bytes(b"x")
    assert main([str(dataset), str(out), "group", "--skip-bids-validation",
                 "--model", str(model), "--target", "response"]) == 0
    assert captured["predict"].model == model
    assert captured["predict"].arm_column is None
    assert main([str(dataset), str(out), "group", "--skip-bids-validation", "--model", str(model),
                 "--target", "response", "--arm-column", "arm", "--treatment-arm",
                 "ketamine"]) == 0
    assert (captured["predict"].arm_column, captured["predict"].treatment_arm) == \
        ("arm", "ketamine")


def test_session_labels_strip_prefix(bids_tree, tmp_path, captured):
    root = bids_tree({"01": {"ses-a": {"anat": ["T1w"]}, "ses-b": {"anat": ["T1w"]}}})
    assert main([str(root), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--session-label", "ses-b"]) == 0
    assert captured["participant"].sessions == ("b",)


def test_bids_dir_is_never_written(dataset, tmp_path, captured):
    before = sorted((p.relative_to(dataset), p.stat().st_mtime_ns) for p in dataset.rglob("*"))
    main([str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation"])
    after = sorted((p.relative_to(dataset), p.stat().st_mtime_ns) for p in dataset.rglob("*"))
    assert before == after


@pytest.mark.skipif(not HAS_VALIDATOR, reason="bids-validator-deno is not installed")
def test_validation_failure_exit_16(bids_tree, tmp_path, capsys):
    root = bids_tree({"01": {"anat": ["T1w"]}})
    (root / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"not a nifti")
    assert main([str(root), str(tmp_path / "out"), "participant"]) == ExitCode.VALIDATION_FAILED
    assert "--skip-bids-validation" in capsys.readouterr().err


def test_cli_logging_silences_nipype_info_even_when_nipype_is_imported_later():
    # a fresh process: Nipype resets its loggers to INFO when first imported
    code = ("import logging; from ketabids.cli.app import setup_logging; setup_logging(0); "
            "import nipype.pipeline.engine; "
            "print(logging.getLogger('nipype.workflow').getEffectiveLevel())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert int(out.stdout.split()[-1]) == logging.WARNING
