"""The cohort QC page: self-contained, every subject listed with its verdict and link."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ketabids.qc.table import rebuild_qc_table, write_subject_qc
from ketabids.reports.qc import render_qc_page


def test_qc_page(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        metrics = {"tiv_ml": float(rng.normal(1450, 100)), "gm_ml": float(rng.normal(700, 50)),
                   "cnr": float(rng.uniform(1, 3)), "slice_thickness_mm": 1.0}
        if i == 3:
            metrics["slice_thickness_mm"] = 6.0
        write_subject_qc(tmp_path, f"{i:02d}", "a" if i == 5 else None, metrics)
    (tmp_path / "sub-00.html").write_text("<html></html>")
    rebuild_qc_table(tmp_path)
    homogeneity = pd.DataFrame({"id": [f"sub-{i:02d}" for i in range(8)],
                                "mean_corr": np.linspace(0.9, 0.99, 8),
                                "flagged": [True] + [False] * 7,
                                "reason": ["low mean correlation 0.900"] + [""] * 7})
    homogeneity.attrs["fence"] = 0.95
    page = render_qc_page(tmp_path, homogeneity=homogeneity).read_text()
    assert page.count("<tr data-pid=") == 8
    assert "<a class=\"report\" href=\"sub-00.html\">" in page and "(no report)" in page
    assert "slice thickness 6 mm" in page and "low mean correlation 0.900" in page
    assert "data:image/png" not in page  # every plot is inline SVG
    # distributions: one strip per metric present + homogeneity, every threshold drawn
    assert page.count("<svg ") == 4 and 'aria-label="tiv_ml"' in page
    assert page.count("<circle ") == 4 * 8
    assert page.count('r="3.5" fill="#c62828"') == 3 + 2  # sub-03 in 3 strips; sub-00 flagged
    tiv = page.split('aria-label="tiv_ml"')[1].split("</svg>")[0]
    levels = re.findall(r'class="threshold" data-level="(\w+)" data-value="([0-9.]+)"', tiv)
    assert sorted(levels) == sorted([("warn", "1000"), ("warn", "2000"), ("fail", "850"),
                                     ("fail", "2200")])  # all four, even far from the data
    assert ">TIV (mL)</text>" in tiv and tiv.count('text-anchor="middle">') >= 4  # ticks
    hom = page.split('aria-label="homogeneity_mean_corr"')[1].split("</svg>")[0]
    assert 'data-value="0.95"' in hom and "sub-00: 0.9</title>" in hom
    # homogeneity of every subject in the table, sortable and filterable, ratings kept
    assert page.count("<td class='num'>0.9") == 8 and "id='filter'" in page
    assert "localStorage.setItem" in page and "loadRatings()" in page
    assert "http" not in page.replace("text/tab-separated-values", "")  # self-contained
    assert "qc_ratings.tsv" in page and "data-ses='ses-a'" in page


def test_qc_tsv_has_homogeneity_of_every_subject(tmp_path):
    """qc.tsv carries each scan's homogeneity (and keeps it through a rebuild without a new
    check, e.g. after a subject is published mid-run)."""
    import json

    from ketabids.qc.table import HOMOGENEITY_COLUMNS, read_qc_table

    for i in range(4):
        write_subject_qc(tmp_path, f"{i:02d}", "a" if i == 2 else None, {"cnr": 2.0 + i})
    homogeneity = pd.DataFrame({"id": ["sub-00", "sub-01", "sub-02_ses-a", "sub-03"],
                                "mean_corr": [0.91, 0.95, 0.96, 0.97],
                                "mean_corr_z": [-3.0, 0.0, 0.5, 1.0],
                                "flagged": [True, False, False, False],
                                "reason": ["low mean correlation 0.910", "", "", ""]})
    rebuild_qc_table(tmp_path, homogeneity=homogeneity)
    table = read_qc_table(tmp_path)
    assert table["homogeneity_mean_corr"].tolist() == [0.91, 0.95, 0.96, 0.97]
    assert table["homogeneity_flag"].fillna("").tolist() == ["low mean correlation 0.910", "",
                                                             "", ""]
    dictionary = json.loads((tmp_path / "qc.json").read_text())
    assert all("homogeneity" in dictionary[c]["Description"].lower()
               for c in HOMOGENEITY_COLUMNS)
    write_subject_qc(tmp_path, "04", None, {"cnr": 2.5})
    rebuild_qc_table(tmp_path)  # no new check: the last values stay, the new scan has none
    table = read_qc_table(tmp_path)
    assert table["homogeneity_mean_corr"].tolist()[:4] == [0.91, 0.95, 0.96, 0.97]
    assert np.isnan(table["homogeneity_mean_corr"].iloc[4])
    assert table["homogeneity_flag"].iloc[0] == "low mean correlation 0.910"
