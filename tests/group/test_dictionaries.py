"""Every group-level TSV and map has a data dictionary, and every written column is described.

File names are parsed from the source of the group writers (ketabids/group/train.py,
predict.py and model_io.py); columns come from the engine functions that produce the tables. The
files of a real run (participant + train + predict) are checked in
tests/integration/test_outputs_contract.py (every .tsv/.nii.gz has its .json) and
tests/group/test_train_predict.py (the exact train listing).
"""
from __future__ import annotations

import ast
import inspect
import re

import numpy as np
import pytest

from ketabids.group import dictionaries as dd
from ketabids.group import model_io
from ketabids.group import predict as group_predict
from ketabids.group import train as group_train
from ketabids.group.metrics import calibration_table


def _written_names() -> tuple[set[str], set[str], dict[str, list[str]]]:
    """(TSV names, statmap descs, {tsv: columns of DataFrame literals}) from the writers'
    source."""
    trees = [ast.parse(inspect.getsource(module)) for module in (group_train, group_predict)]
    tsvs, descs, literal_columns = set(), set(), {}
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(r"[a-z_]+\.tsv", node.value) \
                and node.value != "participants.tsv":  # the input, read only
            tsvs.add(node.value)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "map_values"
                                                for t in node.targets):
            descs |= {k.value for k in node.value.keys}
        if isinstance(node, ast.Call) and getattr(node.func, "id", "").endswith("write_tsv") \
                and len(node.args) == 2:
            frame, dest = node.args
            if isinstance(frame, ast.Call) and frame.args and isinstance(frame.args[0], ast.Dict) \
                    and isinstance(dest, ast.BinOp) and isinstance(dest.right, ast.Constant):
                literal_columns[dest.right.value] = [k.value for k in frame.args[0].keys]
    return tsvs, descs, literal_columns


TSVS, DESCS, LITERAL_COLUMNS = _written_names()


def test_the_source_parse_found_the_outputs():
    assert {"cohort.tsv", "cv_predictions.tsv", "cv_folds.tsv", "metrics.tsv", "calibration.tsv",
            "permutations.tsv", "final_model_decisions.tsv", "predictions.tsv",
            "regions.tsv"} <= TSVS
    assert {"weight", "cvratio", "signconsistency", "pattern", "finalweight"} <= DESCS
    assert "final_model_decisions.tsv" in LITERAL_COLUMNS


@pytest.mark.parametrize("name", sorted(TSVS))
def test_every_tsv_written_has_a_dictionary(name):
    sidecar = dd.sidecar_for(name)
    assert sidecar and all(entry.get("Description") or entry.get("Levels")
                           for entry in sidecar.values())
    for column in LITERAL_COLUMNS.get(name, []):
        assert column in sidecar, f"{name}: {column}"


@pytest.mark.parametrize("desc", sorted(DESCS))
def test_every_statmap_written_has_a_sidecar(desc):
    name = f"space-MNI152NLin2009aSym_desc-{desc}_statmap.nii.gz"
    sidecar = dd.sidecar_for(name, resolution=2)
    assert sidecar["Units"] and sidecar["Description"] and sidecar["Computation"]
    assert sidecar["SpatialReference"] == "MNI152NLin2009aSym"
    assert sidecar["Resolution"] == "2 mm isotropic analysis grid"
    assert dd.sidecar_name(name) == f"space-MNI152NLin2009aSym_desc-{desc}_statmap.json"


def test_the_mask_has_a_sidecar():
    sidecar = dd.sidecar_for(model_io.MASK_NAME)
    assert sidecar["Type"] == "ROI" and sidecar["Levels"] == {"0": "not analysed",
                                                              "1": "analysed voxel (feature)"}
    # the BIDS-style name proposed for it works too
    assert dd.sidecar_for("space-MNI152NLin2009aSym_res-2_desc-analysis_mask.nii.gz")["Type"] \
        == "ROI"


@pytest.fixture(scope="module")
def engine_tables():
    """The tables the engine produces on a small synthetic cohort (planted effect)."""
    import ketabids.group as engine

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 10)
    X = rng.normal(size=(20, 40)) + 0.8 * y[:, None] * (np.arange(40) < 5)
    settings = engine.NestedCVSettings(n_repeats=2, n_outer=3, n_inner=2, C_grid=(0.1, 1.0))
    result = engine.nested_cv(X, y, settings=settings)
    subjects = result.subjects.rename(columns={"row": "participant_id"})
    calib = calibration_table(y, subjects["proba"].to_numpy(float))
    maps = engine.weight_maps(result)
    final = engine.fit_final_model(X, y, settings=settings)
    pattern = engine.haufe_pattern(final, X)
    regions = engine.region_table(np.repeat([1, 2], 20), pattern, names={1: "a", 2: "b"},
                                  maps=maps)
    metrics = result.metrics
    return {"cv_predictions.tsv": subjects, "cv_folds.tsv": result.folds,
            "metrics.tsv": metrics, "calibration.tsv": calib, "regions.tsv": regions}


@pytest.mark.parametrize("name", ["cv_predictions.tsv", "cv_folds.tsv", "metrics.tsv",
                                  "calibration.tsv", "regions.tsv"])
def test_every_column_the_engine_writes_is_described(engine_tables, name):
    frame = engine_tables[name]
    sidecar = dd.sidecar_for(name, columns=list(frame.columns))
    assert list(sidecar) == list(frame.columns)
    if name == "metrics.tsv":  # coded columns: every value used is a documented level
        assert set(frame["metric"]) <= set(sidecar["metric"]["Levels"])
        assert set(frame["aggregation"]) <= set(sidecar["aggregation"]["Levels"])


def test_label_coding_and_in_sample_values_are_explicit():
    for name in ("cv_predictions.tsv", "final_model_decisions.tsv", "predictions.tsv"):
        assert set(dd.sidecar_for(name)["y_true"]["Levels"]) == {"0", "1"}
    final = dd.sidecar_for("final_model_decisions.tsv")
    assert "IN-SAMPLE" in final["decision"]["LongName"]
    assert "NOT an estimate of performance" in final["decision"]["Description"]
    cv = dd.sidecar_for("cv_predictions.tsv")
    assert "Standard deviation" in cv["decision_sd"]["Description"]
    assert cv["n_correct"]["Units"] == "count"


def test_permutation_tables_differ_between_train_and_predict():
    train = dd.sidecar_for("group/train/permutations.tsv")
    predict = dd.sidecar_for("group/predict-ext-arm-saline/permutations.tsv")
    assert "nested CV" in train["null_bac"]["Description"]
    assert "frozen model" in predict["null_bac"]["Description"]
    assert dd.sidecar_for("permutations.tsv", mode="predict") == predict


def test_cohort_covariate_columns_are_described():
    sidecar = dd.sidecar_for("cohort.tsv", columns=["participant_id", "status", "reason",
                                                    "qc_verdict", "qc_reasons",
                                                    "label", "map", "site", "age", "sex[M]",
                                                    "tiv"])
    assert set(sidecar["qc_verdict"]["Levels"]) == {"pass", "warn", "fail", "n/a"}
    assert "Covariate" not in sidecar["qc_reasons"]["LongName"]
    assert sidecar["sex[M]"]["Levels"]["1"] == "M"
    assert sidecar["tiv"]["Units"] == "mL"
    assert "age" in sidecar["age"]["Description"]


def test_undescribed_things_are_refused():
    with pytest.raises(KeyError, match="no data dictionary"):
        dd.sidecar_for("new_table.tsv")
    with pytest.raises(KeyError, match="'extra'"):
        dd.sidecar_for("cv_folds.tsv", columns=["repeat", "extra"])
    with pytest.raises(KeyError, match="no sidecar"):
        dd.sidecar_for("space-X_desc-new_statmap.nii.gz")
    with pytest.raises(ValueError):
        dd.sidecar_name("metrics.json")


def test_sidecars_are_copies():
    first = dd.sidecar_for("cv_predictions.tsv")
    first["y_true"]["Levels"]["1"] = "changed"
    assert dd.sidecar_for("cv_predictions.tsv")["y_true"]["Levels"]["1"] != "changed"
