"""Reports: figures embedded, self-contained HTML, metrics tables and the Haufe statement."""
from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketabids.reports import group as report
from ketabids.group.metrics import calibration_table
from ketabids.group.progress import Progress


def test_calibration_table_uses_quantile_bins():
    """Participants sorted by probability, split into bins of equal size (no one-person bins)."""
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.12, 0.95, 0.85, 0.55, 0.58, 0.52])
    table = calibration_table(y, p)  # default: n // 10 clipped to 2..10 -> 2 bins
    assert table["n"].tolist() == [4, 4]
    assert table["observed_rate"].tolist() == [0.0, 1.0]
    assert table["bin_low"].tolist() == [0.05, 0.55] and table["bin_high"].tolist() == [0.52, 0.95]
    assert table["mean_predicted"].iloc[1] == pytest.approx((0.55 + 0.58 + 0.85 + 0.95) / 4)
    rng = np.random.default_rng(0)
    big = calibration_table(rng.integers(0, 2, 95), rng.random(95))
    assert len(big) == 9 and big["n"].sum() == 95 and big["n"].min() >= 10


def test_figures_are_png_data_uris(rng):
    y = np.array([0, 1] * 10)
    d = rng.normal(size=(3, 20)) + y
    for uri in (report.fig_roc(y, d), report.fig_confusion([[8, 2], [3, 7]]),
                report.fig_decisions(y, d[0]),
                report.fig_permutation(rng.random(50), 0.8, 0.02, rng.random(50), 0.9, 0.02),
                report.fig_reliability(calibration_table(y, 1 / (1 + np.exp(-d[0]))), 0.2)):
        assert uri.startswith("data:image/png;base64,iVBOR")


def test_brain_figures(rng):
    data = np.zeros((20, 24, 20), np.float32)
    data[5:15, 5:18, 5:15] = rng.normal(size=(10, 13, 10))
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = [-80, -110, -70]
    img = nib.Nifti1Image(data, affine)
    assert report.fig_brain(img, "w").startswith("data:image/png;base64,")
    assert report.fig_slices(img, "p").startswith("data:image/png;base64,")


def test_metrics_table_formats_estimates_and_intervals():
    metrics = pd.DataFrame({
        "metric": ["bac", "bac", "brier", "auc"],
        "aggregation": ["pooled", "mean_over_repeats", "pooled", "pooled"],
        "estimate": [0.75, 0.74, 0.2, 0.81], "ci_low": [0.65, 0.7, 0.15, 0.7],
        "ci_high": [0.85, 0.78, 0.25, 0.9], "method": ["bootstrap", "percentile", "b", "DeLong"]})
    html = report._metrics_table(metrics)
    assert "75.0 %" in html and "65.0 % - 85.0 %" in html
    assert "published" not in html and "72.2 %" not in html  # the paper's figures: demo only
    assert "0.200" in html and "0.810" in html  # Brier and AUC are not percentages


def test_table_keeps_integer_columns():
    html = report._table(pd.DataFrame({"repeat": [0, 1], "bac": [0.5, 0.75]}))
    assert '<td class="num">1</td>' in html and '<td class="num">0.750</td>' in html


def test_render_is_self_contained(tmp_path):
    out = tmp_path / "r.html"
    report._render(out, title="t <x>", subtitle="s", body="<p>" + report.HAUFE_NOTE + "</p>")
    text = out.read_text()
    assert "t &lt;x&gt;" in text and "Haufe et al. 2014" in text
    assert not re.search(r'(src|href)="(http|//)', text)


def test_progress_is_compact(capsys):
    progress = Progress("permutations")
    for done in range(1, 101):
        progress(done, 100)
    lines = capsys.readouterr().err.strip().splitlines()
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("ketabids: permutations 100/100")
    Progress("x", enabled=False)(1, 2)
    assert capsys.readouterr().err == ""
