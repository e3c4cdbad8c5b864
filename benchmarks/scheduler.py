"""Scheduler benchmark: Nipype's MultiProc vs ketabids' MultiProcPlugin, side by side.

A participant run is a few dozen short nodes per subject. This builds the same shape without
any imaging: ``--subjects`` chains of ``--nodes`` Function nodes that each sleep ``--work``
seconds (sleeping, so the figures do not depend on the machine's load), runs it with each
plugin ``--repeats`` times (alternating, fresh work folders, same poll interval) and prints
the median wall time of each, their ratio, and the ideal time (all work spread over the
processes). Not a pass/fail test.

    python benchmarks/scheduler.py --subjects 40 --nodes 30 --work 0.1 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def _work(x, seconds):
    import time

    time.sleep(seconds)
    return x + 1


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
        wf.add_nodes([sub])
    return wf


def one_run(plugin_cls, args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        wf = build(tmp, args.subjects, args.nodes, args.work)
        wf.config["execution"].update({"poll_sleep_duration": args.poll,
                                       "crashdump_dir": tmp, "create_report": False})
        plugin = plugin_cls(plugin_args={"n_procs": args.nprocs, "raise_insufficient": False})
        start = time.perf_counter()
        wf.run(plugin=plugin)
        return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--work", type=float, default=0.1, help="seconds per node")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.02, help="poll_sleep_duration (s)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import logging

    import nipype  # noqa: F401  (sets Nipype's loggers; silenced below)
    from nipype.pipeline.plugins import MultiProcPlugin as NipypeMultiProc

    from ketabids.runner.multiproc import MultiProcPlugin as KetabidsMultiProc

    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    times = {"nipype MultiProc": [], "ketabids MultiProcPlugin": []}
    for _ in range(args.repeats):
        times["nipype MultiProc"].append(one_run(NipypeMultiProc, args))
        times["ketabids MultiProcPlugin"].append(one_run(KetabidsMultiProc, args))
    ideal = args.subjects * args.nodes * args.work / args.nprocs
    print(f"{args.subjects} subjects x {args.nodes} nodes of {args.work} s, {args.nprocs} "
          f"processes, poll {args.poll} s, {args.repeats} runs each; ideal {ideal:.1f} s")
    print("| plugin | median wall s | min | max |\n|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | "
              f"{max(values):.1f} |")
    ratio = statistics.median(times["nipype MultiProc"]) / statistics.median(
        times["ketabids MultiProcPlugin"])
    print(f"ratio nipype / ketabids: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
