"""Group-level training: repeated nested CV, permutation test, final model, maps, report.

Reads the participant level's derivatives in OUTPUT_DIR and ``participants.tsv`` in BIDS_DIR and
writes ``OUTPUT_DIR/group/train/`` as a whole (see :mod:`ketabids.group.publish`)::

    report.html                       self-contained report (figures embedded)
    ketabids_model.skops / .json      the frozen final model + its manifest
    space-<TPL>_res-<R>_desc-analysis_mask.nii.gz   analysis mask (template space, grid)
    cohort.tsv                        every candidate participant: included or why not
    cv_predictions.tsv                per-subject out-of-fold decision / probability
    cv_folds.tsv                      per (repeat, fold): sizes, chosen C (edge / flat-curve
                                      flags), scores
    metrics_by_site.tsv               per site (with --site-column): n, BAC, AUC, intervals
    audit.tsv                         site and confound audit (:mod:`ketabids.group.audit`)
    metrics.tsv, metrics.json         metrics with 95 % intervals, permutation p, CV hash
    permutations.tsv                  permutation null distribution (BAC, AUC)
    calibration.tsv                   reliability curve (out-of-fold probabilities)
    decision_curve.tsv                net benefit vs threshold (out-of-fold, Vickers & Elkin)
    final_model_decisions.tsv         the final model's decision values on its training set
    space-<TPL>_desc-<map>_statmap.nii.gz   weight, cvratio, signconsistency, pattern,
                                      finalweight maps
    regions.tsv                       region table (with --atlas)
    <name>.json next to every .tsv/.nii.gz   its data dictionary (ketabids.group.dictionaries)

and a run record in ``OUTPUT_DIR/logs/group-train-*`` (:mod:`ketabids.bids.logs`). The one
headline result (pooled out-of-fold BAC, its interval and permutation p) is
:func:`ketabids.group.metrics.headline_metric`.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ketabids.anat import atlas as atlas_mod
from ketabids.bids.derivatives import write_bidsignore
from ketabids.bids.logs import write_run_record
from ketabids.config import TrainConfig
from ketabids.errors import BadDataError, UsageError
from ketabids.group import features as feat
from ketabids.group import labels as lab
from ketabids.group import model_io
from ketabids.group.audit import metrics_by_site, run_audit
from ketabids.group.cohort import build_cohort, warn_excluded
from ketabids.group.dictionaries import write_sidecars
from ketabids.group.estimator import linear_kernel
from ketabids.group.interpretation import haufe_pattern, region_table, weight_maps
from ketabids.group.metrics import (
    calibration_table,
    finite_or_none,
    format_headline,
    headline_metric,
)
from ketabids.group.nested import (
    CVData,
    c_selection_summary,
    check_scheme,
    fit_final_model,
    nested_cv,
)
from ketabids.group.permutation import permutation_test
from ketabids.group.progress import Progress
from ketabids.group.publish import listing, refuse_existing, run_lock, staged
from ketabids.group.utility import decision_curve
from ketabids.io import jsonable, save_nifti, write_json, write_tsv
from ketabids.reports.study import write_study_report

LOGGER = logging.getLogger("ketabids")
#: Float format of every group table (6 significant digits).
FLOAT_FORMAT = "%.6g"

__all__ = ["run_group_train", "FLOAT_FORMAT"]


def run_group_train(config: TrainConfig | None = None, *, layout=None, **options) -> dict:
    """Train: repeated nested CV, permutation test, final model, maps and report.

    Parameters
    ----------
    config : TrainConfig, optional
        Every setting of the training (:class:`ketabids.config.TrainConfig`).
    layout : bids.BIDSLayout, optional
        The dataset's layout when the caller already loaded it.
    **options
        Instead of ``config``: its fields as keyword arguments (``TrainConfig(**options)``).

    Returns
    -------
    dict
        ``{"output_dir", "report", "model", "manifest", "n_subjects", "n_responders",
        "n_excluded", "bac_mean", "bac_pooled", "auc", "p_bac",
        "p_auc", "headline" (THE result: :func:`ketabids.group.metrics.headline_metric`), "logs",
        "cv_hash", "tables", "cv_scheme", "c_selection", "audit_warnings", "leave_site_out"
        (headline-style result of the audit's leave-site-out CV, or None)}``.

    Raises
    ------
    ketabids.errors.UsageError
        Contradictory options (:meth:`ketabids.config.TrainConfig.check`), an existing
        ``group/train`` without ``overwrite``.
    ketabids.errors.BadDataError
        Labels, covariates or groups that cannot be used (one class only, missing values...).
    ketabids.errors.OutputError
        Another training holds the lock on OUTPUT_DIR (exit 73).

    Notes
    -----
    An existing ``group/train`` is replaced only with ``overwrite`` (checked before any work);
    two trainings into one OUTPUT_DIR cannot run at once (a lock; the second gets exit 73).
    """
    config = _config(TrainConfig, config, options)
    t0 = time.monotonic()
    output_dir = Path(config.output_dir)
    final_dir = output_dir / "group" / "train"
    rule = lab.make_label_rule(target=config.target, response_from=config.response_from,
                               response_threshold=config.response_threshold,
                               include=config.include)
    settings = config.cv_settings()
    cohort = build_cohort(config, layout=layout, template=config.template, rule=rule,
                          covariates=config.covariates, site_column=config.site_column)
    warn_excluded(cohort.excluded)
    if len(set(cohort.y.tolist())) < 2:
        raise BadDataError(f"all {len(cohort.y)} included participants have the same label "
                           f"({rule.describe()}); training needs responders and non-responders")
    groups = _group_labels(cohort, config.group_column) if settings.grouped else None
    check_scheme(cohort.y, cohort.sites, settings, groups)
    # before any work (features, CV): input errors above are reported first
    refuse_existing(final_dir, overwrite=config.overwrite, what="group/train")
    with run_lock(output_dir, "train"):
        # made meanwhile
        refuse_existing(final_dir, overwrite=config.overwrite, what="group/train")
        training = _fit(config, cohort, settings, groups)
        return _write_training(config, training, cohort=cohort, rule=rule,
                               final_dir=final_dir, t0=t0)


def _config(cls, config, options):
    """``config``, or ``cls(**options)`` when the caller gave the fields as keywords."""
    if config is not None and options:
        raise UsageError(f"give a {cls.__name__} or its fields as keywords, not both "
                         f"({', '.join(sorted(options))})")
    if config is None:
        return cls(**options)
    if not isinstance(config, cls):
        raise UsageError(f"expected a {cls.__name__}, got {type(config).__name__}")
    return config


@dataclass(frozen=True)
class Training:
    """What a training computed, before anything is written (:func:`_fit`)."""

    features: feat.Features
    settings: object
    result: object
    perm: object
    final: object
    c_selection: dict
    cv_scheme: dict
    site_table: pd.DataFrame | None
    audit_table: pd.DataFrame | None
    audit_warnings: list
    leave_site_out: dict | None
    final_decision: np.ndarray
    final_proba: np.ndarray
    weight_maps: object
    pattern: np.ndarray
    regions: pd.DataFrame | None
    headline: dict
    timings: dict


def _fit(config: TrainConfig, cohort, settings, groups) -> Training:
    """The computation of a training: features, nested CV, permutations, final model, audit,
    maps (nothing written)."""
    seed, nprocs, progress = config.seed, config.nprocs, config.progress
    group_column = config.group_column or (config.site_column if settings.grouped else None)
    fsettings = config.feature_settings()
    t_feat = time.monotonic()
    features = feat.compute_features(cohort.maps, settings=fsettings,
                                     nprocs=feat.default_nprocs(nprocs))
    t_feat = time.monotonic() - t_feat
    LOGGER.info("features: %d participants x %d voxels in %.1f s", *features.X.shape, t_feat)

    X, y = features.X, cohort.y
    t_cv = time.monotonic()
    # one X X^T for the nested CV, the permutations and the audit (not with per-fold scaling)
    gram = None if settings.standardize or settings.harmonize else linear_kernel(X)
    result = nested_cv(X, y, covariates=cohort.covariates, sites=cohort.sites,
                       settings=settings, groups=groups,
                       progress=Progress("nested CV", progress), gram=gram)
    t_cv = time.monotonic() - t_cv
    data = CVData(X, y, covariates=cohort.covariates, sites=cohort.sites, groups=groups,
                  gram=gram)
    perm = None
    if config.n_permutations:
        perm = permutation_test(
            data, settings=settings, n_permutations=int(config.n_permutations),
            random_state=int(seed), observed=result, n_jobs=int(nprocs),
            progress=Progress("permutations", progress))
    final = fit_final_model(X, y, covariates=cohort.covariates, sites=cohort.sites,
                            settings=settings, groups=groups)
    c_sel = c_selection_summary(result, kernel_scale=getattr(final, "kernel_scale_", None))
    if c_sel["warning"]:
        LOGGER.warning("%s", c_sel["warning"])
    cv_scheme = {"outer": settings.scheme, "group_column": group_column,
                 "n_groups": int(np.unique(groups).size) if groups is not None else None,
                 "n_repeats": int(result.decision.shape[0]),
                 "n_outer_folds": int(result.fold_of.max()) + 1,
                 "inner": {"stratified": f"{settings.n_inner} folds stratified by label"
                           + (" and site" if cohort.sites is not None else ""),
                           "leave-site-out": "one group of the outer training set per fold "
                           f"({settings.n_inner} stratified folds when it holds one group)",
                           "group-kfold": f"{settings.n_inner} folds of whole groups of the "
                           "outer training set"}[settings.scheme],
                 "permutations": "labels permuted within " + (
                     "groups" if groups is not None else "sites" if cohort.sites is not None
                     else "the whole sample"),
                 "kernel_scaling": "each training set's linear kernel divided by its "
                 "critical-C scale, so that the grid's smallest C is twice the C below which "
                 "every participant is a bounded support vector" if settings.scale_kernel
                 else None}
    site_table = None
    if cohort.sites is not None:
        site_table = metrics_by_site(y, result.decision, cohort.sites, random_state=int(seed))
    audit_table, audit_warnings, loso_h, t_audit = None, [], None, 0.0
    if config.audit:
        t_audit = time.monotonic()
        variables, qc_metrics = _audit_variables(cohort, Path(config.output_dir))
        audit_table, audit_warnings, extra = run_audit(
            data, result=result, settings=settings, variables=variables, qc=qc_metrics,
            random_state=int(seed), progress=Progress("audit", progress))
        if extra["leave_site_out"] is not None:
            loso_h = headline_metric(extra["leave_site_out"].metrics, aggregation="pooled",
                                     y=y, n_repeats=1)
            loso_h["description"] = "leave-site-out CV, one site held out per outer fold"
            loso_h["text"] = format_headline(loso_h)
        t_audit = time.monotonic() - t_audit
        for w in audit_warnings:
            LOGGER.warning("audit: %s", w)
        LOGGER.info("audit: %d check(s), %d warning(s) in %.1f s (nested CV: %.1f s)",
                    len(audit_table), len(audit_warnings), t_audit, t_cv)
    final_decision = final.decision_function(X, covariates=cohort.covariates, sites=cohort.sites)
    final_proba = final.predict_proba(X, covariates=cohort.covariates, sites=cohort.sites)[:, 1]
    wmaps = weight_maps(result)
    pattern = haufe_pattern(final, X, covariates=cohort.covariates, sites=cohort.sites)
    regions = None
    if config.atlas:
        regions = _region_table(config.atlas, config.atlas_labels, features, pattern, wmaps)

    h = headline_metric(result.metrics, aggregation="pooled", y=y,
                        p=perm.p_bac if perm else None,
                        n_permutations=perm.n_permutations if perm else 0,
                        n_repeats=int(result.decision.shape[0]))
    if h["warning"]:
        LOGGER.warning("%s", h["warning"])
    return Training(
        features=features, settings=settings, result=result, perm=perm, final=final,
        c_selection=c_sel, cv_scheme=cv_scheme, site_table=site_table, audit_table=audit_table,
        audit_warnings=audit_warnings, leave_site_out=loso_h, final_decision=final_decision,
        final_proba=final_proba, weight_maps=wmaps, pattern=pattern, regions=regions,
        headline=h, timings={"features_s": round(t_feat, 3), "nested_cv_s": round(t_cv, 3),
                             "audit_s": round(t_audit, 3)})


def _write_training(config: TrainConfig, training: Training, *, cohort, rule, final_dir,
                    t0) -> dict:
    """Write ``group/train/`` (staged: all or nothing) and the run record; the summary."""
    features, settings, result, perm = (training.features, training.settings, training.result,
                                        training.perm)
    final, c_sel, cv_scheme, h = (training.final, training.c_selection, training.cv_scheme,
                                  training.headline)
    site_table, audit_table, audit_warnings, loso_h = (
        training.site_table, training.audit_table, training.audit_warnings,
        training.leave_site_out)
    final_decision, final_proba, wmaps, pattern, regions = (
        training.final_decision, training.final_proba, training.weight_maps, training.pattern,
        training.regions)
    template, analysis_resolution = config.template, config.analysis_resolution
    site_column, covariates, combat = config.site_column, config.covariates, config.combat
    output_dir = Path(config.output_dir)
    fsettings = config.feature_settings()
    y = cohort.y
    with staged(final_dir, overwrite=config.overwrite) as stage:
        ids = cohort.participant_ids
        cohort_tsv = cohort.table_tsv(site_column)
        write_tsv(cohort_tsv, stage / "cohort.tsv", float_format=FLOAT_FORMAT)
        subj = result.subjects.copy()
        subj.insert(0, "participant_id", [ids[int(r)] for r in subj["row"]])
        subj = subj.drop(columns=["row"])
        write_tsv(subj, stage / "cv_predictions.tsv", float_format=FLOAT_FORMAT)
        write_tsv(result.folds, stage / "cv_folds.tsv", float_format=FLOAT_FORMAT)
        metrics = result.metrics.copy()
        write_tsv(metrics, stage / "metrics.tsv", float_format=FLOAT_FORMAT)
        calib = calibration_table(y, subj["proba"].to_numpy(float))
        write_tsv(calib, stage / "calibration.tsv", float_format=FLOAT_FORMAT)
        write_tsv(decision_curve(y, result.proba), stage / "decision_curve.tsv",
                  float_format=FLOAT_FORMAT)  # out-of-fold, pooled over repeats
        if perm is not None:
            write_tsv(perm.as_table(), stage / "permutations.tsv", float_format=FLOAT_FORMAT)
        write_tsv(pd.DataFrame({"participant_id": ids, "y_true": y,
                                 "decision": final_decision, "proba": final_proba}),
                  stage / "final_model_decisions.tsv", float_format=FLOAT_FORMAT)
        space = f"space-{template}"
        map_values = {
            "weight": wmaps.mean, "cvratio": wmaps.cv_ratio,
            "signconsistency": wmaps.sign_consistency, "pattern": pattern,
            "finalweight": np.asarray(final.coef_).ravel(),
        }
        map_files = {}
        for key, values in map_values.items():
            path = stage / f"{space}_desc-{key}_statmap.nii.gz"
            save_nifti(features.to_image(np.asarray(values, np.float32)), path)
            map_files[key] = path.name
        if regions is not None:
            write_tsv(regions, stage / "regions.tsv", float_format=FLOAT_FORMAT)
        if site_table is not None:
            write_tsv(site_table, stage / "metrics_by_site.tsv", float_format=FLOAT_FORMAT)
        if audit_table is not None:
            write_tsv(audit_table, stage / "audit.tsv", float_format=FLOAT_FORMAT)
        headline = _headline(result, perm)
        cv_info = {**settings.as_dict(), "cv_hash": result.cv_hash, "final_C": float(final.C_),
                   "final_selection": _selection(final), "cv_scheme": cv_scheme,
                   "kernel_scale": c_sel["kernel_scale"]}
        manifest = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "software": model_io.software_versions(),
            "template": template,
            "pipeline": cohort.pipeline,
            "features": {**fsettings.as_dict(), "mask_source": features.settings.mask_source,
                         "grid_shape": list(features.shape),
                         "grid_affine": features.affine.tolist(),
                         "source_grid": features.source_grid,
                         "n_voxels": int(features.X.shape[1])},
            "covariates": {"names": list(covariates or ()), "columns": cohort.covariate_names,
                           "encoding": cohort.encoding},
            "site": {"column": site_column, "combat": bool(combat),
                     "training_sites": sorted(set(cohort.sites.tolist()))
                     if cohort.sites is not None else None,
                     "unseen_site_rule": "ComBat leaves rows of sites unseen at training "
                     "unadjusted (site effect 0)" if combat else "sites not used by the model"},
            "labels": rule.as_dict(),
            "qc": cohort.qc.as_dict(),
            "cv": cv_info,
            "metrics": {**headline, "headline": h},
            "training": {"n": len(y), "n_responders": int(y.sum()),
                         "subjects_sha256": hashlib.sha256(
                             "\n".join(sorted(ids)).encode()).hexdigest(),
                         "decision_sha256": hashlib.sha256(
                             np.asarray(final_decision, np.float64).tobytes()).hexdigest()},
        }
        manifest = model_io.save_model(
            stage, final, mask=features.mask, affine=features.affine, manifest=manifest,
            mask_name=model_io.mask_file_name(template, analysis_resolution))
        write_json(stage / "metrics.json", {
            "headline": h, "summary": headline, "cv_hash": result.cv_hash, "settings": cv_info,
            "permutation": perm.as_dict() if perm else None, "n": len(y),
            "n_responders": int(y.sum()), "excluded": [e.__dict__ for e in cohort.excluded],
            "filtered_out_by_include": cohort.filtered_out, "qc": cohort.qc.as_dict(),
            "cv_scheme": cv_scheme, "c_selection": c_sel,
            "audit_warnings": audit_warnings if config.audit else None,
            "leave_site_out": loso_h})
        from ketabids.reports import group as report

        report.write_train_report(
            stage / "report.html", report.RunResults(
                cohort=cohort, rule=rule, manifest=manifest, perm=perm, calibration=calib,
                headline=h, elapsed=time.monotonic() - t0),
            features=features, result=result,
            maps={k: features.to_image(np.asarray(v, np.float32))
                  for k, v in map_values.items()},
            regions=regions, site_column=site_column)
        write_study_report(stage)  # tripod_ai.tsv, model_card.md (from the files above)
        write_sidecars(stage, mode="train", template=template, resolution=analysis_resolution)
    write_bidsignore(output_dir)
    tables = listing(final_dir)
    logs = write_run_record(output_dir, level="group-train", record=config.record(),
                            versions=model_io.software_versions(),
                            methods=train_methods(manifest, rule, h),
                            timings=training.timings)
    closing = h["text"]
    if loso_h is not None:
        closing += f"; leave-site-out {_pct(loso_h['estimate'])}"
    notes = [*(f"audit: {w}" for w in audit_warnings), *([c_sel["warning"]] if c_sel["warning"]
                                                         else [])]
    if notes:
        closing += f"; {len(notes)} warning(s): " + " ".join(notes)
    LOGGER.info("group training done: %s; report: %s", closing, final_dir / "report.html")
    return {
        "output_dir": str(final_dir),
        "report": str(final_dir / "report.html"),
        "model": str(final_dir / model_io.MODEL_NAME),
        "manifest": str(final_dir / model_io.MANIFEST_NAME),
        "n_subjects": len(y), "n_responders": int(y.sum()),
        "n_excluded": len(cohort.excluded), "qc": cohort.qc.as_dict(),
        **{k: headline.get(k) for k in ("bac_mean", "bac_pooled", "auc", "p_bac", "p_auc")},
        "headline": h, "logs": str(logs),
        "cv_hash": result.cv_hash,
        "tables": tables,
        "cv_scheme": cv_scheme, "c_selection": c_sel,
        "audit_warnings": audit_warnings, "leave_site_out": loso_h,
    }


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _group_labels(cohort, group_column):
    """The folds' groups: ``group_column`` of participants.tsv, else the sites."""
    if not group_column:
        return cohort.sites
    lab._require_columns(cohort.table, [group_column], "--group-column")
    values = cohort.table[group_column].astype(str)
    missing = values.str.lower().isin(lab.MISSING)
    if missing.any():
        raise BadDataError(f"{cohort.table.attrs.get('path', 'participants.tsv')}: group column "
                           f"{group_column!r} is empty for "
                           f"{', '.join(cohort.table.index[missing].astype(str)[:5])}")
    return values.to_numpy(str)


#: participants.tsv columns the audit relates to the decision values (when present)
AUDIT_PARTICIPANT_COLUMNS = ("age", "sex")


def _audit_variables(cohort, output_dir):
    """(participant variables, QC metrics) of the included participants, in cohort order:
    age and sex from participants.tsv, TIV from the volumes tables, the QC metrics of
    :data:`ketabids.group.audit.QC_AUDIT_METRICS` from OUTPUT_DIR/qc.tsv (None without)."""
    from ketabids.group.audit import QC_AUDIT_METRICS
    from ketabids.qc.table import read_qc_table

    table = cohort.table
    variables = pd.DataFrame(index=range(len(table)))
    for col in AUDIT_PARTICIPANT_COLUMNS:
        if col in table.columns:
            values = table[col].replace({m: np.nan for m in lab.MISSING}).to_numpy()
            numeric = pd.to_numeric(pd.Series(values), errors="coerce")
            variables[col] = numeric if numeric.notna().all() else pd.Series(values, dtype=object)
    subjects = list(cohort.maps)
    vols = {s: cohort.maps[s].volumes for s in subjects}
    if all(v is not None for v in vols.values()):
        try:
            variables["tiv"] = lab.read_tiv(vols).loc[subjects].to_numpy(float)
        except BadDataError:
            pass
    qc = read_qc_table(output_dir)
    if qc.empty or "participant_id" not in qc:
        return variables, None
    qc = qc.assign(session=qc["session"].fillna("n/a") if "session" in qc else "n/a")
    rows = []
    for s in subjects:
        ses = cohort.maps[s].session
        m = qc[(qc["participant_id"] == f"sub-{s}")
               & ((qc["session"] == (f"ses-{ses}" if ses else "n/a")) | (qc["session"] == ses)
                  if ses else True)]
        rows.append(m.iloc[0] if len(m) else pd.Series(dtype=float))
    qframe = pd.DataFrame(rows).reset_index(drop=True)
    cols = [c for c in QC_AUDIT_METRICS if c in qframe.columns and not (
        c == "tiv_ml" and "tiv" in variables)]
    if not cols:
        return variables, None
    return variables, qframe[cols].apply(pd.to_numeric, errors="coerce")


def train_methods(manifest, rule, h) -> str:
    """The methods text of a training (:func:`ketabids.reports.citation.group_methods`)."""
    from ketabids.reports.citation import group_methods, settings_from_manifest

    return group_methods(settings_from_manifest(
        manifest, n_permutations=h["n_permutations"], label_rule=rule.describe()))


def _selection(model) -> dict:
    out = {}
    for key in ("cv_scores_", "selection_"):
        value = getattr(model, key, None)
        if value is not None:
            out[key.rstrip("_")] = value
    return jsonable(out)


def _headline(result, perm) -> dict:
    m = result.metrics

    def get(metric, aggregation):
        row = m[(m["metric"] == metric) & (m["aggregation"] == aggregation)]
        if row.empty:
            return None
        r = row.iloc[0]
        return {"estimate": float(r["estimate"]), "ci_low": finite_or_none(r["ci_low"]),
                "ci_high": finite_or_none(r["ci_high"])}

    out = {"bac_mean": float(result.bac_mean), "bac_pooled": float(result.bac_pooled),
           "auc": float(result.auc_pooled),
           "p_bac": float(perm.p_bac) if perm else None,
           "p_auc": float(perm.p_auc) if perm else None,
           "n_permutations": int(perm.n_permutations) if perm else 0}
    out["intervals"] = {
        metric: {agg: get(metric, agg) for agg in ("pooled", "mean_over_repeats", "consensus")
                 if get(metric, agg)}
        for metric in ("bac", "sensitivity", "specificity", "auc", "ppv", "npv", "brier")}
    return out


def _region_table(atlas, atlas_labels, features, pattern, wmaps):
    """Atlas labels of the mask voxels (nearest neighbour onto the analysis grid) -> table."""
    labels = atlas_mod.labels_on_grid(atlas_mod.load_atlas(atlas), features.shape,
                                      features.affine)[features.mask]
    names = None
    if atlas_labels:
        table = atlas_mod.read_atlas_labels(atlas_labels)
        names = {int(i): str(n) for i, n in zip(table["index"], table["name"])}
    return region_table(labels, pattern, names=names, maps=wmaps)
