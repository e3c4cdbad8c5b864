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
    """A permutation test's observed statistics, null distributions and p-values.

    Attributes
    ----------
    observed_bac, observed_auc : float
        The statistics on the true labels.
    null_bac, null_auc : ndarray of shape (n_permutations,)
        The same statistics under permuted labels.
    p_bac, p_auc : float
        ``(1 + #(null >= observed)) / (1 + n_permutations)``.
    n_permutations : int
        Number of permutations.
    random_state : int
        Seed.
    """

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
        """Every field, the null distributions as lists (JSON-friendly)."""
        d = asdict(self)
        d["null_bac"] = self.null_bac.tolist()
        d["null_auc"] = self.null_auc.tolist()
        return d


def _p(null, obs):
    null = np.asarray(null)
    return float((1 + np.sum(null >= obs - 1e-12)) / (1 + null.size))


def permute_within(y, groups, rng):
    """A permutation of y within each group (whole sample if groups is None).

    Parameters
    ----------
    y : array-like of shape (n,)
        Labels.
    groups : ndarray of shape (n,) or None
        Sites or CV groups: each keeps its own labels, shuffled among its members.
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    ndarray of shape (n,)
        Permuted labels.

    Examples
    --------
    >>> y = np.array([1, 0, 1, 0]); sites = np.array(["A", "A", "B", "B"])
    >>> yp = permute_within(y, sites, np.random.default_rng(0))
    >>> [int(yp[sites == s].sum()) for s in ("A", "B")]
    [1, 1]
    """
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


def permutation_test(data, *, settings=None, estimator=None, cv=None, n_permutations=1000,
                     random_state=0, progress=None, observed=None, n_jobs=1):
    """Nested-CV permutation test: every permutation re-runs the whole nested CV.

    Tests the pooled BAC and AUC of the out-of-fold decisions (module docstring). Results do
    not depend on ``n_jobs`` (each permutation has its own seeded generator).

    Parameters
    ----------
    data : CVData
        Features, labels, covariates, sites, groups (labels are permuted within the groups,
        default the sites) and ``X X^T`` when the caller has it
        (:class:`~ketabids.group.nested.CVData`).
    settings, estimator, cv
        As :func:`~ketabids.group.nested.nested_cv`.
    n_permutations : int
        Number of permutations.
    random_state : int
        Seed (permutation ``k`` uses ``default_rng([random_state, 7, k])``).
    progress : callable or None
        Called as ``progress(done, total)`` after each permutation.
    observed : NestedCVResult or None
        The nested CV on the true labels (else it is run once more).
    n_jobs : int
        Threads.

    Returns
    -------
    PermutationResult
        Observed statistics, null distributions and p-values.
    """
    from ketabids.group.estimator import KernelProvider
    from ketabids.group.nested import _plan, _run, _split_groups, check_inputs

    X, y, covariates, sites, groups = data.X, data.y, data.covariates, data.sites, data.groups
    settings, estimator, cv, extra = _plan(settings, estimator, cv)
    X, y, covariates, sites = check_inputs(X, y, covariates, sites,
                                           settings if "outer_cv" not in extra else None,
                                           estimator)
    groups = _split_groups(groups, sites, y.size)
    kern = KernelProvider(X, covariates, sites, standardize=estimator.standardize,
                          harmonize=estimator.harmonize,
                          scale_kernel=getattr(estimator, "scale_kernel", True),
                          gram=data.gram)

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
    """Permutation test of a frozen model on a new cohort: its decisions fixed, labels permuted.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 1/0 of the cohort.
    decision : array-like of shape (n,)
        The model's decision values.
    n_permutations : int
        Number of permutations.
    random_state : int
        Seed.
    groups : array-like of shape (n,) or None
        Sites: labels are permuted within them.
    threshold : float
        Decision values above it are predicted responders.

    Returns
    -------
    PermutationResult
        Observed BAC and AUC, null distributions and p-values.

    Examples
    --------
    >>> res = external_permutation_test([0, 0, 0, 1, 1, 1], [-2, -1, -0.5, 0.5, 1, 2],
    ...                                 n_permutations=99)
    >>> res.observed_bac, res.p_bac < 0.1
    (1.0, True)
    """
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
