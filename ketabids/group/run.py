"""Group level: train a model on a cohort, or apply a frozen model to a new one.

Both entry points read the participant level's derivatives in OUTPUT_DIR and ``participants.tsv``
in BIDS_DIR, and write only under ``OUTPUT_DIR/group/``::

    group/train/                          run_group_train (replaced as a whole by a rerun)
        report.html                       self-contained report (figures embedded)
        ketabids_model.skops / .json      the frozen final model + its manifest
        ketabids_mask.nii.gz              analysis mask (template space, analysis grid)
        cohort.tsv                        every candidate participant: included or why not
        cv_predictions.tsv                per-subject out-of-fold decision / probability
        cv_folds.tsv                      per (repeat, fold): sizes, chosen C, scores
        metrics.tsv, metrics.json         metrics with 95 % intervals, permutation p, CV hash
        permutations.tsv                  permutation null distribution (BAC, AUC)
        calibration.tsv                   reliability curve (out-of-fold probabilities)
        final_model_decisions.tsv         the final model's decision values on its training set
        space-<TPL>_desc-<map>_statmap.nii.gz   weight, cvratio, signconsistency, pattern,
                                          finalweight maps
        regions.tsv                       region table (with --atlas)
    group/predict-<name>/                 run_group_predict; <name> from BIDS_DIR and --include
        report.html, predictions.tsv, cohort.tsv, metrics.tsv, metrics.json,
        permutations.tsv, calibration.tsv (the last four only when labels are available)

Every output folder is written under a temporary name next to its final place and swapped in
at the end, so a rerun replaces the previous results as a whole and an interrupted run leaves
the previous results untouched.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ketabids.errors import BadDataError, NoDataError, UsageError
from ketabids.group import features as feat
from ketabids.group import labels as lab
from ketabids.group import model_io
from ketabids.io import atomic_path, atomic_write_text

LOGGER = logging.getLogger("ketabids")
DEFAULT_C_GRID = tuple(2.0 ** k for k in range(-6, 5))


# ------------------------------------------------------------------------------ utilities
class Progress:
    """Compact progress on stderr: one updating line on a terminal, else a line per ~10 %."""

    def __init__(self, what: str, enabled: bool = True, stream=None):
        self.what, self.enabled = what, enabled
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        tty = getattr(self.stream, "isatty", lambda: False)()
        decile = int(10 * done / total)
        if not tty and decile == self._last and done != total:
            return
        self._last = decile
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (total - done) if done else 0.0
        line = f"ketabids: {self.what} {done}/{total} ({elapsed:.0f} s, ~{eta:.0f} s left)"
        self.stream.write(("\r" + line + ("\n" if done == total else "")) if tty else line + "\n")
        self.stream.flush()


def _warn_excluded(excluded: list[lab.Exclusion]) -> None:
    if excluded:
        listing = "; ".join(f"{e.participant_id} ({e.reason})" for e in excluded[:30])
        more = f" and {len(excluded) - 30} more" if len(excluded) > 30 else ""
        LOGGER.warning("%d participant(s) left out: %s%s", len(excluded), listing, more)
        warnings.warn(f"{len(excluded)} participant(s) left out: {listing}{more}", stacklevel=3)


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")


def _write_json(obj, path: Path) -> None:
    atomic_write_text(path, json.dumps(model_io._jsonable(obj), indent=2) + "\n")


@contextlib.contextmanager
def _staged(final: Path):
    """Yield a temporary folder next to ``final``; swap it in on success, delete it on failure,
    so a run leaves either its complete results or the previous ones, never a mixture."""
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield stage
        _publish(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _listing(folder: Path) -> dict:
    return {name: str(folder / name) for name in sorted(p.name for p in folder.iterdir())}


def _publish(stage: Path, final: Path) -> None:
    """Swap the staged folder in; the previous results go away only once the new are in place."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{time.time_ns()}")
        final.rename(old)
    try:
        stage.rename(final)
    except OSError:
        if old is not None:
            old.rename(final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _subjects_hash(participant_ids) -> str:
    return hashlib.sha256("\n".join(sorted(participant_ids)).encode()).hexdigest()


def _slug(text: str) -> str:
    text = text.replace("!=", "-not-").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "cohort"


# ----------------------------------------------------------------------------- the cohort
class Cohort:
    """Who is analysed, with which map, label, covariates and site; and who is left out."""

    def __init__(self, *, table, maps, y, excluded, filtered_out, covariates, covariate_names,
                 encoding, sites, pipeline):
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

    @property
    def participant_ids(self) -> list[str]:
        return [f"sub-{s}" for s in self.maps]

    def table_tsv(self, site_column=None) -> pd.DataFrame:
        rows = []
        for i, subject in enumerate(self.maps):
            row = {"participant_id": f"sub-{subject}", "status": "included", "reason": "n/a",
                   "label": int(self.y[i]) if self.y is not None else None,
                   "map": str(self.maps[subject].path.name)}
            if site_column:
                row["site"] = self.sites[i] if self.sites is not None else None
            for j, name in enumerate(self.covariate_names):
                row[name] = self.covariates[i, j]
            rows.append(row)
        for e in self.excluded:
            rows.append({"participant_id": e.participant_id, "status": "excluded",
                         "reason": e.reason})
        return pd.DataFrame(rows)


def build_cohort(*, bids_dir, output_dir, subjects, sessions, layout, template, rule,
                 covariates=(), site_column=None, encoding=None) -> Cohort:
    """Select participants, find their maps, labels, covariates; list everyone left out."""
    table = lab.read_participants(bids_dir)
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
    excluded += no_map
    order = [s for s in kept.index if s in maps
             and (not (rule.target or rule.response_from) or s in labels.index)]
    if not order:
        raise NoDataError(
            f"no participant has both a label and a space-{template} modulated GM map "
            f"({len(excluded)} left out: "
            f"{'; '.join(f'{e.participant_id} ({e.reason})' for e in excluded[:10])})")
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
                  encoding=enc, sites=sites, pipeline=pipeline)


# ---------------------------------------------------------------------------------- train
def run_group_train(*, bids_dir, output_dir, subjects=None, sessions=None, layout=None,
                    target: str | None = None, response_from: tuple[str, str] | None = None,
                    response_threshold: float = 0.5, include=(), covariates=(),
                    site_column: str | None = None, combat: bool = False,
                    standardize: bool = False, smoothing_fwhm: float = 8.0,
                    analysis_resolution: float = 2.0, template: str = "MNI152NLin2009aSym",
                    n_repeats=10, n_outer=10, n_inner=5, c_grid=None, n_permutations=1000,
                    atlas=None, atlas_labels=None, nprocs=1, seed=0, progress=True) -> dict:
    """Train: repeated nested CV, permutation test, final model, maps and report.

    Returns ``{"output_dir", "report", "model", "manifest", "n", "n_subjects" (= n),
    "n_responders", "n_excluded", "bac_mean", "bac_pooled", "auc", "p_bac", "p_auc",
    "metrics": {"bac" (= bac_mean), "bac_pooled", "auc"}, "cv_hash", "tables"}``.
    """
    import ketabids.group as engine

    t0 = time.monotonic()
    rule = lab.make_label_rule(target=target, response_from=response_from,
                               response_threshold=response_threshold, include=include)
    if combat and not site_column:
        raise UsageError("--combat harmonises sites: give --site-column COLUMN")
    if smoothing_fwhm < 0 or analysis_resolution <= 0:
        raise UsageError("--smoothing-fwhm must be >= 0 and --analysis-resolution > 0 (mm)")
    if n_permutations < 0:
        raise UsageError("--n-permutations must be >= 0")
    output_dir, bids_dir = Path(output_dir), Path(bids_dir)
    c_grid = tuple(float(c) for c in (c_grid or DEFAULT_C_GRID))
    if any(c <= 0 for c in c_grid):
        raise UsageError(f"--c-grid {c_grid}: C values must be > 0")
    settings = engine.NestedCVSettings(
        n_repeats=int(n_repeats), n_outer=int(n_outer), n_inner=int(n_inner), C_grid=c_grid,
        standardize=bool(standardize), harmonize=bool(combat), random_state=int(seed))

    cohort = build_cohort(bids_dir=bids_dir, output_dir=output_dir, subjects=subjects,
                          sessions=sessions, layout=layout, template=template, rule=rule,
                          covariates=covariates, site_column=site_column)
    _warn_excluded(cohort.excluded)
    if len(set(cohort.y.tolist())) < 2:
        raise BadDataError(f"all {len(cohort.y)} included participants have the same label "
                           f"({rule.describe()}); training needs responders and non-responders")
    fsettings = feat.FeatureSettings(template=template, smoothing_fwhm=float(smoothing_fwhm),
                                     analysis_resolution=float(analysis_resolution))
    t_feat = time.monotonic()
    features = feat.compute_features(cohort.maps, settings=fsettings,
                                     nprocs=feat.default_nprocs(nprocs))
    t_feat = time.monotonic() - t_feat
    LOGGER.info("features: %d participants x %d voxels in %.1f s", *features.X.shape, t_feat)

    X, y = features.X, cohort.y
    result = engine.nested_cv(X, y, covariates=cohort.covariates, sites=cohort.sites,
                              settings=settings,
                              progress=Progress("nested CV", progress))
    perm = None
    if n_permutations:
        perm = engine.permutation_test(
            X, y, covariates=cohort.covariates, sites=cohort.sites, settings=settings,
            n_permutations=int(n_permutations), random_state=int(seed), observed=result,
            n_jobs=int(nprocs), progress=Progress("permutations", progress))
    final = engine.fit_final_model(X, y, covariates=cohort.covariates, sites=cohort.sites,
                                   settings=settings)
    final_decision = final.decision_function(X, covariates=cohort.covariates, sites=cohort.sites)
    final_proba = final.predict_proba(X, covariates=cohort.covariates, sites=cohort.sites)[:, 1]
    wmaps = engine.weight_maps(result)
    pattern = engine.haufe_pattern(final, X, covariates=cohort.covariates, sites=cohort.sites)
    regions = None
    if atlas:
        regions = _region_table(engine, atlas, atlas_labels, features, pattern, wmaps)

    final_dir = output_dir / "group" / "train"
    with _staged(final_dir) as stage:
        ids = cohort.participant_ids
        cohort_tsv = cohort.table_tsv(site_column)
        _write_tsv(cohort_tsv, stage / "cohort.tsv")
        subj = result.subjects.copy()
        subj.insert(0, "participant_id", [ids[int(r)] for r in subj["row"]])
        subj = subj.drop(columns=["row"])
        _write_tsv(subj, stage / "cv_predictions.tsv")
        _write_tsv(result.folds, stage / "cv_folds.tsv")
        metrics = result.metrics.copy()
        _write_tsv(metrics, stage / "metrics.tsv")
        calib = calibration_table(y, subj["proba"].to_numpy(float))
        _write_tsv(calib, stage / "calibration.tsv")
        if perm is not None:
            _write_tsv(pd.DataFrame({"permutation": np.arange(1, perm.n_permutations + 1),
                                     "null_bac": perm.null_bac, "null_auc": perm.null_auc}),
                       stage / "permutations.tsv")
        _write_tsv(pd.DataFrame({"participant_id": ids, "y_true": y,
                                 "decision": final_decision, "proba": final_proba}),
                   stage / "final_model_decisions.tsv")
        space = f"space-{template}"
        map_values = {
            "weight": wmaps.mean, "cvratio": wmaps.cv_ratio,
            "signconsistency": wmaps.sign_consistency, "pattern": pattern,
            "finalweight": np.asarray(final.coef_).ravel(),
        }
        map_files = {}
        for key, values in map_values.items():
            path = stage / f"{space}_desc-{key}_statmap.nii.gz"
            _save_img(features.to_image(np.asarray(values, np.float32)), path)
            map_files[key] = path.name
        if regions is not None:
            _write_tsv(regions, stage / "regions.tsv")
        headline = _headline(result, perm)
        cv_info = {**settings.as_dict(), "cv_hash": result.cv_hash, "final_C": float(final.C),
                   "final_selection": _selection(final)}
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
            "cv": cv_info,
            "metrics": headline,
            "training": {"n": len(y), "n_responders": int(y.sum()),
                         "subjects_sha256": _subjects_hash(ids),
                         "decision_sha256": hashlib.sha256(
                             np.asarray(final_decision, np.float64).tobytes()).hexdigest()},
        }
        manifest = model_io.save_model(stage, final, mask=features.mask,
                                       affine=features.affine, manifest=manifest)
        _write_json({"headline": headline, "cv_hash": result.cv_hash,
                     "settings": cv_info, "permutation": perm.as_dict() if perm else None,
                     "n": len(y), "n_responders": int(y.sum()),
                     "excluded": [e.__dict__ for e in cohort.excluded],
                     "filtered_out_by_include": cohort.filtered_out},
                    stage / "metrics.json")
        from ketabids.reports import group as report

        report.write_train_report(
            stage / "report.html", cohort=cohort, rule=rule, features=features, result=result,
            perm=perm, calibration=calib, maps={k: features.to_image(np.asarray(v, np.float32))
                                                for k, v in map_values.items()},
            regions=regions, manifest=manifest, final_decision=final_decision,
            site_column=site_column, elapsed=time.monotonic() - t0)
    tables = _listing(final_dir)
    return {
        "output_dir": str(final_dir),
        "report": str(final_dir / "report.html"),
        "model": str(final_dir / model_io.MODEL_NAME),
        "manifest": str(final_dir / model_io.MANIFEST_NAME),
        "n": len(y), "n_subjects": len(y), "n_responders": int(y.sum()),
        "n_excluded": len(cohort.excluded),
        **{k: headline.get(k) for k in ("bac_mean", "bac_pooled", "auc", "p_bac", "p_auc")},
        "metrics": {"bac": headline["bac_mean"], "bac_pooled": headline["bac_pooled"],
                    "auc": headline["auc"]},
        "cv_hash": result.cv_hash,
        "tables": tables,
    }


def _selection(model) -> dict:
    out = {}
    for key in ("cv_scores_", "selection_"):
        value = getattr(model, key, None)
        if value is not None:
            out[key.rstrip("_")] = value
    return model_io._jsonable(out)


def _headline(result, perm) -> dict:
    m = result.metrics

    def get(metric, aggregation):
        row = m[(m["metric"] == metric) & (m["aggregation"] == aggregation)]
        if row.empty:
            return None
        r = row.iloc[0]
        return {"estimate": float(r["estimate"]), "ci_low": _f(r["ci_low"]),
                "ci_high": _f(r["ci_high"])}

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


def _f(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _save_img(img, path: Path) -> None:
    import nibabel as nib

    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)


def _region_table(engine, atlas, atlas_labels, features, pattern, wmaps):
    """Atlas labels of the mask voxels (nearest-neighbour onto the analysis grid) -> table."""
    import nibabel as nib
    from scipy import ndimage

    atlas = Path(atlas)
    try:
        img = nib.load(str(atlas))
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise BadDataError(f"{atlas}: cannot read --atlas ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadDataError(f"{atlas}: --atlas must be a 3D label image")
    matrix = np.linalg.inv(img.affine) @ features.affine
    on_grid = ndimage.affine_transform(data.astype(np.float32), matrix[:3, :3],
                                       offset=matrix[:3, 3], output_shape=features.shape,
                                       order=0, mode="constant")
    labels = np.rint(on_grid[features.mask]).astype(int)
    names = None
    if atlas_labels:
        table = pd.read_csv(atlas_labels, sep="\t")
        if not {"index", "name"} <= set(table.columns):
            raise BadDataError(f"{atlas_labels}: --atlas-labels needs columns index, name")
        names = {int(i): str(n) for i, n in zip(table["index"], table["name"])}
    return engine.region_table(labels, pattern, names=names, maps=wmaps)


def calibration_table(y, proba, n_bins: int = 10) -> pd.DataFrame:
    """Reliability curve: ``n_bins`` equal-width probability bins (empty bins dropped).

    Columns ``bin_low, bin_high, n, mean_predicted, observed_rate``; the Brier score
    ``mean((p - y)^2)`` is in the metrics tables.

    >>> calibration_table([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_bins=2)["observed_rate"].tolist()
    [0.0, 1.0]
    """
    y = np.asarray(y, float)
    proba = np.clip(np.asarray(proba, float), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(proba, edges[1:-1]), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = index == b
        if sel.any():
            rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "n": int(sel.sum()),
                         "mean_predicted": float(proba[sel].mean()),
                         "observed_rate": float(y[sel].mean())})
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "n", "mean_predicted",
                                       "observed_rate"])


# -------------------------------------------------------------------------------- predict
def prediction_name(bids_dir, include=()) -> str:
    """``predict-<BIDS_DIR name>[-<include filters>]``, e.g. ``predict-ds01-arm-saline``.

    >>> prediction_name("/data/ext_cohort", ["arm=saline"])
    'predict-ext-cohort-arm-saline'
    """
    parts = [_slug(Path(bids_dir).resolve().name)] + [_slug(s) for s in include or ()]
    return "predict-" + "-".join(parts)


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


def run_group_predict(*, bids_dir, output_dir, model: str, subjects=None, sessions=None,
                      layout=None, target=None, response_from=None, response_threshold=0.5,
                      include=(), n_permutations=1000, nprocs=1, seed=0, progress=True,
                      name: str | None = None) -> dict:
    """Apply a frozen model to a cohort; with labels, evaluate it (metrics, permutation p).

    Label options default to the model's own rule (``--target`` / ``--response-from``) when
    its columns exist in this participants.tsv; ``include`` is never inherited.
    Returns ``{"output_dir", "report", "predictions", "n", "n_subjects" (= n), "n_excluded",
    "labelled", "bac", "auc", "p_bac", "p_auc", "metrics": {"bac", "auc"}, "model_sha256",
    "tables"}`` (metrics None without labels).
    """
    import ketabids.group as engine

    t0 = time.monotonic()
    if n_permutations < 0:
        raise UsageError("--n-permutations must be >= 0")
    loaded = model_io.load_model(model, expected_class=engine.KetaSVC)
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
    fs = manifest["features"]
    site = manifest.get("site", {})
    # the model's site column: required with ComBat, else used (when present) to permute
    # labels within sites and to describe the cohort
    site_column = site.get("column")
    if site_column and not site.get("combat") and \
            site_column not in lab.read_participants(bids_dir).columns:
        site_column = None
    cohort = build_cohort(bids_dir=bids_dir, output_dir=output_dir, subjects=subjects,
                          sessions=sessions, layout=layout, template=manifest["template"],
                          rule=rule, covariates=manifest["covariates"]["names"],
                          site_column=site_column,
                          encoding=manifest["covariates"]["encoding"])
    _warn_excluded(cohort.excluded)
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
        metrics = engine.classification_metrics(y, decision, proba, random_state=int(seed))
        if n_permutations:
            perm = engine.external_permutation_test(
                y, decision, n_permutations=int(n_permutations), random_state=int(seed),
                groups=cohort.sites)
        calib = calibration_table(y, proba)

    folder = f"predict-{_slug(name)}" if name else prediction_name(bids_dir, include)
    final_dir = output_dir / "group" / folder
    with _staged(final_dir) as stage:
        pred = pd.DataFrame({"participant_id": ids, "decision": decision, "proba": proba,
                             "predicted": predicted})
        if labelled:
            pred["y_true"] = y
        _write_tsv(pred, stage / "predictions.tsv")
        _write_tsv(cohort.table_tsv(site_column), stage / "cohort.tsv")
        headline: dict = {"bac": None, "auc": None, "p_bac": None, "p_auc": None}
        if metrics is not None:
            _write_tsv(metrics, stage / "metrics.tsv")
            _write_tsv(calib, stage / "calibration.tsv")
            for metric in ("bac", "auc"):
                row = metrics[metrics["metric"] == metric].iloc[0]
                headline[metric] = float(row["estimate"])
                headline[f"{metric}_ci"] = [_f(row["ci_low"]), _f(row["ci_high"])]
            if perm is not None:
                headline.update(p_bac=float(perm.p_bac), p_auc=float(perm.p_auc))
                _write_tsv(pd.DataFrame({"permutation": np.arange(1, perm.n_permutations + 1),
                                         "null_bac": perm.null_bac,
                                         "null_auc": perm.null_auc}),
                           stage / "permutations.tsv")
        _write_json({"headline": headline, "model": str(loaded.path),
                     "model_sha256": manifest["model_sha256"], "labels": rule.as_dict(),
                     "n": len(ids), "permutation": perm.as_dict() if perm else None,
                     "notes": notes, "excluded": [e.__dict__ for e in cohort.excluded],
                     "filtered_out_by_include": cohort.filtered_out},
                    stage / "metrics.json")
        from ketabids.reports import group as report

        report.write_predict_report(
            stage / "report.html", cohort=cohort, rule=rule, manifest=manifest,
            model_path=loaded.path, predictions=pred, metrics=metrics, perm=perm,
            calibration=calib, notes=notes, elapsed=time.monotonic() - t0)
    tables = _listing(final_dir)
    return {
        "output_dir": str(final_dir),
        "report": str(final_dir / "report.html"),
        "predictions": str(final_dir / "predictions.tsv"),
        "n": len(ids), "n_subjects": len(ids), "n_excluded": len(cohort.excluded),
        "labelled": metrics is not None,
        **{k: headline.get(k) for k in ("bac", "auc", "p_bac", "p_auc")},
        "metrics": {"bac": headline.get("bac"), "auc": headline.get("auc")},
        "model_sha256": manifest["model_sha256"],
        "tables": tables,
    }


__all__ = ["run_group_train", "run_group_predict", "build_cohort", "calibration_table",
           "prediction_name", "check_compatibility"]
