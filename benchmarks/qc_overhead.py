"""What the QC gate adds to the participant level: wall time per subject with and without QC.

For each repeat, the participant graph (:func:`ketabids.workflows.base.init_participant_wf`,
Linear plugin, ``--omp-nthreads`` threads: the BIDS-App's graph) runs on the same T1w twice,
from fresh work and output folders: once with ``qc=False`` (no ``subject_qc`` node, no QC
sink) and once with QC plus the end-of-run cohort update
(:func:`ketabids.runner.cohort_qc.update_cohort_qc`: qc.tsv, qc.json, qc.html). The order
alternates between repeats so that drift of the shared machine hits both. Printed: the median
wall seconds of each variant, their ratio, and the QC node's own duration (Nipype's runtime
record) as a share of the sum of all node durations of the run (less sensitive to other load
on the machine than the difference of two wall times).

    python benchmarks/qc_overhead.py --repeats 3                       # 2 mm phantom, fast
    python benchmarks/qc_overhead.py --t1w /path/sub-X_T1w.nii.gz --default --repeats 1
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _phantom_bids(root: Path, seed: int, resolution: float) -> Path:

    from ketabids.demo.head import Acquisition, simulate_subject

    t1w = simulate_subject(seed=seed, acquisition=Acquisition(resolution=resolution)).t1w
    return _bids_with(root, t1w)


def _bids_with(root: Path, img) -> Path:
    import json

    import nibabel as nib

    folder = root / "sub-01" / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(img, folder / "sub-01_T1w.nii.gz")
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "qc overhead", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    return root


def _node_seconds(work: Path) -> dict[str, float]:
    """Nipype's recorded duration of every node that ran under ``work``."""
    import gzip
    import pickle

    out = {}
    for path in work.rglob("result_*.pklz"):
        try:
            with gzip.open(path, "rb") as fh:
                res = pickle.load(fh)
            duration = getattr(res.runtime, "duration", None)
        except Exception:  # noqa: BLE001 - a benchmark reads what it can
            continue
        if isinstance(duration, (int, float)):
            out[str(path.parent.relative_to(work))] = float(duration)
    return out


def one_run(bids: Path, base: Path, *, qc: bool, fast: bool, omp_nthreads: int) -> dict:
    from ketabids.anat.settings import ProcessingSettings
    from ketabids.bids.derivatives import write_bidsignore, write_derivative_description
    from ketabids.bids.layout import collect_t1w, load_layout
    from ketabids.config import ParticipantConfig
    from ketabids.runner.cohort_qc import update_cohort_qc
    from ketabids.runner.config import configure_workflow, itk_threads, run_workflow
    from ketabids.workflows.base import init_participant_wf

    out, work = base / "out", base / "work"
    out.mkdir(parents=True)
    inputs = collect_t1w(load_layout(bids), ["01"])
    write_derivative_description(out, bids)
    write_bidsignore(out)
    with itk_threads(omp_nthreads):
        start = time.perf_counter()
        config = ParticipantConfig(bids_dir=bids, output_dir=out,
                                   processing=ProcessingSettings.for_fast(fast),
                                   omp_nthreads=omp_nthreads, seed=1)
        wf = init_participant_wf(inputs=inputs, config=config, qc=qc)
        wf.base_dir = str(work)
        configure_workflow(wf, crashdump_dirs={}, default_crashdump=out / "logs")
        run_workflow(wf, "Linear", {})
        cohort = 0.0
        if qc:
            t = time.perf_counter()
            update_cohort_qc(out)
            cohort = time.perf_counter() - t
        wall = time.perf_counter() - start
    nodes = _node_seconds(work)
    qc_node = sum(v for k, v in nodes.items() if k.endswith("subject_qc"))
    return {"wall": wall, "cohort": cohort, "node_sum": sum(nodes.values()), "qc_node": qc_node}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--t1w", type=Path, help="a real T1w (default: a demo phantom)")
    parser.add_argument("--resolution", type=float, default=2.0, help="phantom voxel size")
    parser.add_argument("--default", action="store_true", help="default mode (not --fast)")
    parser.add_argument("--omp-nthreads", type=int, default=1)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="qc-overhead-"))
    if args.t1w:
        import nibabel as nib

        bids = _bids_with(tmp / "bids", nib.load(str(args.t1w)))
        what = args.t1w.name
    else:
        bids = _phantom_bids(tmp / "bids", 3, args.resolution)
        what = f"phantom {args.resolution:g} mm"
    fast = not args.default
    runs = {False: [], True: []}
    for rep in range(args.repeats):
        order = (False, True) if rep % 2 == 0 else (True, False)
        for qc in order:
            res = one_run(bids, tmp / f"r{rep}-{'qc' if qc else 'noqc'}", qc=qc, fast=fast,
                          omp_nthreads=args.omp_nthreads)
            runs[qc].append(res)
            print(f"  repeat {rep} {'with' if qc else 'without'} QC: {res['wall']:.1f} s "
                  f"(QC node {res['qc_node']:.1f} s, cohort update {res['cohort']:.1f} s)",
                  flush=True)
    med = {qc: statistics.median(r["wall"] for r in rs) for qc, rs in runs.items()}
    qc_node = statistics.median(r["qc_node"] for r in runs[True])
    cohort = statistics.median(r["cohort"] for r in runs[True])
    share = statistics.median((r["qc_node"] + r["cohort"]) / r["node_sum"] for r in runs[True])
    mode = "fast" if fast else "default"
    print(f"\n## QC overhead, {what}, {mode} mode, {args.omp_nthreads} thread(s), "
          f"{args.repeats} repeat(s), medians")
    print(f"{'variant':18s} {'wall s':>8s}")
    print(f"{'without QC':18s} {med[False]:8.1f}")
    print(f"{'with QC':18s} {med[True]:8.1f}")
    print(f"ratio with/without: {med[True] / med[False]:.3f} "
          f"({100 * (med[True] / med[False] - 1):+.1f} %)")
    print(f"QC node {qc_node:.2f} s + cohort update {cohort:.2f} s = {100 * share:.1f} % of the "
          "summed node time of the run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
