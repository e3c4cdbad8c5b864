"""Reports: figures embedded, self-contained HTML, metrics tables and the Haufe statement."""
from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketabids.group.metrics import calibration_table
from ketabids.group.progress import Progress
from ketabids.reports import group as report


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


def test_charts_are_svg_shown_at_their_drawn_size(rng):
    """Charts are vector SVG (text kept as text, in the page's font) with the CSS size of the
    drawing, so the page never rescales them."""
    import base64

    y = np.array([0, 1] * 10)
    d = rng.normal(size=(3, 20)) + y
    curve = pd.DataFrame({"threshold": np.arange(1, 100) / 100})
    curve["net_benefit_model"] = 0.4 - curve["threshold"] / 2
    curve["net_benefit_treat_all"] = 0.5 - curve["threshold"]
    curve["net_benefit_treat_none"] = 0.0
    for img in (report.fig_roc(y, d), report.fig_confusion([[8, 2], [3, 7]]),
                report.fig_decisions(y, d[0]), report.fig_decision_curve(curve),
                report.fig_permutation(rng.random(50), 0.8, 0.02, rng.random(50), 0.9, 0.02),
                report.fig_reliability(calibration_table(y, 1 / (1 + np.exp(-d[0]))), 0.2)):
        assert img.uri.startswith("data:image/svg+xml;base64,")
        svg = base64.b64decode(img.uri.split(",", 1)[1]).decode()
        width_pt = float(re.search(r'width="([0-9.]+)pt"', svg).group(1))
        assert img.width == round(width_pt * 4 / 3) and 150 < img.width < 800
        assert "<text" in svg  # svg.fonttype none: labels stay text
        tag = img.tag("a <b>")
        assert f'width="{img.width}"' in tag and 'alt="a &lt;b&gt;"' in tag


def test_permutation_figure_keeps_observed_value_out_of_the_bars(rng):
    import base64

    img = report.fig_permutation(rng.random(50), 0.8, 0.02)
    svg = base64.b64decode(img.uri.split(",", 1)[1]).decode()
    assert "observed BAC 0.800" in svg and "<g id=\"legend" not in svg


def test_c_selection_summary_flags_the_grid_edge():
    folds = pd.DataFrame({"C": [0.01] * 7 + [1.0]})
    s = report.c_selection_summary(folds, [1.0, 0.01, 0.1])
    assert s["share_lower_edge"] == 7 / 8 and s["share_upper_edge"] == 1 / 8
    assert s["warning"].startswith("7 of 8 outer folds chose the smallest C")
    s = report.c_selection_summary(pd.DataFrame({"C": [1.0] * 4}), [0.01, 0.1, 1.0])
    assert s["warning"].startswith("Every outer fold chose the largest C")
    assert report.c_selection_summary(pd.DataFrame({"C": [0.1] * 4}),
                                      [0.01, 0.1, 1.0])["warning"] is None


def test_brain_figures(rng):
    data = np.zeros((20, 24, 20), np.float32)
    data[5:15, 5:18, 5:15] = rng.normal(size=(10, 13, 10))
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = [-80, -110, -70]
    img = nib.Nifti1Image(data, affine)
    import base64

    from ketabids.reports.figures import png_size

    for fig in (report.fig_brain(img, "w", threshold=0.5), report.fig_slices(img, "p")):
        assert fig.uri.startswith("data:image/png;base64,")
        w, h = png_size(base64.b64decode(fig.uri.split(",", 1)[1]))
        assert (fig.width, fig.height) == (w // 2, h // 2)  # drawn at 2x the shown size


def test_axial_cuts_reach_the_top_of_the_map():
    data = np.zeros((10, 10, 40), np.float32)
    data[2:8, 2:8, 4:36] = 1.0
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    cuts = report.axial_cuts(img, 8)
    assert len(cuts) == 8 and cuts[0] <= 2 * 6 and cuts[-1] >= 2 * 33


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


def test_sections_from_the_agreed_files_render_when_present(tmp_path):
    """metrics_by_site.tsv, audit.tsv, decision_curve.tsv, metrics_by_arm.tsv, specificity.tsv
    and the optional metrics.json blocks (schemas of issues 23/24) each give their section;
    without them the sections are absent."""
    import json

    assert report._audit_section(tmp_path) == "" and report._arms_section(tmp_path) == ""
    assert report._decision_curve_figure(tmp_path) == ""
    assert report._site_section(tmp_path) == ""  # no file, no sites
    pd.DataFrame({"site": ["A", "B"], "n": [30, 20], "n_responders": [14, 9],
                  "n_nonresponders": [16, 11], "bac": [0.7, 0.6], "bac_ci_low": [0.5, 0.4],
                  "bac_ci_high": [0.85, 0.8], "auc": [0.75, float("nan")],
                  "auc_ci_low": [0.6, float("nan")], "auc_ci_high": [0.9, float("nan")]}
                 ).to_csv(tmp_path / "metrics_by_site.tsv", sep="\t", index=False, na_rep="n/a")
    pd.DataFrame({"check": ["site predictability"], "value": [0.81], "reference": [0.5],
                  "status": ["warn"], "detail": ["site is predictable from the maps"]}
                 ).to_csv(tmp_path / "audit.tsv", sep="\t", index=False)
    t = np.arange(1, 100) / 100
    pd.DataFrame({"threshold": t, "net_benefit_model": 0.4 - t / 2,
                  "net_benefit_treat_all": 0.45 - t, "net_benefit_treat_none": 0.0}
                 ).to_csv(tmp_path / "decision_curve.tsv", sep="\t", index=False)
    pd.DataFrame({"arm": ["ketamine", "saline"], "n": [40, 30], "bac": [0.7, 0.5]}
                 ).to_csv(tmp_path / "metrics_by_arm.tsv", sep="\t", index=False)
    pd.DataFrame({"analysis": ["bac_difference", "auc_difference", "interaction_log_odds"],
                  "estimate": [0.2, 0.2, 1.1], "ci_low": [0.01, 0.0, 0.1],
                  "ci_high": [0.4, 0.4, 2.0], "p_value": [0.04, 0.05, 0.03],
                  "detail": ["", "", ""]}).to_csv(tmp_path / "specificity.tsv", sep="\t",
                                                    index=False)
    (tmp_path / "metrics.json").write_text(json.dumps({
        "c_selection": {"warning": "Every outer fold chose the smallest C."},
        "audit_warnings": ["The decision values differ between sites."],
        "calibration_in_the_large": {"value": -0.2, "ci_low": -0.6, "ci_high": 0.2},
        "calibration_slope": {"value": 0.6, "ci_low": 0.2, "ci_high": 1.0},
        "specificity": {"reference_arm": "saline", "treatment_arm": "ketamine",
                        "interpretation": "Better in the ketamine arm than in saline."}}))
    site = report._site_section(tmp_path)
    assert 'href="metrics_by_site.tsv"' in site and site.count("<tr>") == 3
    assert "site predictability" in report._audit_section(tmp_path)
    assert report._decision_curve_figure(tmp_path).count("<img ") == 1
    arms = report._arms_section(tmp_path)
    assert "interaction_log_odds" in arms and "Better in the ketamine arm" in arms
    assert "reference arm: saline" in arms
    warnings = report._audit_warnings(tmp_path)
    assert warnings[0][1].startswith("The decision values differ between sites.")
    assert report._c_selection_warning(tmp_path, None, None)[1].startswith("Every outer fold")
    block = json.loads((tmp_path / "metrics.json").read_text())
    calibration = report._calibration_rows(block)
    assert "Calibration slope" in calibration and "0.600" in calibration
    assert "0.200 - 1.000" in calibration
