"""The cohort: who is analysed, with which map, label, covariates and site; who is left out.

:func:`build_cohort` joins ``participants.tsv`` (BIDS_DIR) with the participant level's modulated
GM maps (OUTPUT_DIR) for training and prediction alike, then passes them through the QC gate
(:mod:`ketabids.qc.gate`: QC verdicts and review decisions); :func:`check_compatibility` refuses
maps a frozen model cannot use.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ketabids.errors import BadDataError, NoDataError
from ketabids.group import features as feat
from ketabids.group import labels as lab
from ketabids.qc.gate import QCGate, open_gate, pass_gate, read_verdict

LOGGER = logging.getLogger("ketabids")

__all__ = ["Cohort", "build_cohort", "check_compatibility", "warn_excluded"]


class Cohort:
    """Who is analysed, with which map, label, covariates and site; and who is left out."""

    def __init__(self, *, table, maps, y, excluded, filtered_out, covariates, covariate_names,
                 encoding, sites, pipeline, qc=None):
        self.table = table  # participants.tsv rows of the included participants (ordered)
        self.maps = maps  # {subject: MapInfo} same order
        self.y = y  # np.ndarray of 0/1 or None
        self.excluded = excluded
        self.filtered_out = filtered_out  # n rows removed by --include
        self.covariates = covariates  # (n, k) or None
        self.covariate_names = covariate_names
        self.encoding = encoding
        self.sites = sites
        self.pipeline = pipeline  # {"template", "resolution", "version"}
        self.qc = qc if qc is not None else QCGate(policy="ignore")  # what the QC gate did

    @property
    def participant_ids(self) -> list[str]:
        return [f"sub-{s}" for s in self.maps]

    def _qc_columns(self, participant_id) -> dict:
        rec = self.qc.verdicts.get(participant_id) or {}
        return {"qc_verdict": rec.get("verdict") or "n/a",
                "qc_reasons": "; ".join(rec.get("reasons") or []) or "n/a"}

    def table_tsv(self, site_column=None) -> pd.DataFrame:
        """Every candidate: ``participant_id, status, reason, qc_verdict, qc_reasons`` (QC
        verdict ``n/a``: no QC record or ``--qc-policy ignore``), then label, map, site and
        covariates of the included ones."""
        rows = []
        for i, subject in enumerate(self.maps):
            pid = f"sub-{subject}"
            row = {"participant_id": pid, "status": "included", "reason": "n/a",
                   **self._qc_columns(pid),
                   "label": int(self.y[i]) if self.y is not None else None,
                   "map": str(self.maps[subject].path.name)}
            if site_column:
                row["site"] = self.sites[i] if self.sites is not None else None
            for j, name in enumerate(self.covariate_names):
                row[name] = self.covariates[i, j]
            rows.append(row)
        for e in self.excluded:
            rows.append({"participant_id": e.participant_id, "status": "excluded",
                         "reason": e.reason, **self._qc_columns(e.participant_id)})
        columns = ["participant_id", "status", "reason", "qc_verdict", "qc_reasons"]
        return pd.DataFrame(rows, columns=columns + [c for c in pd.DataFrame(rows).columns
                                                     if c not in columns])


def build_cohort(config, *, template, rule, covariates=(), site_column=None, encoding=None,
                 layout=None) -> Cohort:
    """Select participants, find their maps, labels, covariates; pass them through the QC gate
    (:func:`ketabids.qc.gate.open_gate`); list everyone left out, with the reason.

    Parameters
    ----------
    config : TrainConfig or PredictConfig
        The run's configuration: its ``bids_dir``, ``output_dir``, ``subjects``, ``sessions``,
        ``qc_policy`` and ``exclude_file`` (:mod:`ketabids.config`).
    template : str
        Template of the GM maps.
    rule : LabelRule
        How labels are obtained (no target: an unlabelled cohort).
    covariates : sequence of str
        Covariate names (``tiv`` from the volumes tables, others from ``participants.tsv``).
    site_column : str, optional
        Column of ``participants.tsv`` naming each participant's site.
    encoding : dict, optional
        A trained model's covariate encoding, applied as it was (prediction).
    layout : BIDSLayout, optional
        A layout of OUTPUT_DIR already built.

    Returns
    -------
    Cohort
        The participants analysed, their maps, labels, covariates and sites, and everyone left
        out with the reason.
    """
    bids_dir, output_dir = Path(config.bids_dir), Path(config.output_dir)
    subjects, sessions = config.subjects, config.sessions
    qc_policy, exclude_file = config.qc_policy, config.exclude_file
    table = lab.read_participants(bids_dir)
    gate = open_gate(policy=qc_policy, exclude_file=exclude_file,
                     known_participants=list(table.index), roots=(bids_dir, output_dir))
    if subjects:
        wanted = [s.removeprefix("sub-") for s in subjects]
        absent = [s for s in wanted if s not in table.index]
        table = table.loc[[s for s in wanted if s in table.index]]
        table.attrs["path"] = str(Path(bids_dir) / "participants.tsv")
    else:
        absent = []
    n_before = len(table)
    kept = lab.apply_filters(table, rule.include)
    kept.attrs = table.attrs
    filtered_out = n_before - len(kept)
    if kept.empty:
        raise NoDataError(f"{table.attrs['path']}: no participant left after --include "
                          f"{' '.join(rule.include)} (of {n_before})")
    excluded = [lab.Exclusion(f"sub-{s}", "not in participants.tsv") for s in absent]
    y = None
    if rule.target or rule.response_from:
        labels, no_label = lab.get_labels(kept, rule)
        excluded += no_label
    maps, no_map = feat.find_maps(output_dir, template=template, subjects=list(kept.index),
                                  sessions=sessions, layout=layout)
    if qc_policy != "ignore":
        no_map = [_with_qc_reason(e, output_dir, sessions) for e in no_map]
    excluded += no_map
    order = [s for s in kept.index if s in maps
             and (not (rule.target or rule.response_from) or s in labels.index)]
    order = pass_gate(gate, {s: maps[s].session for s in order}, output_dir=output_dir)
    excluded += [lab.Exclusion(e["participant_id"], e["reason"]) for e in gate.excluded]
    if not order:
        raise NoDataError(
            f"no participant has both a label and a space-{template} modulated GM map; "
            f"{len(excluded)} left out: {summarize_exclusions(excluded)}")
    if rule.target or rule.response_from:
        y = labels.loc[order].to_numpy(int)
    maps = {s: maps[s] for s in order}
    pipeline = feat.check_consistency(maps, template=template)
    final = kept.loc[order]
    final.attrs = table.attrs
    tiv = None
    if "tiv" in (covariates or ()):
        tiv = lab.read_tiv({s: maps[s].volumes for s in order})
        missing = [f"sub-{s}" for s in order if maps[s].volumes is None]
        if missing:
            raise BadDataError(f"covariate 'tiv': no desc-volumes_morph.tsv for "
                               f"{', '.join(missing)}; rerun the participant level for them")
    cov, names, enc = lab.encode_covariates(final, covariates, tiv=tiv, encoding=encoding)
    sites = lab.site_labels(final, site_column)
    return Cohort(table=final, maps=maps, y=y, excluded=excluded, filtered_out=filtered_out,
                  covariates=cov if cov.shape[1] else None, covariate_names=names,
                  encoding=enc, sites=sites, pipeline=pipeline, qc=gate)


def _with_qc_reason(exclusion, output_dir, sessions):
    """A participant without a map whose QC record failed (e.g. a processing error): add the
    QC reasons to the exclusion's reason."""
    for session in (sessions or [None]):
        record = read_verdict(output_dir, exclusion.participant_id, session)
        if record and record["verdict"] == "fail":
            return lab.Exclusion(exclusion.participant_id,
                                 f"{exclusion.reason}; QC fail: {'; '.join(record['reasons'])}")
    return exclusion


def check_compatibility(manifest: dict, cohort: Cohort, *, model_path) -> list[str]:
    """Refuse maps the model cannot use; return notes (differences that are allowed)."""
    notes = []
    pipeline, trained = cohort.pipeline, manifest.get("pipeline", {})
    if manifest.get("template") != pipeline.get("template", manifest.get("template")):
        raise BadDataError(f"{model_path}: model trained in {manifest.get('template')} space, "
                           f"maps are in {pipeline.get('template')}; rerun the participant "
                           f"level with --template {manifest.get('template')}")
    if trained.get("resolution") is not None and pipeline.get("resolution") is not None and \
            float(trained["resolution"]) != float(pipeline["resolution"]):
        raise BadDataError(f"{model_path}: model trained on {trained['resolution']} mm maps, "
                           f"these are {pipeline['resolution']} mm; rerun the participant level "
                           "at the model's resolution")
    if trained.get("version") != pipeline.get("version"):
        notes.append(f"maps made by ketabids {pipeline.get('version')}, the model's training "
                     f"maps by {trained.get('version')}")
    return notes


def summarize_exclusions(excluded: list[lab.Exclusion], examples: int = 3) -> str:
    """Exclusions grouped by reason (crash-file paths aside), each with its count and at most
    one example participant; at most ``examples`` reasons, then how many more."""
    import re

    groups: dict[str, list[str]] = {}
    for e in excluded:
        key = re.sub(r" \(details: [^)]*\)", "", e.reason)
        groups.setdefault(key, []).append(e.participant_id)
    parts = [f"{reason} ({len(ids)}, e.g. {ids[0]})" if len(ids) > 1 else f"{ids[0]} ({reason})"
             for reason, ids in list(groups.items())[:examples]]
    if len(groups) > examples:
        parts.append(f"{len(groups) - examples} more reason(s) in the log")
    return "; ".join(parts)


def warn_excluded(excluded: list[lab.Exclusion]) -> None:
    """One log line (not also a Python warning: it was printed twice) naming who was left out
    and why."""
    if excluded:
        listing = "; ".join(f"{e.participant_id} ({e.reason})" for e in excluded[:30])
        more = f" and {len(excluded) - 30} more" if len(excluded) > 30 else ""
        LOGGER.warning("%d participant(s) left out: %s%s", len(excluded), listing, more)
