"""Permutation tests: the whole nested CV under permuted labels, and frozen-model tests.

p = (1 + #(null >= observed)) / (1 + n_permutations) (Phipson & Smyth 2010), for BAC and AUC.
Labels are permuted within site when sites are given (exchangeability within site), within the
CV's groups when they are given (``groups``: leave-site-out / group k-fold by a site or cohort
column), so every permuted cohort keeps each group's responder count. In the
nested test every permutation re-runs everything that sees labels: stratified outer and inner
folds are re-drawn from the permuted labels with the same seeds, inner C selection, outer refit.
The kernel ``X X^T`` does not depend on labels and is computed once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ketabids.group.metrics import balanced_accuracy, roc_auc

__all__ = ["PermutationResult", "permutation_test", "external_permutation_test",
           "permute_within"]


@dataclass
class PermutationResult:
    observed_bac: float
    observed_auc: float
    null_bac: np.ndarray
    null_auc: np.ndarray
    p_bac: float
    p_auc: float
    n_permutations: int
    random_state: int

    def as_table(self) -> pd.DataFrame:
        """The null distribution: columns ``permutation`` (1..n), ``null_bac``, ``null_auc``."""
        return pd.DataFrame({"permutation": np.arange(1, self.n_permutations + 1),
                             "null_bac": self.null_bac, "null_auc": self.null_auc})

    def as_dict(self):
        d = asdict(self)
        d["null_bac"] = self.null_bac.tolist()
        d["null_auc"] = self.null_auc.tolist()
        return d


def _p(null, obs):
    null = np.asarray(null)
    return float((1 + np.sum(null >= obs - 1e-12)) / (1 + null.size))


def permute_within(y, groups, rng):
    """A permutation of y within each group (whole sample if groups is None)."""
    y = np.asarray(y)
    if groups is None:
        return y[rng.permutation(y.size)]
    out = y.copy()
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out[idx] = y[idx[rng.permutation(idx.size)]]
    return out


def _pooled_bac_auc(y, dec):
    """BAC and AUC of all out-of-fold decisions of all repeats (R, n) pooled."""
    yy = np.broadcast_to(y, dec.shape).ravel()
    return balanced_accuracy(yy, dec.ravel() > 0), roc_auc(yy, dec.ravel())


def permutation_test(X, y, *, covariates=None, sites=None, settings=None, estimator=None,
                     cv=None, n_permutations=1000, random_state=0, progress=None, observed=None,
                     n_jobs=1, groups=None):
    """Nested-CV permutation test; see module docstring. Returns :class:`PermutationResult`.

    ``settings``, ``estimator`` and ``cv`` as in :func:`~ketabids.group.nested.nested_cv`;
    ``observed``: its result (else the nested CV is run once more). Results do not depend on
    ``n_jobs`` (each permutation has its own seeded generator). ``groups``: the folds' groups
    (default ``sites``); labels are permuted within them.
    """
    from ketabids.group.estimator import KernelProvider
    from ketabids.group.nested import _plan, _run, _split_groups, check_inputs

    settings, estimator, cv, extra = _plan(settings, estimator, cv)
    X, y, covariates, sites = check_inputs(X, y, covariates, sites,
                                           settings if "outer_cv" not in extra else None,
                                           estimator)
    groups = _split_groups(groups, sites, y.size)
    kern = KernelProvider(X, covariates, sites, standardize=estimator.standardize,
                          harmonize=estimator.harmonize,
                          scale_kernel=getattr(estimator, "scale_kernel", True))

    def decisions(labels):
        return _run(X, labels, covariates, sites, estimator, cv, kern=kern,
                    details=False, groups=groups)["decision"]

    dec = decisions(y) if observed is None else observed.decision
    obs_bac, obs_auc = _pooled_bac_auc(y, dec)
    null_bac = np.empty(n_permutations)
    null_auc = np.empty(n_permutations)

    def one(k):
        rng = np.random.default_rng([random_state, 7, k])
        yp = permute_within(y, groups, rng)
        null_bac[k], null_auc[k] = _pooled_bac_auc(yp, decisions(yp))

    if n_jobs == 1:
        for k in range(n_permutations):
            one(k)
            if progress is not None:
                progress(k + 1, n_permutations)
    else:
        # threads: the batched LAPACK/BLAS calls release the GIL; 1 BLAS thread per worker
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        with threadpool_limits(1), ThreadPoolExecutor(n_jobs) as pool:
            for done, _ in enumerate(pool.map(one, range(n_permutations)), 1):
                if progress is not None:
                    progress(done, n_permutations)
    return PermutationResult(float(obs_bac), float(obs_auc), null_bac, null_auc,
                             _p(null_bac, obs_bac), _p(null_auc, obs_auc), n_permutations,
                             random_state)


def external_permutation_test(y_true, decision, *, n_permutations=1000, random_state=0,
                              groups=None, threshold=0.0):
    """Frozen model on a new cohort: permute the cohort's labels (within ``groups``)."""
    y = np.asarray(y_true).astype(np.int64)
    d = np.asarray(decision, float)
    rng = np.random.default_rng(random_state)
    Y = np.stack([permute_within(y, None if groups is None else np.asarray(groups), rng)
                  for _ in range(n_permutations)])
    pred = (d > threshold).astype(float)
    n1 = y.sum()
    n0 = y.size - n1
    sens = (Y @ pred) / n1
    spec = ((1 - Y) @ (1 - pred)) / n0
    from scipy.stats import rankdata
    r = rankdata(d)
    null_auc = (Y @ r - n1 * (n1 + 1) / 2) / (n1 * n0)
    null_bac = (sens + spec) / 2
    obs_bac = balanced_accuracy(y, d > threshold)
    obs_auc = roc_auc(y, d)
    return PermutationResult(float(obs_bac), float(obs_auc), null_bac, null_auc,
                             _p(null_bac, obs_bac), _p(null_auc, obs_auc), n_permutations,
                             random_state)
