"""Phantom generation benchmark: wall seconds of :func:`ketabids.demo.head.simulate_subject`.

Times the demo's head model at 2 mm (with skull, as every demo subject) and at 1 mm (without
skull, in a non-RAS storage order, as the 1 mm phantoms of the tests and benchmarks), after one
warm-up call that fills the template and head-model caches. Prints the median of ``--repeats``
calls per setting. Not a pass/fail test: the suite checks what the phantoms contain, this
script how long they take.

    python benchmarks/phantom_speed.py --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import time

from ketabids.demo.head import Acquisition, simulate_subject
from ketabids.templates import get_template

SETTINGS = {
    "2 mm, skull": Acquisition(resolution=2.0, skull=True, orientation="RAS"),
    "1 mm, no skull, PIL": Acquisition(resolution=1.0, skull=False, orientation="PIL"),
}


def time_setting(acquisition: Acquisition, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` phantoms (seeds 1..repeats) after one warm-up call."""
    template = get_template(resolution=int(acquisition.resolution))
    simulate_subject(template, seed=0, acquisition=acquisition)
    times = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        simulate_subject(template, seed=seed, acquisition=acquisition)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print("| phantom | median s | min s | max s |")
    print("|---|---|---|---|")
    for label, acquisition in SETTINGS.items():
        times = time_setting(acquisition, args.repeats)
        print(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} "
              f"| {max(times):.2f} |")


if __name__ == "__main__":
    main()
