"""Cost of the participant report and QC nodes, re-run from a finished run's recorded inputs.

``report_section`` (:class:`ketabids.interfaces.reports.ReportSection`) and ``subject_qc``
(:class:`ketabids.interfaces.qc.SubjectQC`) are leaves of the participant graph: their inputs
(``_inputs.pklz`` in each node folder of a Nipype work dir) are files that a finished run keeps.
Each repeat runs each node in a fresh Python process (antspyx and Nipype imported first, as in
the participant run, where earlier nodes imported them) and records its wall and CPU seconds
(``time.process_time``: all threads of the process). With ``--compare-with SRC`` (the root of
another ketabids source tree, e.g. ``git worktree add /tmp/old main``) the two trees alternate
in every repeat, so drift of a shared machine hits both, and the outputs are compared: QC
records key by key (timing keys excepted), report figures pixel by pixel.

    python benchmarks/report_qc_nodes.py WORK_DIR --repeats 3
    python benchmarks/report_qc_nodes.py WORK_DIR --repeats 3 --compare-with /tmp/old
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import os, sys, json, time
src = sys.argv[4]
if src:  # the other tree first: drop the editable install's finder of this one
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, src)
import ants, nipype  # noqa: F401 - imported by earlier nodes of a participant run
from nipype.utils.filemanip import loadpkl
node, inputs, out = sys.argv[1], sys.argv[2], sys.argv[3]
if node == "report_section":
    from ketabids.interfaces.reports import ReportSection as Interface
else:
    from ketabids.interfaces.qc import SubjectQC as Interface
import ketabids
assert (not src) or ketabids.__file__.startswith(src), ketabids.__file__
os.makedirs(out, exist_ok=True)
os.chdir(out)
iface = Interface(**loadpkl(inputs))
wall, cpu = time.perf_counter(), time.process_time()
iface.run()
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}))
"""

NODES = ("report_section", "subject_qc")
_TIMING_KEYS = {"qc_seconds", "qc_cpu_seconds"}


def _node_dirs(work: Path) -> dict[str, Path]:
    found = {}
    for node in NODES:
        hits = sorted(work.rglob(f"{node}/_inputs.pklz"))
        if not hits:
            raise SystemExit(f"{work}: no {node}/_inputs.pklz (a finished participant run's "
                             "work dir is needed)")
        if len(hits) > 1:
            raise SystemExit(f"{work}: {len(hits)} {node} nodes; give one subject's folder")
        found[node] = hits[0]
    return found


def _run(node: str, inputs: Path, out: Path, src: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, node, str(inputs), str(out), src],
                          capture_output=True, text=True, env={**__import__("os").environ,
                                                               "MPLBACKEND": "Agg"})
    if proc.returncode:
        raise SystemExit(f"{node} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _figures(html: Path) -> list:
    import base64
    import io
    import re

    import matplotlib.image as mpimg

    return [mpimg.imread(io.BytesIO(base64.b64decode(uri)), format="png")
            for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', html.read_text())]


def compare_outputs(a: Path, b: Path) -> dict:
    """QC keys whose values differ (timing keys excepted) and, per report figure, the share of
    pixels that differ at all and by more than a quarter of the range."""
    qa = json.loads((a / "subject_qc" / "qc_metrics.json").read_text())
    qb = json.loads((b / "subject_qc" / "qc_metrics.json").read_text())
    keys = sorted(k for k in set(qa) | set(qb)
                  if k not in _TIMING_KEYS and repr(qa.get(k)) != repr(qb.get(k)))
    figures = []
    for fa, fb in zip(_figures(a / "report_section" / "report_section.html"),
                      _figures(b / "report_section" / "report_section.html")):
        if fa.shape != fb.shape:
            figures.append({"shape": (fa.shape, fb.shape)})
            continue
        diff = abs(fa[..., :3].astype(float) - fb[..., :3]).max(-1)
        figures.append({"differ": float((diff > 0).mean()),
                        "differ_25": float((diff > .25).mean())})
    return {"qc_keys_differing": keys, "figures": figures}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path, help="Nipype work dir of a finished run "
                        "(one subject), or its single_subject_*_wf folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-with", default="", help="root of another ketabids tree")
    args = parser.parse_args(argv)
    nodes = _node_dirs(args.work_dir)
    trees = {"this": ""}
    if args.compare_with:
        trees["other"] = str(Path(args.compare_with).resolve())
    times = {(t, n): [] for t in trees for n in NODES}
    with tempfile.TemporaryDirectory(prefix="ketabids-bench-") as tmp:
        for repeat in range(args.repeats):
            order = list(trees.items()) if repeat % 2 == 0 else list(trees.items())[::-1]
            for tree, src in order:
                for node in NODES:
                    times[tree, node].append(_run(node, nodes[node],
                                                  Path(tmp) / tree / node, src))
        print(f"median of {args.repeats} (wall / CPU seconds, fresh process per run)")
        for node in NODES:
            line = [f"{node:15s}"]
            for tree in trees:
                wall = statistics.median(r["wall"] for r in times[tree, node])
                cpu = statistics.median(r["cpu"] for r in times[tree, node])
                line.append(f"{tree}: {wall:6.2f} / {cpu:6.2f}")
            if "other" in trees:
                ratio = (statistics.median(r["cpu"] for r in times["other", node])
                         / statistics.median(r["cpu"] for r in times["this", node]))
                line.append(f"other/this CPU {ratio:.1f}x")
            print("   ".join(line))
        if "other" in trees:
            print(json.dumps(compare_outputs(Path(tmp) / "this", Path(tmp) / "other")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
