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

from ketabids.demo.head import simulate_subject
from ketabids.templates import get_template

SETTINGS = {
    "2 mm, skull": dict(resolution=2.0, skull=True, orientation="RAS"),
    "1 mm, no skull, PIL": dict(resolution=1.0, skull=False, orientation="PIL"),
}


def time_setting(kwargs: dict, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` phantoms (seeds 1..repeats) after one warm-up call."""
    template = get_template(resolution=int(kwargs["resolution"]))
    simulate_subject(template, seed=0, **kwargs)
    times = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        simulate_subject(template, seed=seed, **kwargs)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print("| phantom | median s | min s | max s |")
    print("|---|---|---|---|")
    for label, kwargs in SETTINGS.items():
        times = time_setting(kwargs, args.repeats)
        print(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} "
              f"| {max(times):.2f} |")


if __name__ == "__main__":
    main()
