"""QC outputs: one JSON per subject/session, the cohort table ``qc.tsv`` and its dictionary.

* Per subject: ``sub-<X>/[ses-<Y>/]anat/sub-<X>[_ses-<Y>]_desc-qc_metrics.json`` with
  ``participant_id``, ``session``, ``verdict``, ``reasons`` and every metric. The BIDS validator
  (bids-validator-deno 3.0.2, measured on a tiny derivative dataset) rejects every JSON-only name
  tried (``_desc-qc_metrics.json``, ``_desc-qc_qc.json``, ``_desc-qc_stats.json``: NOT_INCLUDED;
  ``_desc-qc_T1w.json``: SIDECAR_WITHOUT_DATAFILE) and ``qc.tsv``/``qc.json`` at the root
  (NOT_INCLUDED); with the :data:`QC_BIDSIGNORE` lines in ``.bidsignore`` the dataset is clean.
* Cohort: ``OUTPUT_DIR/qc.tsv`` (one row per subject/session, rebuilt from all per-subject
  JSONs, so parallel participant jobs never lose a row: each job writes its own JSON, then
  rebuilds the table under an exclusive ``fcntl`` lock on ``OUTPUT_DIR/.qc.lock``, written
  atomically) and ``qc.json`` (data dictionary: every column with its description, rule and the
  rule's source).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ketabids.io import atomic_write_text, write_json, write_tsv
from ketabids.qc.rules import RULES_BY_METRIC, assess

#: lines the QC outputs need in the derivative ``.bidsignore``
QC_BIDSIGNORE = ["*_desc-qc_metrics.json", "/qc.tsv", "/qc.json", "/qc.html",
                 "/qc_ratings.tsv"]

#: first columns of qc.tsv, then the metrics in this order (others follow, sorted)
ID_COLUMNS = ["participant_id", "session", "verdict", "reasons"]
METRIC_ORDER = [
    "tiv_ml", "gm_ml", "wm_ml", "csf_ml", "icvs_gm", "icvs_wm", "icvs_csf", "gm_brain_fraction",
    "orientation_missing", "qform_code", "sform_code", "qform_sform_shift_mm",
    "qform_sform_angle_deg", "zoom_x", "zoom_y", "zoom_z", "slice_thickness_mm",
    "voxel_anisotropy", "voxel_volume_mm3", "fov_mm_x", "fov_mm_y", "fov_mm_z", "fov_min_mm",
    "fov_cropped_mm", "intensity_truncated_fraction", "intensity_max_ratio",
    "fov_coverage", "brain_dice", "template_correlation", "registration_anisotropy",
    "registration_rotation_deg", "jac_folded_fraction", "logjac_p01",
    "logjac_p99", "logjac_range", "logjac_median",
    "mask_rim_bright",
    "t1_contrast_order", "median_wm", "median_gm", "median_csf", "contrast_wm_gm",
    "contrast_gm_csf",
    "cjv", "cnr", "snr_csf", "snr_gm", "snr_wm", "snr_total", "efc", "fber", "wm2max",
    "inu_med", "inu_range", "summary_csf_median", "summary_gm_median", "summary_wm_median",
    "summary_bg_stdv", "qc_seconds", "qc_cpu_seconds",
]

DESCRIPTIONS = {
    "participant_id": "Participant label with the sub- prefix",
    "session": "Session label with the ses- prefix (n/a without sessions)",
    "verdict": "QC verdict: pass, warn or fail (worst level over every rule)",
    "reasons": "Reasons for a warn/fail verdict, separated by '; '",
    "error": "Processing error of this subject (its first line), if any",
    "tiv_ml": "Total intracranial volume GM + WM + CSF (mL)",
    "gm_ml": "Grey-matter volume (mL)", "wm_ml": "White-matter volume (mL)",
    "csf_ml": "CSF volume (mL)",
    "icvs_gm": "GM volume / TIV (MRIQC icvs_gm)", "icvs_wm": "WM volume / TIV",
    "icvs_csf": "CSF volume / TIV", "gm_brain_fraction": "GM / (GM + WM)",
    "orientation_missing": "qform_code and sform_code both 0 in the raw header",
    "qform_code": "qform_code of the raw header", "sform_code": "sform_code of the raw header",
    "qform_sform_shift_mm": "Largest corner displacement between qform and sform (mm)",
    "qform_sform_angle_deg": "Rotation angle between qform and sform (degrees)",
    "zoom_x": "Voxel size along the first voxel axis (mm)",
    "zoom_y": "Voxel size along the second voxel axis (mm)",
    "zoom_z": "Voxel size along the third voxel axis (mm)",
    "slice_thickness_mm": "Largest voxel size (mm)",
    "voxel_anisotropy": "Largest / smallest voxel size",
    "voxel_volume_mm3": "Voxel volume (mm^3)",
    "fov_mm_x": "Field of view along the first voxel axis (mm)",
    "fov_mm_y": "Field of view along the second voxel axis (mm)",
    "fov_mm_z": "Field of view along the third voxel axis (mm)",
    "fov_min_mm": "Smallest field-of-view extent (mm)",
    "fov_cropped_mm": "Inferior field of view cropped before processing (mm; 0: none): the "
                      "neck and shoulders more than 180 mm below the top of the head",
    "intensity_truncated_fraction": "Voxels truncated at the head's 99.9th percentile (or "
                                    "negative outliers), as a share of the head's voxels",
    "intensity_max_ratio": "Brightest raw voxel / the truncation threshold (spikes: >> 1)",
    "fov_coverage": "Share of the template brain mask inside the warped field of view",
    "brain_dice": "Dice overlap of the warped brain mask and the template brain mask",
    "template_correlation": "Pearson r of the normalised T1w and the template T1w in the "
                            "template brain mask",
    "registration_anisotropy": "Largest / smallest scaling of the affine fitted to the "
                               "registration in the template brain (a wrong orientation in "
                               "the header stretches the template to fit the head)",
    "registration_rotation_deg": "Rotation (degrees) of the affine fitted to the registration "
                                 "in the template brain: head vs template orientation",
    "jac_folded_fraction": "Share of template brain voxels with Jacobian determinant <= 0",
    "logjac_p01": "1st percentile of ln det(J) in the template brain",
    "logjac_p99": "99th percentile of ln det(J) in the template brain",
    "logjac_range": "logjac_p99 - logjac_p01",
    "logjac_median": "Median ln det(J) in the template brain (global scaling)",
    "mask_rim_bright": "Share of the brain mask's outer 2 mm rim brighter than the median WM "
                       "(scalp fat or marrow inside the mask: the mask leaked)",
    "t1_contrast_order": "median WM > median GM > median CSF intensity (T1-like)",
    "median_wm": "Median T1w intensity in WM (probability > 0.85)",
    "median_gm": "Median T1w intensity in GM (probability > 0.85)",
    "median_csf": "Median T1w intensity in CSF (probability > 0.85)",
    "contrast_wm_gm": "median WM / median GM", "contrast_gm_csf": "median GM / median CSF",
    "cjv": "Coefficient of joint variation of GM and WM (MRIQC; lower is better)",
    "cnr": "Contrast-to-noise ratio of GM and WM (MRIQC; higher is better)",
    "snr_csf": "SNR in CSF (MRIQC)", "snr_gm": "SNR in GM (MRIQC)",
    "snr_wm": "SNR in WM (MRIQC)", "snr_total": "Mean of snr_csf, snr_gm, snr_wm (MRIQC)",
    "efc": "Entropy focus criterion (MRIQC; lower is better)",
    "fber": "Foreground-background energy ratio (MRIQC; -1 = no background signal)",
    "wm2max": "Median WM intensity / 99.95th percentile of the image (MRIQC)",
    "inu_med": "Median of the N4 bias field in the brain (MRIQC)",
    "inu_range": "P95 - P5 of the N4 bias field in the brain (MRIQC)",
    "summary_csf_median": "Median intensity of the CSF mask used by the IQMs",
    "summary_gm_median": "Median intensity of the GM mask used by the IQMs",
    "summary_wm_median": "Median intensity of the WM mask used by the IQMs",
    "summary_bg_stdv": "Standard deviation of the air (background) intensities",
    "qc_seconds": "Wall time of the QC computation (s)",
    "qc_cpu_seconds": "CPU time of the QC computation (s, this process; ANTs threads excluded)",
    "homogeneity_mean_corr": "Sample homogeneity: mean correlation of this scan's smoothed "
                             "modulated GM map with every other map of OUTPUT_DIR (CAT12's "
                             "check; n/a with fewer than 3 maps)",
    "homogeneity_z": "Robust z of homogeneity_mean_corr within the cohort (median / MAD)",
    "homogeneity_flag": "Why the homogeneity check flags the map (low mean correlation, GM "
                        "total far from the cohort, duplicated map); n/a when not flagged",
}


def _label(value: str | None, prefix: str) -> str | None:
    if value in (None, "", "n/a"):
        return None
    value = str(value)
    return value if value.startswith(prefix) else prefix + value


def qc_json_path(output_dir, subject: str, session: str | None = None, *,
                 failed: bool = False) -> Path:
    """``OUTPUT_DIR/sub-X/[ses-Y/]anat/sub-X[_ses-Y]_desc-qc_metrics.json``; for a subject
    whose processing failed (``failed``),
    ``OUTPUT_DIR/logs/sub-X/sub-X[_ses-Y]_desc-qc_metrics.json`` beside its crash files, so a
    failed subject leaves no derivative folder."""
    sub = _label(subject, "sub-")
    ses = _label(session, "ses-")
    name = f"{sub}{'_' + ses if ses else ''}_desc-qc_metrics.json"
    if failed:
        return Path(output_dir) / "logs" / sub / name
    return Path(output_dir) / sub / (ses or "") / "anat" / name


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def subject_record(subject: str, session: str | None, metrics: dict) -> dict:
    """The per-subject QC record: ids, verdict and reasons from :func:`assess`, metrics
    (non-finite values as null)."""
    verdict, reasons = assess(metrics)
    record = {"participant_id": _label(subject, "sub-"), "session": _label(session, "ses-"),
              "verdict": verdict, "reasons": reasons}
    record.update({k: _clean(v) for k, v in metrics.items()})
    return record


def write_subject_qc(output_dir, subject: str, session: str | None, metrics: dict, *,
                     failed: bool = False) -> Path:
    """Write the per-subject JSON (atomic) and return its path (see :func:`qc_json_path`)."""
    return write_json(qc_json_path(output_dir, subject, session, failed=failed),
                      subject_record(subject, session, metrics))


@contextlib.contextmanager
def qc_lock(output_dir):
    """Exclusive ``fcntl`` lock on ``OUTPUT_DIR/.qc.lock`` (held while the cohort QC outputs
    are rebuilt; not re-entrant: inside it call :func:`rebuild_qc_table` with ``lock=False``)."""
    lock = Path(output_dir) / ".qc.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:  # the file may be unlinked by the previous holder between open and flock
        fh = open(lock, "a")  # noqa: SIM115 - closed below
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # leave no lock file behind
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def collect_records(output_dir) -> list[dict]:
    """Every per-subject QC JSON under ``output_dir``, sorted by subject and session: the
    published ones, and the failure records under ``logs/`` of subjects without one."""
    records, seen = [], set()
    published = sorted(Path(output_dir).glob("sub-*/**/anat/*_desc-qc_metrics.json"))
    failed = sorted(Path(output_dir).glob("logs/sub-*/*_desc-qc_metrics.json"))
    for path in published + failed:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a file being replaced right now is picked up by the next rebuild
        key = (str(record.get("participant_id")), str(record.get("session") or ""))
        if key not in seen:  # a published record wins over an older failure
            seen.add(key)
            records.append(record)
    records.sort(key=lambda r: (str(r.get("participant_id")), str(r.get("session") or "")))
    return records


def qc_frame(records: list[dict]) -> pd.DataFrame:
    """The cohort table: :data:`ID_COLUMNS`, ``error`` if any, then the metrics."""
    rows = []
    for rec in records:
        row = dict(rec)
        row["reasons"] = "; ".join(rec.get("reasons") or [])
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=ID_COLUMNS)
    present = set(frame.columns)
    extra = ["error"] if "error" in present else []
    ordered = [c for c in ID_COLUMNS + extra + METRIC_ORDER if c in present]
    rest = sorted(present - set(ordered))
    frame = frame[ordered + rest]
    for col in frame.columns:  # booleans as 0/1-free words for readers of the TSV
        if frame[col].dtype == bool:
            frame[col] = frame[col].map({True: "true", False: "false"})
    return frame


def data_dictionary(columns) -> dict:
    """``qc.json``: each column's description, and for columns with a rule its thresholds and
    source."""
    out = {}
    for col in columns:
        entry = {"Description": DESCRIPTIONS.get(col, col.replace("_", " "))}
        rule = RULES_BY_METRIC.get(col)
        if rule is not None:
            entry["QCRule"] = {"kind": rule.kind, "warn": rule.warn, "fail": rule.fail,
                               "source": rule.source}
        if col == "verdict":
            entry["Levels"] = {"pass": "every rule passed", "warn": "at least one warning",
                               "fail": "at least one failed rule or a processing error"}
        out[col] = entry
    return out


def _ensure_bidsignore(output_dir) -> None:
    path = Path(output_dir) / ".bidsignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    missing = [e for e in QC_BIDSIGNORE if e not in lines]
    if missing:
        atomic_write_text(path, "\n".join(lines + missing) + "\n")


#: columns added to qc.tsv from the sample-homogeneity table (one value per scan)
HOMOGENEITY_COLUMNS = ["homogeneity_mean_corr", "homogeneity_z", "homogeneity_flag"]


def add_homogeneity(frame: pd.DataFrame, homogeneity: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` with :data:`HOMOGENEITY_COLUMNS` from the table of
    :func:`ketabids.qc.homogeneity.sample_homogeneity` (ids ``sub-X`` or ``sub-X_ses-Y``);
    n/a for scans without a map, or for all without ``homogeneity``."""
    frame = frame.copy()
    by_id = {} if homogeneity is None else {str(r["id"]): r for _, r in homogeneity.iterrows()}
    keys = []
    for _, row in frame.iterrows():
        pid, ses = str(row.get("participant_id")), row.get("session")
        has_ses = isinstance(ses, str) and ses not in ("", "n/a")
        match = by_id.get(f"{pid}_{ses}" if has_ses else pid)
        keys.append(match if match is not None else by_id.get(pid))
    frame["homogeneity_mean_corr"] = [float(r["mean_corr"]) if r is not None else None
                                      for r in keys]
    frame["homogeneity_z"] = [float(r.get("mean_corr_z", float("nan"))) if r is not None
                              else None for r in keys]
    frame["homogeneity_flag"] = [str(r["reason"]) if r is not None and r["flagged"] else None
                                 for r in keys]
    return frame


def _previous_homogeneity(output_dir) -> pd.DataFrame | None:
    """The homogeneity columns of the current ``qc.tsv`` as a homogeneity table (a rebuild
    without a new check keeps the last check's values instead of blanking them)."""
    path = Path(output_dir) / "qc.tsv"
    if not path.is_file():
        return None
    try:
        old = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False,
                          dtype={"participant_id": str, "session": str})
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    if "homogeneity_mean_corr" not in old.columns:
        return None
    old = old[old["homogeneity_mean_corr"].notna()]
    ids = [f"{p}_{s}" if isinstance(s, str) and s else p
           for p, s in zip(old["participant_id"], old.get("session", [None] * len(old)))]
    flag = old.get("homogeneity_flag", pd.Series([None] * len(old), index=old.index))
    return pd.DataFrame({"id": ids, "mean_corr": old["homogeneity_mean_corr"].to_numpy(),
                         "mean_corr_z": old.get("homogeneity_z", np.nan),
                         "flagged": flag.notna().to_numpy(),
                         "reason": flag.fillna("").to_numpy()})


def rebuild_qc_table(output_dir, *, lock: bool = True,
                     homogeneity: pd.DataFrame | None = None) -> tuple[Path, pd.DataFrame]:
    """Rebuild ``qc.tsv`` and ``qc.json`` from every per-subject JSON (and the homogeneity
    table, :func:`add_homogeneity`), under an exclusive file lock (safe with parallel
    participant jobs; ``lock=False`` when the caller holds :func:`qc_lock`); returns the TSV
    path and the table."""
    output_dir = Path(output_dir)
    with (qc_lock(output_dir) if lock else contextlib.nullcontext()):
        frame = qc_frame(collect_records(output_dir))
        if len(frame):
            frame = add_homogeneity(frame, homogeneity if homogeneity is not None
                                    else _previous_homogeneity(output_dir))
        tsv = write_tsv(frame, output_dir / "qc.tsv", float_format="%.6g")
        write_json(output_dir / "qc.json", data_dictionary(frame.columns))
        _ensure_bidsignore(output_dir)
    return tsv, frame


def read_qc_table(output_dir) -> pd.DataFrame:
    """``qc.tsv`` as a DataFrame (``n/a`` -> NaN); an empty table if there is none."""
    path = Path(output_dir) / "qc.tsv"
    if not path.is_file():
        return pd.DataFrame(columns=ID_COLUMNS)
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False,
                       dtype={"participant_id": str, "session": str})


__all__ = ["QC_BIDSIGNORE", "qc_json_path", "qc_lock", "subject_record", "write_subject_qc",
           "collect_records", "qc_frame", "data_dictionary", "rebuild_qc_table",
           "read_qc_table", "add_homogeneity", "HOMOGENEITY_COLUMNS"]
