"""Decision curves and calibration (ketabids.group.utility): closed forms and planted values."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from ketabids.group.utility import (
    DECISION_CURVE_COLUMNS,
    calibration_intercept_slope,
    decision_curve,
)


@pytest.fixture
def labels():
    return np.random.default_rng(0).permutation(np.r_[np.ones(30), np.zeros(70)]).astype(int)


def test_perfect_model_net_benefit_is_the_prevalence(labels):
    curve = decision_curve(labels, labels.astype(float))
    assert list(curve.columns) == DECISION_CURVE_COLUMNS
    np.testing.assert_allclose(curve["threshold"], np.arange(1, 100) / 100)
    np.testing.assert_allclose(curve["net_benefit_model"], 0.3, atol=1e-12)
    pt = curve["threshold"].to_numpy()
    np.testing.assert_allclose(curve["net_benefit_treat_all"], 0.3 - 0.7 * pt / (1 - pt))
    assert (curve["net_benefit_treat_none"] == 0).all()


def test_useless_models_net_benefit_is_treat_all_or_treat_none(labels):
    """A constant probability c: everyone treated for pt <= c (= treat all), no one above."""
    curve = decision_curve(labels, np.full(labels.size, 0.42))
    low = curve["threshold"] <= 0.42
    np.testing.assert_allclose(curve.loc[low, "net_benefit_model"],
                               curve.loc[low, "net_benefit_treat_all"])
    assert (curve.loc[~low, "net_benefit_model"] == 0).all()


def test_repeats_are_pooled(labels):
    rng = np.random.default_rng(1)
    proba = rng.random((3, labels.size))
    pooled = decision_curve(labels, proba, thresholds=[0.1, 0.3, 0.6])
    mean = np.mean([decision_curve(labels, p, thresholds=[0.1, 0.3, 0.6])["net_benefit_model"]
                    for p in proba], axis=0)
    np.testing.assert_allclose(pooled["net_benefit_model"], mean)
    with pytest.raises(ValueError):
        decision_curve(labels, proba[:, :10])
    with pytest.raises(ValueError):
        decision_curve(labels, proba[0], thresholds=[0.0, 0.5])


@pytest.mark.parametrize("intercept, slope", [(0.0, 0.5), (-0.4, 1.0), (0.3, 1.5)])
def test_calibration_recovers_planted_intercept_and_slope(intercept, slope):
    rng = np.random.default_rng(3)
    lp = rng.normal(0, 1.5, 20000)
    y = (rng.random(lp.size) < special.expit(intercept + slope * lp)).astype(int)
    c = calibration_intercept_slope(y, special.expit(lp))
    s = c["calibration_slope"]
    assert s["ci_low"] < slope < s["ci_high"] and s["ci_high"] - s["ci_low"] < 0.15
    if slope == 1.0:   # calibration-in-the-large is the planted intercept when the slope is 1
        citl = c["calibration_in_the_large"]
        assert citl["ci_low"] < intercept < citl["ci_high"]
    assert "maximum likelihood" in c["method"]


def test_calibration_of_one_class_is_not_estimable():
    c = calibration_intercept_slope(np.zeros(10), np.linspace(0.1, 0.9, 10))
    assert c["calibration_slope"] == {"value": None, "ci_low": None, "ci_high": None}
