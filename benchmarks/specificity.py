"""Cost of the evidence analyses of ketabids.group.specificity and ketabids.group.utility
(printed table, not pass/fail).

1. The treatment-specificity analysis of a two-arm prediction (per-arm metrics with 2000
   bootstrap resamples each, BAC/AUC differences with 2000 stratified bootstrap resamples and
   N arm permutations, the logistic interaction model) at n participants (half per arm).
2. The decision curve (99 thresholds) of a training run's out-of-fold probabilities
   (10 repeats x n) and the calibration intercept/slope of a prediction.

Medians of --repeats runs. Usage: python benchmarks/specificity.py [--n 100]
[--n-permutations 1000] [--repeats 5]. The machine is shared: the 1-min load average is printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from scipy import special


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def main(argv=None):
    from ketabids.group.specificity import specificity_analysis
    from ketabids.group.utility import calibration_intercept_slope, decision_curve

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-permutations", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n = args.n
    arm = np.repeat(["ketamine", "saline"], [n - n // 2, n // 2])
    d = rng.normal(size=n)
    y = (rng.random(n) < special.expit(np.where(arm == "ketamine", 2 * d, 0.0))).astype(int)
    proba = special.expit(d)
    oof = special.expit(d[None] + rng.normal(0, 0.3, (10, n)))
    rows = [
        (f"specificity_analysis n={n}, 2000 bootstrap, {args.n_permutations} permutations",
         lambda: specificity_analysis(y, d, arm, treatment_arm="ketamine",
                                      reference_arm="saline", proba=proba,
                                      n_permutations=args.n_permutations)),
        (f"decision_curve 10 repeats x n={n}, 99 thresholds", lambda: decision_curve(y, oof)),
        (f"calibration_intercept_slope n={n}", lambda: calibration_intercept_slope(y, proba)),
    ]
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'analysis':<72} {'median s':>9} {'min':>7} {'max':>7}")
    for name, fn in rows:
        med, lo, hi = timed(fn, args.repeats)
        print(f"{name:<72} {med:>9.3f} {lo:>7.3f} {hi:>7.3f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
