"""The BIDS-App argument parser: :func:`get_parser`, its argument types and help formatter.

Arguments only; cross-option checks and the run are :mod:`ketabids.cli.app`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ketabids import __version__
from ketabids.errors import UsageError
from ketabids.qc.gate import QC_POLICIES
from ketabids.templates import DEFAULT_TEMPLATE


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (exit 64) instead of exiting with 2."""

    def error(self, message):  # noqa: D102 - argparse API
        raise UsageError(f"{self.prog}: {message} (see --help)")


class HelpFormatter(argparse.HelpFormatter):
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


#: ``--outer-cv`` choices: ketabids.group.cv.OUTER_SCHEMES, spelled out so that the parser does
#: not import scikit-learn (a test checks that they are the same)
OUTER_SCHEMES = ("stratified", "leave-site-out", "group-kfold")


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def nonneg_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def fraction(value: str) -> float:
    number = float(value)
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return number


def column_filter(value: str) -> str:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not COLUMN=VALUE or COLUMN!=VALUE")
    return value


def get_parser() -> argparse.ArgumentParser:
    """The BIDS-App parser (positionals first, then grouped options, one spelling each)."""
    parser = Parser(
        prog="ketabids",
        description="Predict response to ketamine in treatment-resistant depression from a "
        "pre-treatment T1w MRI: VBM grey-matter maps (participant level), repeated nested-CV "
        "linear SVC training or frozen-model prediction (group level). "
        "'ketabids demo OUTPUT_DIR' runs the whole study on a synthetic cohort.",
        formatter_class=HelpFormatter,
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
                     "(default: <tmp>/ketabids_work). A subject's part is removed once its "
                     "derivatives are published and kept when it failed")
    res.add_argument("--keep-work", action="store_true",
                     help="keep every subject's work folder (intermediate files; a rerun then "
                     "reuses all finished steps)")
    res.add_argument("--nprocs", type=positive_int, default=1,
                     help="processes (Nipype MultiProc at participant level, jobs at group level)")
    res.add_argument("--omp-nthreads", type=positive_int, default=1,
                     help="threads per process (ANTs/ITK)")
    res.add_argument("--mem-gb", type=positive_float, metavar="GB",
                     help="memory limit handed to Nipype's scheduler")
    res.add_argument("--seed", type=nonneg_int, default=0,
                     help="random seed for ANTs (use with --omp-nthreads 1), group CV splits "
                     "and permutations")

    anat = parser.add_argument_group("Participant level")
    anat.add_argument("--template", default=DEFAULT_TEMPLATE,
                      help="template space: the embedded MNI ICBM 2009a symmetric default, or a "
                      "cached TemplateFlow template (e.g. MNI152NLin2009cAsym)")
    anat.add_argument("--fast", action="store_true",
                      help="fast mode for demos and CI: registration on a 2.5 mm grid with "
                      "fewer SyN iterations, a coarser tissue N4 fit and 2 mm template-space maps "
                      "(lower accuracy; the README gives both modes' figures)")
    anat.add_argument("--atlas", type=Path, metavar="NIFTI",
                      help="atlas in template space for regional GM volumes and region tables")
    anat.add_argument("--atlas-labels", type=Path, metavar="TSV",
                      help="TSV with columns index, name for --atlas")
    anat.add_argument("--nipype-plugin-file", type=Path, metavar="YAML",
                      help="Nipype plugin settings, e.g. 'plugin: SLURM' and 'plugin_args: {...}'")

    grp = parser.add_argument_group("Group level: labels and covariates")
    grp.add_argument("--model", type=Path, metavar="FILE",
                     help="apply this frozen model (.skops from a training run) instead of "
                     "training")
    grp.add_argument("--prediction-name", metavar="NAME",
                     help="name of the prediction run folder group/predict-NAME (default: from "
                     "the dataset name and --include filters)")
    grp.add_argument("--target", metavar="COLUMN",
                     help="binary participants.tsv column to predict (1/yes/true/responder = 1)")
    grp.add_argument("--response-from", nargs=2, metavar=("BEFORE", "AFTER"),
                     help="derive the label from two score columns: response = relative drop "
                     ">= --response-threshold (the study: madrs_pre madrs_24h)")
    grp.add_argument("--response-threshold", type=fraction, default=0.5,
                     help="relative score drop that counts as response")
    grp.add_argument("--include", nargs="+", type=column_filter, default=[], metavar="COL=VALUE",
                     help="keep only participants.tsv rows matching all of these "
                     "(also COL!=VALUE)")
    grp.add_argument("--covariates", nargs="+", default=[], metavar="COLUMN",
                     help="covariates regressed out within folds (participants.tsv columns, or "
                     "'tiv' from the participant volumes)")
    grp.add_argument("--site-column", metavar="COLUMN",
                     help="participants.tsv column naming the site/scanner (stratification, "
                     "within-site permutations, --combat)")
    grp.add_argument("--arm-column", metavar="COLUMN",
                     help="prediction with labels (--model): participants.tsv column of the "
                     "treatment arm (e.g. arm: ketamine/saline). Compares the two arms of ONE "
                     "prediction run (both arms in this dataset, participants the model has not "
                     "seen): per-arm metrics, BAC/AUC differences and the decision x arm "
                     "interaction (treatment specificity)")
    grp.add_argument("--treatment-arm", metavar="VALUE",
                     help="with --arm-column: the arm the model predicts response to (default: "
                     "the arm of the model's training rule, e.g. its --include arm=ketamine; "
                     "a different value is refused)")
    grp.add_argument("--combat", action="store_true",
                     help="ComBat site harmonisation fitted within folds (needs --site-column)")
    grp.add_argument("--standardize", action="store_true",
                     help="z-score features within folds")
    grp.add_argument("--overwrite", action="store_true",
                     help="replace an existing group/train (whose model may be in use); "
                     "training only. Without it a second training is refused (exit 73)")

    qc = parser.add_argument_group("Group level: quality control")
    qc.add_argument("--qc-policy", choices=QC_POLICIES, default=QC_POLICIES[0],
                    help="what the participant level's QC verdicts do: exclude = scans that "
                    "fail QC are left out of training and get no prediction; warn = keep them, "
                    "listed with their verdict; ignore = do not read QC. Every scan left out "
                    "or kept with a warn/fail verdict is listed in cohort.tsv and the report")
    qc.add_argument("--exclude-file", type=Path, metavar="TSV",
                    help="decisions of a visual review (look at OUTPUT_DIR/qc.html): TSV with "
                    "columns participant_id, reason and optionally session (n/a = all); these "
                    "scans are left out under every --qc-policy. The ratings exported by "
                    "qc.html are accepted (rows rated 'exclude')")

    cv = parser.add_argument_group("Group level: features and cross-validation")
    cv.add_argument("--smoothing-fwhm", type=float, default=8.0, metavar="MM",
                    help="Gaussian smoothing of the GM maps (0 = none)")
    cv.add_argument("--analysis-resolution", type=positive_float, default=2.0, metavar="MM",
                    help="voxel size of the analysis grid")
    cv.add_argument("--n-repeats", type=positive_int, default=10, help="CV repeats")
    cv.add_argument("--n-outer", type=positive_int, default=10, help="outer CV folds")
    cv.add_argument("--n-inner", type=positive_int, default=5, help="inner CV folds")
    cv.add_argument("--c-grid", nargs="+", type=positive_float, metavar="C",
                    help="SVC C values (default 2^-6 .. 2^4)")
    cv.add_argument("--n-permutations", type=nonneg_int, default=1000,
                    help="label permutations for the p-values (0 = none)")
    cv.add_argument("--outer-cv", choices=OUTER_SCHEMES, default=OUTER_SCHEMES[0],
                    help="outer CV of training: stratified = --n-outer folds stratified by "
                    "label (and site); leave-site-out = one site (group) per outer fold, "
                    "--n-outer unused, one repeat; group-kfold = --n-outer folds of whole sites "
                    "(groups). The inner CV is grouped the same way and labels are permuted "
                    "within groups")
    cv.add_argument("--group-column", metavar="COLUMN",
                    help="participants.tsv column whose groups the leave-site-out / "
                    "group-kfold folds hold (e.g. a cohort column for leave-cohort-out; "
                    "default: --site-column)")
    cv.add_argument("--raw-c-grid", action="store_true",
                    help="take --c-grid as C values of the unscaled linear kernel (as ketabids "
                    "0.1.0). By default each training set's kernel is scaled so that the grid's "
                    "smallest C is twice the C below which every participant is a bounded "
                    "support vector, and the grid spans the regularisation path; raw VBM "
                    "features often give every C the same model (metrics.json c_selection)")
    cv.add_argument("--skip-audit", action="store_true",
                    help="do not run the site and confound audit of training (audit.tsv)")
    return parser
