"""Command line: ``ketabids BIDS_DIR OUTPUT_DIR {participant,group} [options]`` and
``ketabids demo``.

:func:`run` parses (:func:`ketabids.cli.parser.get_parser`), checks the options (here, once:
:func:`check_cli_options`, and the dataset checks of :mod:`ketabids.bids.layout`), builds the
run's configuration once (:func:`build_config`: a :mod:`ketabids.config` object, which checks
its values as the Python API does) and hands it to :func:`ketabids.runner.run_participant`,
:func:`ketabids.group.train.run_group_train` or :func:`ketabids.group.predict.run_group_predict`.
Errors become one line on stderr and a BIDS-App exit code (see
:class:`ketabids.errors.ExitCode`); :func:`guarded` is that one error path.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ketabids.cli.parser import get_parser
from ketabids.errors import (
    ExitCode,
    KetabidsError,
    MissingInputError,
    Terminated,
    UnknownLevelError,
    UsageError,
)

LOGGER = logging.getLogger("ketabids")
LEVELS = ("participant", "group")


def setup_logging(verbose: int) -> None:
    level = logging.INFO if verbose == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s ketabids %(levelname)s: %(message)s",
                                           "%H:%M:%S"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    # Nipype sets its loggers' levels (INFO) when it is first imported: import it before
    # setting them, or a later import undoes this (measured: 1,500 INFO lines for 10 subjects)
    import nipype  # noqa: F401

    nipype_level = logging.INFO if verbose >= 2 else logging.WARNING
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(nipype_level)


#: options that apply only to group *training*: with ``--model`` the model's own settings rule
TRAINING_ONLY = ("template", "analysis_resolution", "smoothing_fwhm", "covariates", "site_column",
                 "combat", "standardize", "n_repeats", "n_outer", "n_inner", "c_grid", "atlas",
                 "atlas_labels", "overwrite", "outer_cv", "group_column", "skip_audit",
                 "raw_c_grid")
#: options of the group level only (refused at participant level)
GROUP_ONLY = ("model", "prediction_name", "target", "response_from", "response_threshold",
              "include", "covariates", "site_column", "combat", "standardize", "smoothing_fwhm",
              "analysis_resolution", "n_repeats", "n_outer", "n_inner", "c_grid",
              "n_permutations", "overwrite", "qc_policy", "exclude_file", "outer_cv",
              "group_column", "skip_audit", "raw_c_grid", "arm_column", "treatment_arm")
#: options of the participant level only (refused at group level)
PARTICIPANT_ONLY = ("fast", "work_dir", "keep_work", "omp_nthreads", "mem_gb",
                    "nipype_plugin_file")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def given_options(opts, parser=None) -> set[str]:
    """Destinations whose value differs from the parser's default (i.e. given by the user)."""
    parser = parser or get_parser()
    return {dest for dest, value in vars(opts).items()
            if dest not in ("bids_dir", "output_dir", "analysis_level")
            and value != parser.get_default(dest)}


def check_mode_options(opts, parser=None) -> None:
    """Options that do not apply in this mode are refused (exit 64) instead of ignored."""
    given = given_options(opts, parser)
    if opts.analysis_level == "participant":
        wrong = [d for d in GROUP_ONLY if d in given]
        if wrong:
            raise UsageError(f"{_flag(wrong[0])} applies to the group level only; drop it from "
                             "this participant-level command")
        return
    wrong = [d for d in PARTICIPANT_ONLY if d in given]
    if wrong:
        raise UsageError(f"{_flag(wrong[0])} applies to the participant level only; drop it "
                         "from this group-level command")
    if opts.model:
        wrong = [d for d in TRAINING_ONLY if d in given]
        if wrong:
            raise UsageError(
                f"{_flag(wrong[0])} applies to training; with --model the model's own settings "
                "are used (see ketabids_model.json beside the model): drop the option")


def check_cli_options(opts, parser=None) -> None:
    """The command line's checks argparse cannot express: options given together, options of
    the other level, files that must exist (the values themselves are checked by the
    configuration objects, :mod:`ketabids.config`, as for the Python API)."""
    if opts.analysis_level not in LEVELS:
        raise UnknownLevelError(
            f"analysis level {opts.analysis_level!r} is unknown; use 'participant' or 'group'"
        )
    check_mode_options(opts, parser)
    if opts.combat and not opts.site_column:
        raise UsageError("--combat needs --site-column COLUMN naming the site of each participant")
    if opts.target and opts.response_from:
        raise UsageError("--target and --response-from both define the label; give one")
    if opts.atlas_labels and not opts.atlas:
        raise UsageError("--atlas-labels needs --atlas")
    if opts.prediction_name and not opts.model:
        raise UsageError("--prediction-name names a prediction run: it needs --model")
    if opts.arm_column and not opts.model:
        raise UsageError("--arm-column compares the arms of a prediction run: it needs --model "
                         "(train on one arm with --include, then predict both arms)")
    if opts.treatment_arm and not opts.arm_column:
        raise UsageError("--treatment-arm names a value of --arm-column: give --arm-column too")
    for option in ("atlas", "atlas_labels", "nipype_plugin_file", "model", "exclude_file"):
        value = getattr(opts, option)
        if value is not None and not Path(value).exists():
            raise MissingInputError(f"{value}: --{option.replace('_', '-')} file does not exist")
    if (opts.analysis_level == "group" and not opts.model
            and not (opts.target or opts.response_from)):
        raise UsageError(
            "group training needs a label: --target COLUMN or --response-from BEFORE AFTER "
            "(e.g. --response-from madrs_pre madrs_24h)"
        )


def run_record(argv, opts) -> dict:
    """The command line and every resolved option (defaults included), for ``OUTPUT_DIR/logs``."""
    from ketabids.io import jsonable

    return {"argv": ["ketabids", *map(str, argv)], "config": jsonable(vars(opts))}


def _run_bids_app(opts, argv=()) -> dict:
    from ketabids.bids import layout as bids

    bids_dir = bids.check_bids_dir(opts.bids_dir)
    output_dir = bids.check_output_dir(opts.output_dir, bids_dir)  # checked, not created
    labels = bids.parse_participant_labels(opts.participant_label)
    sessions = bids.parse_session_labels(opts.session_label)
    filters = bids.load_bids_filters(opts.bids_filter_file)

    if not opts.skip_bids_validation:
        from ketabids.bids.validation import validate_bids

        summary = validate_bids(bids_dir)
        LOGGER.info("BIDS validation: %s", summary)

    layout = bids.load_layout(bids_dir)
    bids.check_filters(layout, filters, opts.bids_filter_file)
    subjects = bids.select_subjects(layout, labels=labels, sessions=sessions, filters=filters)
    LOGGER.info("%d participant(s) selected: %s", len(subjects), " ".join(subjects[:20])
                + (" ..." if len(subjects) > 20 else ""))

    config = build_config(opts, bids_dir=bids_dir, output_dir=output_dir, subjects=subjects,
                          sessions=sessions, bids_filters=filters,
                          run_record=run_record(argv, opts))
    if opts.analysis_level == "participant":
        from ketabids.runner import run_participant

        return run_participant(config, layout=layout)
    from ketabids.runner.signals import run_temp_dir

    # temporary files of the group level (joblib, matplotlib...) in a per-run folder removed at
    # exit, SIGTERM included (staged outputs are then discarded too)
    with run_temp_dir(signals=True):
        if opts.model:
            from ketabids.group.predict import run_group_predict

            return run_group_predict(config, layout=layout)
        from ketabids.group.train import run_group_train

        return run_group_train(config, layout=layout)


def build_config(opts, *, bids_dir, output_dir, subjects, sessions, bids_filters=None,
                 run_record=None):
    """The configuration of this command, built once from the parsed options.

    Parameters
    ----------
    opts : argparse.Namespace
        The parsed options (:func:`ketabids.cli.parser.get_parser`), checked by
        :func:`check_cli_options`.
    bids_dir, output_dir : Path
        The checked dataset and output folders.
    subjects, sessions : list of str
        The selected participants and sessions.
    bids_filters : dict, optional
        The ``--bids-filter-file`` content.
    run_record : dict, optional
        ``{"argv", "config"}`` for ``OUTPUT_DIR/logs/`` (:func:`run_record`).

    Returns
    -------
    ParticipantConfig, TrainConfig or PredictConfig
        The participant level's; with ``--model`` a prediction's; else a training's.
    """
    from ketabids.config import ParticipantConfig, PredictConfig, TrainConfig

    if opts.analysis_level == "participant":
        from ketabids.anat.settings import ProcessingSettings

        return ParticipantConfig(
            bids_dir=bids_dir, output_dir=output_dir, subjects=subjects, sessions=sessions,
            bids_filters=bids_filters, work_dir=opts.work_dir, keep_work=opts.keep_work,
            template=opts.template, processing=ProcessingSettings.for_fast(opts.fast),
            atlas=opts.atlas, atlas_labels=opts.atlas_labels, nprocs=opts.nprocs,
            omp_nthreads=opts.omp_nthreads, mem_gb=opts.mem_gb, seed=opts.seed,
            plugin_file=opts.nipype_plugin_file, run_record=run_record)
    common = dict(
        bids_dir=bids_dir, output_dir=output_dir, subjects=subjects, sessions=sessions,
        target=opts.target,
        response_from=tuple(opts.response_from) if opts.response_from else None,
        response_threshold=opts.response_threshold, include=list(opts.include),
        qc_policy=opts.qc_policy, exclude_file=opts.exclude_file,  # who passes the QC gate
        n_permutations=opts.n_permutations, nprocs=opts.nprocs, seed=opts.seed,
        run_record=run_record)
    if opts.model:
        return PredictConfig(model=opts.model, name=opts.prediction_name,
                             arm_column=opts.arm_column, treatment_arm=opts.treatment_arm,
                             **common)
    return TrainConfig(
        progress=True, overwrite=opts.overwrite,
        covariates=list(opts.covariates), site_column=opts.site_column, combat=opts.combat,
        standardize=opts.standardize, smoothing_fwhm=opts.smoothing_fwhm,
        analysis_resolution=opts.analysis_resolution, template=opts.template,
        n_repeats=opts.n_repeats, n_outer=opts.n_outer, n_inner=opts.n_inner,
        c_grid=opts.c_grid, atlas=opts.atlas, atlas_labels=opts.atlas_labels,
        outer_cv=opts.outer_cv, group_column=opts.group_column, audit=not opts.skip_audit,
        scale_kernel=not opts.raw_c_grid, **common)


@dataclass(frozen=True)
class RunResult:
    """What one command did: its exit code, the run's summary (None after an error) and the
    one-line error message printed (None on success)."""

    exit_code: int
    summary: dict | None = None
    error: str | None = None


def _exit_code_of(summary) -> int:
    """Participant runs report failed subjects (and sessions) instead of raising: exit 1 when
    any subject or session failed, 65 (unusable input) when every selected subject failed its
    input checks."""
    if isinstance(summary, dict) and summary.get("failed"):
        unusable = set(summary.get("unusable") or ())
        if not summary.get("ok") and set(summary["failed"]) <= unusable:
            return int(ExitCode.BAD_DATA)
        return int(ExitCode.FAILURE)
    if isinstance(summary, dict) and summary.get("failed_sessions"):
        return int(ExitCode.FAILURE)
    return int(ExitCode.SUCCESS)


@dataclass
class CrashSite:
    """Where a crash file goes: filled in as the command learns its folders."""

    output_dir: Path | None = None
    work_dir: Path | None = None
    folders: list = field(default_factory=list)

    def candidates(self) -> list[Path]:
        out = []
        if self.output_dir is not None:
            out.append(Path(self.output_dir) / "logs")
        if self.work_dir is not None:
            out.append(Path(self.work_dir))
        out.append(Path(tempfile.gettempdir()))
        return out


def write_crash_file(exc: BaseException, site: CrashSite | None = None) -> Path | None:
    """Write the traceback of ``exc`` to ``crash-<utc>-ketabids.txt`` in the first usable of
    OUTPUT_DIR/logs (when OUTPUT_DIR exists), the work folder, the temporary folder."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for folder in (site or CrashSite()).candidates():
        if not (folder.is_dir() or (folder.name == "logs" and folder.parent.is_dir())):
            continue  # never create OUTPUT_DIR or a work folder just for a crash file
        try:
            folder.mkdir(exist_ok=True)
            path = folder / f"crash-{stamp}-{os.getpid()}-ketabids.txt"
            path.write_text(f"ketabids {' '.join(sys.argv[1:])}\n{text}")
            return path
        except OSError:
            continue
    return None


def guarded(command, *args, crash_site: CrashSite | None = None, **kwargs) -> RunResult:
    """Call ``command`` and turn its outcome into a :class:`RunResult`: user errors become one
    line on stderr and their BIDS-App exit code (the one error path of the command line).

    A full disk anywhere becomes exit 73; SIGTERM (raised as
    :class:`~ketabids.errors.Terminated` inside a run) 143; any other exception one line with
    the path of a crash file holding the traceback (:func:`write_crash_file`), exit 1: no
    traceback reaches the terminal.
    """
    from ketabids import io

    try:
        summary = command(*args, **kwargs)
    except KetabidsError as exc:
        details = getattr(exc, "summary", None)  # the validator's grouped issues
        if details is not None and hasattr(details, "format"):
            LOGGER.error("BIDS validator report:\n%s", details.format())
        print(f"ketabids: error: {exc}", file=sys.stderr)
        return RunResult(int(exc.exit_code), error=str(exc))
    except SystemExit as exc:  # --help / --version
        return RunResult(int(exc.code or 0))
    except KeyboardInterrupt:
        print("ketabids: interrupted", file=sys.stderr)
        return RunResult(130, error="interrupted")
    except Terminated as exc:
        print(f"ketabids: {exc}; temporary and partial files were removed; rerun the same "
              "command to resume", file=sys.stderr)
        return RunResult(exc.exit_code, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line + crash file
        if io.is_no_space(exc):
            folder = (crash_site.output_dir if crash_site and crash_site.output_dir
                      else Path.cwd())
            error = io.no_space_error(folder)
            print(f"ketabids: error: {error}", file=sys.stderr)
            return RunResult(int(error.exit_code), error=str(error))
        crash = write_crash_file(exc, crash_site)
        first = (str(exc).splitlines() or [""])[0][:200]
        message = (f"unexpected {type(exc).__name__}: {first} (details: "
                   f"{crash or 'no crash file could be written'}; please report it)")
        print(f"ketabids: error: {message}", file=sys.stderr)
        return RunResult(int(ExitCode.FAILURE), error=message)
    return RunResult(_exit_code_of(summary), summary=summary)


def _parse_and_run(argv: list[str], site: CrashSite | None = None) -> dict:
    parser = get_parser()
    opts = parser.parse_args(argv)
    if site is not None:
        site.output_dir = Path(opts.output_dir).expanduser().absolute()
        site.work_dir = Path(opts.work_dir).expanduser().absolute() if opts.work_dir else None
    setup_logging(opts.verbose)
    check_cli_options(opts, parser)
    return _run_bids_app(opts, argv)


def run(argv: list[str]) -> RunResult:
    """``ketabids BIDS_DIR OUTPUT_DIR {participant,group} [options]`` in this process; the
    result carries the exit code and the run's summary (public API: the demo uses it)."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # no update check (no network on clusters)
    site = CrashSite()
    return guarded(_parse_and_run, list(argv), site, crash_site=site)

