"""The participant level run: inputs resolved, graph built and run, failures attributed.

:func:`run_participant` is what the command line calls (options are checked there, once): it
builds :func:`ketabids.workflows.base.init_participant_wf`, runs it and returns a summary in
which failed subjects are listed (a failing subject does not stop the others). A subject failed
when this run left crash files in its log folder (``OUTPUT_DIR/logs/sub-<label>/``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ketabids.anat.atlas import resolve_atlas
from ketabids.anat.settings import ProcessingSettings
from ketabids.bids.derivatives import (write_bidsignore, write_derivative_description,
                                       write_dseg_lut)
from ketabids.bids.layout import collect_t1w
from ketabids.errors import NoDataError, OutputError
from ketabids.runner.config import configure_workflow, itk_threads, plugin_settings, run_workflow
from ketabids.workflows.base import init_participant_wf

LOGGER = logging.getLogger("ketabids")


def run_participant(*, bids_dir, output_dir, work_dir, subjects: list[str],
                    sessions: list[str] | None, bids_filters: dict | None,
                    template: str = "MNI152NLin2009aSym", fast: bool = False,
                    atlas: str | None = None, atlas_labels: str | None = None, nprocs: int = 1,
                    omp_nthreads: int = 1, mem_gb: float | None = None, seed: int | None = None,
                    plugin_file: str | None = None, layout=None,
                    run_record: dict | None = None) -> dict:
    """Run the participant level for ``subjects`` and return a summary.

    ``run_record`` (``{"argv": [...], "config": {...}}`` of the command; default: this call's
    arguments) goes to ``OUTPUT_DIR/logs/participant-*`` with the software versions and the
    workflow's methods text as citation files (:func:`ketabids.bids.logs.write_run_logs`).

    Summary keys: ``ok`` and ``failed`` (subject labels), ``crash_files`` (subject -> crash
    files of this run), ``errors`` (subject -> first line of the error), ``reports``
    (subject -> HTML path), ``inputs`` (subject -> T1w files used), ``elapsed_s``,
    ``work_dir``, ``plugin``. User errors raise :mod:`ketabids.errors` exceptions; a subject
    whose processing crashes is listed in ``failed`` (exit code 1 for the CLI) and does not stop
    the others.
    """
    options = {k: v for k, v in locals().items() if k not in ("layout", "run_record")}
    started = time.time()
    bids_dir = Path(bids_dir).expanduser().resolve()
    output_dir = Path(output_dir).expanduser().resolve()
    work_dir = Path(work_dir).expanduser().resolve()
    for folder, what in ((output_dir, "OUTPUT_DIR"), (work_dir, "--work-dir")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create {what} ({exc.strerror}); choose a "
                              "writable folder") from exc
    # ITK reads its thread count once per process, at its first call: set it before anything
    # here touches ANTs (template preparation included) and before the MultiProc workers start
    with itk_threads(omp_nthreads):
        return _run(started=started, bids_dir=bids_dir, output_dir=output_dir,
                    work_dir=work_dir, subjects=subjects, sessions=sessions,
                    bids_filters=bids_filters, template=template, fast=fast, atlas=atlas,
                    atlas_labels=atlas_labels, nprocs=nprocs, omp_nthreads=omp_nthreads,
                    mem_gb=mem_gb, seed=seed, plugin_file=plugin_file, layout=layout,
                    run_record={"argv": (run_record or {}).get("argv"),
                                "config": (run_record or {}).get("config") or options})


def _run(*, started, bids_dir, output_dir, work_dir, subjects, sessions, bids_filters, template,
         fast, atlas, atlas_labels, nprocs, omp_nthreads, mem_gb, seed, plugin_file, layout,
         run_record):
    from ketabids.templates import get_template

    resolution = ProcessingSettings.for_fast(fast).template_resolution
    get_template(template, resolution)  # fails early (MissingInputError) if not available
    atlas_spec = resolve_atlas(atlas, atlas_labels)
    plugin, plugin_args = plugin_settings(nprocs=nprocs, mem_gb=mem_gb, plugin_file=plugin_file)

    if layout is None:
        from ketabids.bids.layout import load_layout

        layout = load_layout(bids_dir)
    subjects = [str(s).removeprefix("sub-") for s in (subjects or layout.get_subjects())]
    inputs = collect_t1w(layout, subjects, sessions=sessions, bids_filters=bids_filters)
    if not inputs:
        raise NoDataError(f"{bids_dir}: no T1w image selected for sub-{', sub-'.join(subjects)} "
                          "(check --participant-label, --session-label, --bids-filter-file)")
    missing = sorted(set(subjects) - {i.subject for i in inputs})

    write_derivative_description(output_dir, bids_dir)
    write_bidsignore(output_dir)
    write_dseg_lut(output_dir)

    settings = {
        "template": template, "template resolution (mm)": resolution,
        "mode": "fast" if fast else "default", "atlas": atlas_spec.name if atlas_spec else None,
        "seed": seed, "nprocs": nprocs, "omp_nthreads": omp_nthreads, "mem_gb": mem_gb,
        "plugin": plugin, "bids_filters": bids_filters or {}, "sessions": sessions,
    }
    workflow = init_participant_wf(inputs=inputs, output_dir=output_dir, bids_dir=bids_dir,
                                   template=template, fast=fast, atlas=atlas_spec,
                                   omp_nthreads=omp_nthreads, seed=seed, settings=settings)
    workflow.base_dir = str(work_dir)
    logs = output_dir / "logs"
    crashdirs = {}
    for item in inputs:
        folder = logs / f"sub-{item.subject}"
        crashdirs[f"single_subject_{item.key.replace('-', '')}_wf"] = folder
        for name in (f"merge_{item.subject}", f"report_{item.subject}",
                     f"ds_report_{item.subject}_wf"):
            crashdirs[name] = folder
    configure_workflow(workflow, crashdump_dirs=crashdirs, default_crashdump=logs)

    LOGGER.info("participant level: %d T1w image(s) of %d subject(s), plugin %s %s",
                len(inputs), len({i.subject for i in inputs}), plugin, plugin_args)
    error = None
    try:
        run_workflow(workflow, plugin, plugin_args)
    except Exception as exc:  # node failures: attributed to subjects below
        error = exc
        LOGGER.error("some nodes failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
    summary = _summary(inputs, missing, output_dir, work_dir, started, plugin, error)
    summary["logs"] = str(_write_logs(output_dir, run_record, workflow))
    _log_summary(summary, output_dir)
    return summary


def _write_logs(output_dir: Path, run_record: dict, workflow) -> Path:
    """``OUTPUT_DIR/logs/participant-*``: command, resolved options, versions, citation."""
    import sys

    from ketabids.bids.logs import write_run_logs
    from ketabids.io import jsonable
    from ketabids.versions import software_versions
    from ketabids.workflows.base import IMAGING_STACK

    # the methods of one subject's workflow (every subject's is the same text)
    subject_wfs = [node for node in workflow._graph.nodes
                   if node.name.startswith("single_subject_") and hasattr(node, "visit_desc")]
    methods = subject_wfs[0].visit_desc() if subject_wfs else workflow.visit_desc()
    return write_run_logs(output_dir, level="participant",
                          argv=run_record.get("argv") or sys.argv,
                          config=jsonable(run_record.get("config") or {}),
                          versions=software_versions(*IMAGING_STACK), methods=methods)


def _log_summary(summary: dict, output_dir: Path) -> None:
    """One line per failed subject (error and crash file), then one line for the run."""
    for subject in summary["failed"]:
        crash = summary["crash_files"].get(subject)
        LOGGER.error("sub-%s failed: %s%s", subject, summary["errors"][subject],
                     f" (details: {crash[0]})" if crash else "")
    n_ok, n_all = len(summary["ok"]), len(summary["ok"]) + len(summary["failed"])
    LOGGER.info("participant level: %d of %d subject(s) done in %.0f s; reports: %s",
                n_ok, n_all, summary["elapsed_s"], output_dir / "sub-<label>.html")


def _summary(inputs, missing, output_dir, work_dir, started, plugin, error) -> dict:
    """Who succeeded: a subject failed when this run left crash files in its log folder, or
    when the run had errors and its report does not exist."""
    logs = output_dir / "logs"
    subjects = sorted({i.subject for i in inputs})
    crash_files, errors, reports = {}, {}, {}
    for subject in subjects:
        folder = logs / f"sub-{subject}"
        new = sorted(str(p) for p in folder.glob("crash-*")
                     if p.stat().st_mtime >= started - 1) if folder.is_dir() else []
        report = output_dir / f"sub-{subject}.html"
        if new:
            crash_files[subject] = new
            errors[subject] = _first_error(new[0])
        elif error is not None and not report.is_file():
            errors[subject] = f"not completed: {str(error).splitlines()[0][:200]}"
        elif report.is_file():
            reports[subject] = str(report)
    for subject in missing:
        errors[subject] = "no T1w image matched the filters"
    unattributed = sorted(str(p) for p in logs.glob("crash-*")
                          if p.stat().st_mtime >= started - 1) if logs.is_dir() else []
    if unattributed:
        crash_files[""] = unattributed
    failed = sorted(errors)
    return {
        "ok": [s for s in subjects if s not in errors],
        "failed": failed,
        "crash_files": crash_files,
        "errors": errors,
        "reports": reports,
        "inputs": {s: [i.t1w for i in inputs if i.subject == s] for s in subjects},
        "elapsed_s": round(time.time() - started, 1),
        "work_dir": str(work_dir),
        "plugin": plugin,
    }


def _first_error(crash_file: str) -> str:
    """The last line of the traceback in a text crash file (the exception message)."""
    try:
        lines = [ln.strip() for ln in Path(crash_file).read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return "crashed"
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:300]
    return lines[-1][:300] if lines else "crashed"
