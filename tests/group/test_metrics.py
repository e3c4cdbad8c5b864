"""Metrics with intervals (the permutation tests are in test_permutation.py)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_auc_score

from ketabids.group import classification_metrics
from ketabids.group.metrics import delong_interval, wilson_interval


def test_wilson_reference_values():
    # study: sensitivity 34/47; Wilson 95% CI (Newcombe 1998 method 3) ~ [0.582, 0.831]
    lo, hi = wilson_interval(34, 47)
    assert lo == pytest.approx(0.5823, abs=1e-3) and hi == pytest.approx(0.8305, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_single_metrics_match_sklearn(rng):
    n = 120
    y = (rng.random(n) < 0.45).astype(int)
    d = rng.standard_normal(n) + 1.2 * (2 * y - 1)
    p = 1 / (1 + np.exp(-d))
    m = classification_metrics(y, d, p, n_bootstrap=500).set_index("metric")
    assert (m.aggregation == "single").all()
    assert m.loc["bac", "estimate"] == pytest.approx(balanced_accuracy_score(y, d > 0))
    assert m.loc["auc", "estimate"] == pytest.approx(roc_auc_score(y, d))
    assert m.loc["brier", "estimate"] == pytest.approx(brier_score_loss(y, p))
    assert m.loc["sensitivity", "method"] == "Wilson score"
    assert m.loc["auc", "method"] == "DeLong"
    for name, row in m.iterrows():
        assert row.ci_low <= row.estimate <= row.ci_high, name
    # DeLong and bootstrap agree roughly on the AUC interval width
    _, lo, hi = delong_interval(y, d)
    assert 0.03 < hi - lo < 0.3


def test_pooled_cluster_bootstrap_is_wider_than_naive(rng):
    n, R = 100, 10
    y = (rng.random(n) < 0.5).astype(int)
    base = rng.standard_normal(n) + 0.8 * (2 * y - 1)
    dec = base[None, :] + 0.1 * rng.standard_normal((R, n))   # repeats nearly identical
    pooled = classification_metrics(y, dec, n_bootstrap=1000).set_index("metric")
    assert (pooled.aggregation == "pooled").all()
    single = classification_metrics(y, base, n_bootstrap=1000).set_index("metric")
    w_pooled = pooled.loc["bac", "ci_high"] - pooled.loc["bac", "ci_low"]
    w_single = single.loc["bac", "ci_high"] - single.loc["bac", "ci_low"]
    # clusters: R near-copies must not shrink the interval by sqrt(R)
    assert w_pooled > 0.7 * w_single
    # bootstrap AUC centre near the estimate
    assert pooled.loc["auc", "ci_low"] < pooled.loc["auc", "estimate"] < pooled.loc["auc",
                                                                                  "ci_high"]
