"""Repeated nested cross-validation of a linear SVC on (VBM) feature vectors, exactly and fast.

The engine is an outer splitter x the inner CV of a :class:`~ketabids.group.estimator.KetaSVC`:
for every outer training set the estimator's splitter picks C from its ``C_grid`` by mean inner
balanced accuracy (ties -> the SMALLEST C); the outer model is refitted on the whole outer
training set with that C and predicts the outer test fold. Both splitters are scikit-learn
splitters called with ``groups`` (default: the sites) whose test sets partition the subjects
(``NestedCVSettings.scheme``: stratified, leave-site-out or group k-fold, the inner CV grouped
like the outer one; :func:`check_scheme` refuses what the groups cannot support; see
:mod:`ketabids.group.cv`); the defaults (:meth:`NestedCVSettings.outer_cv`,
:meth:`NestedCVSettings.estimator`) are the study's protocol: ``n_repeats`` x ``n_outer``-fold
outer CV and ``n_inner``-fold inner CV, stratified by label (and site), every outer training set
with its own seeded inner folds. In-fold preprocessing as in the estimator (ComBat -> covariate
regression -> z-scoring, fitted on the training rows of every inner and outer split).

Speed and exactness: all inner problems of a repeat are solved together along the C path and
all outer problems in one batch, in kernel space (:class:`~ketabids.group.estimator.
KernelProvider`); out-of-fold decision values equal those of a plain scikit-learn Pipeline +
GridSearchCV on the same folds (the tests check it).

Probabilities: in each outer fold a Platt sigmoid is fitted on the inner-CV (out-of-sample)
decision values of the outer training rows at the chosen C and applied to the outer test rows;
the test fold never enters.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ketabids.errors import BadDataError, UsageError
from ketabids.group.cv import (
    OUTER_SCHEMES,
    GroupFolds,
    LeaveGroupOut,
    StratifiedFolds,
    fold_partitions,
    spawn,
)
from ketabids.group.estimator import (
    DEFAULT_C_GRID,
    KernelProvider,
    KetaSVC,
    c_path_decisions,
    check_c_grid,
    check_groups,
    gather,
)
from ketabids.group.kernels import platt_fit, platt_predict, solve_dual
from ketabids.group.metrics import classification_metrics, per_fold_table, repeat_metrics

__all__ = ["CVData", "NestedCVSettings", "NestedCVResult", "nested_cv", "fit_final_model",
           "make_scheme",
           "check_inputs", "check_scheme", "c_selection_summary", "EDGE_WARNING_SHARE"]

#: A C at one edge of the grid (or a flat inner curve) in more than this share of the outer
#: folds is a warning (metrics.json ``c_selection``, the log, the closing line).
EDGE_WARNING_SHARE = 0.5


@dataclass(frozen=True, eq=False)
class CVData:
    """The participants a cross-validation runs on, as the permutation test and the audit
    re-run it (:func:`~ketabids.group.permutation.permutation_test`,
    :func:`~ketabids.group.audit.run_audit`).

    Parameters
    ----------
    X : array-like of shape (n, p)
        Features.
    y : array-like of shape (n,)
        Labels 1/0.
    covariates : array-like of shape (n, k) or None
        Covariates regressed out of the features inside each training set.
    sites : array-like of shape (n,) or None
        Site of each participant.
    groups : array-like of shape (n,) or None
        The folds' groups (default ``sites``).
    gram : ndarray of shape (n, n) or None
        ``X X^T`` when the caller has it (as :func:`nested_cv`).
    """

    X: object
    y: object
    covariates: object = None
    sites: object = None
    groups: object = None
    gram: object = None


@dataclass(frozen=True)
class NestedCVSettings:
    """The study's protocol: repeated stratified nested CV (all fitted preprocessing in-fold).

    The defaults are the study's: 10 repeats of 10 outer and 5 inner folds, C = 2^-6 .. 2^4.

    Parameters
    ----------
    n_repeats, n_outer, n_inner : int
        Repeats of the outer CV, outer folds (>= 2) and inner folds (>= 2).
    C_grid : tuple of float
        C values searched by the inner CV (sorted; positive).
    standardize, harmonize : bool
        z-scoring and ComBat, fitted within every training set.
    random_state : int
        Seeds the folds, the calibration and the bootstrap intervals.
    tol : float
        Tolerance of the dual solver.
    scheme : str
        Outer scheme, one of :data:`~ketabids.group.cv.OUTER_SCHEMES`.
    scale_kernel : bool
        Scale each training set's kernel so that the C grid spans the regularisation path
        (:class:`~ketabids.group.estimator.KetaSVC`).

    Raises
    ------
    UsageError
        Fold counts below their minimum, an unknown scheme or a C that is not positive.
    """

    n_repeats: int = 10
    n_outer: int = 10
    n_inner: int = 5
    C_grid: tuple = DEFAULT_C_GRID
    standardize: bool = False
    harmonize: bool = False
    random_state: int = 0
    tol: float = 1e-10
    #: outer scheme (:data:`~ketabids.group.cv.OUTER_SCHEMES`); the inner CV is grouped the
    #: same way: label-stratified (by site too when sites are given), one group per fold
    #: (``n_outer`` unused, one repeat: the partition is deterministic), k folds of groups
    scheme: str = "stratified"
    #: divide each training set's kernel by its critical-C scale (KetaSVC docstring); exact,
    #: but slower (the all-at-bound problems of small C go to libsvm to reproduce its
    #: intercept; docs/benchmarks.md, "Site-robust validation and C selection")
    scale_kernel: bool = True

    def __post_init__(self):
        grid = tuple(sorted(float(c) for c in self.C_grid))
        object.__setattr__(self, "C_grid", grid)
        if self.n_repeats < 1 or self.n_outer < 2 or self.n_inner < 2:
            raise UsageError("n_repeats must be >= 1 and n_outer, n_inner >= 2")
        if self.scheme not in OUTER_SCHEMES:
            raise UsageError(f"outer CV scheme {self.scheme!r} is unknown; use one of "
                             f"{', '.join(OUTER_SCHEMES)}")
        if not grid or min(grid) <= 0:
            raise UsageError("C grid values must be positive")

    def as_dict(self):
        """Every setting (the grid as a list), for manifests and ``metrics.json``."""
        d = asdict(self)
        d["C_grid"] = list(self.C_grid)
        return d

    @property
    def grouped(self) -> bool:
        """True when the folds hold whole groups (sites, cohorts)."""
        return self.scheme != "stratified"

    def outer_cv(self) -> StratifiedFolds:
        """stratified: ``n_repeats`` x ``n_outer`` stratified folds, repeat r seeded
        ``[random_state, r]``; group-kfold: the same with whole groups per fold; leave-site-out:
        one fold per group (one repeat)."""
        if self.scheme == "leave-site-out":
            return LeaveGroupOut(self.n_inner, random_state=self.random_state)
        kind = GroupFolds if self.scheme == "group-kfold" else StratifiedFolds
        return kind(self.n_outer, n_repeats=self.n_repeats, random_state=self.random_state)

    def inner_cv(self, random_state=None) -> StratifiedFolds:
        """The inner splitter, grouped as the outer one: ``n_inner`` stratified folds, one fold
        per training group, or ``n_inner`` folds of groups (one partition, seeded
        ``random_state``; the engine spawns ``[random_state, r, o, 1]`` per outer fold)."""
        seed = self.random_state if random_state is None else random_state
        kind = {"stratified": StratifiedFolds, "leave-site-out": LeaveGroupOut,
                "group-kfold": GroupFolds}[self.scheme]
        return kind(self.n_inner, random_state=seed)

    @property
    def effective_repeats(self) -> int:
        """Repeats actually run (leave-site-out has one deterministic partition)."""
        return 1 if self.scheme == "leave-site-out" else int(self.n_repeats)

    def estimator(self, cv=None, **params) -> KetaSVC:
        """The classifier with this grid and preprocessing; inner CV :meth:`inner_cv`."""
        return KetaSVC(C_grid=self.C_grid, standardize=self.standardize,
                       harmonize=self.harmonize, tol=self.tol, random_state=self.random_state,
                       scale_kernel=self.scale_kernel,
                       cv=self.inner_cv() if cv is None else cv, **params)


@dataclass
class NestedCVResult:
    """Everything a nested CV produced.

    Attributes
    ----------
    metrics : pandas.DataFrame
        Every metric with its interval, aggregations ``pooled``, ``mean_over_repeats`` and
        ``consensus`` (:func:`~ketabids.group.metrics.classification_metrics`).
    folds : pandas.DataFrame
        One row per (repeat, outer fold): sizes, chosen C, inner and outer scores, C-selection
        flags (``cv_folds.tsv``).
    subjects : pandas.DataFrame
        One row per participant: mean out-of-fold decision and probability, consensus
        prediction, repeats predicted correctly.
    confusion : ndarray of shape (2, 2)
        ``[[tn, fp], [fn, tp]]`` over all repeats.
    decision, proba : ndarray of shape (n_repeats, n)
        Out-of-fold decision values and probabilities.
    fold_of : ndarray of shape (n_repeats, n)
        Outer test fold of each participant.
    chosen_C : ndarray of shape (n_repeats, n_outer)
        C chosen by each outer fold's inner CV.
    weights : ndarray of shape (n_repeats * n_outer, p)
        Primal weights of the outer models.
    intercepts : ndarray of shape (n_repeats * n_outer,)
        Their intercepts.
    cv_hash : str
        Hash of the folds and settings (the same hash = the same CV).
    settings : NestedCVSettings
        The protocol.
    y : ndarray of shape (n,)
        Labels.
    n_fallback : int
        Problems solved by libsvm.
    inner_scores : ndarray or None
        Mean inner balanced accuracy per (repeat, outer fold, C).
    groups : ndarray or None
        The groups the folds were made of (sites or ``--group-column``), None when not
        grouped.
    """

    metrics: pd.DataFrame
    folds: pd.DataFrame
    subjects: pd.DataFrame
    confusion: np.ndarray
    decision: np.ndarray
    proba: np.ndarray
    fold_of: np.ndarray
    chosen_C: np.ndarray
    weights: np.ndarray
    intercepts: np.ndarray
    cv_hash: str
    settings: NestedCVSettings
    y: np.ndarray
    n_fallback: int = 0
    #: mean inner-CV balanced accuracy per (repeat, outer fold, C of the grid)
    inner_scores: np.ndarray | None = None
    #: the groups the folds were made of (sites or --group-column), None when not grouped
    groups: np.ndarray | None = None

    def _metric(self, name, agg):
        m = self.metrics
        return float(m.loc[(m.metric == name) & (m.aggregation == agg), "estimate"].iloc[0])

    @property
    def bac_pooled(self):
        """Pooled out-of-fold balanced accuracy (the headline estimate)."""
        return self._metric("bac", "pooled")

    @property
    def auc_pooled(self):
        """Pooled out-of-fold AUC."""
        return self._metric("auc", "pooled")

    @property
    def bac_mean(self):
        """Mean of the repeats' balanced accuracies."""
        return self._metric("bac", "mean_over_repeats")


# ---------------------------------------------------------------------------------------------
# inputs and CV scheme
# ---------------------------------------------------------------------------------------------
def check_inputs(X, y, covariates=None, sites=None, settings=None, estimator=None):
    """Validate arrays; returns (X float array, y int 0/1, covariates or None, sites or None)."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 4 or X.shape[1] < 1:
        raise BadDataError(f"features must be a 2-D (subjects x voxels) array, got {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    if not np.isfinite(X).all():
        raise BadDataError("features contain NaN/inf values; check the masked VBM maps")
    y = np.asarray(y)
    if y.shape != (X.shape[0],):
        raise BadDataError(f"labels: expected {X.shape[0]} values, got shape {y.shape}")
    if not np.isin(y, [0, 1]).all():
        raise BadDataError("labels must be 0/1 (1 = responder)")
    y = y.astype(np.int64)
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        raise BadDataError("labels contain a single class; need responders and non-responders")
    harmonize = bool(estimator.harmonize if estimator is not None else
                     settings is not None and settings.harmonize)
    covariates, sites = check_groups(covariates, sites, X.shape[0], harmonize=harmonize)
    if settings is not None and not settings.grouped and counts.min() < settings.n_outer:
        raise UsageError(f"the smaller class has {counts.min()} subjects, fewer than "
                         f"n_outer={settings.n_outer} folds; lower --n-outer")
    return X, y, covariates, sites


def make_scheme(y, sites, settings=None, *, estimator=None, cv=None, groups=None):
    """Outer folds (R, n) and inner folds (R, O, n; -1 = row in the outer test fold) of the
    outer splitter ``cv`` and the estimator's inner splitter (defaults from ``settings``),
    both called with ``groups`` (default ``sites``)."""
    settings = NestedCVSettings() if settings is None else settings
    estimator = settings.estimator() if estimator is None else estimator
    cv = settings.outer_cv() if cv is None else cv
    n = y.size
    X = np.zeros((n, 1))
    sites = sites if groups is None else np.asarray(groups).astype(str)
    outer = fold_partitions(cv, X, y, sites)
    R, O = outer.shape[0], int(outer.max()) + 1
    inner = np.full((R, O, n), -1, np.int64)
    for r in range(R):
        for o in range(O):
            tr = outer[r] != o
            if np.unique(y[tr]).size < 2:
                raise UsageError(f"{cv!r}: outer training set {o} of repeat {r} holds one class")
            inner_cv = spawn(estimator.cv, r, o, 1)
            part = fold_partitions(inner_cv, X[tr], y[tr], None if sites is None else sites[tr])
            inner[r, o, tr] = part[0]
    return outer, inner


def scheme_hash(outer, inner, settings, n, extra=None):
    h = hashlib.sha256()
    h.update(json.dumps({"n": int(n), **settings.as_dict(), **(extra or {})},
                        sort_keys=True).encode())
    h.update(np.ascontiguousarray(outer, np.int64).tobytes())
    h.update(np.ascontiguousarray(inner, np.int64).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------
def _run(X, y, covariates, sites, estimator, cv, *, kern=None, details=True, progress=None,
         groups=None, gram=None):
    n = y.size
    C_grid = check_c_grid(estimator.C_grid)
    outer, inner = make_scheme(y, sites, estimator=estimator, cv=cv, groups=groups)
    R, O = outer.shape[0], int(outer.max()) + 1
    if kern is None:
        kern = KernelProvider(X, covariates, sites, standardize=estimator.standardize,
                              harmonize=estimator.harmonize,
                              scale_kernel=getattr(estimator, "scale_kernel", True),
                              gram=gram)
    decision = np.zeros((R, n))
    proba = np.full((R, n), np.nan)
    chosen = np.zeros((R, O))
    inner_best = np.zeros((R, O))
    inner_scores = np.zeros((R, O, C_grid.size))
    V = []
    W = []
    intercepts = []
    n_fb = 0
    for r in range(R):
        masks, groups, start = [], [], [0]
        for o in range(O):
            for i in range(int(inner[r, o].max()) + 1):
                masks.append((inner[r, o] >= 0) & (inner[r, o] != i))
                groups.append(inner[r, o] == i)
            start.append(len(masks))
        for o in range(O):
            masks.append(outer[r] != o)
        masks = np.array(masks)
        groups = np.array(groups)
        n_in = start[-1]
        keep = np.r_[np.zeros(n_in, bool), np.ones(O, bool)] if details else None
        Ks, aux = kern.kernels(masks, keep, y01=y)
        # ---- inner problems: whole C path
        f_in, scores, fb = c_path_decisions(Ks[:n_in], masks[:n_in], groups[:n_in], y, C_grid,
                                            estimator.tol)                  # scores (n_in, L)
        n_fb += fb
        sizes = np.diff(start)
        if (sizes == sizes[0]).all():
            scores = scores.reshape(O, sizes[0], -1).mean(1)                 # (O, L)
        else:
            scores = np.stack([scores[start[o]:start[o + 1]].mean(0) for o in range(O)])
        inner_scores[r] = scores
        best = scores.argmax(1)                                        # first max = smallest C
        chosen[r] = C_grid[best]
        inner_best[r] = scores[np.arange(O), best]
        # ---- outer problems
        Kot, yyo, wo, idxo, valido = gather(Ks[n_in:], masks[n_in:], y)
        up = wo * chosen[r][:, None]
        bo, bbo, _, fb = solve_dual(Kot, yyo, up, tol=estimator.tol)
        n_fb += fb
        for o in range(O):
            t = n_in + o
            bf = np.zeros(n)
            nv = valido[o].sum()
            bf[idxo[o, :nv]] = bo[o, :nv]
            test = outer[r] == o
            f = Ks[t][test] @ bf + bbo[o]
            decision[r, test] = f
            if details:
                v, wv = kern.weights(aux, t, bf)
                (V if v is not None else W).append(v if v is not None else wv)
                intercepts.append(bbo[o])
                # Platt on inner-CV decisions of the outer training rows at the chosen C
                fin = np.zeros(n)
                for i in range(start[o + 1] - start[o]):
                    g = groups[start[o] + i]
                    fin[g] = f_in[start[o] + i, best[o], g]
                tr = masks[t]
                A_, B_ = platt_fit(fin[tr], y[tr])
                proba[r, test] = platt_predict(f, A_, B_)
        if progress is not None:
            progress(r + 1, R)
    out = {"decision": decision, "proba": proba, "chosen_C": chosen, "inner_bac": inner_best,
           "fold_of": outer, "scheme": (outer, inner), "n_fallback": n_fb,
           "inner_scores": inner_scores}
    if details:
        if V:
            out["weights"] = (np.asarray(V) @ X).astype(np.float32)
        else:
            out["weights"] = np.asarray(W, dtype=np.float32)
        out["intercepts"] = np.asarray(intercepts)
    return out


def _plan(settings, estimator, cv):
    """(settings, estimator, outer splitter, hash extras): defaults from ``settings``; custom
    splitters or estimators are recorded in the CV hash by their repr."""
    settings = NestedCVSettings() if settings is None else settings
    extra = {}
    if estimator is not None:
        extra["estimator"] = repr(estimator)
    if cv is not None:
        extra["outer_cv"] = repr(cv)
    return (settings, settings.estimator() if estimator is None else estimator,
            settings.outer_cv() if cv is None else cv, extra)


def nested_cv(X, y, *, covariates=None, sites=None, settings=None, estimator=None, cv=None,
              progress=None, groups=None, gram=None):
    """Repeated nested CV (module docstring): out-of-fold predictions of every participant.

    Every fitted step (preprocessing, C selection, model) sees only the outer training set.

    Parameters
    ----------
    X : array-like of shape (n, p)
        Features (e.g. smoothed, modulated GM maps inside the analysis mask); n >= 4.
    y : array-like of shape (n,)
        Labels 0/1 (1 = responder), both classes present.
    covariates : array-like of shape (n, k) or None
        Regressed out within every training set.
    sites : array-like of shape (n,) or None
        Sites: stratification, ComBat, default groups.
    settings : NestedCVSettings or None
        The protocol (default: the study's); ``settings.random_state`` also seeds the
        bootstrap intervals.
    estimator : KetaSVC or None
        The classifier, its ``cv`` the inner splitter (default ``settings.estimator()``).
    cv : cross-validation splitter or None
        The outer splitter (default ``settings.outer_cv()``); its test sets must partition
        the participants in each repeat.
    progress : callable or None
        Called as ``progress(done, total)`` after every repeat.
    groups : array-like of shape (n,) or None
        Groups both splitters split by (default ``sites``; e.g. a cohort column for
        leave-cohort-out).
    gram : ndarray of shape (n, n) or None
        ``X X^T`` when the caller has it (:func:`~ketabids.group.estimator.linear_kernel`;
        training, permutations and the audit share one).

    Returns
    -------
    NestedCVResult
        Metrics, per-fold and per-participant tables, decisions, weights and the CV hash.

    Raises
    ------
    BadDataError
        Features or labels unusable (shape, NaN, not 0/1, one class).
    UsageError
        A scheme the class counts or groups cannot support.
    """
    settings, estimator, cv, extra = _plan(settings, estimator, cv)
    X, y, covariates, sites = check_inputs(X, y, covariates, sites,
                                           settings if "outer_cv" not in extra else None,
                                           estimator)
    groups = _split_groups(groups, sites, y.size)
    res = _run(X, y, covariates, sites, estimator, cv, details=True, progress=progress,
               groups=groups, gram=gram)
    outer, inner = res["scheme"]
    dec, proba = res["decision"], res["proba"]
    metrics = pd.concat([
        classification_metrics(y, dec, proba, random_state=settings.random_state),
        repeat_metrics(y, dec, proba),
        classification_metrics(y, dec.mean(0), proba.mean(0),
                               random_state=settings.random_state).assign(
            aggregation="consensus"),
    ], ignore_index=True)
    folds = per_fold_table(y, dec, proba, outer, res["chosen_C"], res["inner_bac"])
    folds = _selection_flags(folds, res["inner_scores"], check_c_grid(estimator.C_grid))
    pred = dec > 0
    tp = int((pred & (y == 1)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    fp = int((pred & (y == 0)).sum())
    subjects = pd.DataFrame({
        "row": np.arange(y.size), "y_true": y, "decision": dec.mean(0),
        "decision_sd": dec.std(0, ddof=1) if dec.shape[0] > 1 else np.zeros(y.size),
        "proba": proba.mean(0), "predicted": (dec.mean(0) > 0).astype(int),
        "n_correct": (pred == (y == 1)).sum(0)})
    return NestedCVResult(
        metrics=metrics, folds=folds, subjects=subjects,
        confusion=np.array([[tn, fp], [fn, tp]]), decision=dec, proba=proba, fold_of=outer,
        chosen_C=res["chosen_C"], weights=res["weights"], intercepts=res["intercepts"],
        cv_hash=scheme_hash(outer, inner, settings, y.size, extra), settings=settings, y=y,
        n_fallback=res["n_fallback"], inner_scores=res["inner_scores"],
        groups=groups if settings.grouped or "outer_cv" in extra else None)


def _split_groups(groups, sites, n):
    if groups is None:
        return sites
    groups = np.asarray(groups).astype(str)
    if groups.shape != (n,):
        raise BadDataError(f"groups: expected {n} values, got shape {groups.shape}")
    return groups


def _selection_flags(folds, inner_scores, grid):
    """Per outer fold: was C at an edge of the grid, was the inner curve flat (every C the same
    inner BAC), how many C tied for the best inner BAC."""
    scores = inner_scores.reshape(-1, grid.size)
    best = scores.max(1, keepdims=True)
    tied = np.isclose(scores, best, rtol=0, atol=1e-12)
    C = folds["C"].to_numpy(float)
    return folds.assign(
        at_lower_edge=(C == grid[0]).astype(int) if grid.size > 1 else 0,
        at_upper_edge=(C == grid[-1]).astype(int) if grid.size > 1 else 0,
        flat_inner_curve=tied.all(1).astype(int) if grid.size > 1 else 0,
        n_best_C=tied.sum(1).astype(int))


def _grid_text(c):
    k = np.log2(c)
    return f"2^{int(round(k))}" if abs(k - round(k)) < 1e-9 else f"{c:g}"


def c_selection_summary(result, kernel_scale=None) -> dict:
    """How C was chosen over the outer folds (metrics.json ``c_selection``): the grid, the
    kernel scale, the share of folds at each edge and with a flat inner curve, a warning
    sentence when most folds sit at an edge or on a flat curve (else None)."""
    folds = result.folds
    grid = list(result.settings.C_grid)
    n = len(folds)
    shares = {key: float(folds[col].sum() / n) if n else 0.0 for key, col in (
        ("share_lower_edge", "at_lower_edge"), ("share_upper_edge", "at_upper_edge"),
        ("share_flat_inner_curve", "flat_inner_curve"))}
    warning = None
    if len(grid) > 1:
        if shares["share_flat_inner_curve"] > EDGE_WARNING_SHARE:
            warning = (f"C was not really chosen: in {shares['share_flat_inner_curve']:.0%} of "
                       "the outer folds every C of the grid gave the same inner-CV balanced "
                       f"accuracy (ties go to the smallest C, {_grid_text(grid[0])})" + (
                           "; without --raw-c-grid the grid spans the regularisation path."
                           if not result.settings.scale_kernel else
                           ": the data do not prefer any C on the path."))
        else:
            for key, edge, fix in (("share_lower_edge", grid[0], "lower"),
                                   ("share_upper_edge", grid[-1], "higher")):
                if shares[key] > EDGE_WARNING_SHARE:
                    warning = (f"C was at the grid's {'lower' if fix == 'lower' else 'upper'} "
                               f"edge ({_grid_text(edge)}) in {shares[key]:.0%} of the outer "
                               f"folds: the best C may lie outside the grid; extend --c-grid "
                               f"to {fix} values.")
    return {"grid": grid, "kernel_scale": kernel_scale, **shares,
            "median_C": float(np.median(folds["C"])) if n else None, "warning": warning}


# ---------------------------------------------------------------------------------------------
# final model
# ---------------------------------------------------------------------------------------------
def fit_final_model(X, y, *, covariates=None, sites=None, settings=None, groups=None):
    """The final model: :meth:`KetaSVC.fit` on all participants.

    C is chosen by the inner CV of the scheme (:meth:`NestedCVSettings.inner_cv`) over ALL
    participants (seeded ``[random_state, 99991]``; same grid, mean BAC, ties -> smallest C;
    in-fold preprocessing; split by ``groups``, default ``sites``); Platt calibration over
    ``n_inner`` folds. Its performance is the nested CV's, not its in-sample fit.

    Parameters
    ----------
    X, y, covariates, sites, settings, groups
        As :func:`nested_cv`.

    Returns
    -------
    KetaSVC
        The fitted model (the one saved with skops).

    Raises
    ------
    BadDataError, UsageError
        As :func:`nested_cv`.
    """
    settings = NestedCVSettings() if settings is None else settings
    X, y, covariates, sites = check_inputs(X, y, covariates, sites, None, settings.estimator())
    model = settings.estimator(cv=settings.inner_cv((settings.random_state, 99991)),
                               calibration_folds=settings.n_inner)
    return model.fit(X, y, covariates=covariates, sites=sites,
                     groups=_split_groups(groups, sites, y.size))


def check_scheme(y, sites, settings, groups=None) -> None:
    """Refuse (exit 64, one line naming the largest valid value) a CV scheme the groups or the
    class counts cannot support, before any feature is computed: every outer and inner training
    set must hold both classes; group schemes need enough groups."""
    from ketabids.group.cv import check_fold_counts

    y = np.asarray(y).astype(int)
    if not settings.grouped:
        check_fold_counts(y, settings, sites)
        return
    groups = _split_groups(groups, sites, y.size)
    if groups is None:
        raise UsageError(f"--outer-cv {settings.scheme} needs the site of every participant: "
                         "--site-column COLUMN (or --group-column COLUMN)")
    names = np.unique(groups)
    what = f"--outer-cv {settings.scheme}"
    if names.size < 2:
        raise UsageError(f"{what}: all participants are in one group ({names[0]}); it needs "
                         "at least 2 sites (groups)")
    if settings.scheme == "group-kfold" and settings.n_outer > names.size:
        raise UsageError(f"{what}: --n-outer {settings.n_outer} folds of whole groups but only "
                         f"{names.size} groups; use --n-outer {names.size} or less")
    for g in names:
        rest = y[groups != g]
        if np.unique(rest).size < 2:
            raise UsageError(f"{what}: without group {g} only one class is left to train on; "
                             "use --outer-cv stratified")

    def fails(s):
        try:
            _, inner = make_scheme(y, sites, s, groups=groups)
        except UsageError as exc:
            return str(exc)
        for r in range(inner.shape[0]):
            for o in range(inner.shape[1]):
                rows = inner[r, o] >= 0
                for i in range(int(inner[r, o].max()) + 1):
                    tr = rows & (inner[r, o] != i)
                    if np.unique(y[tr]).size < 2:
                        return (f"an inner training set (repeat {r}, outer fold {o}) holds one "
                                "class")
        return None

    problem = fails(settings)
    if problem is None:
        return
    if settings.scheme == "group-kfold":
        from dataclasses import replace

        for k in range(settings.n_inner - 1, 1, -1):
            if fails(replace(settings, n_inner=k)) is None:
                raise UsageError(f"{what}: --n-inner {settings.n_inner} is too many inner "
                                 f"folds of whole groups ({problem}); use --n-inner {k} or less")
    raise UsageError(f"{what}: {problem}; the groups cannot support a grouped inner CV, use "
                     "--outer-cv stratified")
