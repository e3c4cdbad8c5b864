"""Cohort, labels and covariates from ``participants.tsv``.

Everything the group level learns about a participant that is not an image comes from here:

* **row filters** ``include=["arm=ketamine", "site!=B"]``: every filter must hold (AND); a value
  may list alternatives, ``arm=ketamine,esketamine`` (OR). Comparison is on the text, stripped
  and case-insensitive. A filter naming a column that does not exist is an error.
* **binary labels** ``target="response"``: a cell is read as

  ====================  ==================================================================
  1 (responder)         ``1``, ``1.0``, ``yes``, ``y``, ``true``, ``t``, ``responder``,
                        ``response``, ``positive``, ``pos``, ``r``
  0 (non-responder)     ``0``, ``0.0``, ``no``, ``n``, ``false``, ``f``, ``non-responder``,
                        ``nonresponder``, ``non_responder``, ``non responder``,
                        ``not responder``, ``no response``, ``nr``, ``negative``, ``neg``
  missing (excluded)    empty, ``n/a``, ``na``, ``nan``, ``none``
  ====================  ==================================================================

  case-insensitive, surrounding blanks ignored. Any other value is an error naming the
  participants and values.
* **derived labels** ``response_from=("madrs_pre", "madrs_24h")``:
  ``response = (pre - post) / pre >= threshold`` (default 0.5, a 50 % drop, the usual MADRS
  response criterion). A missing score, or ``pre <= 0`` (relative change undefined), leaves the
  participant without label.
* **covariates**: numeric columns are used as they are; a column with any non-numeric value is
  categorical and one-hot encoded against its first level in sorted order (the reference). The
  encoding is returned so prediction builds the very same columns; a level unseen at training
  is an error. ``tiv`` is a pseudo-column filled from ``desc-volumes_morph.tsv`` (``tiv_ml``).
  A missing covariate value is an error naming the participants.

Participants left out (no label, no map...) are never dropped silently: the caller receives them
with a reason (:class:`Exclusion`) and lists them in a warning, the report and a TSV.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ketabids.config import LabelRule
from ketabids.errors import BadDataError, MissingInputError, UsageError

POSITIVE = frozenset(
    {"1", "1.0", "yes", "y", "true", "t", "responder", "response", "positive", "pos", "r"}
)
NEGATIVE = frozenset(
    {"0", "0.0", "no", "n", "false", "f", "non-responder", "nonresponder", "non_responder",
     "non responder", "not responder", "no response", "nr", "negative", "neg"}
)
MISSING = frozenset({"", "n/a", "na", "nan", "none"})


@dataclass(frozen=True)
class Exclusion:
    """A participant left out of the analysis and why."""

    participant_id: str
    reason: str


def make_label_rule(*, target=None, response_from=None, response_threshold=0.5, include=(),
                    required=True) -> LabelRule:
    """Validate the label options (usage errors) and bundle them."""
    if target and response_from:
        raise UsageError("give either --target or --response-from, not both")
    if required and not target and not response_from:
        raise UsageError(
            "training needs labels: give --target COLUMN (binary) or "
            "--response-from PRE POST (relative drop >= --response-threshold)"
        )
    if response_from is not None:
        response_from = tuple(response_from)
        if len(response_from) != 2 or not all(isinstance(c, str) and c for c in response_from):
            raise UsageError("--response-from takes two column names: PRE POST")
    threshold = float(response_threshold)
    if not (0.0 < threshold <= 1.0) or math.isnan(threshold):
        raise UsageError(f"--response-threshold {response_threshold}: use a fraction in (0, 1]")
    include = tuple(include or ())
    for spec in include:
        parse_filter(spec)
    return LabelRule(target=target, response_from=response_from,
                     response_threshold=threshold, include=include)


# --------------------------------------------------------------------------------- reading
def read_participants(bids_dir: str | os.PathLike) -> pd.DataFrame:
    """``participants.tsv`` as strings, indexed by label without ``sub-``."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        raise MissingInputError(
            f"{path}: participants.tsv is missing; the group level reads labels and "
            "covariates from it (columns participant_id, ...)"
        )
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many kinds
        raise BadDataError(f"{path}: cannot be read as a TSV ({exc})") from exc
    if "participant_id" not in table.columns:
        raise BadDataError(f"{path}: no participant_id column; the first column must be "
                           "participant_id (sub-<label>)")
    table["participant_id"] = table["participant_id"].str.strip()
    dup = table["participant_id"][table["participant_id"].duplicated()].unique().tolist()
    if dup:
        raise BadDataError(f"{path}: participant_id repeated: {', '.join(dup)}; keep one row each")
    table.index = table["participant_id"].str.removeprefix("sub-")
    table.index.name = "subject"
    table.attrs["path"] = str(path)
    return table.apply(lambda col: col.str.strip())


def _require_columns(table: pd.DataFrame, columns, option: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MissingInputError(
            f"{table.attrs.get('path', 'participants.tsv')}: no column "
            f"{', '.join(repr(m) for m in missing)} (asked by {option}); available: "
            f"{', '.join(c for c in table.columns if c != 'participant_id')}"
        )


def parse_filter(spec: str) -> tuple[str, str, frozenset]:
    """``"arm=ketamine"`` -> ``("arm", "=", {"ketamine"})``; ``!=`` negates.

    >>> column, op, values = parse_filter("arm != saline, placebo")
    >>> column, op, sorted(values)
    ('arm', '!=', ['placebo', 'saline'])
    """
    for op in ("!=", "="):
        if op in spec:
            column, value = spec.split(op, 1)
            column = column.strip()
            values = frozenset(v.strip().lower() for v in value.split(","))
            if column and values and all(values):
                return column, op, values
    raise UsageError(f"--include {spec!r}: write COLUMN=VALUE or COLUMN!=VALUE "
                     "(alternatives separated by commas), e.g. arm=ketamine")


def apply_filters(table: pd.DataFrame, include) -> pd.DataFrame:
    """Rows for which every ``include`` filter holds."""
    keep = pd.Series(True, index=table.index)
    for spec in include or ():
        column, op, values = parse_filter(spec)
        _require_columns(table, [column], f"--include {spec}")
        hit = table[column].str.lower().isin(values)
        keep &= hit if op == "=" else ~hit
    return table[keep]


def parse_binary(value) -> float:
    """A label cell as 1.0, 0.0 or NaN (missing); ValueError for anything else.

    >>> [parse_binary(v) for v in ["Yes", " responder ", "Non-Responder", "0", "n/a"]]
    [1.0, 1.0, 0.0, 0.0, nan]
    """
    text = "" if value is None else str(value).strip().lower()
    if text in POSITIVE:
        return 1.0
    if text in NEGATIVE:
        return 0.0
    if text in MISSING:
        return float("nan")
    raise ValueError(value)


def _numeric(table: pd.DataFrame, column: str) -> pd.Series:
    raw = table[column]
    values = pd.to_numeric(raw.where(~raw.str.lower().isin(MISSING)), errors="coerce")
    bad = raw[values.isna() & ~raw.str.lower().isin(MISSING)]
    if len(bad):
        cells = ", ".join(f"{table.loc[s, 'participant_id']}={v!r}" for s, v in bad.items())
        raise BadDataError(f"{table.attrs.get('path', 'participants.tsv')}: column {column!r} "
                           f"must be numeric; not a number: {cells}")
    return values


def is_response(pre, post, threshold: float = 0.5):
    """The response rule of ``--response-from``: relative drop ``(pre - post) / pre >=
    threshold``, element-wise (a drop of exactly the threshold, e.g. 30 -> 15, counts).
    ``pre`` must be > 0 (:func:`get_labels` excludes the others).

    >>> is_response([30, 30, 40], [15, 16, 8]).tolist()
    [True, False, True]
    """
    pre, post = np.asarray(pre, dtype=float), np.asarray(post, dtype=float)
    return (pre - post) / pre >= threshold - 1e-12


def get_labels(table: pd.DataFrame, rule: LabelRule) -> tuple[pd.Series, list[Exclusion]]:
    """Labels (0/1 floats, index = subject) and the participants without one.

    The table should already be filtered (:func:`apply_filters`).
    """
    excluded: list[Exclusion] = []
    if rule.response_from:
        pre_col, post_col = rule.response_from
        _require_columns(table, [pre_col, post_col], "--response-from")
        pre, post = _numeric(table, pre_col), _numeric(table, post_col)
        labels = pd.Series(np.nan, index=table.index)
        for subject in table.index:
            if np.isnan(pre[subject]) or np.isnan(post[subject]):
                excluded.append(Exclusion(table.loc[subject, "participant_id"],
                                          f"{pre_col} or {post_col} missing"))
            elif pre[subject] <= 0:
                excluded.append(Exclusion(table.loc[subject, "participant_id"],
                                          f"{pre_col} <= 0: relative change undefined"))
            else:
                labels[subject] = float(is_response(pre[subject], post[subject],
                                                    rule.response_threshold))
    elif rule.target:
        _require_columns(table, [rule.target], "--target")
        labels, bad = pd.Series(np.nan, index=table.index), []
        for subject, value in table[rule.target].items():
            try:
                labels[subject] = parse_binary(value)
            except ValueError:
                bad.append(f"{table.loc[subject, 'participant_id']}={value!r}")
            else:
                if np.isnan(labels[subject]):
                    excluded.append(Exclusion(table.loc[subject, "participant_id"],
                                              f"{rule.target} missing"))
        if bad:
            raise BadDataError(
                f"{table.attrs.get('path', 'participants.tsv')}: column {rule.target!r} is not "
                f"binary for {', '.join(bad)}; use 1/0, yes/no, true/false or "
                "responder/non-responder (empty or n/a = no label)"
            )
    else:
        return pd.Series(np.nan, index=table.index), []
    return labels.dropna().astype(int), excluded


# ------------------------------------------------------------------------------ covariates
def read_tiv(volumes_tsv: dict[str, str | os.PathLike]) -> pd.Series:
    """``tiv_ml`` per subject from ``desc-volumes_morph.tsv`` files (``{subject: path}``)."""
    values = {}
    for subject, path in volumes_tsv.items():
        if path is None:
            values[subject] = np.nan
            continue
        try:
            row = pd.read_csv(path, sep="\t")
            values[subject] = float(row["tiv_ml"].iloc[0])
        except (OSError, KeyError, IndexError, ValueError) as exc:
            raise BadDataError(f"{path}: no readable tiv_ml value ({exc}); rerun the "
                               "participant level for this subject") from exc
    return pd.Series(values, dtype=float)


def encode_covariates(table: pd.DataFrame, names, *, tiv: pd.Series | None = None,
                      encoding: dict | None = None) -> tuple[np.ndarray, list[str], dict]:
    """Design matrix of covariates for the rows of ``table`` (in its order).

    Without ``encoding`` (training) the encoding is inferred and returned; with it (prediction)
    the same columns are built and unseen categories are an error. Returns
    ``(matrix n x k, column names, encoding)``; ``k = 0`` when ``names`` is empty.
    """
    names = list(names or ())
    if encoding is not None and list(encoding) != names:
        raise BadDataError(f"covariates {names} differ from the model's {list(encoding)}")
    source = table.copy()
    source.attrs = table.attrs
    if "tiv" in names and "tiv" not in source.columns:
        if tiv is None:
            raise MissingInputError("covariate 'tiv' needs desc-volumes_morph.tsv files")
        source["tiv"] = [("" if np.isnan(v) else repr(float(v)))
                         for v in tiv.reindex(source.index)]
    _require_columns(source, names, "--covariates")
    columns, blocks, new_encoding = [], [], {}
    for name in names:
        raw = source[name]
        missing = raw.str.lower().isin(MISSING)
        if missing.any():
            who = ", ".join(source.loc[missing, "participant_id"])
            where = ("desc-volumes_morph.tsv (tiv_ml)" if name == "tiv"
                     else table.attrs.get("path", "participants.tsv"))
            raise BadDataError(f"{where}: covariate {name!r} is missing for {who}; fill it in "
                               "or leave these participants out (--include / --participant-label)")
        spec = encoding[name] if encoding is not None else _infer(raw)
        if spec["type"] == "numeric":
            values = _numeric(source, name).to_numpy(float)[:, None]
            columns.append(name)
        else:
            levels = spec["levels"]
            lower = raw.str.lower()
            unseen = sorted(set(lower) - {lv.lower() for lv in levels})
            if unseen:
                raise BadDataError(f"covariate {name!r}: categories {unseen} were not seen at "
                                   f"training (known: {levels}); the model cannot use them")
            values = np.column_stack([(lower == lv.lower()).to_numpy(float) for lv in levels[1:]]
                                     ) if len(levels) > 1 else np.zeros((len(raw), 0))
            columns.extend(f"{name}[{lv}]" for lv in levels[1:])
        blocks.append(values)
        new_encoding[name] = spec
    matrix = np.hstack(blocks) if blocks else np.zeros((len(source), 0))
    return matrix, columns, new_encoding


def _infer(raw: pd.Series) -> dict:
    try:
        raw.astype(float)
    except ValueError:
        spellings = sorted(set(raw))  # deterministic: "M" before "m"
        first = {}
        for spelling in spellings:
            first.setdefault(spelling.lower(), spelling)
        levels = [first[k] for k in sorted(first)]
        return {"type": "categorical", "levels": levels, "reference": levels[0]}
    return {"type": "numeric"}


def site_labels(table: pd.DataFrame, column: str | None) -> np.ndarray | None:
    """The site of each row as strings (None without ``column``); missing sites are an error."""
    if not column:
        return None
    _require_columns(table, [column], "--site-column")
    missing = table[column].str.lower().isin(MISSING)
    if missing.any():
        raise BadDataError(f"{table.attrs.get('path', 'participants.tsv')}: site column "
                           f"{column!r} is empty for "
                           f"{', '.join(table.loc[missing, 'participant_id'])}")
    return table[column].to_numpy(str)
