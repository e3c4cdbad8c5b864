"""Repeated nested cross-validation of a linear SVC on (VBM) feature vectors, exactly and fast.

The engine is an outer splitter x the inner CV of a :class:`~ketabids.group.estimator.KetaSVC`:
for every outer training set the estimator's splitter picks C from its ``C_grid`` by mean inner
balanced accuracy (ties -> the SMALLEST C); the outer model is refitted on the whole outer
training set with that C and predicts the outer test fold. Both splitters are scikit-learn
splitters called with ``groups=sites`` whose test sets partition the subjects (see
:mod:`ketabids.group.cv`); the defaults (:meth:`NestedCVSettings.outer_cv`,
:meth:`NestedCVSettings.estimator`) are the study's protocol: ``n_repeats`` x ``n_outer``-fold
outer CV and ``n_inner``-fold inner CV, stratified by label (and site), every outer training set
with its own seeded inner folds. In-fold preprocessing as in the estimator (ComBat -> covariate
regression -> z-scoring, fitted on the training rows of every inner and outer split).

Speed and exactness: all inner problems of a repeat are solved together along the C path and
all outer problems in one batch, in kernel space (:class:`~ketabids.group.estimator.
KernelProvider`); out-of-fold decision values equal those of a plain scikit-learn Pipeline +
GridSearchCV on the same folds (tests/test_group_nested.py).

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
from ketabids.group.cv import StratifiedFolds, fold_partitions, spawn
from ketabids.group.estimator import (DEFAULT_C_GRID, KernelProvider, KetaSVC,
                                      c_path_decisions, check_c_grid, check_groups, gather)
from ketabids.group.kernels import platt_fit, platt_predict, solve_dual
from ketabids.group.metrics import classification_metrics, per_fold_table, repeat_metrics

__all__ = ["NestedCVSettings", "NestedCVResult", "nested_cv", "fit_final_model", "make_scheme",
           "check_inputs"]


@dataclass(frozen=True)
class NestedCVSettings:
    """The study's protocol: repeated stratified nested CV (all fitted preprocessing in-fold)."""

    n_repeats: int = 10
    n_outer: int = 10
    n_inner: int = 5
    C_grid: tuple = DEFAULT_C_GRID
    standardize: bool = False
    harmonize: bool = False
    random_state: int = 0
    tol: float = 1e-10

    def __post_init__(self):
        grid = tuple(sorted(float(c) for c in self.C_grid))
        object.__setattr__(self, "C_grid", grid)
        if self.n_repeats < 1 or self.n_outer < 2 or self.n_inner < 2:
            raise UsageError("n_repeats must be >= 1 and n_outer, n_inner >= 2")
        if not grid or min(grid) <= 0:
            raise UsageError("C grid values must be positive")

    def as_dict(self):
        d = asdict(self)
        d["C_grid"] = list(self.C_grid)
        return d

    def outer_cv(self) -> StratifiedFolds:
        """``n_repeats`` x ``n_outer`` stratified folds, repeat r seeded ``[random_state, r]``."""
        return StratifiedFolds(self.n_outer, n_repeats=self.n_repeats,
                               random_state=self.random_state)

    def estimator(self, cv=None, **params) -> KetaSVC:
        """The classifier with this grid and preprocessing; inner CV ``n_inner`` stratified
        folds (seeded ``[random_state, r, o, 1]`` for outer fold o of repeat r)."""
        return KetaSVC(C_grid=self.C_grid, standardize=self.standardize,
                       harmonize=self.harmonize, tol=self.tol, random_state=self.random_state,
                       cv=StratifiedFolds(self.n_inner, random_state=self.random_state)
                       if cv is None else cv, **params)


@dataclass
class NestedCVResult:
    """Everything a nested CV produced: tables (metrics, per fold, per subject), out-of-fold
    decisions and probabilities (n_repeats, n), folds, chosen C, outer-model weights."""

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

    def _metric(self, name, agg):
        m = self.metrics
        return float(m.loc[(m.metric == name) & (m.aggregation == agg), "estimate"].iloc[0])

    @property
    def bac_pooled(self):
        return self._metric("bac", "pooled")

    @property
    def auc_pooled(self):
        return self._metric("auc", "pooled")

    @property
    def bac_mean(self):
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
    if settings is not None and counts.min() < settings.n_outer:
        raise UsageError(f"the smaller class has {counts.min()} subjects, fewer than "
                         f"n_outer={settings.n_outer} folds; lower --n-outer")
    return X, y, covariates, sites


def make_scheme(y, sites, settings=None, *, estimator=None, cv=None):
    """Outer folds (R, n) and inner folds (R, O, n; -1 = row in the outer test fold) of the
    outer splitter ``cv`` and the estimator's inner splitter (defaults from ``settings``)."""
    settings = NestedCVSettings() if settings is None else settings
    estimator = settings.estimator() if estimator is None else estimator
    cv = settings.outer_cv() if cv is None else cv
    n = y.size
    X = np.zeros((n, 1))
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
def _run(X, y, covariates, sites, estimator, cv, *, kern=None, details=True, progress=None):
    n = y.size
    C_grid = check_c_grid(estimator.C_grid)
    outer, inner = make_scheme(y, sites, estimator=estimator, cv=cv)
    R, O = outer.shape[0], int(outer.max()) + 1
    if kern is None:
        kern = KernelProvider(X, covariates, sites, standardize=estimator.standardize,
                              harmonize=estimator.harmonize)
    decision = np.zeros((R, n))
    proba = np.full((R, n), np.nan)
    chosen = np.zeros((R, O))
    inner_best = np.zeros((R, O))
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
        Ks, aux = kern.kernels(masks, keep)
        # ---- inner problems: whole C path
        f_in, scores, fb = c_path_decisions(Ks[:n_in], masks[:n_in], groups[:n_in], y, C_grid,
                                            estimator.tol)                  # scores (n_in, L)
        n_fb += fb
        sizes = np.diff(start)
        if (sizes == sizes[0]).all():
            scores = scores.reshape(O, sizes[0], -1).mean(1)                 # (O, L)
        else:
            scores = np.stack([scores[start[o]:start[o + 1]].mean(0) for o in range(O)])
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
           "fold_of": outer, "scheme": (outer, inner), "n_fallback": n_fb}
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
              progress=None):
    """Repeated nested CV (see the module docstring): ``cv`` the outer splitter, ``estimator``
    a :class:`KetaSVC` whose ``cv`` is the inner splitter (defaults from ``settings``).

    ``settings.random_state`` also seeds the bootstrap intervals; ``progress(done, total)`` is
    called after every repeat. Returns :class:`NestedCVResult`.
    """
    settings, estimator, cv, extra = _plan(settings, estimator, cv)
    X, y, covariates, sites = check_inputs(X, y, covariates, sites,
                                           settings if "outer_cv" not in extra else None,
                                           estimator)
    res = _run(X, y, covariates, sites, estimator, cv, details=True, progress=progress)
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
        n_fallback=res["n_fallback"])


# ---------------------------------------------------------------------------------------------
# final model
# ---------------------------------------------------------------------------------------------
def fit_final_model(X, y, *, covariates=None, sites=None, settings=None):
    """The final model: :meth:`KetaSVC.fit` on all subjects, C chosen by an ``n_inner``-fold
    stratified CV over ALL subjects (seeded ``[random_state, 99991]``; same grid, mean BAC,
    ties -> smallest C; in-fold preprocessing), Platt calibration over ``n_inner`` folds."""
    settings = NestedCVSettings() if settings is None else settings
    X, y, covariates, sites = check_inputs(X, y, covariates, sites, None, settings.estimator())
    model = settings.estimator(
        cv=StratifiedFolds(settings.n_inner, random_state=(settings.random_state, 99991)),
        calibration_folds=settings.n_inner)
    return model.fit(X, y, covariates=covariates, sites=sites)
