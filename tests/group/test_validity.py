"""Validity on generated cohorts: a planted effect is found where it was planted; null cohorts
give chance-level BAC and a calibrated permutation test (this catches leakage)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from ketabids.group import (
    CVData,
    NestedCVSettings,
    fit_final_model,
    haufe_pattern,
    nested_cv,
    permutation_test,
    region_table,
    weight_maps,
)

REGIONS = {1: "frontal", 2: "cerebellar", **{k: f"other{k}" for k in range(3, 11)}}


def make_cohort(seed, n=100, p=2400, effect=0.35, null=False, n_sites=0):
    """Voxel vectors: 10 blocks ("frontal" = 1, "cerebellar" = 2, ...), smooth noise, an age
    effect on every voxel, responders higher in frontal and lower in cerebellar."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.r_[np.ones(n * 45 // 100), np.zeros(n - n * 45 // 100)]).astype(int)
    labels = np.repeat(np.arange(1, 11), p // 10)
    age = rng.normal(45, 12, n)
    X = 0.5 + 0.05 * gaussian_filter1d(rng.standard_normal((n, p)), 2, axis=1) / 0.28
    X += 0.002 * (age[:, None] - 45) * (1 + rng.random(p))
    if not null:
        s = 0.05 * effect * (2 * y[:, None] - 1)
        X[:, labels == 1] += s
        X[:, labels == 2] -= s
    sites = None
    if n_sites:
        sites = np.array([f"site{i}" for i in rng.integers(0, n_sites, n)])
        offs = rng.normal(0, 0.03, (n_sites, p))
        X += offs[np.unique(sites, return_inverse=True)[1]]
    # x10: kernel diagonals of a few hundred, as for real modulated-GM maps with ~200k voxels,
    # so the default C grid spans the same (mostly hard-margin) regime as real data
    return (10 * X).astype(np.float32), y, age[:, None], sites, labels


@pytest.mark.slow
def test_planted_effect_found():
    X, y, cov, _, labels = make_cohort(1)
    s = NestedCVSettings(n_repeats=3, random_state=1)
    res = nested_cv(X, y, covariates=cov, settings=s)
    assert res.bac_pooled >= 0.80 and res.bac_mean >= 0.80
    perm = permutation_test(CVData(X, y, covariates=cov), settings=NestedCVSettings(
        n_repeats=1, random_state=1), n_permutations=99, random_state=2)
    assert perm.p_bac <= 0.01 and perm.p_auc <= 0.01
    assert perm.null_bac.mean() < 0.6
    model = fit_final_model(X, y, covariates=cov, settings=s)
    pattern = haufe_pattern(model, X, covariates=cov)
    table = region_table(labels, pattern, names=REGIONS, maps=weight_maps(res))
    top = table.head(2).set_index("name")
    assert set(top.index) == {"frontal", "cerebellar"}
    assert top.loc["frontal", "sign"] == "+" and top.loc["cerebellar", "sign"] == "-"
    assert top.loc["frontal", "mean_sign_consistency"] > 0.9
    # the final model separates a fresh cohort drawn the same way
    X2, y2, cov2, _, _ = make_cohort(11)
    acc = np.mean(model.predict(X2, covariates=cov2) == y2)
    assert acc >= 0.8


@pytest.mark.slow
def test_null_cohorts_chance_level_and_calibrated():
    s = NestedCVSettings(n_repeats=1, n_outer=5, n_inner=3,
                         C_grid=(2.0 ** -8, 2.0 ** -4, 1.0, 16.0), random_state=0)
    bacs, ps = [], []
    for seed in range(20):
        X, y, cov, _, _ = make_cohort(100 + seed, n=80, p=600, null=True)
        perm = permutation_test(CVData(X, y, covariates=cov), settings=s,
                                n_permutations=39, random_state=seed)
        bacs.append(perm.observed_bac)
        ps.append(perm.p_bac)
    bacs, ps = np.array(bacs), np.array(ps)
    assert abs(bacs.mean() - 0.5) <= 0.04, bacs
    assert (ps < 0.05).sum() <= 3, ps


@pytest.mark.slow
def test_within_site_permutation_and_combat():
    X, y, cov, sites, _ = make_cohort(5, n=90, p=600, n_sites=3)
    s = NestedCVSettings(n_repeats=1, n_outer=5, n_inner=3, C_grid=(2.0 ** -6, 1.0),
                         harmonize=True, random_state=0)
    res = nested_cv(X, y, covariates=cov, sites=sites, settings=s)
    assert res.bac_pooled >= 0.65
    perm = permutation_test(CVData(X, y, covariates=cov, sites=sites), settings=s,
                            n_permutations=9, observed=res)
    assert perm.p_bac == pytest.approx(0.1)


@pytest.mark.slow
def test_planted_effect_on_phantom_template_maps():
    """Same check on the phantom engineer's template-space VBM maps (ketabids.demo.phantom)."""
    from ketabids.demo import phantom as ph

    regions = ph.effect_regions()
    mask = np.zeros(regions["frontal"].shape, bool)
    gm0 = ph.simulate_template_gm(seed=0, responder=None)
    mask[::2, ::2, ::2] = gm0[::2, ::2, ::2] > 0.2              # every 8th GM voxel
    atlas = np.where(regions["frontal"], 1, np.where(regions["cerebellar"], 2, 3))[mask]
    rng = np.random.default_rng(3)
    n = 60
    y = rng.permutation(np.r_[np.ones(27), np.zeros(33)]).astype(int)
    age = rng.normal(45, 10, n)
    X = np.stack([ph.simulate_template_gm(seed=100 + i, responder=bool(y[i]), age=age[i])[mask]
                  for i in range(n)])
    s = NestedCVSettings(n_repeats=2, n_outer=5, n_inner=3, random_state=0)
    res = nested_cv(X, y, covariates=age[:, None], settings=s)
    assert res.bac_pooled >= 0.8
    model = fit_final_model(X, y, covariates=age[:, None], settings=s)
    table = region_table(atlas, haufe_pattern(model, X, covariates=age[:, None]),
                         names={1: "frontal", 2: "cerebellar", 3: "rest"})
    top = table.head(2).set_index("name")
    assert set(top.index) == {"frontal", "cerebellar"}
    assert top.loc["frontal", "sign"] == "+" and top.loc["cerebellar", "sign"] == "-"
