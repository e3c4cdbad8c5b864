"""Command line: ``ketabids BIDS_DIR OUTPUT_DIR {participant,group} [options]`` and ``ketabids demo``.

Arguments only: :func:`get_parser` builds the parser, :func:`main` parses, checks the inputs,
and hands keyword arguments to ``ketabids.workflows.base.run_participant`` or
``ketabids.group.train.run_group_train`` / ``ketabids.group.predict.run_group_predict``. Errors become one line on stderr
and a BIDS-App exit code (see :class:`ketabids.errors.ExitCode`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ketabids import __version__
from ketabids.errors import ExitCode, KetabidsError, UnknownLevelError, UsageError

LOGGER = logging.getLogger("ketabids")
LEVELS = ("participant", "group")


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (exit 64) instead of exiting with 2."""

    def error(self, message):  # noqa: D102 - argparse API
        raise UsageError(f"{self.prog}: {message} (see --help)")


class _HelpFormatter(argparse.HelpFormatter):
    """Show ``(default: X)`` only for defaults worth showing and not already in the text."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and default not in (None, False, [], argparse.SUPPRESS)
            and action.option_strings
            and action.nargs != 0
        ):
            text += " (default: %(default)s)"
        return text


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def _nonneg_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return number


def _filter(value: str) -> str:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not COLUMN=VALUE or COLUMN!=VALUE")
    return value


def get_parser() -> argparse.ArgumentParser:
    """The BIDS-App parser (positionals first, then grouped options, one spelling each)."""
    parser = _Parser(
        prog="ketabids",
        description="Predict response to ketamine in treatment-resistant depression from a "
        "pre-treatment T1w MRI: VBM grey-matter maps (participant level), repeated nested-CV "
        "linear SVC training or frozen-model prediction (group level). "
        "'ketabids demo OUTPUT_DIR' runs the whole study on a synthetic cohort.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("bids_dir", metavar="BIDS_DIR", type=Path,
                        help="root of the input BIDS dataset (read only)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", type=Path,
                        help="derivative dataset to write (shared by parallel participant jobs)")
    parser.add_argument("analysis_level", metavar="{participant,group}",
                        help="participant: one VBM workflow per subject; group: train a model "
                        "(default) or apply one given with --model")
    parser.add_argument("--version", action="version", version=f"ketabids {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for Nipype's own messages)")

    sel = parser.add_argument_group("Selecting data")
    sel.add_argument("--participant-label", nargs="+", metavar="LABEL",
                     help="participants to process, with or without 'sub-', or text files "
                     "listing them (default: all)")
    sel.add_argument("--session-label", nargs="+", metavar="LABEL",
                     help="sessions to process, with or without 'ses-' (default: all)")
    sel.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                     help='JSON pybids query for the T1w, e.g. {"t1w": {"acquisition": "mprage"}}')
    sel.add_argument("--skip-bids-validation", action="store_true",
                     help="do not run the BIDS validator on BIDS_DIR")

    res = parser.add_argument_group("Resources and reproducibility")
    res.add_argument("-w", "--work-dir", type=Path, metavar="DIR",
                     help="Nipype working folder; reuse it to resume an interrupted run "
                     "(default: <tmp>/ketabids_work)")
    res.add_argument("--nprocs", type=_positive_int, default=1,
                     help="processes (Nipype MultiProc at participant level, jobs at group level)")
    res.add_argument("--omp-nthreads", type=_positive_int, default=1,
                     help="threads per process (ANTs/ITK)")
    res.add_argument("--mem-gb", type=_positive_float, metavar="GB",
                     help="memory limit handed to Nipype's scheduler")
    res.add_argument("--seed", type=_nonneg_int, default=0,
                     help="random seed for ANTs (use with --omp-nthreads 1), group CV splits "
                     "and permutations")

    anat = parser.add_argument_group("Participant level")
    anat.add_argument("--template", default="MNI152NLin2009aSym",
                      help="template space: the embedded MNI ICBM 2009a symmetric default, or a "
                      "cached TemplateFlow template (e.g. MNI152NLin2009cAsym)")
    anat.add_argument("--fast", action="store_true",
                      help="fast mode for demos and CI: registration on a 2.5 mm grid with "
                      "fewer SyN iterations, a coarser N4 fit and 2 mm template-space maps "
                      "(lower accuracy; the README gives both modes' figures)")
    anat.add_argument("--atlas", type=Path, metavar="NIFTI",
                      help="atlas in template space for regional GM volumes and region tables")
    anat.add_argument("--atlas-labels", type=Path, metavar="TSV",
                      help="TSV with columns index, name for --atlas")
    anat.add_argument("--nipype-plugin-file", type=Path, metavar="YAML",
                      help="Nipype plugin settings, e.g. 'plugin: SLURM' and 'plugin_args: {...}'")

    grp = parser.add_argument_group("Group level: labels and covariates")
    grp.add_argument("--model", type=Path, metavar="FILE",
                     help="apply this frozen model (.skops from a training run) instead of training")
    grp.add_argument("--prediction-name", metavar="NAME",
                     help="name of the prediction run folder group/predict-NAME (default: from "
                     "the dataset name and --include filters)")
    grp.add_argument("--target", metavar="COLUMN",
                     help="binary participants.tsv column to predict (1/yes/true/responder = 1)")
    grp.add_argument("--response-from", nargs=2, metavar=("BEFORE", "AFTER"),
                     help="derive the label from two score columns: response = relative drop "
                     ">= --response-threshold (the study: madrs_pre madrs_24h)")
    grp.add_argument("--response-threshold", type=_fraction, default=0.5,
                     help="relative score drop that counts as response")
    grp.add_argument("--include", nargs="+", type=_filter, default=[], metavar="COL=VALUE",
                     help="keep only participants.tsv rows matching all of these (also COL!=VALUE)")
    grp.add_argument("--covariates", nargs="+", default=[], metavar="COLUMN",
                     help="covariates regressed out within folds (participants.tsv columns, or "
                     "'tiv' from the participant volumes)")
    grp.add_argument("--site-column", metavar="COLUMN",
                     help="participants.tsv column naming the site/scanner (stratification, "
                     "within-site permutations, --combat)")
    grp.add_argument("--combat", action="store_true",
                     help="ComBat site harmonisation fitted within folds (needs --site-column)")
    grp.add_argument("--standardize", action="store_true",
                     help="z-score features within folds")

    cv = parser.add_argument_group("Group level: features and cross-validation")
    cv.add_argument("--smoothing-fwhm", type=float, default=8.0, metavar="MM",
                    help="Gaussian smoothing of the GM maps (0 = none)")
    cv.add_argument("--analysis-resolution", type=_positive_float, default=2.0, metavar="MM",
                    help="voxel size of the analysis grid")
    cv.add_argument("--n-repeats", type=_positive_int, default=10, help="CV repeats")
    cv.add_argument("--n-outer", type=_positive_int, default=10, help="outer CV folds")
    cv.add_argument("--n-inner", type=_positive_int, default=5, help="inner CV folds")
    cv.add_argument("--c-grid", nargs="+", type=_positive_float, metavar="C",
                    help="SVC C values (default 2^-6 .. 2^4)")
    cv.add_argument("--n-permutations", type=_nonneg_int, default=1000,
                    help="label permutations for the p-values (0 = none)")
    return parser


def _setup_logging(verbose: int) -> None:
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


def _check_options(opts) -> None:
    """Cross-option checks argparse cannot express."""
    if opts.analysis_level not in LEVELS:
        raise UnknownLevelError(
            f"analysis level {opts.analysis_level!r} is unknown; use 'participant' or 'group'"
        )
    if opts.combat and not opts.site_column:
        raise UsageError("--combat needs --site-column COLUMN naming the site of each participant")
    if opts.target and opts.response_from:
        raise UsageError("--target and --response-from both define the label; give one")
    if opts.atlas_labels and not opts.atlas:
        raise UsageError("--atlas-labels needs --atlas")
    if opts.prediction_name and not opts.model:
        raise UsageError("--prediction-name names a prediction run: it needs --model")
    for option in ("atlas", "atlas_labels", "nipype_plugin_file", "model"):
        value = getattr(opts, option)
        if value is not None and not Path(value).exists():
            from ketabids.errors import MissingInputError

            raise MissingInputError(f"{value}: --{option.replace('_', '-')} file does not exist")
    if opts.analysis_level == "group" and not opts.model and not (opts.target or opts.response_from):
        raise UsageError(
            "group training needs a label: --target COLUMN or --response-from BEFORE AFTER "
            "(e.g. --response-from madrs_pre madrs_24h)"
        )


def _run_bids_app(opts) -> dict:
    from ketabids.bids import layout as bids

    bids_dir = bids.check_bids_dir(opts.bids_dir)
    output_dir = bids.check_output_dir(opts.output_dir, bids_dir)
    labels = bids.parse_participant_labels(opts.participant_label)
    sessions = bids.parse_session_labels(opts.session_label)
    filters = bids.load_bids_filters(opts.bids_filter_file)

    if not opts.skip_bids_validation:
        from ketabids.bids.validation import validate_bids

        summary = validate_bids(bids_dir)
        LOGGER.info("BIDS validation: %s", summary)

    layout = bids.load_layout(bids_dir)
    subjects = bids.select_subjects(layout, labels=labels, sessions=sessions, filters=filters)
    LOGGER.info("%d participant(s) selected: %s", len(subjects), " ".join(subjects[:20])
                + (" ..." if len(subjects) > 20 else ""))

    if opts.analysis_level == "participant":
        from ketabids.workflows.base import run_participant

        work_dir = (opts.work_dir or Path(tempfile.gettempdir()) / "ketabids_work").resolve()
        return run_participant(
            bids_dir=bids_dir, output_dir=output_dir, work_dir=work_dir, subjects=subjects,
            sessions=sessions, bids_filters=filters, template=opts.template, fast=opts.fast,
            atlas=opts.atlas, atlas_labels=opts.atlas_labels, nprocs=opts.nprocs,
            omp_nthreads=opts.omp_nthreads, mem_gb=opts.mem_gb, seed=opts.seed,
            plugin_file=opts.nipype_plugin_file, layout=layout,
        )

    label_options = dict(
        target=opts.target,
        response_from=tuple(opts.response_from) if opts.response_from else None,
        response_threshold=opts.response_threshold,
        include=list(opts.include),
    )
    common = dict(bids_dir=bids_dir, output_dir=output_dir, subjects=subjects, sessions=sessions,
                  layout=layout, n_permutations=opts.n_permutations, nprocs=opts.nprocs,
                  seed=opts.seed, **label_options)
    if opts.model:
        from ketabids.group.predict import run_group_predict

        return run_group_predict(model=opts.model, name=opts.prediction_name, **common)
    from ketabids.group.train import run_group_train

    return run_group_train(progress=True, 
        covariates=list(opts.covariates), site_column=opts.site_column, combat=opts.combat,
        standardize=opts.standardize, smoothing_fwhm=opts.smoothing_fwhm,
        analysis_resolution=opts.analysis_resolution, template=opts.template,
        n_repeats=opts.n_repeats, n_outer=opts.n_outer, n_inner=opts.n_inner,
        c_grid=opts.c_grid, atlas=opts.atlas, atlas_labels=opts.atlas_labels, **common,
    )


@dataclass(frozen=True)
class RunResult:
    """What one command did: its exit code, the run's summary (None after an error) and the
    one-line error message printed (None on success)."""

    exit_code: int
    summary: dict | None = None
    error: str | None = None


def _exit_code_of(summary) -> int:
    """Participant runs report failed subjects instead of raising: exit 1 when any failed."""
    if isinstance(summary, dict) and summary.get("failed"):
        return int(ExitCode.FAILURE)
    return int(ExitCode.SUCCESS)


def guarded(command, *args, **kwargs) -> RunResult:
    """Call ``command`` and turn its outcome into a :class:`RunResult`: user errors become one
    line on stderr and their BIDS-App exit code (the one error path of the command line)."""
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
    return RunResult(_exit_code_of(summary), summary=summary)


def _parse_and_run(argv: list[str]) -> dict:
    opts = get_parser().parse_args(argv)
    _setup_logging(opts.verbose)
    _check_options(opts)
    return _run_bids_app(opts)


def run(argv: list[str]) -> RunResult:
    """``ketabids BIDS_DIR OUTPUT_DIR {participant,group} [options]`` in this process; the
    result carries the exit code and the run's summary (public API: the demo uses it)."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # no update check (no network on clusters)
    return guarded(_parse_and_run, list(argv))
