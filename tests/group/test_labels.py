"""participants.tsv: label parsing, derived labels, row filters, covariates and their errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ketabids.errors import BadDataError, MissingInputError, UsageError
from ketabids.group import labels as lab


def write_tsv(tmp_path, rows: dict):
    pd.DataFrame(rows).to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    return lab.read_participants(tmp_path)


@pytest.mark.parametrize("value,expected", [
    ("1", 1), ("0", 0), ("1.0", 1), ("yes", 1), ("No", 0), ("TRUE", 1), ("false", 0),
    ("Responder", 1), ("non-responder", 0), ("Non_Responder", 0), ("nonresponder", 0),
    (" non responder ", 0), ("NR", 0), ("y", 1), ("n", 0),
])
def test_parse_binary_spellings(value, expected):
    assert lab.parse_binary(value) == expected


@pytest.mark.parametrize("value", ["", "n/a", "NA", "nan", None])
def test_parse_binary_missing(value):
    assert np.isnan(lab.parse_binary(value))


def test_target_labels_and_missing_listed(tmp_path):
    table = write_tsv(tmp_path, {"participant_id": ["sub-01", "sub-02", "sub-03", "sub-04"],
                                 "response": ["yes", "Non-responder", "n/a", "1"]})
    y, excluded = lab.get_labels(table, lab.make_label_rule(target="response"))
    assert y.to_dict() == {"01": 1, "02": 0, "04": 1}
    assert [(e.participant_id, e.reason) for e in excluded] == [("sub-03", "response missing")]


def test_target_not_binary_names_subjects(tmp_path):
    table = write_tsv(tmp_path, {"participant_id": ["sub-01", "sub-02"],
                                 "response": ["yes", "maybe"]})
    with pytest.raises(BadDataError, match=r"not binary for sub-02='maybe'"):
        lab.get_labels(table, lab.make_label_rule(target="response"))


def test_missing_target_column(tmp_path):
    table = write_tsv(tmp_path, {"participant_id": ["sub-01"], "age": [40]})
    with pytest.raises(MissingInputError, match="no column 'response'.*available: age"):
        lab.get_labels(table, lab.make_label_rule(target="response"))


def test_response_from_threshold(tmp_path):
    table = write_tsv(tmp_path, {
        "participant_id": ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05"],
        "madrs_pre": ["30", "30", "30", "", "0"],
        "madrs_24h": ["15", "16", "3", "10", "0"],
    })
    rule = lab.make_label_rule(response_from=("madrs_pre", "madrs_24h"))
    y, excluded = lab.get_labels(table, rule)
    assert y.to_dict() == {"01": 1, "02": 0, "03": 1}  # exactly 50 % counts as response
    assert {e.participant_id for e in excluded} == {"sub-04", "sub-05"}
    y30, _ = lab.get_labels(table, lab.make_label_rule(response_from=("madrs_pre", "madrs_24h"),
                                                       response_threshold=0.4))
    assert y30["02"] == 1


def test_response_from_not_numeric(tmp_path):
    table = write_tsv(tmp_path, {"participant_id": ["sub-01"], "madrs_pre": ["thirty"],
                                 "madrs_24h": ["10"]})
    with pytest.raises(BadDataError, match="sub-01='thirty'"):
        lab.get_labels(table, lab.make_label_rule(response_from=("madrs_pre", "madrs_24h")))


def test_label_rule_usage_errors():
    with pytest.raises(UsageError, match="not both"):
        lab.make_label_rule(target="a", response_from=("b", "c"))
    with pytest.raises(UsageError, match="training needs labels"):
        lab.make_label_rule()
    with pytest.raises(UsageError, match="fraction"):
        lab.make_label_rule(target="a", response_threshold=1.5)
    with pytest.raises(UsageError, match="COLUMN=VALUE"):
        lab.make_label_rule(target="a", include=["arm"])
    assert lab.make_label_rule(required=False).describe() == "no labels"


def test_include_filters(tmp_path):
    table = write_tsv(tmp_path, {"participant_id": [f"sub-0{i}" for i in range(1, 6)],
                                 "arm": ["ketamine", "Saline", "ketamine", "esketamine", "saline"],
                                 "site": ["A", "A", "B", "B", "B"]})
    assert list(lab.apply_filters(table, ["arm=ketamine"]).index) == ["01", "03"]
    assert list(lab.apply_filters(table, ["arm=saline"]).index) == ["02", "05"]
    assert list(lab.apply_filters(table, ["arm!=saline", "site=B"]).index) == ["03", "04"]
    assert list(lab.apply_filters(table, ["arm=ketamine,esketamine"]).index) == ["01", "03", "04"]
    with pytest.raises(MissingInputError, match="no column 'group'"):
        lab.apply_filters(table, ["group=1"])


def test_covariates_numeric_categorical_and_encoding(tmp_path):
    table = write_tsv(tmp_path, {"participant_id": ["sub-01", "sub-02", "sub-03"],
                                 "age": ["30", "40.5", "50"], "sex": ["M", "F", "m"]})
    tiv = pd.Series({"01": 1500.0, "02": 1300.0, "03": 1400.0})
    X, cols, enc = lab.encode_covariates(table, ["age", "sex", "tiv"], tiv=tiv)
    assert cols == ["age", "sex[M]", "tiv"]
    np.testing.assert_allclose(X, [[30, 1, 1500], [40.5, 0, 1300], [50, 1, 1400]])
    assert enc["sex"] == {"type": "categorical", "levels": ["F", "M"], "reference": "F"}
    # prediction: same columns from the stored encoding, even if one level is absent
    new = write_tsv(tmp_path, {"participant_id": ["sub-09"], "age": ["22"], "sex": ["F"]})
    X2, cols2, _ = lab.encode_covariates(new, ["age", "sex"], encoding={k: enc[k] for k in
                                                                         ("age", "sex")})
    assert cols2 == ["age", "sex[M]"] and X2.tolist() == [[22.0, 0.0]]
    unseen = write_tsv(tmp_path, {"participant_id": ["sub-09"], "age": ["22"], "sex": ["X"]})
    with pytest.raises(BadDataError, match="not seen at training"):
        lab.encode_covariates(unseen, ["age", "sex"], encoding={k: enc[k] for k in ("age", "sex")})


def test_missing_covariate_names_subjects(tmp_path):
    table = write_tsv(tmp_path, {"participant_id": ["sub-01", "sub-02", "sub-03"],
                                 "age": ["30", "n/a", ""]})
    with pytest.raises(BadDataError, match="'age' is missing for sub-02, sub-03"):
        lab.encode_covariates(table, ["age"])
    with pytest.raises(MissingInputError, match="no column 'bmi'"):
        lab.encode_covariates(table, ["bmi"])


def test_read_participants_errors(tmp_path):
    with pytest.raises(MissingInputError, match="participants.tsv is missing"):
        lab.read_participants(tmp_path)
    (tmp_path / "participants.tsv").write_text("participant_id\tage\nsub-01\t3\nsub-01\t4\n")
    with pytest.raises(BadDataError, match="repeated: sub-01"):
        lab.read_participants(tmp_path)


def test_site_labels(tmp_path):
    table = write_tsv(tmp_path, {"participant_id": ["sub-01", "sub-02"], "site": ["A", ""]})
    with pytest.raises(BadDataError, match="empty for sub-02"):
        lab.site_labels(table, "site")
    assert lab.site_labels(table, None) is None
