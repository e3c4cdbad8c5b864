"""QC metrics and verdicts on processed demo phantoms, real scans and generated faults.

The thresholds of ``ketabids/qc/rules.py`` marked "measured" were read from this table: every
phantom and real scan must pass or warn, every fault must fail (thick slices: at least warn).

Usage (each part optional)::

    python benchmarks/qc_thresholds.py \
        --demo /work/baseline-demo                      # derivatives/<set>/ + work/<set>/ (fast)
        --real OUT WORK BIDS                            # a participant run on real scans (default)
        --faults [--fault-seed 3]                       # phantom + every fault of
                                                        # ketabids.demo.faults, processed in fast
                                                         # mode in this process (ANTs)
        --json results.json

Prints, per group: the verdict counts, every warn/fail reason, min/median/max of each rule's
metric; per fault: its verdict and reasons; and the QC cost (seconds per subject).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _first(folder: Path, pattern: str):
    hits = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return hits[0] if hits else None


def processed_subject_qc(deriv_anat: Path, raw: Path, work_anat: Path | None, template):
    """QC metrics of one subject processed by the participant workflow."""
    from ketabids.qc.subject import compute_subject_qc

    sub = deriv_anat.parent.name
    tpms = {k: _first(deriv_anat, f"{sub}*_label-{k}_probseg.nii.gz") for k in ("GM", "WM", "CSF")}
    tpms = {k: v for k, v in tpms.items() if v is not None and "space-" not in v.name}
    if len(tpms) < 3:
        tpms = {k: next(p for p in sorted(deriv_anat.glob(f"{sub}*_label-{k}_probseg.nii.gz"))
                        if "space-" not in p.name) for k in ("GM", "WM", "CSF")}
    extra = {}
    if work_anat is not None:
        extra["bias"] = _first(work_anat / "n4", "*_bias.nii.gz")
        extra["jacobian"] = _first(work_anat / "modulate", "*jacobian*.nii.gz")
        extra["std_t1w"] = _first(work_anat / "std_t1w", "*_std.nii.gz")
    return compute_subject_qc(
        raw_t1w=raw, t1w=_first(deriv_anat, f"{sub}*_desc-preproc_T1w.nii.gz"),
        brain_mask=_first(deriv_anat, f"{sub}*_desc-brain_mask.nii.gz"), tpms=tpms,
        anat2std_xfm=_first(deriv_anat, f"{sub}*_from-T1w_to-*_xfm.h5"), template=template,
        **extra)


def processed_dataset(deriv: Path, bids: Path, work: Path | None, template) -> dict:
    """``{subject: metrics}`` for every processed subject of one derivative dataset."""
    out = {}
    for anat in sorted(deriv.glob("sub-*/anat")):
        sub = anat.parent.name
        if not list(anat.glob("*_label-GM_probseg.nii.gz")):
            continue
        raw = _first(bids / sub / "anat", f"{sub}*_T1w.nii*")
        work_anat = None
        if work is not None:
            key = sub.removeprefix("sub-")
            work_anat = _first(work, f"*/single_subject_{key}_wf/anat_wf")
        try:
            out[sub] = processed_subject_qc(anat, raw, work_anat, template)
        except Exception as exc:  # a broken subject is a row, not a crash of the benchmark
            out[sub] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _run_and_qc(raw, *, fast: bool, omp_nthreads: int, base_dir) -> dict:
    """THE anatomical workflow (:func:`ketabids.testing.run_anat_wf`) on ``raw``, then
    :func:`compute_subject_qc` on its outputs, as the participant level's ``subject_qc`` node
    does. Adds ``pipeline_seconds`` (summed node runtimes)."""
    from ketabids.anat.settings import ProcessingSettings
    from ketabids.qc.subject import compute_subject_qc
    from ketabids.templates import get_template
    from ketabids.testing import run_anat_wf

    res = run_anat_wf(raw, fast=fast, seed=1, omp_nthreads=omp_nthreads, base_dir=base_dir)
    template = get_template(resolution=ProcessingSettings.for_fast(fast).template_resolution)
    metrics = compute_subject_qc(
        raw_t1w=raw, t1w=res["t1w_preproc"], brain_mask=res["t1w_mask"],
        tpms=dict(zip(("GM", "WM", "CSF"), res["t1w_tpms"])), bias=res["t1w_bias"],
        anat2std_xfm=res["anat2std_xfm"], template=template, jacobian=res["std_jacobian"],
        std_t1w=res["std_t1w"], omp_nthreads=omp_nthreads)
    metrics["pipeline_seconds"] = round(sum(res["runtime_s"].values()), 1)
    return metrics


def fault_results(seed: int = 3, omp_nthreads: int = 1) -> dict:
    """Every fault of :mod:`ketabids.demo.faults` (and the good phantom) processed in fast
    mode by the anatomical workflow, then QC'd."""
    import nibabel as nib

    from ketabids.demo.faults import FAULTS
    from ketabids.demo.head import Acquisition, simulate_subject
    from ketabids.qc.header import header_metrics

    good = simulate_subject(seed=seed, acquisition=Acquisition(resolution=2.0)).t1w
    good = nib.Nifti1Image(np.asarray(good.dataobj, np.float32), good.affine)
    cases = {"good_phantom": good}
    cases.update({name: make(good) for name, make in FAULTS.items()})
    out = {}
    for name, img in cases.items():
        tmp = Path(tempfile.mkdtemp(prefix=f"qc-fault-{name}-"))
        raw = tmp / "raw.nii.gz"
        nib.save(img, raw)
        start = time.perf_counter()
        cpu = time.process_time()
        try:
            metrics = _run_and_qc(raw, fast=True, omp_nthreads=omp_nthreads,
                                  base_dir=tmp / "work")
        except Exception as exc:
            metrics = dict(header_metrics(raw))
            metrics["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
        metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
        metrics["pipeline_cpu_seconds"] = round(time.process_time() - cpu, 1)
        out[name] = metrics
        print(f"  {name}: {metrics.get('pipeline_seconds')} s", file=sys.stderr, flush=True)
    return out


def qc_cost(t1w: Path, omp_nthreads: int = 1) -> dict:
    """Seconds of the whole anatomical workflow (default mode; summed node runtimes) and of
    :func:`compute_subject_qc` on its outputs (CPU time is the fair comparison on a shared
    machine: ``qc_cpu_seconds`` is measured inside the QC call)."""
    tmp = Path(tempfile.mkdtemp(prefix="qc-cost-"))
    metrics = _run_and_qc(t1w, fast=False, omp_nthreads=omp_nthreads, base_dir=tmp)
    pipe = {k: metrics[k] for k in ("pipeline_seconds", "qc_seconds", "qc_cpu_seconds")}
    pipe["qc_share_wall"] = pipe["qc_seconds"] / pipe["pipeline_seconds"]
    print(f"\n## QC cost on {t1w.name} (default mode, {omp_nthreads} thread(s)): pipeline "
          f"{pipe['pipeline_seconds']:.1f} s of node time; QC {pipe['qc_seconds']:.1f} s wall / "
          f"{pipe['qc_cpu_seconds']:.1f} s CPU = {100 * pipe['qc_share_wall']:.1f} %")
    return pipe


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def print_group(title: str, results: dict) -> None:
    from ketabids.qc.rules import RULES, assess

    print(f"\n## {title}: {len(results)} subject(s)")
    verdicts = {k: assess(m) for k, m in results.items()}
    counts = {lvl: sum(v[0] == lvl for v in verdicts.values()) for lvl in ("pass", "warn", "fail")}
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for sub, (verdict, reasons) in verdicts.items():
        if verdict != "pass":
            print(f"  {sub}: {verdict}: {'; '.join(reasons)}")
    print(f"{'metric':24s} {'min':>10s} {'median':>10s} {'max':>10s}   rule warn / fail")
    for rule in RULES:
        vals = [m.get(rule.metric) for m in results.values() if rule.metric in m]
        vals = [float(v) for v in vals if v is not None and not isinstance(v, str)
                and math.isfinite(float(v))]
        if not vals:
            continue
        print(f"{rule.metric:24s} {min(vals):10.4g} {float(np.median(vals)):10.4g} "
              f"{max(vals):10.4g}   {rule.kind} {rule.warn} / {rule.fail}")
    secs = [m["qc_seconds"] for m in results.values() if "qc_seconds" in m]
    if secs:
        print(f"QC seconds per subject: median {np.median(secs):.2f} (min {min(secs):.2f}, "
              f"max {max(secs):.2f})")


def print_faults(results: dict) -> None:
    from ketabids.qc.rules import assess

    print(f"\n## faults (fast mode, {len(results)} cases)")
    keys = ["fov_min_mm", "fov_coverage", "brain_dice", "template_correlation",
            "jac_folded_fraction", "logjac_range", "mask_rim_bright", "tiv_ml", "icvs_gm",
            "contrast_wm_gm",
            "cnr", "cjv", "snr_total"]
    for name, metrics in results.items():
        verdict, reasons = assess(metrics)
        print(f"{name:20s} {verdict:5s} {'; '.join(reasons)}")
        print("    " + " ".join(f"{k}={_fmt(metrics.get(k))}" for k in keys if k in metrics))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="demo folder (derivatives/, bids/, work/)")
    parser.add_argument("--real", nargs=3, type=Path, metavar=("OUT", "WORK", "BIDS"))
    parser.add_argument("--faults", action="store_true")
    parser.add_argument("--fault-seed", type=int, default=3)
    parser.add_argument("--omp-nthreads", type=int, default=1)
    parser.add_argument("--cost", type=Path, metavar="T1W",
                        help="time the pipeline and the QC on this T1w (default mode)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from ketabids.io import write_json
    from ketabids.templates import get_template

    everything = {}
    if args.demo:
        tpl = get_template(resolution=2)  # fast mode: 2 mm template outputs
        for deriv in sorted((args.demo / "derivatives").iterdir()):
            if not deriv.is_dir():
                continue
            res = processed_dataset(deriv, args.demo / "bids" / deriv.name,
                                    args.demo / "work" / deriv.name, tpl)
            everything[f"demo-{deriv.name}"] = res
            print_group(f"demo phantoms, {deriv.name} (fast mode)", res)
    if args.real:
        out, work, bids = args.real
        res = processed_dataset(out, bids, work, get_template(resolution=1))
        everything["real"] = res
        print_group("real scans (default mode)", res)
    if args.faults:
        res = fault_results(args.fault_seed, args.omp_nthreads)
        everything["faults"] = res
        print_faults(res)
    if args.cost:
        everything["cost"] = qc_cost(args.cost, args.omp_nthreads)
    if args.json:
        write_json(args.json, everything)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
