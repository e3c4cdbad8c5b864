"""Every page type, rendered from small realistic outputs (ketabids.demo.preview), checked with
an HTML parser: no image shown larger than its pixel size, every table of a group folder linked,
a per-participant table, a per-site table (the preview has a site column), every threshold of
every plotted QC metric drawn; headless Chromium renders each page without console errors (when
/usr/bin/chromium exists). The study report (tripod_ai.tsv, model_card.md) is checked against
the run's own metrics.json.
"""
from __future__ import annotations

import base64
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from ketabids.demo.preview import CHROMIUM, build_preview, screenshot
from ketabids.reports.figures import png_size

pytestmark = pytest.mark.slow


class Page(HTMLParser):
    """The elements the checks need: images, links, tables (with their section), SVG plots and
    their threshold lines, section ids."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.images, self.links, self.sections, self.svgs = [], [], [], []
        self.tables = []  # (section id, class, header cells, number of body rows)
        self._section, self._table, self._svg, self._in_th = None, None, None, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
            self.sections.append(self._section)
        elif tag == "img":
            self.images.append(a)
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "table":
            self._table = {"section": self._section, "class": a.get("class", ""),
                           "id": a.get("id"), "head": [], "rows": 0}
        elif tag == "th" and self._table is not None:
            self._in_th = True
            self._table["head"].append("")
        elif tag == "tr" and self._table is not None and not self._in_th:
            self._table["rows"] += 1
        elif tag == "svg":
            self._svg = {"metric": a.get("data-metric") or a.get("aria-label"), "lines": []}
        elif tag == "line" and self._svg is not None and a.get("class") == "threshold":
            self._svg["lines"].append((a["data-level"], float(a["data-value"])))

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False
        elif tag == "table" and self._table is not None:
            self._table["rows"] -= 1  # the header row
            self.tables.append(self._table)
            self._table = None
        elif tag == "svg" and self._svg is not None:
            self.svgs.append(self._svg)
            self._svg = None

    def handle_data(self, data):
        if self._in_th and self._table is not None:
            self._table["head"][-1] += data.strip()


@pytest.fixture(scope="module")
def preview(tmp_path_factory):
    return build_preview(tmp_path_factory.mktemp("pages"), n=48, participant_pages=2)


def _check_images(page: Page):
    """Every image has a shown size, never larger than its pixels (PNG); SVG is vector."""
    assert page.images
    for img in page.images:
        src = img.get("src", "")
        if not src:  # the (empty) zoom overlay, filled on click with a strip's own src
            continue
        assert src.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,")), src[:40]
        width, height = int(img["width"]), int(img["height"])
        if src.startswith("data:image/png"):
            w, h = png_size(base64.b64decode(src.split(",", 1)[1][:64]))
            assert width <= w and height <= h, (width, height, w, h)


def _check_group_folder(page: Page, folder: Path, n: int):
    for path in folder.iterdir():
        if path.suffix in (".tsv", ".json") and path.name != "report.html":
            assert path.name in page.links, f"{path.name} not linked"
    assert all(not re.match(r"(https?:)?//", h) for h in page.links)
    participants = [t for t in page.tables if t["section"] == "participants"]
    assert len(participants) == 1 and participants[0]["rows"] == n
    assert "participant_id" in participants[0]["head"] and "site" in participants[0]["head"]
    sites = [t for t in page.tables if t["section"] == "sites"]
    assert len(sites) == 1 and sites[0]["rows"] == 2 and sites[0]["head"][0] == "site"


def test_training_report(preview):
    folder = preview["train"].parent
    metrics = json.loads((folder / "metrics.json").read_text())
    text = preview["train"].read_text()
    page = Page(text)
    _check_images(page)
    _check_group_folder(page, folder, metrics["n"])
    assert {"tripod_ai.tsv", "model_card.md", "../../qc.html"} <= set(page.links)
    assert html.escape(metrics["headline"]["text"]) in text
    folds = [t for t in page.tables if t["section"] == "folds"]
    assert folds and "mean fold BAC" in folds[0]["head"]  # labelled, not "bac"
    assert "This is not the headline" in text
    assert "Outer folds per chosen C" in text
    assert {"files", "cohort", "performance", "sites", "folds", "participants", "maps",
            "methods", "model"} <= set(page.sections)


def test_prediction_report(preview):
    folder = preview["predict"].parent
    text = preview["predict"].read_text()
    page = Page(text)
    _check_images(page)
    predictions = pd.read_csv(folder / "predictions.tsv", sep="\t")
    _check_group_folder(page, folder, len(predictions))
    # the training estimate beside this cohort's, the model named without its full path
    assert any(h.startswith("training: nested CV") for t in page.tables for h in t["head"])
    assert str(preview["train"].parent) not in text
    assert "Another arm than the training one" in text and "specificity.tsv" in text


def test_qc_page(preview):
    from ketabids.reports.qc import metric_axis, thresholds

    page = Page(preview["qc"].read_text())
    assert not page.images  # every plot is inline SVG
    table = [t for t in page.tables if t["id"] == "subjects"][0]
    qc = pd.read_csv(preview["out"] / "qc.tsv", sep="\t")
    assert table["rows"] == len(qc) and "homogeneity (mean r)" in table["head"]
    assert qc["homogeneity_mean_corr"].notna().all()
    plotted = [s for s in page.svgs if s["metric"] != "homogeneity_mean_corr"]
    assert len(plotted) >= 10
    for svg in plotted:  # every threshold of every plotted metric, whatever the data
        scale = metric_axis(svg["metric"])[2]  # drawn in the axis' unit (e.g. % coverage)
        expected = sorted((level, round(v * scale, 6)) for v, level in
                          thresholds(svg["metric"]))
        assert sorted((lvl, round(v, 6)) for lvl, v in svg["lines"]) == expected, svg["metric"]
    homogeneity = [s for s in page.svgs if s["metric"] == "homogeneity_mean_corr"][0]
    assert len(homogeneity["lines"]) == 1  # the lower fence
    reports = [h for h in page.links if h.startswith("sub-")]
    assert reports == ["sub-001.html", "sub-002.html"]


def test_participant_report(preview):
    first, second = preview["participant"]
    page = Page(first.read_text())
    _check_images(page)
    strips = [i for i in page.images if i.get("src", "").startswith("data:image/png")]
    assert len(strips) == 3 + 2 * 3  # segmentation, normalisation subject + template
    assert all(int(i["width"]) >= 1000 for i in strips)  # 7 slices over the page's width
    assert sum("ketabidsZoom" in (i.get("onclick") or "") for i in strips) == 3
    assert {"qc.html#prev=sub-001", "qc.html#next=sub-001", "qc.html"} <= set(page.links)
    assert "qc.html#prev=sub-002" in Page(second.read_text()).links
    text = first.read_text()
    assert "<th>warn if</th><th>fail if</th>" in text and "outside 1000-2000 mL" in text


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"{CHROMIUM} not installed "
                    "(Debian package chromium): no screenshots")
def test_pages_render_in_chromium_without_console_errors(preview, tmp_path):
    from PIL import Image

    for name in ("train", "predict", "qc"):
        errors = screenshot(preview[name], tmp_path / f"{name}.png", height=900)
        assert errors == [], (name, errors)
    errors = screenshot(preview["participant"][0], tmp_path / "participant.png", height=900)
    assert errors == []
    with Image.open(tmp_path / "train.png") as im:
        assert im.size == (1280, 900) and len(im.convert("L").getcolors(256) or []) > 8
    # "next subject" of sub-001's report: qc.html forwards to sub-002's report
    import subprocess

    from ketabids.demo.preview import _CHROMIUM_FLAGS

    run = subprocess.run([CHROMIUM, *_CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'p'}",
                          "--virtual-time-budget=3000", "--dump-dom",
                          preview["qc"].as_uri() + "#next=sub-001"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert "<title>ketabids: sub-002</title>" in run.stdout


def test_console_errors_are_detected():
    from ketabids.demo.preview import console_errors

    log = ('[1:2:INFO:CONSOLE(3)] "Uncaught ReferenceError: x is not defined", source: '
           'file:///a.html (3)\n[1:2:INFO:CONSOLE(4)] "fine", source: file:///a.html (4)')
    assert len(console_errors(log)) == 1


def test_study_report(preview):
    """tripod_ai.tsv fills >= 20 items from the run; model_card.md's numbers are metrics.json's."""
    from ketabids.reports.study import AUTHORS, FILLED, TRIPOD_AI_ITEMS

    folder = preview["train"].parent
    tripod = pd.read_csv(folder / "tripod_ai.tsv", sep="\t", keep_default_na=False)
    assert tripod["item"].tolist() == [i[0] for i in TRIPOD_AI_ITEMS]
    assert set(tripod["status"]) == {FILLED, AUTHORS}
    filled = tripod[tripod["status"] == FILLED]
    assert len(filled) >= 20 and (filled["source"] != "n/a").all()
    assert (filled["content"] != "n/a").all()
    assert {"8a", "12c", "23a", "23b", "6a"} <= set(filled["item"])  # 6a/23b: a site column
    assert {"17", "18a", "25"} <= set(tripod.loc[tripod["status"] == AUTHORS, "item"])
    sidecar = json.loads((folder / "tripod_ai.json").read_text())
    assert set(sidecar) == set(tripod.columns)

    metrics = json.loads((folder / "metrics.json").read_text())
    card = (folder / "model_card.md").read_text()
    assert metrics["headline"]["text"] in card
    rows = re.findall(r"^\| (\w+) \| pooled \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$", card,
                      re.M)
    assert {r[0] for r in rows} == {"bac", "sensitivity", "specificity", "auc", "ppv", "npv",
                                    "brier"}
    for metric, *numbers in rows:
        block = metrics["summary"]["intervals"][metric]["pooled"]
        expected = [block["estimate"], block["ci_low"], block["ci_high"]]
        assert [float(x) for x in numbers] == [round(v, 3) for v in expected], metric
    assert "## Must not be used for" in card and "## Warnings" in card
