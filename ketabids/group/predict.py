"""Group-level prediction: apply a frozen model to a cohort; with labels, evaluate it.

Writes ``OUTPUT_DIR/group/predict-<name>/`` as a whole (see :mod:`ketabids.group.publish`):
``report.html, predictions.tsv, cohort.tsv`` and, when labels are available, ``metrics.tsv,
metrics.json, permutations.tsv, calibration.tsv, decision_curve.tsv`` (with ``arm_column`` also
``metrics_by_arm.tsv, specificity.tsv``: :mod:`ketabids.group.specificity`), each table with its
JSON data dictionary
(:mod:`ketabids.group.dictionaries`). ``<name>`` comes from BIDS_DIR and ``--include``
(:func:`prediction_name`) or ``--prediction-name``. A run record goes to
``OUTPUT_DIR/logs/group-predict-*``.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ketabids.bids.derivatives import write_bidsignore
from ketabids.bids.logs import write_run_record
from ketabids.config import PredictConfig
from ketabids.errors import UsageError
from ketabids.group import features as feat
from ketabids.group import labels as lab
from ketabids.group import model_io
from ketabids.group.cohort import build_cohort, check_compatibility, warn_excluded
from ketabids.group.dictionaries import write_sidecars
from ketabids.group.estimator import KetaSVC
from ketabids.group.metrics import (
    calibration_table,
    classification_metrics,
    finite_or_none,
    headline_metric,
)
from ketabids.group.permutation import external_permutation_test
from ketabids.group.publish import listing, run_lock, staged
from ketabids.group.specificity import resolve_arms, specificity_analysis
from ketabids.group.train import FLOAT_FORMAT
from ketabids.group.utility import calibration_intercept_slope, decision_curve
from ketabids.io import write_json, write_tsv

LOGGER = logging.getLogger("ketabids")

__all__ = ["run_group_predict", "prediction_name"]


def prediction_name(bids_dir, include=()) -> str:
    """``predict-<BIDS_DIR name>[-<include filters>]``, e.g. ``predict-ds01-arm-saline``.

    >>> prediction_name("/data/ext_cohort", ["arm=saline"])
    'predict-ext-cohort-arm-saline'
    """
    parts = [_slug(Path(bids_dir).resolve().name)] + [_slug(s) for s in include or ()]
    return "predict-" + "-".join(parts)


def _slug(text: str) -> str:
    text = text.replace("!=", "-not-").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "cohort"


def run_group_predict(config: PredictConfig | None = None, *, layout=None, **options) -> dict:
    """Apply a frozen model to a cohort; with labels, evaluate it (metrics, permutation p).

    Participants whose scan fails QC get no prediction (``qc_policy``, ``exclude_file``: see
    :mod:`ketabids.qc.gate`); they are listed in cohort.tsv, the report and metrics.json.
    Label options default to the model's own rule (``--target`` / ``--response-from``) when
    its columns exist in this participants.tsv; ``include`` is never inherited.
    ``arm_column``: participants.tsv column of the treatment arm; with labels, the treatment
    specificity analysis compares the two arms present (``treatment_arm``: the arm the model
    predicts response to; by default the arm of the model's training rule, e.g. ``--include
    arm=ketamine``; see :func:`ketabids.group.specificity.resolve_arms`).

    Parameters
    ----------
    config : PredictConfig, optional
        Every setting of the prediction (:class:`ketabids.config.PredictConfig`).
    layout : bids.BIDSLayout, optional
        The dataset's layout when the caller already loaded it.
    **options
        Instead of ``config``: its fields as keyword arguments (``PredictConfig(**options)``).

    Returns
    -------
    dict
        ``{"output_dir", "report", "predictions", "n_subjects", "n_excluded",
        "labelled", "bac", "auc", "p_bac", "p_auc",
        "model_sha256", "tables", "specificity" (the metrics.json block or None),
        "calibration", "headline" (THE result: :func:`ketabids.group.metrics.headline_metric`,
        None without labels), "logs"}`` (metrics None without labels).

    Raises
    ------
    ketabids.errors.UsageError
        Contradictory options (:meth:`ketabids.config.PredictConfig.check`), arm options that
        do not fit the data.
    ketabids.errors.MissingInputError
        The model file cannot be found or verified (:func:`ketabids.group.model_io.load_model`).
    ketabids.errors.BadDataError
        A cohort the model cannot be applied to (template, grid, covariates).
    """
    from ketabids.group.train import _config

    config = _config(PredictConfig, config, options)
    t0 = time.monotonic()
    bids_dir, output_dir, model = config.bids_dir, config.output_dir, config.model
    include, name = config.include, config.name
    target, response_from, response_threshold = (config.target, config.response_from,
                                                  config.response_threshold)
    n_permutations, nprocs, seed = config.n_permutations, config.nprocs, config.seed
    arm_column, treatment_arm = config.arm_column, config.treatment_arm
    loaded = model_io.load_model(model, expected_class=KetaSVC)
    manifest = loaded.manifest
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    if not (target or response_from):
        trained = manifest.get("labels", {})
        columns = set(lab.read_participants(bids_dir).columns)
        wanted = ([trained["target"]] if trained.get("target") else
                  list(trained.get("response_from") or []))
        if wanted and set(wanted) <= columns:
            target = trained.get("target")
            response_from = tuple(trained["response_from"]) if trained.get("response_from") \
                else None
            response_threshold = trained.get("response_threshold", response_threshold)
    rule = lab.make_label_rule(target=target, response_from=response_from,
                               response_threshold=response_threshold, include=include,
                               required=False)
    labelled = bool(rule.target or rule.response_from)
    if arm_column:
        _check_arm_options(bids_dir, arm_column, treatment_arm, labelled)
    fs = manifest["features"]
    site = manifest.get("site", {})
    # the model's site column: required with ComBat, else used (when present) to permute
    # labels within sites and to describe the cohort
    site_column = site.get("column")
    if site_column and not site.get("combat") and \
            site_column not in lab.read_participants(bids_dir).columns:
        site_column = None
    cohort = build_cohort(config, layout=layout, template=manifest["template"], rule=rule,
                          covariates=manifest["covariates"]["names"], site_column=site_column,
                          encoding=manifest["covariates"]["encoding"])
    warn_excluded(cohort.excluded)
    arms = None
    if arm_column:  # before any feature work: the arms of the participants predicted
        arms = cohort.table[arm_column].astype(str).to_numpy()
        arm_pair = resolve_arms(arm_column, arms, treatment_arm=treatment_arm,
                                trained_include=manifest.get("labels", {}).get("include"))
    notes = check_compatibility(manifest, cohort, model_path=loaded.path)
    for note in notes:
        LOGGER.warning("%s", note)
    unseen = []
    if cohort.sites is not None and site.get("combat"):
        unseen = sorted(set(cohort.sites.tolist()) - set(site.get("training_sites") or []))
        if unseen:
            notes.append(f"sites unseen at training ({', '.join(unseen)}): "
                         f"{site.get('unseen_site_rule')}")
    fsettings = feat.FeatureSettings(
        template=fs["template"], smoothing_fwhm=fs["smoothing_fwhm"],
        analysis_resolution=fs["analysis_resolution"], mask_source=fs["mask_source"],
        mask_threshold=fs["mask_threshold"])
    features = feat.compute_features(cohort.maps, settings=fsettings, mask=loaded.mask,
                                     mask_affine=loaded.affine,
                                     nprocs=feat.default_nprocs(nprocs))
    est = loaded.estimator
    kwargs = {"covariates": cohort.covariates, "sites": cohort.sites}
    decision = np.asarray(est.decision_function(features.X, **kwargs), float).ravel()
    proba = np.asarray(est.predict_proba(features.X, **kwargs), float)[:, 1]
    predicted = (decision > 0).astype(int)
    ids = cohort.participant_ids

    metrics = perm = calib = None
    y = cohort.y
    if labelled and len(set(y.tolist())) < 2:
        notes.append(f"all {len(y)} participants have label {int(y[0])}: BAC/AUC and the "
                     "permutation test need both classes; predictions only")
        LOGGER.warning("%s", notes[-1])
    elif labelled:
        metrics = classification_metrics(y, decision, proba, random_state=int(seed))
        if n_permutations:
            perm = external_permutation_test(
                y, decision, n_permutations=int(n_permutations), random_state=int(seed),
                groups=cohort.sites)
        calib = calibration_table(y, proba)
    site_table = None
    if metrics is not None and cohort.sites is not None:
        from ketabids.group.audit import metrics_by_site

        site_table = metrics_by_site(y, decision, cohort.sites, random_state=int(seed))
    spec = None
    if metrics is not None and arm_column:
        spec = specificity_analysis(y, decision, arms, treatment_arm=arm_pair[0],
                                    reference_arm=arm_pair[1], proba=proba,
                                    n_permutations=int(n_permutations), random_state=int(seed))
        notes.append(f"the headline pools both arms of {arm_column}; metrics_by_arm.tsv gives "
                     "each arm and specificity.tsv compares them")
        LOGGER.info("treatment specificity: %s", spec.interpretation)
    elif arm_column:
        notes.append(f"--arm-column {arm_column}: no specificity analysis without labels of "
                     "both classes")
        LOGGER.warning("%s", notes[-1])
    calibration = calibration_intercept_slope(y, proba) if metrics is not None else None
    h = None
    if metrics is not None:
        h = headline_metric(metrics, aggregation="single", y=y,
                            p=perm.p_bac if perm else None,
                            n_permutations=perm.n_permutations if perm else 0)
        if h["warning"]:
            LOGGER.warning("%s", h["warning"])
            notes.append(h["warning"])

    folder = f"predict-{_slug(name)}" if name else prediction_name(bids_dir, include)
    final_dir = output_dir / "group" / folder
    with run_lock(output_dir, folder), staged(final_dir) as stage:
        pred = pd.DataFrame({"participant_id": ids, "decision": decision, "proba": proba,
                             "predicted": predicted})
        if labelled:
            pred["y_true"] = y
        write_tsv(pred, stage / "predictions.tsv", float_format=FLOAT_FORMAT)
        write_tsv(cohort.table_tsv(site_column), stage / "cohort.tsv",
                  float_format=FLOAT_FORMAT)
        headline: dict = {"bac": None, "auc": None, "p_bac": None, "p_auc": None}
        if metrics is not None:
            write_tsv(metrics, stage / "metrics.tsv", float_format=FLOAT_FORMAT)
            write_tsv(calib, stage / "calibration.tsv", float_format=FLOAT_FORMAT)
            if site_table is not None:
                write_tsv(site_table, stage / "metrics_by_site.tsv", float_format=FLOAT_FORMAT)
            write_tsv(decision_curve(y, proba), stage / "decision_curve.tsv",
                      float_format=FLOAT_FORMAT)
            if spec is not None:
                write_tsv(spec.by_arm, stage / "metrics_by_arm.tsv", float_format=FLOAT_FORMAT)
                write_tsv(spec.table, stage / "specificity.tsv", float_format=FLOAT_FORMAT)
            for metric in ("bac", "auc"):
                row = metrics[metrics["metric"] == metric].iloc[0]
                headline[metric] = float(row["estimate"])
                headline[f"{metric}_ci"] = [finite_or_none(row["ci_low"]),
                                            finite_or_none(row["ci_high"])]
            if perm is not None:
                headline.update(p_bac=float(perm.p_bac), p_auc=float(perm.p_auc))
                write_tsv(perm.as_table(), stage / "permutations.tsv",
                          float_format=FLOAT_FORMAT)
        write_json(stage / "metrics.json", {
            "headline": h, "summary": headline, "model": str(loaded.path),
            "model_sha256": manifest["model_sha256"], "labels": rule.as_dict(),
            "n": len(ids), "permutation": perm.as_dict() if perm else None,
            "notes": notes, "excluded": [e.__dict__ for e in cohort.excluded],
            "filtered_out_by_include": cohort.filtered_out, "qc": cohort.qc.as_dict(),
            **_evidence_blocks(calibration, spec)})
        from ketabids.reports import group as report

        report.write_predict_report(
            stage / "report.html", report.RunResults(
                cohort=cohort, rule=rule, manifest=manifest, perm=perm, calibration=calib,
                headline=h, elapsed=time.monotonic() - t0),
            model_path=loaded.path, predictions=pred, metrics=metrics, notes=notes)
        write_sidecars(stage, mode="predict")
    write_bidsignore(output_dir)
    tables = listing(final_dir)
    logs = write_run_record(output_dir, level="group-predict", record=config.record(),
                            versions=model_io.software_versions(),
                            methods=predict_methods(manifest, loaded.path, len(ids), perm,
                                                    spec))
    LOGGER.info("group prediction done: %s; report: %s",
                h["text"] if h else f"{len(ids)} participants predicted (no labels: no metrics)",
                final_dir / "report.html")
    return {
        "output_dir": str(final_dir),
        "report": str(final_dir / "report.html"),
        "predictions": str(final_dir / "predictions.tsv"),
        "n_subjects": len(ids), "n_excluded": len(cohort.excluded),
        "qc": cohort.qc.as_dict(),
        "labelled": metrics is not None,
        **{k: headline.get(k) for k in ("bac", "auc", "p_bac", "p_auc")},
        "model_sha256": manifest["model_sha256"],
        "tables": tables, "headline": h, "logs": str(logs),
        "specificity": spec.as_dict() if spec is not None else None,
        "calibration": calibration,
    }


def _check_arm_options(bids_dir, arm_column, treatment_arm, labelled) -> None:
    """``--arm-column`` needs labels and an existing column (checked before any work)."""
    if not labelled:
        raise UsageError(
            f"--arm-column {arm_column} compares how well the model predicts response in each "
            "arm: it needs labels (--target or --response-from, or the model's own label "
            "columns in participants.tsv)")
    table = lab.read_participants(bids_dir)
    if arm_column not in table.columns:
        raise UsageError(
            f"--arm-column {arm_column}: {Path(bids_dir) / 'participants.tsv'} has no such "
            f"column; available: {', '.join(c for c in table.columns if c != 'participant_id')}")


def _evidence_blocks(calibration, spec) -> dict:
    """metrics.json keys of calibration (labelled runs) and treatment specificity."""
    out = {}
    if calibration is not None:
        out.update(calibration_in_the_large=calibration["calibration_in_the_large"],
                   calibration_slope=calibration["calibration_slope"],
                   calibration_method=calibration["method"])
    if spec is not None:
        out["specificity"] = spec.as_dict()
    return out


def predict_methods(manifest, model_path, n, perm, spec=None) -> str:
    """The methods text of a prediction run (the training's, then what this run did)."""
    from ketabids.reports.citation import group_methods, settings_from_manifest

    methods = group_methods(settings_from_manifest(manifest))
    methods += (f" The frozen model ({Path(model_path).name}, SHA-256 "
                f"{manifest.get('model_sha256', '')[:16]}) was applied, without retraining, to "
                f"{n} further participants whose maps went through the same feature computation.")
    if perm is not None:
        methods += (f" Its balanced accuracy on them was tested against {perm.n_permutations} "
                    "permutations of their labels with the model fixed (Phipson & Smyth, 2010).")
    if spec is not None:
        methods += (f" Treatment specificity ({spec.treatment_arm} vs {spec.reference_arm}) was "
                    "assessed by the between-arm differences in balanced accuracy and AUC "
                    "(bootstrap stratified by arm and label; arm labels permuted within label "
                    "class) and by the decision x arm interaction of a logistic model of "
                    "response.")
    return methods
