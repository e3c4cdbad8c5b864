"""CPU time of the participant level, this version side by side with another (e.g. 0.1.0).

Runs the participant level as users do (``run.py BIDS OUT participant``, one subject per call,
a fresh process each time) with this source tree and with ``--baseline TREE`` (e.g. a
``git worktree`` of 0.1.0 = ac53451), alternating the two versions run by run so that a load
change on a shared machine hits both, and prints per input the CPU seconds (user + sys of the
whole process tree, GNU time; ``getrusage(RUSAGE_CHILDREN)`` without it), wall seconds, their
medians and the ratio of the medians (this version / baseline). Not a pass/fail test.

    python benchmarks/speed_vs_010.py --baseline /work/base-010 --mode fast --phantoms 2 \
        --phantom-mm 2 --omp-nthreads 1 --repeats 3
    python benchmarks/speed_vs_010.py --baseline /work/base-010 --mode default \
        --scans aomic seg3d stroke --omp-nthreads 2 --repeats 1

Inputs: the shared real scans (``../shared/data/real-t1w``, ``$KETABIDS_SHARED_DATA``
overrides) and/or the demo's phantoms (:func:`ketabids.demo.head.simulate_subject`, with
skull, seeds 1..N). Both versions read the same BIDS dataset; the outputs are deleted after
each run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KETABIDS_SHARED_DATA") or ROOT.parent / "shared" / "data")
SCANS = {
    "aomic": "aomic-piop2_sub-0001_T1w.nii.gz",
    "seg3d": "seg3d_T1w.nii.gz",
    "stroke": "cstar-stroke_desc-brain_T1w.nii.gz",
}


def run_once(tree: Path, bids: Path, label: str, tmp: Path, *, mode: str, nprocs: int,
             omp_nthreads: int, seed: int, keep: Path | None = None) -> dict:
    """One participant run of ``tree``'s ``run.py`` in a fresh process: CPU and wall seconds.
    ``keep``: the run's output folder is moved there (replacing it) instead of deleted."""
    out, work, stats = tmp / "out", tmp / "work", tmp / "time.txt"
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(tree / "run.py"), str(bids), str(out), "participant",
           "--participant-label", label, "--nprocs", str(nprocs), "--omp-nthreads",
           str(omp_nthreads), "--seed", str(seed), "-w", str(work), "--skip-bids-validation"]
    cmd += ["--fast"] if mode == "fast" else []
    timer = Path("/usr/bin/time")
    if timer.exists():
        cmd = [str(timer), "-f", "%e %U %S %M", "-o", str(stats)] + cmd
    env = dict(os.environ, PYTHONPATH=str(tree))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if keep is not None and out.is_dir():
        shutil.rmtree(keep, ignore_errors=True)
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out), str(keep))
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree} failed on {label}:\n{proc.stderr[-3000:]}")
    if timer.exists():
        wall_s, user, system, kb = stats.read_text().split()[-4:]
        return {"cpu_s": float(user) + float(system), "wall_s": float(wall_s),
                "peak_gb": float(kb) / 1e6}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": cpu, "wall_s": wall, "peak_gb": after.ru_maxrss / 1e6}


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values) + f" (median {statistics.median(values):.1f})"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, required=True, metavar="TREE",
                    help="source tree of the other version (e.g. a worktree of 0.1.0)")
    ap.add_argument("--mode", choices=["default", "fast"], default="fast")
    ap.add_argument("--scans", nargs="*", default=[], choices=sorted(SCANS))
    ap.add_argument("--phantoms", type=int, default=0, help="demo phantoms (seeds 1..N)")
    ap.add_argument("--phantom-mm", type=float, default=2.0, help="the demo's are 2 mm")
    ap.add_argument("--nprocs", type=int, default=1)
    ap.add_argument("--omp-nthreads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the runs here")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="keep each version's last output folder as DIR/<input>-<version> "
                         "(e.g. for benchmarks/real_fidelity.py's compare_to_reference)")
    args = ap.parse_args(argv)

    import nibabel as nib

    from ketabids.testing import make_bids_tree

    inputs = []
    for key in args.scans:
        path = DATA / "real-t1w" / SCANS[key]
        if not path.exists():
            print(f"skip {key}: {path} not found", file=sys.stderr)
            continue
        inputs.append((key, nib.load(path)))
    if args.phantoms:
        from ketabids.demo.head import Acquisition, simulate_subject
        from ketabids.templates import get_template

        tpl = get_template(resolution=1)
        for seed in range(1, args.phantoms + 1):
            sub = simulate_subject(tpl, seed=seed,
                                   acquisition=Acquisition(resolution=args.phantom_mm))
            inputs.append((f"phantom{seed}", sub.t1w))
    trees = {"this": ROOT, "baseline": args.baseline.resolve()}
    results = []
    with tempfile.TemporaryDirectory(prefix="ketabids-speed-") as tmp:
        tmp = Path(tmp)
        for label, img in inputs:
            bids = make_bids_tree(tmp / f"bids-{label}", {label: {"anat": ["T1w"]}},
                                  image_factory=lambda seed=0, img=img: img)
            runs = {"this": [], "baseline": []}
            for rep in range(args.repeats):
                # alternate, starting with the other version every other repeat
                order = ["baseline", "this"] if rep % 2 == 0 else ["this", "baseline"]
                for which in order:
                    res = run_once(trees[which], bids, label, tmp / f"run-{which}",
                                   mode=args.mode, nprocs=args.nprocs,
                                   omp_nthreads=args.omp_nthreads, seed=args.seed,
                                   keep=args.keep and args.keep / f"{label}-{which}")
                    res["load1"] = os.getloadavg()[0]
                    runs[which].append(res)
                    print(json.dumps({"input": label, "version": which, **res}),
                          file=sys.stderr, flush=True)
            cpu = {k: [r["cpu_s"] for r in v] for k, v in runs.items()}
            wall = {k: [r["wall_s"] for r in v] for k, v in runs.items()}
            results.append({"input": label, "runs": runs, "ratio_cpu": statistics.median(
                cpu["this"]) / statistics.median(cpu["baseline"]), "ratio_wall": statistics.median(
                wall["this"]) / statistics.median(wall["baseline"])})
    print(f"\nmode {args.mode}, --nprocs {args.nprocs} --omp-nthreads {args.omp_nthreads}, "
          f"baseline {args.baseline}\n")
    print("| input | baseline CPU s | this CPU s | CPU ratio | baseline wall s | this wall s "
          "| wall ratio |\n|---|---|---|---|---|---|---|")
    for r in results:
        c = {k: [x["cpu_s"] for x in v] for k, v in r["runs"].items()}
        w = {k: [x["wall_s"] for x in v] for k, v in r["runs"].items()}
        print(f"| {r['input']} | {_fmt(c['baseline'])} | {_fmt(c['this'])} | "
              f"{r['ratio_cpu']:.2f} | {_fmt(w['baseline'])} | {_fmt(w['this'])} | "
              f"{r['ratio_wall']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
