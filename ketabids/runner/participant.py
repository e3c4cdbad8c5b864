"""The participant level run: inputs checked, graph built and run, subjects published.

:func:`run_participant` takes a :class:`ketabids.config.ParticipantConfig` (built once by the
command line): it builds :func:`ketabids.workflows.base.init_participant_wf`, runs it and
returns a summary in which failed subjects are listed (a failing subject does not stop the
others). What the runner knows of the graph (each subject's elements, done node, QC nodes, the
methods text) comes from the workflow's :class:`~ketabids.workflows.base.ParticipantManifest`.
A subject failed when this run left crash files in its log folder
(``OUTPUT_DIR/logs/sub-<label>/``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from pathlib import Path

from ketabids import io
from ketabids.anat.atlas import resolve_atlas
from ketabids.bids.derivatives import (
    write_bidsignore,
    write_derivative_description,
    write_dseg_lut,
)
from ketabids.bids.layout import collect_t1w
from ketabids.bids.logs import write_run_record
from ketabids.config import ParticipantConfig
from ketabids.errors import (
    BadDataError,
    NoDataError,
    OutputError,
    Terminated,
    UsageError,
)
from ketabids.io import check_writable
from ketabids.runner.cohort_qc import finish_participant
from ketabids.runner.config import (
    configure_workflow,
    itk_threads,
    plugin_settings,
    run_workflow,
)
from ketabids.runner.multiproc import SubjectOf
from ketabids.runner.progress import Progress
from ketabids.runner.publish import SubjectPublisher, new_stage_root
from ketabids.runner.signals import run_temp_dir, terminating
from ketabids.runner.workdir import (
    WorkCleaner,
    default_work_dir,
    remove_empty_work,
    remove_stop_crash_files,
)
from ketabids.versions import software_versions
from ketabids.workflows.base import IMAGING_STACK, init_participant_wf

LOGGER = logging.getLogger("ketabids")
#: name of the participant workflow (its folder in the work folder)
PARTICIPANT_WF = "ketabids_participant_wf"


def run_participant(config: ParticipantConfig | None = None, *, layout=None,
                    **options) -> dict:
    """Run the participant level and return a summary.

    Nothing is created (OUTPUT_DIR, work folder) before the inputs pass their checks. Outputs
    are staged and published per subject as it finishes (:mod:`ketabids.runner.publish`);
    temporary files live in a per-run folder under the work folder, removed at exit, SIGTERM
    included (:func:`ketabids.runner.signals.run_temp_dir`). A subject's part of the work
    folder is removed once its derivatives are published, unless ``keep_work``; a failed
    subject's is kept, so rerunning resumes it (:mod:`ketabids.runner.workdir`). The run
    record (command, options, versions, the workflow's methods text as citation files) goes
    to ``OUTPUT_DIR/logs/participant-*`` (:func:`ketabids.bids.logs.write_run_record`).

    Parameters
    ----------
    config : ParticipantConfig, optional
        Every setting of the run (:class:`ketabids.config.ParticipantConfig`).
    layout : bids.BIDSLayout, optional
        The dataset's layout when the caller already loaded it.
    **options
        Instead of ``config``: its fields as keyword arguments
        (``ParticipantConfig(**options)``).

    Returns
    -------
    dict
        ``ok`` and ``failed`` (subject labels), ``unusable`` (subjects whose input failed the
        checks before the graph), ``failed_sessions`` (subject processed with its other
        sessions -> ``{"ses-<label>": one-line error}`` of the sessions left out),
        ``crash_files`` (subject -> crash files of this run), ``errors`` (subject -> one
        line), ``reports`` (subject -> HTML path), ``inputs`` (subject -> T1w files used),
        ``input_errors`` (T1w file -> its failed input check), ``elapsed_s``, ``work_dir``,
        ``plugin``, ``logs``, ``qc``. A subject (or session) whose input is unusable or whose
        processing crashes is listed in ``failed`` (or ``failed_sessions``) and does not stop
        the others.

    Raises
    ------
    ketabids.errors.KetabidsError
        User errors with their BIDS-App exit code: no T1w selected (:class:`NoDataError`), an
        unknown template (:class:`MissingInputError`), an unwritable or full OUTPUT_DIR or
        work folder (:class:`OutputError`), a SIGTERM (:class:`Terminated`).
    """
    return _ParticipantRun(_config(config, options), layout=layout).run()


def _config(config, options) -> ParticipantConfig:
    if config is not None and options:
        raise UsageError("give a ParticipantConfig or its fields as keywords, not both "
                         f"({', '.join(sorted(options))})")
    return config if config is not None else ParticipantConfig(**options)


def check_inputs(inputs) -> tuple[list, dict]:
    """Per-T1w input checks before the graph (:func:`ketabids.anat.conform.check_t1w`): returns
    the inputs that passed and ``{input: one-line error}`` for the others. Sessions are
    isolated like subjects: a subject's bad session is left out alone, its good sessions run."""
    from ketabids.anat.conform import check_t1w

    bad = {}
    for item in inputs:
        try:
            check_t1w(item.t1w)
        except BadDataError as exc:
            bad[item] = str(exc)
    return [i for i in inputs if i not in bad], bad


def split_failures(inputs, bad: dict) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """``(unusable, failed_sessions)`` from :func:`check_inputs`' failures: ``unusable`` maps a
    subject none of whose T1w passed to its first error (and how many more failed);
    ``failed_sessions`` maps a subject that still runs with other sessions to ``{"ses-<label>":
    error}`` of the sessions left out."""
    running = {i.subject for i in inputs}
    unusable: dict[str, str] = {}
    failed_sessions: dict[str, dict[str, str]] = {}
    for item, error in bad.items():
        if item.subject in running:
            failed_sessions.setdefault(item.subject, {})[f"ses-{item.session}"] = error
        else:
            unusable.setdefault(item.subject, error)
    for subject in unusable:
        more = sum(1 for i in bad if i.subject == subject) - 1
        if more:
            unusable[subject] += f" (and {more} more T1w of this subject: see qc.tsv)"
    return unusable, failed_sessions


def _make_folders(*folders: Path) -> None:
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in io.NO_SPACE:
                raise io.no_space_error(folder) from exc
            raise OutputError(f"{folder}: cannot create it ({exc.strerror}); choose a writable "
                              "folder") from exc


class _ParticipantRun:
    """One participant run: its configuration, folders and inputs, then its graph."""

    def __init__(self, config: ParticipantConfig, *, layout=None):
        self.started = time.time()
        self.config = config
        self.layout = layout
        self.bids_dir = Path(config.bids_dir).expanduser().resolve()
        self.output_dir = Path(config.output_dir).expanduser().resolve()
        self.default_work = config.work_dir is None
        self.work_dir = default_work_dir() if self.default_work else \
            Path(config.work_dir).expanduser().resolve()

    def run(self) -> dict:
        for folder, what in ((self.output_dir, "OUTPUT_DIR"), (self.work_dir, "--work-dir")):
            check_writable(folder, what)  # probe only: exit 73 naming the folder, before work
        # ITK reads its thread count once per process, at its first call: set it before
        # anything here touches ANTs (template preparation included) and before the MultiProc
        # workers start
        with itk_threads(self.config.omp_nthreads):
            return self._prepare()

    def _prepare(self) -> dict:
        from ketabids.templates import get_template

        config, output_dir, work_dir = self.config, self.output_dir, self.work_dir
        resolution = config.processing.template_resolution
        get_template(config.template, resolution)  # fails early (MissingInputError)
        self.atlas = resolve_atlas(config.atlas, config.atlas_labels)
        self.plugin, self.plugin_args = plugin_settings(
            nprocs=config.nprocs, mem_gb=config.mem_gb, plugin_file=config.plugin_file)

        layout = self.layout
        if layout is None:
            from ketabids.bids.layout import load_layout

            layout = load_layout(self.bids_dir)
        subjects = [str(s).removeprefix("sub-") for s in (config.subjects
                                                          or layout.get_subjects())]
        all_inputs = collect_t1w(layout, subjects, sessions=config.sessions,
                                 bids_filters=config.bids_filters)
        if not all_inputs:
            raise NoDataError(f"{self.bids_dir}: no T1w image selected for "
                              f"sub-{', sub-'.join(subjects)} (check --participant-label, "
                              "--session-label, --bids-filter-file)")
        self.all_inputs = all_inputs
        self.missing = sorted(set(subjects) - {i.subject for i in all_inputs})
        self.inputs, self.bad = check_inputs(all_inputs)
        self.unusable, self.failed_sessions = split_failures(self.inputs, self.bad)
        if not self.inputs:  # nothing to run: nothing is created
            summary = self._summary(None, published=[])
            _log_summary(summary, output_dir)
            return summary

        _make_folders(output_dir, work_dir)
        io.clean_stale(output_dir, recursive=True)  # staging and temporary files of killed runs
        with io.disk_full(output_dir):
            write_derivative_description(output_dir, self.bids_dir)
            write_bidsignore(output_dir)
            write_dseg_lut(output_dir)

        # temporary files of this run (ANTs' mktemp files in the worker processes included) go
        # to WORK_DIR/ketabids-tmp-<host>-<pid>-*, removed at exit; SIGTERM raises Terminated
        try:
            with run_temp_dir(base=work_dir, signals=True):
                stage_root = new_stage_root(output_dir)
                try:
                    return self._run_graph(stage_root)
                finally:
                    shutil.rmtree(stage_root, ignore_errors=True)  # failed subjects: nothing
        finally:
            remove_empty_work(work_dir, PARTICIPANT_WF, default=self.default_work)

    def report_settings(self) -> dict:
        """The settings each subject's report lists."""
        config = self.config
        return {
            "template": config.template,
            "template resolution (mm)": config.processing.template_resolution,
            "mode": config.processing.mode, "atlas": self.atlas.name if self.atlas else None,
            "seed": config.seed, "nprocs": config.nprocs, "omp_nthreads": config.omp_nthreads,
            "mem_gb": config.mem_gb, "plugin": self.plugin,
            "bids_filters": config.bids_filters or {},
            "sessions": list(config.sessions) if config.sessions is not None else None,
        }

    def _summary(self, error, *, published, publish_errors=None) -> dict:
        return _summary(self.all_inputs, self.missing, self.output_dir, self.work_dir,
                        self.started, self.plugin, error, unusable=self.unusable,
                        published=published, publish_errors=publish_errors,
                        failed_sessions=self.failed_sessions,
                        input_errors={i.t1w: e for i, e in self.bad.items()})

    def _build_graph(self, inputs, stage_root: Path):
        """The participant graph of ``inputs``, writing into ``stage_root``; each subject's
        report names the sessions left out so far (:attr:`failed_sessions`)."""
        config = self.config
        notes = {subject: [f"{session} was not processed: {error}"
                           for session, error in sorted(sessions.items())]
                 for subject, sessions in self.failed_sessions.items()}
        workflow = init_participant_wf(
            inputs=inputs, config=dataclasses.replace(config, bids_dir=self.bids_dir),
            output_dir=stage_root, atlas=self.atlas, settings=self.report_settings(),
            notes=notes, name=PARTICIPANT_WF)
        workflow.base_dir = str(self.work_dir)
        return workflow

    def _run_graph(self, stage_root: Path) -> dict:
        config, inputs, output_dir = self.config, self.inputs, self.output_dir
        work_dir, started, plugin = self.work_dir, self.started, self.plugin
        workflow = self._build_graph(inputs, stage_root)
        manifest = workflow.manifest
        logs = output_dir / "logs"
        folders = manifest.elements()  # subject -> its top-level graph elements
        crashdirs = {element: logs / f"sub-{subject}"
                     for subject, elements in folders.items() for element in elements}
        configure_workflow(workflow, crashdump_dirs=crashdirs, default_crashdump=logs)
        subjects = sorted(folders)
        publisher = SubjectPublisher(stage_root, output_dir, manifest.done_nodes())
        progress = Progress(workflow, manifest)  # a line per finished subject
        cleaner = WorkCleaner(work_dir / workflow.name, folders, publisher, progress,
                              keep=config.keep_work)
        plugin_args = self.plugin_args
        if plugin in ("MultiProc", "Linear"):  # subject-major, a line and a publication each
            plugin_args = dict(plugin_args, status_callback=_Chain(publisher, progress, cleaner),
                               job_group=SubjectOf(manifest.element_subjects(),
                                                   workflow.name))

        LOGGER.info("participant level: %d T1w image(s) of %d subject(s), plugin %s %s",
                    len(inputs), len(subjects), plugin,
                    {k: v for k, v in plugin_args.items() if k not in ("status_callback",
                                                                         "job_group")})
        if self.unusable:
            LOGGER.warning("%d subject(s) left out: unusable input (see the end of the log)",
                           len(self.unusable))
        if self.failed_sessions:
            LOGGER.warning("%d session(s) left out, their subjects' other sessions run: "
                           "unusable input (see the end of the log)",
                           sum(len(v) for v in self.failed_sessions.values()))
        error = self._execute(workflow, plugin_args)
        if error is None:  # plugins without status callbacks (SLURM...): publish now
            publisher.publish_remaining(subjects, failed=())
        else:
            self._isolate_sessions(stage_root, manifest, publisher, progress, crashdirs)
        cleaner.clean([s for s in subjects if s in publisher.published
                       and s not in progress.failed and s not in cleaner.removed])
        _raise_if_no_space(error, publisher, output_dir, work_dir, started)
        summary = self._summary(error, published=publisher.published,
                                publish_errors=publisher.errors)
        summary["logs"] = str(write_run_record(
            output_dir, level="participant", record=config.record(),
            versions=software_versions(*IMAGING_STACK), methods=manifest.methods))
        _log_summary(summary, output_dir)
        # failed subjects: QC record + report; then qc.tsv, qc.json, qc.html and the QC summary
        return finish_participant(summary, inputs=self.all_inputs, output_dir=output_dir,
                                  progress=progress)

    def _isolate_sessions(self, stage_root, manifest, publisher, progress, crashdirs) -> None:
        """A session whose nodes crashed costs only that session: its subject's other sessions
        run again without it (their finished nodes are cached: only the report and the sinks
        rerun), and the subject is published with them."""
        logs = self.output_dir / "logs"
        crashed = crashed_sessions(self.inputs, manifest, logs, self.started,
                                   published=publisher.published)
        if not crashed:
            return
        for item, (line, crash_files) in crashed.items():
            self.failed_sessions.setdefault(item.subject, {})[f"ses-{item.session}"] = \
                f"{line} (details: {crash_files[0]})"
            shutil.rmtree(stage_root / f"sub-{item.subject}" / f"ses-{item.session}",
                          ignore_errors=True)  # what its sinks staged before the crash
        rerun = [i for i in self.inputs if i.subject in {c.subject for c in crashed}
                 and i not in crashed]
        rerun_subjects = sorted({i.subject for i in rerun})
        again = self._build_graph(rerun, stage_root)
        configure_workflow(again, crashdump_dirs=crashdirs, default_crashdump=logs)
        progress.retry(again, rerun_subjects)
        plugin_args = self.plugin_args
        if self.plugin in ("MultiProc", "Linear"):
            plugin_args = dict(plugin_args, status_callback=_Chain(publisher, progress),
                               job_group=SubjectOf(again.manifest.element_subjects(),
                                                   again.name))
        LOGGER.info("%d session(s) failed; their subjects' other sessions are completed",
                    len(crashed))
        if self._execute(again, plugin_args) is None:
            publisher.publish_remaining(rerun_subjects, failed=())

    def _execute(self, workflow, plugin_args):
        """Run the graph; node failures are returned (attributed to subjects afterwards), a
        stop the user asked for (SIGTERM/SIGINT) raises without crash files."""
        logs, started = self.output_dir / "logs", self.started
        subjects = sorted(workflow.manifest.elements())
        error = None
        with _quiet_when_terminating():
            try:
                run_workflow(workflow, self.plugin, plugin_args)
            except Exception as exc:  # node failures: attributed to subjects afterwards
                error = exc
                LOGGER.debug("some nodes failed: %s",
                             str(exc).splitlines()[0] if str(exc) else exc)
            except (KeyboardInterrupt, Terminated):  # a stop the user asked for: no crash
                remove_stop_crash_files(logs, subjects, started)
                raise
        if terminating() is not None:  # a SIGTERM that Nipype caught as a node failure
            remove_stop_crash_files(logs, subjects, started)
            raise Terminated(terminating())
        return error


def crashed_sessions(inputs, manifest, logs: Path, since: float, *, published=()) -> dict:
    """The sessions of multi-session subjects whose own nodes crashed in this run while another
    session of the subject did not: ``{input: (one-line error, crash files)}``.

    Each crash file of this run (``logs/sub-<label>/crash-*``, newer than ``since``) names its
    node on its first line (``Node: <workflow>.<element>...``); ``manifest`` (the graph's
    :class:`~ketabids.workflows.base.ParticipantManifest`) says which session an element
    processes. The files of such a session are moved to ``logs/sub-<label>/ses-<label>/``
    (they stay when the subject is published, and are no longer its subject's failure). A
    subject with a crash outside its sessions' workflows (its report), or none of whose
    sessions is left, is not listed: it fails whole.
    """
    by_subject: dict[str, list] = {}
    for item in inputs:
        by_subject.setdefault(item.subject, []).append(item)
    session_of = manifest.session_elements()  # element -> (subject, session)
    found = {}
    for subject, items in by_subject.items():
        folder = Path(logs) / f"sub-{subject}"
        if len(items) < 2 or subject in published or not folder.is_dir():
            continue
        by_session = {(i.subject, i.session or ""): i for i in items}
        crashes: dict = {}
        outside = False
        for crash in sorted(folder.glob("crash-*")):
            try:
                if crash.stat().st_mtime < since - 1:
                    continue
                first = crash.read_text(errors="replace").split("\n", 1)[0]
            except OSError:
                continue
            parts = first.removeprefix("Node: ").strip().split(".")
            item = by_session.get(session_of.get(parts[1])) if len(parts) > 2 else None
            if item is None:
                outside = True
            else:
                crashes.setdefault(item, (".".join(parts[2:]), []))[1].append(crash)
        if outside or not crashes or len(crashes) == len(items):
            continue
        for item, (node, files) in crashes.items():
            target = folder / f"ses-{item.session}"
            target.mkdir(exist_ok=True)
            moved = [Path(shutil.move(str(f), str(target / f.name))) for f in files]
            found[item] = (f"processing failed in {node}: {_first_error(str(moved[0]))}", moved)
    return found


class _Chain:
    """One Nipype status callback calling each of ``callbacks`` in turn (publish, then say).
    A class, not a closure: Nipype pickles plugin_args with MapNodes."""

    def __init__(self, *callbacks):
        self.callbacks = callbacks

    def __call__(self, node, status):
        for callback in self.callbacks:
            callback(node, status)


class _NipypeTerminalFilter(logging.Filter):
    """What Nipype prints while the graph runs: a node's crash is one line (its traceback is in
    the crash file, which the summary names), and once a SIGTERM is being handled nothing (Nipype
    reports the termination it caught inside a node as a crash)."""

    def filter(self, record):
        if terminating() is not None:
            return False
        message = record.getMessage()
        if "Traceback" in message:
            record.msg, record.args = message.split("Traceback", 1)[0].rstrip(), ()
        return True


@contextlib.contextmanager
def _quiet_when_terminating():
    loggers = [logging.getLogger(f"nipype.{kind}") for kind in ("workflow", "interface", "utils")]
    quiet = _NipypeTerminalFilter()
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _raise_if_no_space(error, publisher, output_dir, work_dir, started) -> None:
    """A full disk (OUTPUT_DIR or the work folder) ends the run with exit 73, not exit 1."""
    texts = [str(e) for e in publisher.errors.values()]
    full = any(io.is_no_space(e) for e in publisher.errors.values()) or \
        (error is not None and io.is_no_space(error))
    logs = output_dir / "logs"
    if not full and logs.is_dir():
        for crash in logs.rglob("crash-*"):
            try:
                if crash.stat().st_mtime >= started - 1:
                    text = crash.read_text(errors="replace")
                    if "No space left on device" in text or "Disk quota exceeded" in text:
                        full, texts = True, texts + [text]
            except OSError:
                continue
    if not full:
        return
    in_work = any(str(work_dir) in t for t in texts) and not any(str(output_dir) in t
                                                                  for t in texts)
    folder, what = (work_dir, "--work-dir") if in_work else (output_dir, "OUTPUT_DIR")
    raise io.no_space_error(folder, what=what)


def _log_summary(summary: dict, output_dir: Path) -> None:
    """One line per failed subject (error and crash file), then one line for the run."""
    for subject in summary["failed"]:
        crash = summary["crash_files"].get(subject)
        LOGGER.error("sub-%s failed: %s%s", subject, summary["errors"][subject],
                     f" (details: {crash[0]})" if crash else "")
    sessions = summary.get("failed_sessions") or {}
    for subject, errors in sorted(sessions.items()):
        for session, error in sorted(errors.items()):
            LOGGER.error("sub-%s %s failed: %s", subject, session, error)
    n_ok, n_all = len(summary["ok"]), len(summary["ok"]) + len(summary["failed"])
    n_ses = sum(len(v) for v in sessions.values())
    if n_ok:
        LOGGER.info("participant level: %d of %d subject(s) done%s in %.0f s; reports: %s",
                    n_ok, n_all, f" ({n_ses} session(s) failed)" if n_ses else "",
                    summary["elapsed_s"], output_dir / "sub-<label>.html")
    else:
        LOGGER.error("participant level: 0 of %d subject(s) done in %.0f s; see the lines "
                     "above", n_all, summary["elapsed_s"])


def _summary(inputs, missing, output_dir, work_dir, started, plugin, error, *,
             unusable=None, published=(), publish_errors=None, failed_sessions=None,
             input_errors=None) -> dict:
    """Who succeeded: a subject succeeded when it was published; otherwise its error is the
    failed input check, the first crash file of this run in its log folder, or the run's."""
    logs = output_dir / "logs"
    unusable = unusable or {}
    subjects = sorted({i.subject for i in inputs})
    crash_files, errors, reports = {}, {}, {}
    for subject in subjects:
        if subject in unusable:
            errors[subject] = unusable[subject]
            continue
        folder = logs / f"sub-{subject}"
        new = sorted(str(p) for p in folder.glob("crash-*")
                     if p.stat().st_mtime >= started - 1) if folder.is_dir() else []
        report = output_dir / f"sub-{subject}.html"
        if new:
            crash_files[subject] = new
            errors[subject] = _first_error(new[0])
        elif publish_errors and subject in publish_errors:
            errors[subject] = f"outputs not published: {publish_errors[subject]}"
        elif subject not in published:
            reason = str(error).splitlines()[0][:200] if error is not None and str(error) \
                else "the run ended before it finished"
            errors[subject] = f"not completed: {reason}"
        else:
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
        "unusable": sorted(unusable),
        "failed_sessions": {s: dict(v) for s, v in sorted((failed_sessions or {}).items())},
        "crash_files": crash_files,
        "errors": errors,
        "reports": reports,
        "inputs": {s: [i.t1w for i in inputs if i.subject == s and (
            s in unusable or i.t1w not in (input_errors or {}))] for s in subjects},
        "input_errors": dict(input_errors or {}),
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
