"""Scheduler benchmark: Nipype's MultiProc vs ketabids' MultiProcPlugin, side by side, and when
subjects finish in a real participant run.

Synthetic mode (default). A participant run is a few dozen short nodes per subject. This
builds the same shape without any imaging: ``--subjects`` chains of ``--nodes`` Function nodes
that each sleep ``--work`` seconds (sleeping, so the figures do not depend on the machine's
load), each ending in a ``done_<subject>`` node, runs it with each plugin ``--repeats`` times
(alternating, fresh work folders, same poll interval) and prints per plugin the median wall
time, the main process's CPU time (the scheduler's own cost: the workers' is not in it), when
the first subject finished and how the finishing times spread (shares of the wall time), and
the ideal time (all work spread over the processes). Not a pass/fail test.

    python benchmarks/scheduler.py --subjects 40 --nodes 30 --work 0.1 --repeats 3

Demo mode (``--demo N``). ``ketabids demo --generate-only`` writes N discovery phantoms (2 mm),
then ``ketabids BIDS OUT participant --fast --nprocs P --omp-nthreads 1`` runs in a subprocess;
the time each "sub-X done" line reaches the terminal is recorded. Prints the wall time, the
first and last "done" lines as shares of it and their spread (last - first).

    python benchmarks/scheduler.py --demo 8 --nprocs 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _work(x, seconds):
    import time

    time.sleep(seconds)
    return x + 1


def _done(x):
    return x


def build(base_dir, subjects: int, nodes: int, work: float):
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    wf = pe.Workflow(name="bench_wf", base_dir=str(base_dir))
    for s in range(subjects):
        sub = pe.Workflow(name=f"single_subject_{s:03d}_wf")
        chain = [pe.Node(niu.Function(function=_work, input_names=["x", "seconds"],
                                      output_names=["x"]), name=f"step_{i:02d}")
                 for i in range(nodes)]
        chain[0].inputs.x = s
        for node in chain:
            node.inputs.seconds = work
        sub.add_nodes(chain)
        for a, b in zip(chain, chain[1:]):
            sub.connect(a, "x", b, "x")
        done = pe.Node(niu.Function(function=_done, input_names=["x"], output_names=["x"]),
                       name=f"done_{s:03d}", run_without_submitting=True)
        wf.connect(sub, f"step_{nodes - 1:02d}.x", done, "x")
    return wf


class _DoneTimes:
    def __init__(self):
        self.times = []

    def __call__(self, node, status):
        if status == "end" and node.name.startswith("done_"):
            self.times.append(time.perf_counter())


def one_run(plugin_cls, args) -> dict:
    from ketabids.runner.multiproc import SubjectOf

    with tempfile.TemporaryDirectory() as tmp:
        wf = build(tmp, args.subjects, args.nodes, args.work)
        wf.config["execution"].update({"poll_sleep_duration": args.poll,
                                       "crashdump_dir": tmp, "create_report": False})
        done = _DoneTimes()
        elements = {f"{kind}{s:03d}{tail}": f"{s:03d}" for s in range(args.subjects)
                    for kind, tail in (("single_subject_", "_wf"), ("done_", ""))}
        plugin = plugin_cls(plugin_args={
            "n_procs": args.nprocs, "raise_insufficient": False, "status_callback": done,
            "job_group": SubjectOf(elements, "bench_wf")})
        start, cpu = time.perf_counter(), time.process_time()
        wf.run(plugin=plugin)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    first, last = (min(done.times) - start) / wall, (max(done.times) - start) / wall
    return {"wall": wall, "first": first, "spread": last - first, "cpu": cpu}


def synthetic(args) -> int:
    import logging

    import nipype  # noqa: F401  (sets Nipype's loggers; silenced below)
    from nipype.pipeline.plugins import MultiProcPlugin as NipypeMultiProc

    from ketabids.runner.multiproc import MultiProcPlugin as KetabidsMultiProc

    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    runs = {"nipype MultiProc": [], "ketabids MultiProcPlugin": []}
    for _ in range(args.repeats):
        runs["nipype MultiProc"].append(one_run(NipypeMultiProc, args))
        runs["ketabids MultiProcPlugin"].append(one_run(KetabidsMultiProc, args))
    ideal = args.subjects * args.nodes * args.work / args.nprocs
    print(f"{args.subjects} subjects x {args.nodes} nodes of {args.work} s, {args.nprocs} "
          f"processes, poll {args.poll} s, {args.repeats} runs each; ideal {ideal:.1f} s")
    print("| plugin | median wall s | min | max | scheduler CPU s | first done (share of wall) "
          "| done lines spread over |\n|---|---|---|---|---|---|---|")
    for name, values in runs.items():
        walls = [v["wall"] for v in values]
        print(f"| {name} | {statistics.median(walls):.1f} | {min(walls):.1f} | "
              f"{max(walls):.1f} | {statistics.median(v['cpu'] for v in values):.1f} | "
              f"{statistics.median(v['first'] for v in values):.0%} | "
              f"{statistics.median(v['spread'] for v in values):.0%} |")
    ratio = statistics.median(v["wall"] for v in runs["nipype MultiProc"]) / statistics.median(
        v["wall"] for v in runs["ketabids MultiProcPlugin"])
    print(f"ratio nipype / ketabids (wall): {ratio:.2f}x")
    return 0


def demo(args) -> int:
    root = Path(args.out or tempfile.mkdtemp(prefix="ketabids-sched-"))
    env = dict(os.environ, NIPYPE_NO_ET="1")
    bids = root / "bids" / "discovery"
    if not bids.is_dir():
        subprocess.run([sys.executable, "-m", "ketabids", "demo", str(root), "--generate-only",
                        "--n-discovery", str(args.demo), "--n-external", "1",
                        "--nprocs", str(args.nprocs)], check=True, env=env,
                       capture_output=True)
    out = root / f"out-{time.time_ns()}"
    cmd = [sys.executable, "-m", "ketabids", str(bids), str(out), "participant", "--fast",
           "--nprocs", str(args.nprocs), "--omp-nthreads", "1", "--skip-bids-validation",
           "-w", str(root / "work")]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    done = []
    for line in proc.stderr:
        if " done, " in line or (" failed in " in line and "sub-" in line):
            done.append((time.perf_counter() - start, line.strip()))
            if args.verbose:
                print(f"{done[-1][0]:7.1f} s  {line.strip()}", flush=True)
    proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not done:
        print(f"the run failed (exit {proc.returncode}); {len(done)} done lines")
        return 1
    first, last = done[0][0] / wall, done[-1][0] / wall
    print(f"{args.demo} demo phantoms (2 mm, --fast), --nprocs {args.nprocs} "
          f"--omp-nthreads 1: wall {wall:.0f} s; first 'done' line at {done[0][0]:.0f} s "
          f"({first:.0%} of the wall time), last at {done[-1][0]:.0f} s ({last:.0%}); "
          f"spread {last - first:.0%} of the wall time")
    print("done lines at (s): " + ", ".join(f"{t:.0f}" for t, _ in done))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--work", type=float, default=0.1, help="seconds per node")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.02, help="poll_sleep_duration (s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo", type=int, metavar="N",
                        help="time a real participant run of N demo phantoms instead")
    parser.add_argument("--out", help="demo mode: folder for the phantoms and outputs")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    return demo(args) if args.demo else synthetic(args)


if __name__ == "__main__":
    raise SystemExit(main())
