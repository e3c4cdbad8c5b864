"""Nested CV engine: exactness against a plain scikit-learn reference, determinism, errors."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, GroupKFold, LeaveOneGroupOut

from ketabids.errors import BadDataError, UsageError
from ketabids.group import NestedCVSettings, nested_cv
from ketabids.group.nested import make_scheme
from tests.group.reference import cohort as _cohort
from tests.group.reference import sklearn_pipeline as _pipeline


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


def test_engine_refuses_splitters_that_do_not_partition(rng):
    from sklearn.model_selection import ShuffleSplit

    X, y, _, _ = _cohort(rng, n=30, p=10, k=0)
    with pytest.raises(UsageError, match="partition"):
        nested_cv(X, y, cv=ShuffleSplit(3, test_size=0.3, random_state=0))
