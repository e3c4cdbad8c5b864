"""Cost of the site and confound audit against the training run it belongs to.

On the GM-like cohort of ``benchmarks/group.py`` (``--n`` participants x ``--voxels`` voxels,
2 covariates, three sites, six QC-like metrics), default protocol (10 x 10 outer, 5 inner,
11 C), ``--runs`` side-by-side runs, each:

1. the training's computations as ``ketabids group`` does them (:mod:`ketabids.group.train`):
   one ``X X^T``, the observed nested CV, ``--n-permutations`` full-pipeline permutations, the
   final model; CPU seconds (``time.process_time``: every thread of this process);
2. the audit (:func:`ketabids.group.audit.run_audit`: leave-site-out nested CV, site
   predictability, associations, QC/covariates-only nested CV) given the training's ``X X^T``,
   as ``ketabids group`` runs it (what ``--skip-audit`` leaves out); CPU seconds.

Reported: the medians over the runs, and the audit's share of a training with 1000
permutations, extrapolated from the measured per-permutation cost (stated as such: a 1000-
permutation training takes hours of CPU). The audit's tables of the runs are compared (equal).
``--compare-scaling`` also times the nested CV and permutations with ``--raw-c-grid``.

Usage: python benchmarks/group_audit.py [--n 150] [--voxels 200000] [--n-permutations 5]
       [--runs 3] [--n-jobs 1]
The machine is shared: the 1-min load average is printed with every figure.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from group import cohort, load  # noqa: E402  (benchmarks/group.py)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-permutations", type=int, default=5)
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--voxels", type=int, default=200_000)
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compare-scaling", action="store_true",
                    help="also time the nested CV and permutations with --raw-c-grid")
    a = ap.parse_args(argv)

    from ketabids.group.audit import run_audit
    from ketabids.group.estimator import linear_kernel
    from ketabids.group.nested import (
        CVData,
        NestedCVSettings,
        c_selection_summary,
        fit_final_model,
        nested_cv,
    )
    from ketabids.group.permutation import permutation_test

    print(f"cores: {os.cpu_count()}, load avg at start: {load():.1f}")
    X, y, cov = cohort(a.n, a.voxels, seed=2)
    rng = np.random.default_rng(3)
    sites = np.array(["A", "B", "C"])[np.arange(a.n) % 3]
    variables = pd.DataFrame({"age": cov[:, 0], "sex": np.where(cov[:, 1] > 0, "M", "F")})
    qc = pd.DataFrame({k: rng.normal(m, s_, a.n) for k, m, s_ in (
        ("tiv_ml", 1450, 120), ("cjv", 0.45, 0.05), ("cnr", 3.5, 0.4), ("snr_total", 11, 1.0),
        ("efc", 0.5, 0.03), ("fber", 3000, 400))})
    print(f"## n={a.n}, p={a.voxels}, 10x10 outer, 5 inner, 11 C, covariates k=2, 3 sites, "
          f"{a.n_permutations} permutations per run (n_jobs={a.n_jobs})")
    kw = dict(covariates=cov, sites=sites)
    fig = {k: [] for k in ("gram", "cv", "perm", "final", "audit")}
    tables = []
    for run in range(a.runs):
        s = NestedCVSettings()
        c0 = time.process_time()
        gram = linear_kernel(X)
        c1 = time.process_time()
        res = nested_cv(X, y, settings=s, gram=gram, **kw)
        c2 = time.process_time()
        if a.n_permutations:
            permutation_test(CVData(X, y, gram=gram, **kw), settings=s,
                             n_permutations=a.n_permutations, observed=res, n_jobs=a.n_jobs)
        c3 = time.process_time()
        fit_final_model(X, y, settings=s, **kw)
        c4 = time.process_time()
        table, warnings, _ = run_audit(CVData(X, y, gram=gram, **kw), result=res, settings=s,
                                       variables=variables, qc=qc)
        c5 = time.process_time()
        tables.append(table)
        for k, v in zip(fig, (c1 - c0, c2 - c1, (c3 - c2) / max(a.n_permutations, 1), c4 - c3,
                              c5 - c4)):
            fig[k].append(v)
        train = c4 - c0
        print(f"run {run + 1}: CPU s: X X^T {c1 - c0:.1f}, nested CV {c2 - c1:.1f}, "
              f"{a.n_permutations} permutations {c3 - c2:.1f}, final model {c4 - c3:.1f} "
              f"(training {train:.1f}); audit {c5 - c4:.1f} = {100 * (c5 - c4) / train:.1f} % "
              f"of this run's training; load {load():.1f}")
    med = {k: statistics.median(v) for k, v in fig.items()}
    same = all(t.equals(tables[0]) for t in tables[1:])
    print(f"audit tables of the {a.runs} runs identical: {same}; {len(tables[0])} checks, "
          f"{int((tables[0].status == 'warn').sum())} warnings")
    for n_perm in (a.n_permutations, 1000):
        train = med["gram"] + med["cv"] + n_perm * med["perm"] + med["final"]
        what = "measured" if n_perm == a.n_permutations else (
            "extrapolated: median per-permutation cost x 1000")
        print(f"training with {n_perm} permutations ({what}): {train:.0f} CPU s; the audit "
              f"(median {med['audit']:.1f} CPU s) adds {100 * med['audit'] / train:.1f} %")
    if a.compare_scaling:
        for scaled in (True, False):
            s = NestedCVSettings(scale_kernel=scaled)
            c0 = time.process_time()
            res = nested_cv(X, y, settings=s, gram=gram, **kw)
            c1 = time.process_time()
            permutation_test(CVData(X, y, gram=gram, **kw), settings=s,
                             n_permutations=a.n_permutations, observed=res, n_jobs=a.n_jobs)
            per = (time.process_time() - c1) / max(a.n_permutations, 1)
            c = c_selection_summary(res)
            print(f"kernel scaled={scaled}: nested CV {c1 - c0:.1f} CPU s, {per:.2f} CPU s per "
                  f"permutation; C at lower edge in {c['share_lower_edge']:.0%} of folds, upper "
                  f"{c['share_upper_edge']:.0%}, flat inner curve "
                  f"{c['share_flat_inner_curve']:.0%}; load {load():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
