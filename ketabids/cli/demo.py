"""``ketabids demo OUTPUT_DIR``: the whole study on a synthetic cohort, one command.

1. :func:`ketabids.demo.cohort.generate_demo` writes two BIDS datasets (``bids/discovery`` with a
   ketamine and a saline arm, ``bids/external`` from another scanner, a ketamine and a saline
   arm too) and their ground truth.
2. The participant level runs on both (fast mode) into ``derivatives/<cohort>``.
3. The group level trains on the discovery ketamine arm (response = MADRS drop >= 50% at 24 h),
   then applies the frozen model to the external ketamine arm, to the discovery saline arm and
   to both external arms together (``--arm-column arm``: treatment specificity).
4. A table of the results is printed next to the published figures, with a specificity row.

Every step calls the same functions as ``ketabids BIDS_DIR OUTPUT_DIR ...``, through
:func:`ketabids.cli.main`, so the demo exercises the real command line.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ketabids.cli.app import RunResult, guarded, setup_logging
from ketabids.cli.app import run as run_app
from ketabids.cli.parser import (
    HelpFormatter,
    Parser,
    nonneg_int,
    positive_float,
    positive_int,
)
from ketabids.demo.published import PUBLISHED
from ketabids.errors import KetabidsError, Terminated, UsageError

LOGGER = logging.getLogger("ketabids")


def _cli(argv: list[str]) -> dict:
    """One ``ketabids`` command through the public :func:`ketabids.cli.app.run`; its summary."""
    LOGGER.info("ketabids %s", " ".join(argv))
    result = run_app(argv)
    if result.exit_code == 130:  # Ctrl-C in the step: the demo stops the same way
        raise KeyboardInterrupt
    if result.exit_code > 128:  # SIGTERM/SIGHUP in the step (it exited 128 + signal)
        raise Terminated(result.exit_code - 128)
    if result.exit_code != 0:
        raise KetabidsError(f"demo step failed with exit code {result.exit_code}: ketabids "
                            f"{' '.join(argv)}", exit_code=result.exit_code)
    return result.summary


def _fmt(value, pct=True):
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.3g}"


def specificity_row(summary: dict | None) -> str | None:
    """The table's specificity line from a ``--arm-column`` prediction's summary.

    Parameters
    ----------
    summary : dict or None
        The prediction run's summary (its ``specificity`` block, as in ``metrics.json``).

    Returns
    -------
    str or None
        BAC difference between arms with its interval and permutation p, and the interaction
        p; None without a specificity block.
    """
    from ketabids.group.specificity import format_p_value as p
    from ketabids.group.specificity import format_points as pts

    spec = (summary or {}).get("specificity")
    if not spec:
        return None
    bac, inter = spec["bac_difference"], spec["interaction_log_odds"]
    return (f"{'specificity (ext. trial)':<24} {summary.get('n_subjects', '-'):>4}  BAC "
            f"{spec['treatment_arm']} - {spec['reference_arm']} {pts(bac['estimate'])} points "
            f"(95% CI {pts(bac['ci_low'])} to {pts(bac['ci_high'])}), {p(bac['p_value'])}; "
            f"decision x arm interaction {p(inter['p_value'])}  | paper: ketamine vs saline "
            "cohorts compared by eye, not tested")


def results_table(rows: dict, specificity: str | None = None) -> str:
    """Plain-text table of each analysis' headline beside the paper's figures.

    Parameters
    ----------
    rows : dict
        Analysis name -> its headline (:func:`ketabids.group.metrics.headline_metric`: the same
        numbers as its ``metrics.json`` ``headline`` and its report).
    specificity : str or None
        A last line (:func:`specificity_row`).

    Returns
    -------
    str
        The table; the paper's columns come from :data:`ketabids.demo.published.PUBLISHED`.
    """
    ours = {name: (f"{_fmt(h.get('estimate'))} ({_fmt(h.get('ci_low'))}-"
                   f"{_fmt(h.get('ci_high'))})", h.get("p_text") or "-")
            for name, h in rows.items()}
    w_bac = max(len("BAC (95% CI)"), *(len(b) for b, _ in ours.values()))
    w_p = max(len("p (BAC)"), *(len(p) for _, p in ours.values()))
    header = (f"{'analysis':<24} {'n':>4}  {'BAC (95% CI)':<{w_bac}}  {'p (BAC)':<{w_p}}  | "
              "paper (Transl Psychiatry 2026): n, BAC, AUC, p")
    lines = [header, "-" * len(header)]
    for name, h in rows.items():
        pub = PUBLISHED.get(name)
        bac, p = ours[name]
        paper = (f"{pub['n']}, {_fmt(pub['bac'])}, {pub['auc']}, {_fmt(pub['p'], pct=False)}"
                 if pub else "not reported")
        lines.append(
            f"{name:<24} {h.get('n', '-'):>4}  {bac:<{w_bac}}  {p:<{w_p}}  | {paper}")
    if specificity:
        lines.append(specificity)
    return "\n".join(lines)


HEADLINE_NOTE = ("BAC = balanced accuracy, the headline metric of each analysis: pooled "
                 "out-of-fold predictions of all CV repeats (discovery), the frozen model's "
                 "predictions (external, saline); p = permutation p-value of that same BAC. "
                 "Same numbers as metrics.json 'headline' and the reports. The right-hand "
                 "columns are the paper's figures, not computed here.")


SPECIFICITY_NOTE = ("specificity: the frozen model on both arms of the external trial (ketamine "
                    "vs saline, same scanner): difference in BAC between the arms (bootstrap "
                    "interval, permutation p) and the p of the decision x arm interaction in a "
                    "logistic model of response; group/predict-external-trial/specificity.tsv.")


def _headline(summary: dict) -> dict:
    """The run's headline result (None entries when it has no labels) and its report."""
    h = dict(summary.get("headline") or {"n": summary.get("n_subjects")})
    h["report"] = summary.get("report")
    return h


def run_demo(opts) -> dict:
    """Run the demo described in the module docstring.

    Parameters
    ----------
    opts : argparse.Namespace
        From :func:`get_demo_parser`.

    Returns
    -------
    dict
        ``failed`` (empty), and ``cohort`` (``--generate-only``) or ``results`` (analysis name
        -> headline) and ``specificity`` (the trial prediction's block, or None).

    Raises
    ------
    UsageError
        A cohort too small for the analyses (:func:`plan_demo`), before any work.
    KetabidsError
        A step of the pipeline failed (its exit code).
    """
    from ketabids.demo.cohort import generate_demo

    out = Path(opts.output_dir).expanduser().resolve()
    started = time.monotonic()
    design = demo_design(opts)
    folds = None
    if not opts.generate_only:  # before any work: the training's folds fit this cohort
        folds = plan_demo(opts, design)
        LOGGER.info("%s", folds.describe())
    cohort = generate_demo(out, design, resolution=opts.resolution, seed=opts.seed,
                           nprocs=opts.nprocs)
    LOGGER.info("synthetic cohort written to %s (%.0f s)", out / "bids",
                time.monotonic() - started)
    if opts.generate_only:
        print(f"BIDS datasets: {out / 'bids'}\nground truth: {out / 'truth'}")
        return {"failed": [], "cohort": cohort}

    work = out / "work"
    common = ["--nprocs", str(opts.nprocs), "--seed", str(opts.seed)]
    for name in ("discovery", "external"):
        _cli([str(out / "bids" / name), str(out / "derivatives" / name), "participant", "--fast",
              "-w", str(work / name), "--omp-nthreads", "1", *common])

    label = ["--response-from", "madrs_pre", "madrs_24h"]
    perms = ["--n-permutations", str(opts.n_permutations)]
    protocol = folds.options()

    disc_bids, disc_out = out / "bids" / "discovery", out / "derivatives" / "discovery"
    summaries = {}
    summaries["train"] = _cli([str(disc_bids), str(disc_out), "group", *label,
                                     "--include", "arm=ketamine", "--site-column", "site",
                                     *protocol, *perms, *common])
    model = summaries["train"]["model"]
    ext_bids, ext_out = out / "bids" / "external", out / "derivatives" / "external"
    two_arms = bool(_n_external_saline(opts))
    summaries["external"] = _cli([str(ext_bids), str(ext_out), "group", "--model", str(model),
                                  *label, *(["--include", "arm=ketamine"] if two_arms else []),
                                  *perms, *common])
    summaries["saline"] = _cli([str(disc_bids), str(disc_out), "group", "--model",
                                      str(model), *label, "--include", "arm=saline", *perms,
                                      *common])
    if two_arms:  # both external arms in one run; ketamine = the arm the model was trained on
        summaries["trial"] = _cli([str(ext_bids), str(ext_out), "group", "--model", str(model),
                                   *label, "--arm-column", "arm", "--prediction-name",
                                   "external-trial", *perms, *common])
    rows = {
        "discovery (nested CV)": _headline(summaries["train"]),
        "external ketamine": _headline(summaries["external"]),
        "saline arm": _headline(summaries["saline"]),
    }
    if summaries["train"].get("leave_site_out"):     # the audit's leave-site-out CV (sites A, B)
        rows["discovery leave-site-out"] = {**summaries["train"]["leave_site_out"],
                                            "report": summaries["train"].get("report")}
    print()
    spec_line = specificity_row(summaries.get("trial"))
    print(results_table(rows, spec_line))
    print(HEADLINE_NOTE)
    if spec_line:
        print(SPECIFICITY_NOTE)
    print(f"{folds.describe()}.")
    for name, row in rows.items():
        if row.get("warning"):
            print(f"{name}: {row['warning']}")
    print()
    for name, row in rows.items():
        print(f"{name} report: {row['report']}")
    if "trial" in summaries:
        print(f"specificity (ext. trial) report: {summaries['trial']['report']}")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return {"failed": [], "results": rows,
            "specificity": (summaries.get("trial") or {}).get("specificity")}


def demo_design(opts):
    """The :class:`~ketabids.demo.cohort.DemoDesign` of the demo's options.

    Parameters
    ----------
    opts : argparse.Namespace
        From :func:`get_demo_parser`.

    Returns
    -------
    DemoDesign
        Sizes, saline share, ``--null`` and ``--effect-size`` (the generator's default when
        not given); the other fields keep their defaults.
    """
    from ketabids.demo.cohort import DemoDesign

    extra = {} if opts.effect_size is None else {"effect_size": opts.effect_size}
    return DemoDesign(n_discovery=opts.n_discovery, n_external=opts.n_external,
                      n_external_saline=_n_external_saline(opts),
                      saline_fraction=opts.saline_fraction, null=opts.null, **extra)


def _n_external_saline(opts) -> int:
    """``--n-external-saline``, by default ``--n-external`` (a 1:1 external trial)."""
    value = getattr(opts, "n_external_saline", None)
    return int(opts.n_external if value is None else value)


@dataclass(frozen=True)
class DemoFolds:
    """The cross-validation the demo's training uses.

    The study's protocol (the group level's defaults,
    :class:`~ketabids.group.nested.NestedCVSettings`), with the outer and inner fold counts
    reduced to what the discovery ketamine arm supports (:func:`fit_folds`).

    Attributes
    ----------
    n_repeats, n_outer, n_inner : int
        The CV protocol.
    n_responders, n_non_responders : int
        Class sizes of the training cohort.
    """

    n_repeats: int
    n_outer: int
    n_inner: int
    n_responders: int
    n_non_responders: int

    @property
    def reduced(self) -> bool:
        """Whether the fold counts are below the study's."""
        from ketabids.group.nested import NestedCVSettings

        study = NestedCVSettings()
        return (self.n_outer, self.n_inner) != (study.n_outer, study.n_inner)

    def options(self) -> list[str]:
        """The group-level options that select these folds."""
        return ["--n-repeats", str(self.n_repeats), "--n-outer", str(self.n_outer),
                "--n-inner", str(self.n_inner)]

    def describe(self) -> str:
        """One sentence for the log and the demo's output, saying when folds were reduced."""
        from ketabids.group.nested import NestedCVSettings

        study = NestedCVSettings()
        text = (f"cross-validation: {self.n_repeats} repeats of {self.n_outer} outer folds, "
                f"{self.n_inner} inner folds")
        if self.reduced:
            text += (f" (the study's {study.n_outer} outer / {study.n_inner} inner folds, "
                     f"reduced to what {self.n_responders} responders and "
                     f"{self.n_non_responders} non-responders of the discovery ketamine arm "
                     "allow: every fold needs both classes)")
        return text


def fit_folds(participants, *, seed: int = 0) -> DemoFolds:
    """The most outer folds (up to the study's 10), then inner folds (up to 5), that fit.

    The training cohort is the discovery ketamine arm, labelled by the group level's rule
    (``--response-from madrs_pre madrs_24h``), stratified by ``site`` as the demo's
    ``--site-column site`` does, seeded as its ``--seed``. The fold counts pass the group
    level's own check (:func:`ketabids.group.cv.check_fold_counts`: every training set of its
    actual partitions holds both classes), so the training cannot refuse or fail on them
    (unless QC leaves scans out).

    Parameters
    ----------
    participants : pandas.DataFrame
        The discovery ``participants.tsv`` (columns ``arm``, ``site``, ``madrs_pre``,
        ``madrs_24h``).
    seed : int
        The demo's ``--seed``.

    Returns
    -------
    DemoFolds
        The folds.

    Raises
    ------
    UsageError
        No nested CV fits (fewer than 2 outer and 2 inner folds).
    """
    import numpy as np

    from ketabids.group.cv import check_fold_counts, max_folds, one_class_inner_set
    from ketabids.group.labels import is_response
    from ketabids.group.nested import NestedCVSettings

    ketamine = participants[participants["arm"] == "ketamine"]
    y = np.asarray(is_response(ketamine["madrs_pre"], ketamine["madrs_24h"])).astype(int)
    sites = ketamine["site"].to_numpy()
    n_yes, n_no = int(y.sum()), int(y.size - y.sum())
    study = NestedCVSettings(random_state=int(seed))
    for n_outer in range(min(study.n_outer, n_yes, n_no), 1, -1):
        _, max_inner = max_folds(y, n_outer, sites, study.random_state, study.n_repeats)
        for n_inner in range(min(study.n_inner, max_inner), 1, -1):
            settings = replace(study, n_outer=n_outer, n_inner=n_inner)
            if one_class_inner_set(y, settings, sites) is None:
                check_fold_counts(y, settings, sites)       # the training's check: passes
                return DemoFolds(settings.n_repeats, n_outer, n_inner, n_yes, n_no)
    raise UsageError(
        f"the discovery ketamine arm would have {n_yes} responders and {n_no} non-responders, "
        "too few for a nested cross-validation (2 outer folds whose training sets hold 2 of "
        "each class); use a larger --n-discovery")


def plan_demo(opts, design) -> DemoFolds:
    """Check, before any work, that the demo's cohort supports its analyses.

    Parameters
    ----------
    opts : argparse.Namespace
        The demo's options (``n_discovery``, ``saline_fraction``, ``seed``).
    design : DemoDesign
        The cohort :func:`ketabids.demo.cohort.generate_demo` will write (its tables are
        computed without writing images, :func:`ketabids.demo.cohort.demo_tables`).

    Returns
    -------
    DemoFolds
        The training's folds (:func:`fit_folds`).

    Raises
    ------
    UsageError
        Exit 64, naming the smallest ``--n-discovery`` that works with the other options, or
        a saline arm that would be empty.
    """
    from ketabids.demo.cohort import demo_tables

    def folds_for(n):
        return fit_folds(demo_tables(replace(design, n_discovery=n), seed=opts.seed)
                         ["discovery"], seed=opts.seed)

    try:
        folds = folds_for(opts.n_discovery)
    except UsageError as exc:
        smallest = next((n for n in range(opts.n_discovery + 1, 10 * opts.n_discovery + 200)
                         if _fits(folds_for, n)), None)
        fix = f"use --n-discovery {smallest} or more" if smallest else str(exc)
        raise UsageError(f"--n-discovery {opts.n_discovery}: {str(exc).split(';')[0]}; {fix}"
                         ) from exc
    discovery = demo_tables(design, seed=opts.seed)["discovery"]
    if not (discovery["arm"] == "saline").any():
        raise UsageError(f"--n-discovery {opts.n_discovery} with --saline-fraction "
                         f"{opts.saline_fraction} gives no saline participant, and the demo "
                         "tests the model on the saline arm; use a larger --saline-fraction "
                         "or --n-discovery")
    return folds


def _fits(folds_for, n) -> bool:
    try:
        folds_for(n)
    except UsageError:
        return False
    return True


def get_demo_parser() -> argparse.ArgumentParser:
    """Parser of ``ketabids demo OUTPUT_DIR``.

    Returns
    -------
    argparse.ArgumentParser
        The parser (``ketabids demo --help`` prints it).
    """
    parser = Parser(
        prog="ketabids demo",
        description="Generate a synthetic ketamine study (discovery cohort with ketamine and "
        "saline arms, external ketamine and saline arms from another scanner) and run the whole "
        "protocol on it: participant level, training on the discovery ketamine arm, prediction "
        "on the external ketamine arm and on the discovery saline arm, and the treatment-"
        "specificity analysis of the two external arms.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", type=Path)
    parser.add_argument("--n-discovery", type=positive_int, default=40,
                        help="discovery cohort size (both arms)")
    parser.add_argument("--n-external", type=positive_int, default=30,
                        help="external cohort's ketamine arm (another scanner)")
    parser.add_argument("--n-external-saline", type=nonneg_int, default=None,
                        help="saline participants added to the external cohort (same scanner): "
                        "the treatment-specificity analysis compares its two arms (default: as "
                        "many as --n-external, a 1:1 trial; 0 = none)")
    parser.add_argument("--saline-fraction", type=float, default=0.25,
                        help="share of the discovery cohort in the saline (control) arm")
    parser.add_argument("--null", action="store_true",
                        help="negative control: labels independent of the images")
    parser.add_argument("--effect-size", type=float, default=None,
                        help="planted frontal/cerebellar GM effect (fraction; default: the "
                        "generator's)")
    parser.add_argument("--resolution", type=positive_float, default=2.0, metavar="MM",
                        help="voxel size of the synthetic T1w images")
    parser.add_argument("--n-permutations", type=nonneg_int, default=200,
                        help="permutations for each p-value (training and every prediction)")
    parser.add_argument("--nprocs", type=positive_int, default=2,
                        help="processes for generating the cohort, the participant level and "
                        "the permutations (60 phantoms took about 12 minutes with 2 on a "
                        "2-core machine)")
    parser.add_argument("--seed", type=nonneg_int, default=0,
                        help="seeds the cohort, ANTs and the CV splits and permutations: the "
                        "same seed gives the same images and results")
    parser.add_argument("--generate-only", action="store_true",
                        help="only write the synthetic BIDS datasets and their ground truth")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def run(argv: list[str]) -> RunResult:
    """``ketabids demo OUTPUT_DIR [options]`` in this process.

    Parameters
    ----------
    argv : list of str
        The arguments after ``demo``.

    Returns
    -------
    RunResult
        Exit code (BIDS-App convention, :mod:`ketabids.errors`) and summary; errors are
        reported as one line, not raised.

    Examples
    --------
    >>> run(["--help"]).exit_code  # doctest: +ELLIPSIS
    usage: ketabids demo ...
    0
    """
    def _demo(argv):
        opts = get_demo_parser().parse_args(argv)
        setup_logging(opts.verbose)
        return run_demo(opts)

    return guarded(_demo, list(argv))
