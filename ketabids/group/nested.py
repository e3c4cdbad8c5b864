"""Repeated nested cross-validation of a linear SVC on (VBM) feature vectors, exactly and fast.

Protocol (defaults follow the study): ``n_repeats`` x ``n_outer``-fold stratified outer CV; in
each outer training set an ``n_inner``-fold stratified inner CV picks C from ``C_grid`` by mean
inner balanced accuracy (ties -> the SMALLEST C); the outer model is refitted on the whole outer
training set with that C and predicts the outer test fold. In-fold preprocessing (fitted on the
training rows of every inner and outer split, applied to its held-out rows):
ComBat (``harmonize``) -> regression of every voxel on [1, covariates] (always; without
covariates this is centring) -> z-scoring (``standardize``) -> SVC(kernel='linear',
class_weight='balanced').

Exactness. Centring and covariate regression are linear maps in sample space, so with neither
ComBat nor z-scoring every fold's kernel is ``M K M^T`` of one ``K = X X^T`` (computed once);
otherwise each training set gets its own kernel ``X_t X_t^T``. Duals are solved exactly
(:mod:`ketabids.group.kernels`); out-of-fold decision values equal those of a plain scikit-learn
Pipeline + GridSearchCV on the same folds (tests/test_group_nested.py).

Probabilities: in each outer fold a Platt sigmoid is fitted on the inner-CV (out-of-sample)
decision values of the outer training rows at the chosen C and applied to the outer test rows;
the test fold never enters.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from ketabids.errors import BadDataError, UsageError
from ketabids.group.kernels import (balanced_weights, platt_fit, platt_predict,
                                    residual_kernels, solve_c_path, solve_dual)
from ketabids.group.preprocessing import (apply_combat, design_matrix, fit_combat,
                                          fit_scaler, stratified_folds)

__all__ = ["NestedCVSettings", "NestedCVResult", "nested_cv", "KetaSVC", "fit_final_model",
           "make_scheme", "check_inputs"]

DEFAULT_C_GRID = tuple(float(2.0 ** k) for k in range(-6, 5))


@dataclass(frozen=True)
class NestedCVSettings:
    """Settings of the repeated nested CV (all fitted preprocessing is in-fold)."""

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


@dataclass
class NestedCVResult:
    """Everything a nested CV produced (see /work/coord/group-api.md)."""

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
    extra: dict = field(default_factory=dict)

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
def check_inputs(X, y, covariates=None, sites=None, settings=None):
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
    n = X.shape[0]
    if covariates is not None:
        covariates = np.asarray(covariates, float).reshape(n, -1)
        if not np.isfinite(covariates).all():
            raise BadDataError("covariates contain NaN/inf; impute or drop those subjects")
    if sites is not None:
        sites = np.asarray(sites).astype(str)
        if sites.shape != (n,):
            raise BadDataError(f"sites: expected {n} values, got shape {sites.shape}")
    if settings is not None:
        if counts.min() < settings.n_outer:
            raise UsageError(f"the smaller class has {counts.min()} subjects, fewer than "
                             f"n_outer={settings.n_outer} folds; lower --n-outer")
        if settings.harmonize and sites is None:
            raise UsageError("ComBat harmonisation needs site labels")
    return X, y, covariates, sites


def make_scheme(y, sites, settings):
    """Outer folds (R, n) and inner folds (R, O, n; -1 = row in the outer test fold)."""
    n = y.size
    R, O, I = settings.n_repeats, settings.n_outer, settings.n_inner
    outer = np.empty((R, n), np.int64)
    inner = np.full((R, O, n), -1, np.int64)
    for r in range(R):
        outer[r] = stratified_folds(y, O, np.random.default_rng([settings.random_state, r]),
                                    sites)
        for o in range(O):
            tr = outer[r] != o
            rng = np.random.default_rng([settings.random_state, r, o, 1])
            inner[r, o, tr] = stratified_folds(y[tr], I, rng,
                                               None if sites is None else sites[tr])
    return outer, inner


def scheme_hash(outer, inner, settings, n):
    h = hashlib.sha256()
    h.update(json.dumps({"n": int(n), **settings.as_dict()}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(outer, np.int64).tobytes())
    h.update(np.ascontiguousarray(inner, np.int64).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# preprocessing chains
# ---------------------------------------------------------------------------------------------
def _fit_chain(X, Z, cov, sites, rows, standardize, harmonize):
    """Fit ComBat -> covariate regression -> scaling on ``rows``; returns params dict."""
    params = {}
    Xr = X[rows].astype(float)
    if harmonize:
        params["combat"] = fit_combat(Xr, sites[rows], None if cov is None else cov[rows])
        Xr = apply_combat(Xr, sites[rows], params["combat"], None if cov is None else cov[rows])
    coef = np.linalg.pinv(Z[rows]) @ Xr
    params["cov_coef"] = coef
    if standardize:
        params["scale"] = fit_scaler(Xr - Z[rows] @ coef)
    return params


def _apply_chain(X, Z, cov, sites, params):
    Xt = X.astype(float)
    if "combat" in params:
        Xt = apply_combat(Xt, sites, params["combat"], cov)
    Xt = Xt - Z @ params["cov_coef"]
    if "scale" in params:
        Xt = Xt / params["scale"]
    return Xt


class _Kernels:
    """Kernel provider: linear sample-space maps from one K, or per-training-set kernels."""

    def __init__(self, X, covariates, sites, settings, K=None):
        self.X, self.cov, self.sites = X, covariates, sites
        self.Z = design_matrix(covariates, X.shape[0])
        self.per_fold = settings.standardize or settings.harmonize
        self.settings = settings
        if not self.per_fold:
            self.K = linear_kernel(X) if K is None else K

    def kernels(self, masks, keep=None):
        """Kernels (T, n, n) for training masks; ``keep`` (bool per mask) keeps what is needed
        for weights."""
        if not self.per_fold:
            Ks, G = residual_kernels(self.K, self.Z, masks)
            return Ks, ("linear", G)
        Ks = np.empty((len(masks), self.X.shape[0], self.X.shape[0]))
        kept = {}
        for t, m in enumerate(masks):
            params = _fit_chain(self.X, self.Z, self.cov, self.sites, m,
                                self.settings.standardize, self.settings.harmonize)
            Xt = _apply_chain(self.X, self.Z, self.cov, self.sites, params)
            Ks[t] = Xt @ Xt.T
            if keep is not None and keep[t]:
                kept[t] = params              # small; features are re-derived for weights
        return Ks, ("per_fold", kept)

    def weights(self, aux, t, beta_full):
        """Primal weights of model t in the preprocessed feature space (float64 vector)."""
        kind, data = aux
        if kind == "linear":
            G = data[t]
            v = beta_full - G.T @ (self.Z.T @ beta_full)
            return v, None
        Xt = _apply_chain(self.X, self.Z, self.cov, self.sites, data[t])
        return None, Xt.T @ beta_full


def linear_kernel(X, chunk=16384):
    """``X X^T`` in float64, accumulated over voxel chunks (no float64 copy of X)."""
    n, p = X.shape
    K = np.zeros((n, n))
    for start in range(0, p, chunk):
        xc = np.asarray(X[:, start:start + chunk], np.float64)
        K += xc @ xc.T
    return K


def _gather(Ks, masks, y):
    """Padded training sub-kernels (T, m, m), labels (+-1, 0 pad), weights, index (T, m)."""
    T = len(masks)
    sizes = masks.sum(1)
    m = int(sizes.max())
    idx = np.zeros((T, m), np.int64)
    valid = np.zeros((T, m), bool)
    for t in range(T):
        ii = np.flatnonzero(masks[t])
        idx[t, : ii.size] = ii
        valid[t, : ii.size] = True
    ar = np.arange(T)[:, None, None]
    Ktt = Ks[ar, idx[:, :, None], idx[:, None, :]]
    y01 = y[idx]
    yy = np.where(valid, 2.0 * y01 - 1, 0.0)
    w = balanced_weights(y01, valid)
    return Ktt, yy, w, idx, valid


def _bac(y_true, pred):
    """Balanced accuracy as scikit-learn computes it (mean recall over present classes)."""
    rec = []
    for c in (0, 1):
        sel = y_true == c
        if sel.any():
            rec.append(np.mean(pred[sel] == c))
    return float(np.mean(rec))


def _bac_sets(y_true, pred, groups):
    """BAC of pred (T, L, n) bool on the rows of groups (T, n), as scikit-learn computes it
    (mean recall over the classes present) -> (T, L)."""
    pos = (groups & (y_true == 1)).astype(float)
    neg = (groups & (y_true == 0)).astype(float)
    npos = pos.sum(1)[:, None]
    nneg = neg.sum(1)[:, None]
    tp = (pred.astype(float) @ pos[:, :, None])[..., 0]
    tn = ((~pred).astype(float) @ neg[:, :, None])[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / npos
        spec = tn / nneg
    both = (npos > 0) & (nneg > 0)
    return np.where(both, (spec + sens) / 2, np.where(npos > 0, sens, spec))


# ---------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------
def _run(X, y, covariates, sites, settings, *, kern=None, details=True, progress=None,
         scheme=None):
    n = y.size
    R, O, I = settings.n_repeats, settings.n_outer, settings.n_inner
    C_grid = np.asarray(settings.C_grid)
    outer, inner = make_scheme(y, sites, settings) if scheme is None else scheme
    if kern is None:
        kern = _Kernels(X, covariates, sites, settings)
    decision = np.zeros((R, n))
    proba = np.full((R, n), np.nan)
    chosen = np.zeros((R, O))
    inner_best = np.zeros((R, O))
    V = []
    W = []
    intercepts = []
    n_fb = 0
    for r in range(R):
        masks, groups = [], []
        for o in range(O):
            for i in range(I):
                masks.append((inner[r, o] >= 0) & (inner[r, o] != i))
                groups.append(inner[r, o] == i)
        for o in range(O):
            masks.append(outer[r] != o)
        masks = np.array(masks)
        groups = np.array(groups)
        n_in = O * I
        keep = np.r_[np.zeros(n_in, bool), np.ones(O, bool)] if details else None
        Ks, aux = kern.kernels(masks, keep)
        # ---- inner problems: whole C path
        Ktt, yy, w, idx, valid = _gather(Ks[:n_in], masks[:n_in], y)
        beta, b, fb = solve_c_path(Ktt, yy, w, C_grid, tol=settings.tol)
        n_fb += fb
        beta_full = np.zeros((n_in, C_grid.size, n))
        for t in range(n_in):
            nv = valid[t].sum()
            beta_full[t][:, idx[t, :nv]] = beta[t][:, :nv]
        f_in = (Ks[:n_in] @ beta_full.transpose(0, 2, 1)).transpose(0, 2, 1) + b[:, :, None]
        scores = _bac_sets(y, f_in > 0, groups[:n_in])                 # (n_in, L)
        scores = scores.reshape(O, I, -1).mean(1)                      # (O, L)
        best = scores.argmax(1)                                        # first max = smallest C
        chosen[r] = C_grid[best]
        inner_best[r] = scores[np.arange(O), best]
        # ---- outer problems
        Kot, yyo, wo, idxo, valido = _gather(Ks[n_in:], masks[n_in:], y)
        up = wo * chosen[r][:, None]
        bo, bbo, _, fb = solve_dual(Kot, yyo, up, tol=settings.tol)
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
                for i in range(I):
                    g = groups[o * I + i]
                    fin[g] = f_in[o * I + i, best[o], g]
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


def nested_cv(X, y, *, covariates=None, sites=None, settings=NestedCVSettings(), progress=None):
    """Repeated nested CV; see the module docstring and /work/coord/group-api.md."""
    from ketabids.group.metrics import classification_metrics, per_fold_table, repeat_metrics

    X, y, covariates, sites = check_inputs(X, y, covariates, sites, settings)
    res = _run(X, y, covariates, sites, settings, details=True, progress=progress)
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
        cv_hash=scheme_hash(outer, inner, settings, y.size), settings=settings, y=y,
        n_fallback=res["n_fallback"])


# ---------------------------------------------------------------------------------------------
# final model
# ---------------------------------------------------------------------------------------------
class KetaSVC(ClassifierMixin, BaseEstimator):
    """Linear SVC (balanced class weights) with its in-sample preprocessing, skops-safe.

    ``fit(X, y, covariates=None, sites=None)``: ComBat (``harmonize``; needs sites) ->
    regression of every feature on [1, covariates] -> z-scoring (``standardize``) -> exact
    linear SVC dual. ``predict_proba`` uses a Platt sigmoid fitted on stratified
    ``calibration_folds``-fold CV decision values of the training data (the whole chain refitted
    in every fold); with too few subjects per class it falls back to in-sample decisions.
    The same covariates/sites must be passed to the prediction methods. Fitted state: numpy
    arrays and python scalars only.
    """

    def __init__(self, C=1.0, standardize=False, harmonize=False, calibration_folds=5,
                 tol=1e-10, random_state=0):
        self.C = C
        self.standardize = standardize
        self.harmonize = harmonize
        self.calibration_folds = calibration_folds
        self.tol = tol
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.classifier_tags.poor_score = False
        return tags

    def _chain_fit(self, X, cov, sites, rows):
        Z = design_matrix(cov, X.shape[0])
        return _fit_chain(X, Z, cov, sites, rows, self.standardize, self.harmonize), Z

    def fit(self, X, y, covariates=None, sites=None):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y", raise_unknown=True)
        if y_type != "binary":
            raise ValueError("Only binary classification is supported. The type of the target "
                             f"is {y_type}.")
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ValueError("KetaSVC needs samples of 2 classes; got 1 class")
        if self.C <= 0:
            raise ValueError("C must be positive")
        y01 = (y == self.classes_[1]).astype(np.int64)
        n = X.shape[0]
        cov = None if covariates is None else np.asarray(covariates, float).reshape(n, -1)
        if self.harmonize and sites is None:
            raise ValueError("harmonize=True needs sites")
        sites_a = None if sites is None else np.asarray(sites).astype(str)
        self._fit_all(X, y01, cov, sites_a, kern=None)
        return self

    def _fit_all(self, X, y01, cov, sites_a, kern=None):
        """Fit model + Platt calibration from kernels: one K = X X^T serves the full fit and
        every calibration fold when there is no per-fold ComBat/z-scoring."""
        n = X.shape[0]
        if kern is None:
            kern = _Kernels(X, cov, sites_a, NestedCVSettings(
                standardize=self.standardize, harmonize=self.harmonize))
        k = min(int(self.calibration_folds), int(np.bincount(y01).min()))
        masks = [np.ones(n, bool)]
        if k >= 2:
            folds = stratified_folds(y01, k, np.random.default_rng(self.random_state), sites_a)
            cal = [folds != f for f in range(k)]
            if all(np.unique(y01[m]).size == 2 for m in cal):
                masks += cal
        masks = np.array(masks)
        Ks, aux = kern.kernels(masks, keep=np.arange(len(masks)) == 0)
        Ktt, yy, w, idx, valid = _gather(Ks, masks, y01)
        beta, b, _, _ = solve_dual(Ktt, yy, self.C * w, tol=self.tol)
        bfull = np.zeros((len(masks), n))
        for t in range(len(masks)):
            nv = valid[t].sum()
            bfull[t, idx[t, :nv]] = beta[t, :nv]
        params, _ = self._chain_fit(X, cov, sites_a, np.ones(n, bool))
        v, wv = kern.weights(aux, 0, bfull[0])
        coef = (v @ X if v is not None else wv).astype(np.float64)
        self.coef_ = coef[None, :]
        self.intercept_ = np.array([float(b[0])])
        self.dual_coef_ = bfull[0][bfull[0] != 0]
        self.support_ = np.flatnonzero(bfull[0] != 0)
        self.cov_coef_ = params["cov_coef"]
        self.mean_ = X.mean(0)
        self.n_covariates_ = 0 if cov is None else cov.shape[1]
        self.scale_ = params.get("scale")
        self.combat_ = params.get("combat")
        self.sites_ = None if sites_a is None else np.unique(sites_a)
        if len(masks) > 1:
            fcv = np.zeros(n)
            for t in range(1, len(masks)):
                test = ~masks[t]
                fcv[test] = Ks[t][test] @ bfull[t] + b[t]
        else:                       # too few subjects per class: in-sample (documented)
            fcv = Ks[0] @ bfull[0] + b[0]
        self.platt_a_, self.platt_b_ = platt_fit(fcv, y01)

    def _transform(self, X, covariates=None, sites=None):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        n = X.shape[0]
        if self.n_covariates_ and covariates is None:
            raise ValueError(f"this model was fitted with {self.n_covariates_} covariates; "
                             "pass covariates=")
        cov = None if not self.n_covariates_ else np.asarray(covariates, float).reshape(n, -1)
        params = {"cov_coef": self.cov_coef_}
        if self.scale_ is not None:
            params["scale"] = self.scale_
        if self.combat_ is not None:
            if sites is None:
                raise ValueError("this model harmonises sites; pass sites=")
            params["combat"] = self.combat_
        sites_a = None if sites is None else np.asarray(sites).astype(str)
        return _apply_chain(X, design_matrix(cov, n), cov, sites_a, params)

    def transform_features(self, X, covariates=None, sites=None):
        """Features after the fitted preprocessing (the space of ``coef_``)."""
        return self._transform(X, covariates, sites)

    def decision_function(self, X, covariates=None, sites=None):
        Xt = self._transform(X, covariates, sites)
        return Xt @ self.coef_[0] + self.intercept_[0]

    def predict(self, X, covariates=None, sites=None):
        d = self.decision_function(X, covariates, sites)
        return self.classes_[(d > 0).astype(int)]

    def predict_proba(self, X, covariates=None, sites=None):
        p1 = platt_predict(self.decision_function(X, covariates, sites), self.platt_a_,
                           self.platt_b_)
        return np.column_stack([1 - p1, p1])


def fit_final_model(X, y, *, covariates=None, sites=None, settings=NestedCVSettings()):
    """Refit on all subjects with C chosen by an ``n_inner``-fold stratified CV over ALL
    subjects (same grid, mean BAC, ties -> smallest C; in-fold preprocessing).

    Returns a fitted :class:`KetaSVC` with extra attributes ``cv_scores_`` (per C) and
    ``C_grid_``.
    """
    X, y, covariates, sites = check_inputs(X, y, covariates, sites, None)
    n = y.size
    C_grid = np.asarray(settings.C_grid)
    folds = stratified_folds(y, settings.n_inner,
                             np.random.default_rng([settings.random_state, 99991]), sites)
    kern = _Kernels(X, covariates, sites, settings)
    masks = np.array([folds != i for i in range(settings.n_inner)])
    Ks, _ = kern.kernels(masks)
    Ktt, yy, w, idx, valid = _gather(Ks, masks, y)
    beta, b, _ = solve_c_path(Ktt, yy, w, C_grid, tol=settings.tol)
    scores = np.zeros((settings.n_inner, C_grid.size))
    for t in range(settings.n_inner):
        nv = valid[t].sum()
        bf = np.zeros((C_grid.size, n))
        bf[:, idx[t, :nv]] = beta[t][:, :nv]
        f = Ks[t] @ bf.T + b[t][None, :]
        val = ~masks[t]
        scores[t] = [_bac(y[val], f[val, l] > 0) for l in range(C_grid.size)]
    mean = scores.mean(0)
    C = float(C_grid[int(mean.argmax())])
    model = KetaSVC(C=C, standardize=settings.standardize, harmonize=settings.harmonize,
                    calibration_folds=settings.n_inner, tol=settings.tol,
                    random_state=settings.random_state)
    # same validation/attributes as KetaSVC.fit, but reusing the kernel provider
    validate_data(model, X, y, dtype=None)
    model.classes_ = np.array([0, 1])
    model._fit_all(X, y, covariates, sites, kern=kern)
    model.cv_scores_ = mean
    model.C_grid_ = C_grid.copy()
    return model
