"""``ketabids demo OUTPUT_DIR``: the whole study on a synthetic cohort, one command.

1. :func:`ketabids.demo.generate_demo` writes two BIDS datasets (``bids/discovery`` with a
   ketamine and a saline arm, ``bids/external`` from another scanner) and their ground truth.
2. The participant level runs on both (fast mode) into ``derivatives/<cohort>``.
3. The group level trains on the discovery ketamine arm (response = MADRS drop >= 50% at 24 h),
   then applies the frozen model to the external cohort and to the saline arm.
4. A table of the three results is printed next to the published figures.

Every step calls the same functions as ``ketabids BIDS_DIR OUTPUT_DIR ...``, through
:func:`ketabids.cli.main`, so the demo exercises the real command line.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ketabids.errors import KetabidsError

LOGGER = logging.getLogger("ketabids")

#: The study's published figures (Transl Psychiatry 2026, doi:10.1038/s41398-026-04085-4).
PUBLISHED = {
    "discovery (nested CV)": {"n": 99, "bac": 0.722, "auc": 0.72, "p": None},
    "external ketamine": {"n": 51, "bac": 0.600, "auc": 0.65, "p": 0.01},
    "saline arm": {"n": 49, "bac": 0.411, "auc": 0.45, "p": None},
}


def _cli(argv: list[str]) -> None:
    from ketabids.cli import main

    LOGGER.info("ketabids %s", " ".join(argv))
    code = main(argv)
    if code != 0:
        raise KetabidsError(f"demo step failed with exit code {code}: ketabids {' '.join(argv)}",
                            exit_code=code)


def _fmt(value, pct=True):
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.3g}"


def results_table(rows: dict) -> str:
    """Plain-text table of demo results beside the published ones."""
    header = f"{'analysis':<24} {'n':>4} {'BAC':>7} {'AUC':>6} {'p(BAC)':>7}   published: n, BAC, AUC, p"
    lines = [header, "-" * len(header)]
    for name, res in rows.items():
        pub = PUBLISHED[name]
        lines.append(
            f"{name:<24} {res.get('n', '-'):>4} {_fmt(res.get('bac')):>7} "
            f"{_fmt(res.get('auc'), pct=False):>6} {_fmt(res.get('p'), pct=False):>7}   "
            f"{pub['n']}, {_fmt(pub['bac'])}, {pub['auc']}, {_fmt(pub['p'], pct=False)}"
        )
    return "\n".join(lines)


def _headline(summary: dict) -> dict:
    metrics = summary.get("metrics", {})
    return {
        "n": summary.get("n_subjects"),
        "bac": metrics.get("bac"),
        "auc": metrics.get("auc"),
        "p": summary.get("p_bac"),
        "report": summary.get("report"),
    }


def run_demo(opts) -> dict:
    """Run the demo described in the module docstring; ``opts`` is the demo parser's namespace."""
    from ketabids.demo import generate_demo

    out = Path(opts.output_dir).expanduser().resolve()
    started = time.monotonic()
    kwargs = dict(n_discovery=opts.n_discovery, n_external=opts.n_external,
                  saline_fraction=opts.saline_fraction, null=opts.null,
                  resolution=opts.resolution, seed=opts.seed, nprocs=opts.nprocs)
    if opts.effect_size is not None:
        kwargs["effect_size"] = opts.effect_size
    cohort = generate_demo(out, **kwargs)
    LOGGER.info("synthetic cohort written to %s (%.0f s)", out / "bids", time.monotonic() - started)
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
    protocol = ["--n-outer", str(_n_outer(cohort.participants["discovery"]))]

    disc_bids, disc_out = out / "bids" / "discovery", out / "derivatives" / "discovery"
    summaries = {}
    summaries["train"] = _run_group([str(disc_bids), str(disc_out), "group", *label,
                                     "--include", "arm=ketamine", "--site-column", "site",
                                     *protocol, *perms, *common])
    model = summaries["train"]["model"]
    summaries["external"] = _run_group([str(out / "bids" / "external"),
                                        str(out / "derivatives" / "external"), "group",
                                        "--model", str(model), *label, *perms, *common])
    summaries["saline"] = _run_group([str(disc_bids), str(disc_out), "group", "--model",
                                      str(model), *label, "--include", "arm=saline", *perms,
                                      *common])
    rows = {
        "discovery (nested CV)": _headline(summaries["train"]),
        "external ketamine": _headline(summaries["external"]),
        "saline arm": _headline(summaries["saline"]),
    }
    print()
    print(results_table(rows))
    print()
    for name, row in rows.items():
        print(f"{name} report: {row['report']}")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return {"failed": [], "results": rows}


def _n_outer(participants) -> int:
    """The study's 10 outer folds, or fewer when the smaller class of a small demo's ketamine
    arm has fewer members (stratified folds need one per fold)."""
    from ketabids.phantom import is_responder

    ketamine = participants[participants["arm"] == "ketamine"]
    responders = is_responder(ketamine["madrs_pre"].to_numpy(), ketamine["madrs_24h"].to_numpy())
    smallest = int(min(responders.sum(), (~responders).sum()))
    return max(2, min(10, smallest))


def _run_group(argv: list[str]) -> dict:
    """Run a group-level command through the CLI parser and return its summary."""
    from ketabids.cli import _check_options, _run_bids_app, get_parser

    LOGGER.info("ketabids %s", " ".join(argv))
    opts = get_parser().parse_args(argv)
    _check_options(opts)
    return _run_bids_app(opts)
