"""Cost of the site and confound audit, and of kernel scaling, against a training run.

On the GM-like cohort of ``benchmarks/group.py`` (n = 150, 200,000 voxels, 2 covariates, three
sites, six QC-like metrics), default protocol (10 x 10 outer, 5 inner, 11 C):

1. the observed nested CV and N full-pipeline permutations (default settings; with
   ``--compare-scaling`` also with ``--raw-c-grid``, so the per-permutation cost and the C
   selection - share of folds at the grid's lower edge, flat inner curves - are side by side);
2. the audit (:func:`ketabids.group.audit.run_audit`: leave-site-out nested CV, site
   predictability, associations, QC/covariates-only nested CV) timed on its own;
3. the audit's share of a training run with 1000 permutations, extrapolated from the measured
   per-permutation cost (stated as such).

Usage: python benchmarks/group_audit.py [--n-permutations 20] [--n-jobs 2] [--voxels 200000]
The machine is shared: the 1-min load average is printed with every figure, and CPU times
(``time.process_time``, all threads of this process) beside wall times.
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
    ap.add_argument("--n-permutations", type=int, default=20)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--voxels", type=int, default=200_000)
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--audit-runs", type=int, default=3)
    ap.add_argument("--compare-scaling", action="store_true",
                    help="also time the nested CV and permutations with --raw-c-grid")
    a = ap.parse_args(argv)

    from ketabids.group.audit import run_audit
    from ketabids.group.nested import NestedCVSettings, c_selection_summary, nested_cv
    from ketabids.group.permutation import permutation_test

    print(f"cores: {os.cpu_count()}, load avg at start: {load():.1f}")
    X, y, cov = cohort(a.n, a.voxels, seed=2)
    rng = np.random.default_rng(3)
    sites = np.array(["A", "B", "C"])[np.arange(a.n) % 3]
    variables = pd.DataFrame({"age": cov[:, 0], "sex": np.where(cov[:, 1] > 0, "M", "F")})
    qc = pd.DataFrame({k: rng.normal(m, s_, a.n) for k, m, s_ in (
        ("tiv_ml", 1450, 120), ("cjv", 0.45, 0.05), ("cnr", 3.5, 0.4), ("snr_total", 11, 1.0),
        ("efc", 0.5, 0.03), ("fber", 3000, 400))})
    print(f"## n={a.n}, p={a.voxels}, 10x10 outer, 5 inner, 11 C, covariates k=2, 3 sites")
    per_perm = {}
    cv_time = {}
    cpu = {}
    results = {}
    for scaled in ((True, False) if a.compare_scaling else (True,)):
        s = NestedCVSettings(scale_kernel=scaled)
        t0, c0 = time.perf_counter(), time.process_time()
        res = nested_cv(X, y, covariates=cov, sites=sites, settings=s)
        cv_time[scaled] = time.perf_counter() - t0
        cpu[("cv", scaled)] = time.process_time() - c0
        results[scaled] = res
        c = c_selection_summary(res)
        print(f"kernel scaled={scaled}: nested CV {cv_time[scaled]:.1f} s, pooled BAC "
              f"{res.bac_pooled:.3f}; C at lower edge in {c['share_lower_edge']:.0%} of folds, "
              f"upper {c['share_upper_edge']:.0%}, flat inner curve "
              f"{c['share_flat_inner_curve']:.0%}, median C {c['median_C']:g}; load {load():.1f}")
        if a.n_permutations:
            t0, c0 = time.perf_counter(), time.process_time()
            permutation_test(X, y, covariates=cov, sites=sites, settings=s,
                             n_permutations=a.n_permutations, observed=res, n_jobs=a.n_jobs)
            per_perm[scaled] = (time.perf_counter() - t0) / a.n_permutations
            cpu[("perm", scaled)] = (time.process_time() - c0) / a.n_permutations
            print(f"  {a.n_permutations} permutations (n_jobs={a.n_jobs}): "
                  f"{per_perm[scaled]:.3f} s each (CPU {cpu[('perm', scaled)]:.3f} s); "
                  f"load {load():.1f}")
    s = NestedCVSettings()
    print(f"one nested CV (same settings as the audit's headline): {cv_time[True]:.1f} s "
          f"(CPU {cpu[('cv', True)]:.1f} s)")
    audit_times, audit_cpu = [], []
    for _ in range(a.audit_runs):
        t0, c0 = time.perf_counter(), time.process_time()
        table, warnings, _ = run_audit(X, y, result=results[True], settings=s, covariates=cov,
                                       sites=sites, variables=variables, qc=qc)
        audit_times.append(time.perf_counter() - t0)
        audit_cpu.append(time.process_time() - c0)
    t_audit, c_audit = statistics.median(audit_times), statistics.median(audit_cpu)
    print(f"audit: median {t_audit:.1f} s (CPU {c_audit:.1f} s) of {a.audit_runs} runs "
          f"({', '.join(f'{t:.1f}' for t in audit_times)}); {len(table)} checks, "
          f"{len(warnings)} warnings; load {load():.1f}")
    if per_perm:
        train = cv_time[True] + 1000 * per_perm[True]
        train_cpu = cpu[("cv", True)] + 1000 * cpu[("perm", True)]
        print(f"extrapolated training with 1000 permutations (nested CV + 1000 x measured "
              f"per-permutation cost, features and final model excluded): {train:.0f} s wall, "
              f"{train_cpu:.0f} s CPU; the audit adds {100 * t_audit / train:.1f} % (wall), "
              f"{100 * c_audit / train_cpu:.1f} % (CPU)")
        if False in per_perm:
            print(f"kernel scaling (the default) changes the per-permutation cost by "
                  f"{100 * (per_perm[True] / per_perm[False] - 1):+.0f} % "
                  f"({per_perm[False]:.3f} -> {per_perm[True]:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
