"""The cohort QC outputs of a participant run, rebuilt in one place, and the failed subjects'
records.

:func:`refresh_after_subject` rebuilds ``qc.tsv``/``qc.json`` as each subject is published (the
runner's publisher calls it). :func:`finish_participant` runs once the graph has run: a failed
subject gets a QC record with its error (verdict fail) and a ``sub-X.html`` saying what failed
(:func:`ketabids.reports.participant.failure_report`); then ``qc.tsv``, ``qc.json`` and
``qc.html`` are rebuilt from every QC record in OUTPUT_DIR (:func:`update_cohort_qc`), with the
sample-homogeneity check on all modulated GM maps found, under the QC lock (parallel
participant jobs writing into one OUTPUT_DIR each rebuild the whole cohort view, one at a
time); a closing line gives the QC counts and the path of ``qc.html``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ketabids.runner.progress import Progress

LOGGER = logging.getLogger("ketabids")

__all__ = ["failure_metrics", "refresh_after_subject", "update_cohort_qc", "finish_participant"]


def refresh_after_subject(output_dir, subject: str) -> None:
    """Rebuild ``qc.tsv``/``qc.json`` from the per-subject QC files once ``subject`` is
    published (when it has one: no empty table before the QC node writes them); a QC table
    problem never fails a subject (a warning)."""
    if not any((Path(output_dir) / f"sub-{subject}").glob("**/*_desc-qc_metrics.json")):
        return
    try:
        from ketabids.qc.table import rebuild_qc_table
    except ImportError:
        return
    try:
        rebuild_qc_table(output_dir)
    except Exception as exc:  # noqa: BLE001 - a QC table problem never fails a subject
        LOGGER.warning("QC table not updated after sub-%s: %s", subject, exc)


def failure_metrics(raw_t1w, error: str) -> dict:
    """The QC metrics of a subject whose processing failed: the raw header's, plus the error
    (:func:`ketabids.qc.rules.assess` makes that a fail)."""
    from ketabids.qc.header import header_metrics

    try:
        metrics = dict(header_metrics(raw_t1w))
    except Exception as exc:  # noqa: BLE001 - an unreadable input is the error itself then
        metrics = {"header_error": f"{type(exc).__name__}: {exc}"[:200]}
    metrics["error"] = str(error).splitlines()[0][:300] if error else "processing failed"
    return metrics


def update_cohort_qc(output_dir) -> dict:
    """Rebuild ``qc.tsv``/``qc.json`` and ``qc.html`` (with the homogeneity check on every
    modulated GM map in ``output_dir``; smoothed maps cached in ``OUTPUT_DIR/.qc_cache/``)
    under the QC lock. Returns ``{"tsv", "html", "counts",
    "homogeneity_flagged"}``."""
    from ketabids.qc.homogeneity import (
        modulated_gm_maps,
        sample_homogeneity,
        smoothed_maps_cached,
    )
    from ketabids.qc.table import qc_lock, rebuild_qc_table
    from ketabids.reports.qc import render_qc_page

    output_dir = Path(output_dir)
    with qc_lock(output_dir):
        homogeneity = None
        maps, ids = modulated_gm_maps(output_dir)
        if len(maps) >= 3:
            try:
                arrays, totals = smoothed_maps_cached(maps, output_dir / ".qc_cache")
                homogeneity = sample_homogeneity(arrays, ids, totals=totals)
            except (ValueError, OSError) as exc:  # e.g. maps of two templates in one folder
                LOGGER.warning("sample homogeneity not computed: %s", exc)
        tsv, table = rebuild_qc_table(output_dir, lock=False, homogeneity=homogeneity)
        html = render_qc_page(output_dir, table, homogeneity=homogeneity)
    verdicts = table["verdict"].astype(str) if "verdict" in table else []
    counts = {level: int((verdicts == level).sum()) for level in ("pass", "warn", "fail")} \
        if len(table) else {"pass": 0, "warn": 0, "fail": 0}
    flagged = [] if homogeneity is None else \
        [str(i) for i in homogeneity.loc[homogeneity["flagged"], "id"]]
    return {"tsv": str(tsv), "html": str(html), "counts": counts,
            "homogeneity_flagged": flagged}


def finish_participant(summary: dict, *, inputs, output_dir, progress: Progress | None = None,
                       logger=LOGGER) -> dict:
    """After the graph ran: QC record + failure report of each failed subject, a QC record
    (verdict fail, under ``logs/``) of each session left out (``summary["failed_sessions"]``),
    then the cohort
    QC outputs and a closing line. Adds ``summary["qc"]`` (``tsv``, ``html``, ``counts``,
    ``homogeneity_flagged``, ``verdicts``) and ``summary["failure_reports"]`` (subject -> the
    failure page), and returns ``summary``."""
    from ketabids.qc.table import write_subject_qc
    from ketabids.reports.participant import failure_report

    output_dir = Path(output_dir)
    if progress is not None:
        progress.flush(summary.get("failed", []))
    for subject in summary.get("failed", []):
        items = [i for i in inputs if i.subject == subject]
        if not items:
            continue  # no input selected: nothing was processed
        error = summary.get("errors", {}).get(subject) or "processing failed"
        crash = summary.get("crash_files", {}).get(subject) or []
        steps = progress.finished_steps.get(subject, []) if progress else []
        failed_in = progress.failed.get(subject) if progress else None
        input_errors = summary.get("input_errors") or {}
        for item in items:
            write_subject_qc(output_dir, item.subject, item.session,
                             failure_metrics(item.t1w, input_errors.get(item.t1w, error)),
                             failed=True)
        failure_report(output_dir / f"sub-{subject}.html", subject=subject, error=error,
                       crash_files=crash, finished_steps=steps, failed_step=failed_in,
                       inputs=[str(i.t1w) for i in items])
        summary.setdefault("failure_reports", {})[subject] = \
            str(output_dir / f"sub-{subject}.html")
    # sessions left out by the input checks while their subject's other sessions ran
    for subject, sessions in (summary.get("failed_sessions") or {}).items():
        for item in inputs:
            error = sessions.get(f"ses-{item.session}")
            if item.subject == subject and error:
                write_subject_qc(output_dir, subject, item.session,
                                 failure_metrics(item.t1w, error), failed=True)
    try:
        qc = update_cohort_qc(output_dir)
    except Exception as exc:  # noqa: BLE001 - the subjects' outputs stand; say what is missing
        logger.error("cohort QC not updated (%s: %s); qc.tsv/qc.html may be stale",
                     type(exc).__name__, exc)
        summary["qc"] = {"error": str(exc)}
        return summary
    summary["qc"] = qc
    if progress is not None:
        summary["qc"]["verdicts"] = {s: v for s, (v, _) in progress.verdicts.items()}
    counts = qc["counts"]
    flagged = qc["homogeneity_flagged"]
    logger.info("QC of OUTPUT_DIR: %d pass, %d warn, %d fail%s; review %s", counts["pass"],
                counts["warn"], counts["fail"],
                f"; homogeneity flags {', '.join(flagged)}" if flagged else "", qc["html"])
    return summary
