"""Group-level engine benchmarks (printed tables, not pass/fail).

1. Side by side on a reduced protocol: the sklearn reference (Pipeline(covariate regression,
   SVC(kernel='linear', class_weight='balanced')) in GridSearchCV on the same folds) vs
   ketabids' kernel engine: medians of repeated timings, ratio, max |decision difference|.
2. libsvm fallbacks: how many dual problems the batched solver hands to libsvm
   (``SVC(kernel='precomputed')``) per nested CV, and their share of its run time.
3. Full protocol (10 x 10 outer, 5 inner, 11 C) on n = 150 x ~200k voxels WITH
   N full-pipeline permutations: wall time and peak memory (ru_maxrss).

Usage: python benchmarks/group.py [--n-permutations 1000] [--n-jobs 2] [--voxels 200000]
The machine is shared: the 1-min load average is printed with every figure.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np


def load():
    return os.getloadavg()[0]


def cohort(n, p, seed=0, k=2):
    """Smooth GM-like vectors with covariate effects and a weak planted effect."""
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(seed)
    y = rng.permutation(np.r_[np.ones(n // 2 - 5), np.zeros(n - n // 2 + 5)]).astype(int)
    cov = np.column_stack([rng.normal(45, 12, n), rng.integers(0, 2, n)])[:, :k]
    X = np.empty((n, p), np.float32)
    for i in range(0, n, 25):                              # chunks keep memory low
        z = gaussian_filter1d(rng.standard_normal((min(25, n - i), p)).astype(np.float32), 3,
                              axis=1)
        X[i:i + 25] = 0.5 + 0.08 * z / 0.2
    X += (0.003 * (cov[:, :1] - 45) * rng.standard_normal(p).astype(np.float32)
          ).astype(np.float32)
    X[:, : p // 40] += (0.02 * (2 * y[:, None] - 1)).astype(np.float32)
    return X, y, cov


def side_by_side(n=60, p=20_000, repeats=3):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    from ketabids.group import NestedCVSettings, nested_cv
    from ketabids.group.nested import make_scheme
    from ketabids.group.preprocessing import CovariateRegressor

    X, y, cov = cohort(n, p, seed=1)
    s = NestedCVSettings(n_repeats=1, n_outer=5, n_inner=5, random_state=1)
    outer, inner = make_scheme(y, None, s)
    Xa = np.column_stack([X.astype(np.float64), cov])

    def reference():
        dec = np.zeros(n)
        for o in range(s.n_outer):
            tr = np.flatnonzero(outer[0] != o)
            te = np.flatnonzero(outer[0] == o)
            pos = {row: j for j, row in enumerate(tr)}
            splits = [(np.array([pos[i] for i in tr if inner[0, o, i] != f]),
                       np.array([pos[i] for i in tr if inner[0, o, i] == f]))
                      for f in range(s.n_inner)]
            gs = GridSearchCV(make_pipeline(CovariateRegressor(cov.shape[1]),
                                            SVC(kernel="linear", class_weight="balanced",
                                                tol=1e-10)),
                              {"svc__C": list(s.C_grid)}, scoring="balanced_accuracy",
                              cv=splits)
            gs.fit(Xa[tr], y[tr])
            dec[te] = gs.decision_function(Xa[te])
        return dec

    t_ref, t_ket = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        d_ref = reference()
        t_ref.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        d_ket = nested_cv(X, y, covariates=cov, settings=s).decision[0]
        t_ket.append(time.perf_counter() - t0)
    fits = s.n_outer * (s.n_inner * len(s.C_grid) + 1)
    print(f"## side by side: n={n}, p={p}, 1 x {s.n_outer} outer, {s.n_inner} inner, "
          f"{len(s.C_grid)} C ({fits} SVC fits), covariates k={cov.shape[1]}")
    print("| engine | median s | runs |")
    print("|---|---|---|")
    print(f"| sklearn Pipeline + GridSearchCV | {statistics.median(t_ref):.2f} | "
          f"{', '.join(f'{t:.2f}' for t in t_ref)} |")
    print(f"| ketabids kernel engine (incl. metrics, Platt, weights) | "
          f"{statistics.median(t_ket):.3f} | {', '.join(f'{t:.3f}' for t in t_ket)} |")
    print(f"ratio (median): {statistics.median(t_ref) / statistics.median(t_ket):.0f}x; "
          f"max |decision difference| = {np.abs(d_ref - d_ket).max():.2e}; "
          f"load avg {load():.1f}")


def libsvm_calls(n=40, p=20_000, n_permutations=10):
    """How often the engine hands a problem to libsvm, and what those calls cost."""
    import ketabids.group.kernels as kernels
    from ketabids.group import CVData, NestedCVSettings, permutation_test

    X, y, cov = cohort(n, p, seed=2)
    s = NestedCVSettings(n_outer=min(10, int(np.bincount(y).min())))
    calls, spent = [0], [0.0]
    solve = kernels.libsvm_solve

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = solve(*args, **kwargs)
        calls[0] += 1
        spent[0] += time.perf_counter() - t0
        return out

    kernels.libsvm_solve = timed
    try:
        t0 = time.perf_counter()
        permutation_test(CVData(X, y, covariates=cov), settings=s,
                         n_permutations=n_permutations)
        total = time.perf_counter() - t0
    finally:
        kernels.libsvm_solve = solve
    runs = n_permutations + 1
    print(f"\n## libsvm fallbacks: n={n}, p={p}, 10 x {s.n_outer} outer, 5 inner, 11 C "
          f"({10 * s.n_outer * 56} dual problems per nested CV), {runs} nested CVs")
    print(f"{calls[0] / runs:.1f} libsvm calls per nested CV, "
          f"{1e3 * spent[0] / max(calls[0], 1):.1f} ms each; {100 * spent[0] / total:.1f} % of "
          f"{total / runs:.2f} s per nested CV; load {load():.1f}")


def full_protocol(n=150, p=200_000, n_permutations=1000, n_jobs=2):
    from ketabids.group import CVData, NestedCVSettings, nested_cv, permutation_test

    X, y, cov = cohort(n, p, seed=2)
    s = NestedCVSettings()
    t0 = time.perf_counter()
    res = nested_cv(X, y, covariates=cov, settings=s)
    t_cv = time.perf_counter() - t0
    print(f"\n## full protocol: n={n}, p={p}, 10x10 outer, 5 inner, 11 C, covariates k=2")
    print(f"observed nested CV (metrics, Platt, weights): {t_cv:.1f} s; pooled BAC "
          f"{res.bac_pooled:.3f}; libsvm fallbacks {res.n_fallback}; load {load():.1f}")
    t1 = time.perf_counter()
    last = [t1]

    def progress(done, total):
        if done % max(1, total // 10) == 0:
            now = time.perf_counter()
            print(f"  {done}/{total} permutations, {now - t1:.0f} s, load {load():.1f}",
                  flush=True)
            last[0] = now

    perm = permutation_test(CVData(X, y, covariates=cov), settings=s,
                            n_permutations=n_permutations, observed=res, progress=progress,
                            n_jobs=n_jobs, random_state=1)
    t_perm = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"{n_permutations} full-pipeline permutations: {t_perm:.0f} s "
          f"({t_perm / max(n_permutations, 1):.3f} s each, n_jobs={n_jobs}); "
          f"total incl. observed run {t_cv + t_perm:.0f} s; p_BAC={perm.p_bac:.4f}, "
          f"p_AUC={perm.p_auc:.4f}; peak RSS {peak:.2f} GB; load {load():.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-permutations", type=int, default=1000)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--voxels", type=int, default=200_000)
    ap.add_argument("--skip-side-by-side", action="store_true")
    ap.add_argument("--skip-libsvm", action="store_true")
    ap.add_argument("--skip-full", action="store_true")
    a = ap.parse_args(argv)
    print(f"cores: {os.cpu_count()}, load avg at start: {load():.1f}")
    if not a.skip_side_by_side:
        side_by_side()
    if not a.skip_libsvm:
        libsvm_calls()
    if not a.skip_full:
        full_protocol(p=a.voxels, n_permutations=a.n_permutations, n_jobs=a.n_jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
