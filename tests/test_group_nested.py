"""Nested CV engine: exactness against a plain scikit-learn reference, determinism, errors."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, GroupKFold, LeaveOneGroupOut
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from ketabids.errors import BadDataError, UsageError
from ketabids.group import KetaSVC, NestedCVSettings, fit_final_model, nested_cv
from ketabids.group.estimator import KernelScaler
from ketabids.group.kernels import balanced_weights, libsvm_solve, solve_c_path
from ketabids.group.nested import make_scheme
from ketabids.group.preprocessing import ComBatTransformer, CovariateRegressor

TOL = 1e-10


def _cohort(rng, n=44, p=300, k=2, n_sites=0, effect=0.6):
    y = rng.permutation(np.r_[np.ones(n // 2 - 2), np.zeros(n - n // 2 + 2)]).astype(int)
    cov = rng.standard_normal((n, k)) if k else None
    X = rng.standard_normal((n, p)) + 0.5
    X[:, :20] += effect * (2 * y[:, None] - 1)
    if k:
        X += cov @ rng.standard_normal((k, p))           # covariate effects on every voxel
    sites = None
    if n_sites:
        sites = np.array([f"s{i % n_sites}" for i in range(n)])
        X += rng.standard_normal((n_sites, p))[np.arange(n) % n_sites] * 0.7
    return X.astype(np.float32), y, cov, sites


def _pipeline(X, cov, sites, settings):
    """Straightforward feature-space pipeline (data with covariates / site codes as columns)."""
    k = 0 if cov is None else cov.shape[1]
    Xa = X.astype(np.float64)
    steps = []
    if settings.harmonize:
        codes = np.unique(sites, return_inverse=True)[1]
        Xa = np.column_stack([Xa] + ([cov] if k else []) + [codes])
        steps.append(ComBatTransformer(n_covariates=k))
    elif k:
        Xa = np.column_stack([Xa, cov])
    steps.append(CovariateRegressor(n_covariates=k))
    if settings.standardize:
        steps.append(StandardScaler())
    if settings.scale_kernel:
        steps.append(KernelScaler())
    steps.append(SVC(kernel="linear", class_weight="balanced", tol=TOL))
    return Xa, make_pipeline(*steps)


def _reference(X, y, cov, sites, settings):
    """Straightforward feature-space pipeline + GridSearchCV on the same folds."""
    outer, inner = make_scheme(y, sites, settings)
    Xa, pipe = _pipeline(X, cov, sites, settings)
    dec = np.zeros(outer.shape)
    R, O = outer.shape[0], int(outer.max()) + 1
    chosen = np.zeros((R, O))
    for r in range(R):
        for o in range(O):
            tr = np.flatnonzero(outer[r] != o)
            te = np.flatnonzero(outer[r] == o)
            pos = {row: j for j, row in enumerate(tr)}
            splits = [(np.array([pos[i] for i in tr if inner[r, o, i] != f]),
                       np.array([pos[i] for i in tr if inner[r, o, i] == f]))
                      for f in range(int(inner[r, o].max()) + 1)]
            gs = GridSearchCV(pipe, {"svc__C": list(settings.C_grid)},
                              scoring="balanced_accuracy", cv=splits, refit=True)
            gs.fit(Xa[tr], y[tr])
            dec[r, te] = gs.decision_function(Xa[te])
            chosen[r, o] = gs.best_params_["svc__C"]
    return dec, chosen


@pytest.mark.parametrize("variant", ["centring", "covariates", "standardize", "combat",
                                     "unscaled", "leave-site-out", "group-kfold",
                                     "leave-site-out-combat"])
def test_exact_against_sklearn_reference(rng, variant):
    """Every outer scheme and preprocessing: the engine's out-of-fold decisions equal a plain
    scikit-learn Pipeline (with :class:`KernelScaler`) + GridSearchCV on the same folds."""
    k = 0 if variant == "centring" else 2
    scheme = {"leave-site-out": "leave-site-out", "leave-site-out-combat": "leave-site-out",
              "group-kfold": "group-kfold"}.get(variant, "stratified")
    n_sites = 3 if variant == "combat" else 5 if scheme != "stratified" else 0
    X, y, cov, sites = _cohort(rng, n=44 if scheme == "stratified" else 60, k=k,
                               n_sites=n_sites)
    grid = ((2.0 ** -14, 2.0 ** -9, 2.0 ** -5, 1.0) if variant == "unscaled"
            else (2.0 ** -6, 2.0 ** -3, 1.0, 2.0 ** 4))
    settings = NestedCVSettings(n_repeats=2, n_outer=4, n_inner=3, C_grid=grid,
                                standardize=variant == "standardize",
                                harmonize="combat" in variant, random_state=3,
                                scheme=scheme, scale_kernel=variant != "unscaled")
    res = nested_cv(X, y, covariates=cov, sites=sites, settings=settings)
    ref, chosen = _reference(X, y, cov, sites, settings)
    diff = np.abs(res.decision - ref).max()
    assert diff <= 1e-6, diff
    np.testing.assert_array_equal(res.chosen_C, chosen)
    if scheme != "stratified":                       # whole sites in every test fold
        for r in range(res.fold_of.shape[0]):
            for o in np.unique(res.fold_of[r]):
                test = res.fold_of[r] == o
                assert set(sites[test]).isdisjoint(sites[~test])
    # the grid must matter in this test (several C chosen or soft margins reached)
    assert res.decision.std() > 0


def test_solver_matches_libsvm_on_soft_and_hard_margins(rng):
    Ks, ys = [], []
    for i in range(12):
        n, p = 40, [10, 60, 400][i % 3]
        X = rng.standard_normal((n, p))
        y = (rng.random(n) < 0.45).astype(int)
        y[:2] = [0, 1]
        X[:, 0] += y
        X -= X.mean(0)
        Ks.append(X @ X.T)
        ys.append(y)
    K = np.stack(Ks)
    y01 = np.stack(ys)
    grid = 2.0 ** np.arange(-6, 5)
    beta, b, _ = solve_c_path(K, 2.0 * y01 - 1, balanced_weights(y01), grid)
    for i in range(K.shape[0]):
        yy = 2.0 * y01[i] - 1
        for li, C in enumerate(grid):
            ref = SVC(kernel="precomputed", C=C, class_weight="balanced", tol=TOL)
            ref.fit(K[i], y01[i])
            ref_beta = np.zeros(K.shape[1])
            ref_beta[ref.support_] = ref.dual_coef_[0]
            up = C * balanced_weights(y01[i])

            def kkt(beta, b):        # max |margin residual| of free support vectors
                g = K[i] @ beta + b - yy
                free = (np.abs(beta) > 1e-9 * up) & (np.abs(beta) < up * (1 - 1e-9))
                return np.abs(g[free]).max() if free.any() else 0.0

            mine = K[i] @ beta[i, li] + b[i, li]
            diff = np.abs(ref.decision_function(K[i]) - mine).max()
            # exact optimum, or the problem was handed to libsvm (identical then)
            assert kkt(beta[i, li], b[i, li]) <= 1e-9 or diff <= 1e-9
            # libsvm caches kernel values in float32: its own KKT residual bounds the agreement
            assert diff <= 1e-6 or diff <= 20 * kkt(ref_beta, ref.intercept_[0]), (i, C, diff)
            if i % 3 == 2:       # p >> n (the VBM regime): hard margin, tight agreement
                assert diff <= 1e-6


def test_deterministic_and_hash(rng):
    X, y, cov, _ = _cohort(rng, n=40, p=80)
    s = NestedCVSettings(n_repeats=2, n_outer=4, n_inner=3, C_grid=(0.01, 1.0), random_state=5)
    a = nested_cv(X, y, covariates=cov, settings=s)
    b = nested_cv(X, y, covariates=cov, settings=s)
    np.testing.assert_array_equal(a.decision, b.decision)
    assert a.cv_hash == b.cv_hash and len(a.cv_hash) == 64
    c = nested_cv(X, y, covariates=cov, settings=NestedCVSettings(
        n_repeats=2, n_outer=4, n_inner=3, C_grid=(0.01, 1.0), random_state=6))
    assert c.cv_hash != a.cv_hash
    # tidy tables
    assert list(a.folds.columns[:7]) == ["repeat", "fold", "n_train", "n_test", "n_train_pos",
                                        "n_test_pos", "C"]
    assert len(a.folds) == 8 and (a.folds.n_train + a.folds.n_test == 40).all()
    assert a.confusion.sum() == 2 * 40
    assert set(a.metrics.aggregation) == {"pooled", "mean_over_repeats", "consensus"}
    assert ((a.proba >= 0) & (a.proba <= 1)).all()
    assert a.weights.shape == (8, 80)


def test_stratified_folds_balanced(rng):
    y = np.r_[np.ones(47), np.zeros(52)].astype(int)
    sites = np.array(["a", "b", "c"])[rng.integers(0, 3, 99)]
    outer, inner = make_scheme(y, sites, NestedCVSettings(n_repeats=3))
    for r in range(3):
        sizes = np.bincount(outer[r])
        assert sizes.max() - sizes.min() <= 1
        pos = np.bincount(outer[r][y == 1], minlength=10)
        assert pos.max() - pos.min() <= 1
    assert (inner[0, 0][outer[0] == 0] == -1).all()


def test_input_errors(rng):
    X, y, _, _ = _cohort(rng, n=30, p=10, k=0)
    with pytest.raises(BadDataError):
        nested_cv(X, np.zeros(30, int))
    with pytest.raises(BadDataError):
        nested_cv(X[:, :5].reshape(-1), y)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(BadDataError):
        nested_cv(Xn, y)
    with pytest.raises(UsageError):
        nested_cv(X, y, settings=NestedCVSettings(harmonize=True))
    with pytest.raises(UsageError):
        nested_cv(X, y, settings=NestedCVSettings(n_outer=20))


def test_final_model_applies_in_sample_preprocessing(rng):
    X, y, cov, sites = _cohort(rng, n=60, p=120, k=2, n_sites=2)
    s = NestedCVSettings(n_inner=3, C_grid=(2.0 ** -10, 2.0 ** -6, 1.0), harmonize=True,
                         standardize=True)
    model = fit_final_model(X, y, covariates=cov, sites=sites, settings=s)
    assert model.C_ in s.C_grid and model.cv_scores_.shape == (3,)
    # reference: same chain with sklearn objects fitted on all subjects
    codes = np.unique(sites, return_inverse=True)[1]
    Xa = np.column_stack([X.astype(float), cov, codes])
    ref = make_pipeline(ComBatTransformer(2), CovariateRegressor(2), StandardScaler(),
                        KernelScaler(),
                        SVC(kernel="linear", C=model.C_, class_weight="balanced", tol=TOL))
    ref.fit(Xa, y)
    d = model.decision_function(X, covariates=cov, sites=sites)
    assert np.abs(d - ref.decision_function(Xa)).max() <= 1e-6
    p = model.predict_proba(X, covariates=cov, sites=sites)
    assert np.allclose(p.sum(1), 1)
    assert (np.diff(p[np.argsort(d), 1]) >= -1e-12).all()      # monotone in the decision
    with pytest.raises(ValueError):
        model.decision_function(X)                    # covariates missing


# predict_proba is a Platt sigmoid fitted on cross-validated decision values (as libsvm's
# probability=True), so near the boundary argmax(proba) may differ from sign(decision): the one
# assertion of check_classifiers_train this design breaks (4 of its 200 points).
_PLATT = {"check_classifiers_train": "Platt probabilities need not cross 0.5 at decision 0"}


@parametrize_with_checks([KetaSVC(calibration_folds=3)],
                         expected_failed_checks=lambda est: _PLATT)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_skops_round_trip(rng, tmp_path):
    import skops.io as skops_io

    X, y, cov, sites = _cohort(rng, n=40, p=50, k=1, n_sites=2)
    model = KetaSVC(C_grid=(0.5,), harmonize=True, standardize=True).fit(X, y, covariates=cov,
                                                                  sites=sites)
    path = tmp_path / "model.skops"
    skops_io.dump(model, path)
    # only the estimator class itself needs trusting: its state is numpy arrays / scalars
    untrusted = skops_io.get_untrusted_types(file=path)
    assert untrusted == ["ketabids.group.estimator.KetaSVC"]
    loaded = skops_io.load(path, trusted=untrusted)
    np.testing.assert_array_equal(loaded.decision_function(X, cov, sites),
                                  model.decision_function(X, cov, sites))


@pytest.mark.parametrize("scheme", ["group-k-fold", "leave-one-site-out", "uneven-inner"])
def test_site_splitters_through_the_engine_match_sklearn(rng, scheme):
    """Site-wise outer and inner CV: scikit-learn splitters go through the engine unchanged and
    give the decisions of GridSearchCV run by scikit-learn itself on the same splitters."""
    n_sites = 5 if scheme == "uneven-inner" else 4
    X, y, cov, sites = _cohort(rng, n=60, k=1, n_sites=n_sites)
    outer_cv, inner_cv = {"group-k-fold": (GroupKFold(4), GroupKFold(3)),
                          "leave-one-site-out": (LeaveOneGroupOut(), LeaveOneGroupOut()),
                          "uneven-inner": (GroupKFold(2), LeaveOneGroupOut())}[scheme]
    settings = NestedCVSettings(n_repeats=1, C_grid=(2.0 ** -14, 2.0 ** -9, 2.0 ** -5, 1.0))
    estimator = settings.estimator(cv=inner_cv)
    res = nested_cv(X, y, covariates=cov, sites=sites, estimator=estimator, cv=outer_cv)
    Xa, pipe = _pipeline(X, cov, sites, settings)
    folds = list(outer_cv.split(Xa, y, sites))
    assert res.decision.shape == (1, 60) and res.chosen_C.shape == (1, len(folds))
    for o, (tr, te) in enumerate(folds):
        assert set(sites[tr]).isdisjoint(sites[te])             # whole sites held out
        np.testing.assert_array_equal(np.flatnonzero(res.fold_of[0] == o), te)
        gs = GridSearchCV(pipe, {"svc__C": list(settings.C_grid)}, cv=inner_cv,
                          scoring="balanced_accuracy", refit=True)
        gs.fit(Xa[tr], y[tr], groups=sites[tr])
        diff = np.abs(res.decision[0, te] - gs.decision_function(Xa[te])).max()
        assert diff <= 1e-6, (o, diff)
        assert res.chosen_C[0, o] == gs.best_params_["svc__C"]
    assert res.decision.std() > 0


def test_estimator_selects_c_by_inner_cv_and_refits(rng):
    """KetaSVC.fit = GridSearchCV(refit=True) over its C grid on its splitter (groups = sites)."""
    X, y, cov, sites = _cohort(rng, n=48, k=2, n_sites=3)
    grid = (2.0 ** -14, 2.0 ** -9, 2.0 ** -5, 1.0)
    model = KetaSVC(C_grid=grid, cv=LeaveOneGroupOut()).fit(X, y, covariates=cov, sites=sites)
    settings = NestedCVSettings(C_grid=grid)
    Xa, pipe = _pipeline(X, cov, sites, settings)
    gs = GridSearchCV(pipe, {"svc__C": list(grid)}, cv=LeaveOneGroupOut(),
                      scoring="balanced_accuracy", refit=True).fit(Xa, y, groups=sites)
    np.testing.assert_allclose(model.cv_scores_, gs.cv_results_["mean_test_score"], atol=1e-12)
    assert model.C_ == gs.best_params_["svc__C"]
    d = model.decision_function(X, covariates=cov, sites=sites)
    assert np.abs(d - gs.decision_function(Xa)).max() <= 1e-6
    # the default splitter is StratifiedKFold(5); a one-value grid skips the search
    assert KetaSVC(C_grid=(0.5,)).fit(X, y).cv_scores_ is None


def test_engine_refuses_splitters_that_do_not_partition(rng):
    from sklearn.model_selection import ShuffleSplit

    X, y, _, _ = _cohort(rng, n=30, p=10, k=0)
    with pytest.raises(UsageError, match="partition"):
        nested_cv(X, y, cv=ShuffleSplit(3, test_size=0.3, random_state=0))


def test_libsvm_fallback_equals_svc_and_ignores_padding(rng):
    """Problems handed to libsvm: the solution of SVC(kernel='precomputed') with balanced class
    weights, padding entries untouched."""
    for i in range(6):
        n, p = 30, [5, 40, 500][i % 3]
        X = rng.standard_normal((n, p))
        X -= X.mean(0)
        y01 = (rng.random(n) < 0.45).astype(int)
        y01[:2] = [0, 1]
        yy = np.r_[2.0 * y01 - 1, 0.0]                  # one padding entry
        K = np.zeros((n + 1, n + 1))
        K[:n, :n] = X @ X.T
        C = [2.0 ** -6, 1.0, 16.0][i % 3]
        beta, b = libsvm_solve(K, yy, C * np.r_[balanced_weights(y01), 0.0], TOL)
        assert beta[-1] == 0 and abs(beta[:n].sum()) <= 1e-9
        ref = SVC(kernel="precomputed", C=C, tol=TOL, class_weight="balanced").fit(K[:n, :n],
                                                                                  y01)
        np.testing.assert_allclose(ref.decision_function(K[:n, :n]), K[:n, :n] @ beta[:n] + b,
                                   atol=1e-9)


def test_default_splitters_deal_the_study_folds(rng):
    """The default outer/inner splitters reproduce the seeded round-robin folds exactly (the
    published results depend on them)."""
    from ketabids.group.cv import stratified_folds

    y = np.r_[np.ones(17), np.zeros(23)].astype(int)
    sites = np.array(["a", "b", "c"])[rng.integers(0, 3, 40)]
    s = NestedCVSettings(n_repeats=2, n_outer=4, n_inner=3, random_state=7)
    outer, inner = make_scheme(y, sites, s)
    for r in range(2):
        expected = stratified_folds(y, 4, np.random.default_rng([7, r]), sites)
        np.testing.assert_array_equal(outer[r], expected)
        for o in range(4):
            tr = expected != o
            np.testing.assert_array_equal(inner[r, o, tr], stratified_folds(
                y[tr], 3, np.random.default_rng([7, r, o, 1]), sites[tr]))
