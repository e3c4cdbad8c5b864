"""The output folder after participant + group train + group predict, as other tools read it:

* the official BIDS validator finds 0 errors (bids-validator-deno, ``/group`` in .bidsignore);
* every TSV and NIfTI output has a JSON sidecar;
* the reports show ONE headline metric, equal to metrics.json's, and a confusion matrix whose
  cells sum to the number of participants;
* train and predict end with a closing line (headline + report path); run records in logs/.

One participant-level run on a tiny fast phantom and synthetic participant derivatives for the
group level (realistic maps take minutes per subject), all in one OUTPUT_DIR.
"""
from __future__ import annotations

import html as html_mod
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from ketabids.cli import main

pytestmark = pytest.mark.slow


def _cohort_bids(root: Path, table: pd.DataFrame) -> Path:
    from ketabids.testing import make_bids_tree

    labels = [pid.removeprefix("sub-") for pid in table["participant_id"]]
    columns = {c: table[c].tolist() for c in table.columns if c != "participant_id"}
    return make_bids_tree(root, {lab: {"anat": ["T1w"]} for lab in labels}, participants=columns)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    from ketabids.demo.derivatives import write_synthetic_derivatives
    from ketabids.demo.participants import make_participants_table
    from tests.integration.test_participant_run import make_phantom_bids

    base = tmp_path_factory.mktemp("contract")
    out = base / "out"
    disc = make_participants_table(40, seed=1, saline_fraction=0.0, site="A")
    ext = make_participants_table(16, seed=2, site="B", label_prefix="ext")
    bids = _cohort_bids(base / "bids" / "discovery", disc)
    ext_bids = _cohort_bids(base / "bids" / "external", ext)
    write_synthetic_derivatives(bids, out, seed=1, effect_size=0.06)
    write_synthetic_derivatives(ext_bids, out, seed=2, effect_size=0.06)
    phantom = make_phantom_bids(base / "bids" / "phantom", {"ph1": ["T1w"]})
    logger = logging.getLogger("ketabids")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    common = ["--skip-bids-validation", "--seed", "3"]
    assert main([str(phantom), str(out), "participant", "--fast", "-w", str(base / "work"),
                 "--omp-nthreads", "1", *common]) == 0
    label = ["--response-from", "madrs_pre", "madrs_24h"]
    import ketabids.cli.app as app

    original = app.setup_logging

    def setup_logging(verbose):  # the CLI replaces the handlers: add ours after it
        original(verbose)
        logger.addHandler(handler)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app, "setup_logging", setup_logging)
        assert main([str(bids), str(out), "group", *label, "--n-repeats", "2", "--n-outer", "5",
                     "--n-inner", "3", "--c-grid", "0.01", "1", "--n-permutations", "19",
                     *common]) == 0
        train_last = lines[-1]
        model = out / "group" / "train" / "ketabids_model.skops"
        assert main([str(ext_bids), str(out), "group", "--model", str(model), *label,
                     "--n-permutations", "19", *common]) == 0
        predict_last = lines[-1]
    logger.removeHandler(handler)
    return {"out": out, "n_train": len(disc), "n_ext": len(ext), "train_last": train_last,
            "predict_last": predict_last}


def _validator():
    exe = shutil.which("bids-validator-deno") or str(Path(sys.executable).parent /
                                                     "bids-validator-deno")
    if not Path(exe).exists():
        pytest.skip("bids-validator-deno is not installed")
    return exe


def test_validator_finds_no_error(outputs):
    from ketabids.bids.validation import validate_bids

    _validator()
    summary = validate_bids(outputs["out"], derivative=True)
    assert summary.ok and summary.n_errors == 0, summary.format()
    assert "/group" in (outputs["out"] / ".bidsignore").read_text().splitlines()


def test_every_table_and_map_has_a_sidecar(outputs):
    out = outputs["out"]
    files = [p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] != "logs"
             and (p.name.endswith(".tsv") or p.name.endswith(".nii.gz"))]
    assert any("group" in p.parts for p in files) and any(p.name == "dseg.tsv" for p in files)
    missing = [str(p.relative_to(out)) for p in files
               if not p.with_name(re.sub(r"\.(tsv|nii\.gz)$", ".json", p.name)).is_file()]
    assert missing == []
    mask = next((out / "group" / "train").glob("*_desc-analysis_mask.nii.gz"))
    assert json.loads(mask.with_name(mask.name.replace(".nii.gz", ".json")).read_text())[
        "Type"] == "ROI"


def test_dseg_lookup_table_is_smriprep_order(outputs):
    lut = pd.read_csv(outputs["out"] / "dseg.tsv", sep="\t")
    assert lut.to_dict("list") == {"index": [1, 2, 3],
                                   "name": ["Gray Matter", "White Matter", "Cerebrospinal Fluid"],
                                   "abbreviation": ["GM", "WM", "CSF"]}


def _text(path: Path) -> str:
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", path.read_text(), flags=re.S)
    page = re.sub(r'src="data:[^"]*"', "", page)
    return re.sub(r"\s+", " ", html_mod.unescape(re.sub(r"<[^>]+>", " ", page)))


@pytest.mark.parametrize("folder", ["train", "predict-external"])
def test_report_headline_equals_metrics_json(outputs, folder):
    group = outputs["out"] / "group" / folder
    headline = json.loads((group / "metrics.json").read_text())["headline"]
    text = _text(group / "report.html")
    found = re.findall(r"Headline result: (balanced accuracy (\d+\.\d)%[^|]*?non-responders\))",
                       text)
    assert len(found) == 1, found
    assert found[0][0] == headline["text"]
    assert float(found[0][1]) == round(100 * headline["estimate"], 1)
    assert "p <= 0.05 (floor of 19 permutations)" in headline["text"] or "p = " in \
        headline["text"]


@pytest.mark.parametrize("folder,n_key", [("train", "n_train"), ("predict-external", "n_ext")])
def test_confusion_matrix_counts_participants(outputs, folder, n_key):
    group = outputs["out"] / "group" / folder
    text = _text(group / "report.html")
    n = outputs[n_key]
    assert re.search(rf"Confusion matrix[^.]*(one (prediction )?per participant)[^.]*n = {n}",
                     text), text[:2000]
    if folder == "train":  # the figure's counts: consensus predictions, one per participant
        pred = pd.read_csv(group / "cv_predictions.tsv", sep="\t")
        assert len(pred) == n and pred["predicted"].isin([0, 1]).all()


def test_closing_lines_and_run_records(outputs):
    out = outputs["out"]
    for line, folder in ((outputs["train_last"], "train"),
                         (outputs["predict_last"], "predict-external")):
        headline = json.loads((out / "group" / folder / "metrics.json").read_text())["headline"]
        assert headline["text"] in line and str(out / "group" / folder / "report.html") in line
    records = sorted(p.name.rsplit("-", 2)[0] for p in (out / "logs").iterdir()
                     if p.is_dir() and not p.name.startswith("sub-"))
    assert records == ["group-predict", "group-train", "participant"]
    for record in (out / "logs").glob("group-*"):
        # a training's record also holds its wall times (kept out of metrics.json)
        timings = {"timings.json"} if record.name.startswith("group-train") else set()
        assert {p.name for p in record.iterdir()} == {
            "command.txt", "config.json", "versions.json", "CITATION.md", "CITATION.bib",
            "CITATION.html"} | timings
        assert "Haufe" in (record / "CITATION.md").read_text()
        assert json.loads((record / "config.json").read_text())["n_permutations"] == 19
