"""The whole command line, end to end: group train -> predict (external, control arm) on
synthetic participant derivatives, and the demo command on tiny phantoms."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from ketabids.cli import main


def _tree_state(root):
    return sorted(
        (str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*") if p.is_file()
    )


def _cohort(tmp_path, name, table, seed):
    """A raw BIDS tree (tiny T1w files) + synthetic participant derivatives for ``table``."""
    from ketabids.demo.derivatives import write_synthetic_derivatives
    from ketabids.testing import make_bids_tree

    labels = [pid.removeprefix("sub-") for pid in table["participant_id"]]
    columns = {c: table[c].tolist() for c in table.columns if c != "participant_id"}
    bids = make_bids_tree(tmp_path / "bids" / name, {lab: {"anat": ["T1w"]} for lab in labels},
                          participants=columns)
    out = tmp_path / "derivatives" / name
    write_synthetic_derivatives(bids, out, seed=seed, effect_size=0.06, site_effect=0.02)
    return bids, out


@pytest.mark.slow
def test_group_train_then_predict_through_cli(tmp_path, capsys):
    from ketabids.demo.participants import make_participants_table

    disc = make_participants_table(64, seed=1, saline_fraction=0.25, site=["A", "B"])
    ext = make_participants_table(24, seed=2, site="C", label_prefix="ext")
    bids, out = _cohort(tmp_path, "discovery", disc, seed=1)
    ext_bids, ext_out = _cohort(tmp_path, "external", ext, seed=2)
    before = _tree_state(bids)

    protocol = ["--n-repeats", "2", "--n-outer", "5", "--n-inner", "3",
                "--n-permutations", "19", "--seed", "3",
                "--skip-bids-validation"]
    label = ["--response-from", "madrs_pre", "madrs_24h"]
    assert main([str(bids), str(out), "group", *label, "--include", "arm=ketamine",
                 "--covariates", "age", "sex", "tiv", "--site-column", "site", *protocol]) == 0
    train = out / "group" / "train"
    metrics = json.loads((train / "metrics.json").read_text())
    model = next(train.glob("*.skops"))
    assert (train / "report.html").stat().st_size > 10_000
    cohort = pd.read_csv(train / "cohort.tsv", sep="\t")
    assert len(cohort) == (disc["arm"] == "ketamine").sum()  # --include keeps the ketamine arm
    assert set(cohort["status"]) == {"included"}
    assert metrics

    # external cohort: frozen model, labels from the same rule, permutation p
    assert main([str(ext_bids), str(ext_out), "group", "--model", str(model), *label,
                 "--n-permutations", "199", "--skip-bids-validation"]) == 0
    pred_dirs = list((ext_out / "group").glob("predict-*"))
    assert len(pred_dirs) == 1
    ext_metrics = json.loads((pred_dirs[0] / "metrics.json").read_text())
    predictions = pd.read_csv(pred_dirs[0] / "predictions.tsv", sep="\t")
    assert len(predictions) == len(ext)
    y = predictions["y_true"].to_numpy()
    pred = predictions["predicted"].to_numpy()
    bac = 0.5 * ((pred[y == 1] == 1).mean() + (pred[y == 0] == 0).mean())
    assert bac >= 0.7, ext_metrics
    assert np.isfinite(predictions["decision"]).all()

    # control arm of the discovery dataset: chance
    assert main([str(bids), str(out), "group", "--model", str(model), *label,
                 "--include", "arm=saline", "--prediction-name", "saline",
                 "--n-permutations", "199", "--skip-bids-validation"]) == 0
    saline = pd.read_csv(out / "group" / "predict-saline" / "predictions.tsv", sep="\t")
    assert len(saline) == (disc["arm"] == "saline").sum()

    assert _tree_state(bids) == before  # BIDS_DIR never written
    capsys.readouterr()


def test_predict_refuses_a_model_that_is_not_one(tmp_path, capsys):
    from ketabids.demo.participants import make_participants_table

    table = make_participants_table(6, seed=4)
    bids, out = _cohort(tmp_path, "small", table, seed=4)
    fake = tmp_path / "model.skops"
    fake.write_bytes(b"PK\x03\x04 not a model")
    code = main([str(bids), str(out), "group", "--model", str(fake), "--skip-bids-validation"])
    assert code == 65
    assert "model.skops" in capsys.readouterr().err
    assert not (out / "group").exists() or not any((out / "group").glob("predict-*"))
