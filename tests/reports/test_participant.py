"""The participant QC report: figures are real PNGs embedded in one self-contained HTML file."""
from __future__ import annotations

import base64
import re

import nibabel as nib
import numpy as np

from ketabids.reports.participant import (
    SectionFigures,
    assemble_report,
    plot_normalisation,
    plot_segmentation,
    render_section,
)


def _png_size(uri: str) -> tuple[int, int]:
    assert uri.startswith("data:image/png;base64,")
    raw = base64.b64decode(uri.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def _sphere(shape=(20, 24, 22), radius=7.0, zooms=(1.0, 1.2, 1.0)):
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    affine = np.diag(list(zooms) + [1.0])
    return dist, affine


def test_segmentation_and_normalisation_figures():
    dist, affine = _sphere()
    t1w = nib.Nifti1Image((1000 - 40 * dist).clip(0).astype("float32"), affine)
    mask = nib.Nifti1Image((dist < 8).astype("uint8"), affine)
    dseg = nib.Nifti1Image(np.select([dist < 4, dist < 6, dist < 8], [2, 1, 3], 0).astype("uint8"),
                           affine)
    strips = plot_segmentation(t1w, mask, dseg)
    assert [s.axis for s in strips] == ["sagittal", "coronal", "axial"]
    assert all(len(s.coords) >= 7 for s in strips)  # >= 7 slices per axis, with coordinates
    assert strips[2].coords[0].startswith("z = ") and strips[0].coords[0].startswith("x = ")
    assert (strips[1].left, strips[1].right) == ("L", "R")  # RAS+ image: neurological view
    width, height = _png_size(strips[0].uri)
    assert width > 700 and height > 50
    wm = nib.Nifti1Image((6 - dist).clip(0, 1).astype("float32"), affine)
    norm = plot_normalisation(t1w, t1w, wm, mask)
    # subject and template strips have the same canvas, so the flicker overlays them exactly
    assert [_png_size(s.uri) for s in norm["subject"]] == \
        [_png_size(s.uri) for s in norm["template"]]
    assert _png_size(norm["subject"][0].uri)[0] > 700
    # template on another grid: resampled onto the image, no error
    coarse = nib.Nifti1Image((dist[::2, ::2, ::2] < 8).astype("uint8"),
                             affine @ np.diag([2, 2, 2, 1]))
    coarse_wm = nib.Nifti1Image((6 - dist[::2, ::2, ::2]).clip(0, 1).astype("float32"),
                                coarse.affine)
    strip = plot_normalisation(t1w, coarse, coarse_wm, coarse)["template"][2]
    assert _png_size(strip.uri)[0] > 700


def test_report_is_self_contained_and_escaped():
    section = render_section(subject="01", session="2", source_file="sub-01_ses-2_T1w.nii.gz",
                             notes=["<script>alert(1)</script>"], skull_stripped=True,
                             figures=SectionFigures(segmentation="data:image/png;base64,AAAA"),
                             volumes=[{"tiv_ml": 1500.123, "gm_ml": 700.0}],
                             regional=[{"index": 1, "name": "frontal", "gm_ml": 10.5}])
    html = assemble_report(subject="01", sections=[section], methods="Methods & more.",
                           settings={"template": "MNI152NLin2009aSym", "seed": None},
                           versions={"ketabids": "0.1.0", "antspyx": "0.6.3"})
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "The input was already skull-stripped" in html
    assert "1500.12" in html and "frontal" in html and "Methods &amp; more." in html
    assert "antspyx" in html and "0.6.3" in html
    # nothing is loaded from elsewhere: every src is an embedded data URI
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]+)"', html))
    assert "<link" not in html


def test_report_shows_verdict_strips_flicker_and_errors():
    from ketabids.reports.participant import Strip

    strip = [Strip("data:image/png;base64,AAAA", ax, tuple(f"z = {i} mm" for i in range(7)),
                   "L", "R") for ax in ("sagittal", "coronal", "axial")]
    qc = {"verdict": "warn", "reasons": ["slice thickness 6 mm"],
          "error": "QC metrics failed: ValueError: x"}
    section = render_section(subject="07", source_file="sub-07_T1w.nii.gz",
                             figures=SectionFigures(segmentation=strip, normalisation={
                                 "subject": strip, "template": strip}),
                             template="MNI152NLin2009aSym", qc=qc)
    page = assemble_report(subject="07", sections=[section])
    head = page.split("<section")[0]
    assert 'class="verdict warn"' in head and "QC warn" in head  # verdict at the top
    assert "slice thickness 6 mm" in section.split("<img")[0]
    assert page.count('alt="segmentation') == 3 and "image left = L, right = R" in page
    assert page.count('class="flicker"') == 3 and 'type="range"' in page
    assert ".flicker:hover img.top{opacity:1}" in page
    errors = page.split('id="errors"')[1].split("<h2>")[0]
    assert "QC metrics failed: ValueError: x" in errors
    ok = assemble_report(subject="08", sections=[render_section(
        subject="08", source_file="x", qc={"verdict": "pass", "reasons": []})])
    assert "No errors." in ok and 'class="verdict pass"' in ok.split("<section")[0]


def test_failure_report(tmp_path):
    from ketabids.reports.participant import failure_report

    path = failure_report(tmp_path / "sub-09.html", subject="09",
                          error="RuntimeError: Atropos failed\n  long traceback",
                          crash_files=["/out/logs/sub-09/crash-1.txt"],
                          finished_steps=["single_subject_09_wf.anat_wf.conform"],
                          failed_step="single_subject_09_wf.anat_wf.segmentation")
    page = path.read_text()
    assert "<code>RuntimeError: Atropos failed</code>" in page and "long traceback" not in page
    assert "/out/logs/sub-09/crash-1.txt" in page and "anat_wf.conform" in page
    assert 'data-verdict="fail"' in page and 'id="errors"' in page


def _reference_strip_png(panels, aspect, title=None) -> np.ndarray:
    """The straightforward rendering the one-axes strip replaces: one matplotlib axes per
    slice (``subplots(1, n)``, ``wspace=0.02``), ``imshow`` and ``Axes.contour`` per panel."""
    import io

    from ketabids.reports.figures import pyplot
    from ketabids.reports.participant import CONTOUR_WIDTH, LABEL_STYLE, STRIP_DPI

    plt = pyplot()
    n = len(panels)
    first = panels[0].background
    ratio = first.shape[0] * aspect / first.shape[1]
    fig, axes = plt.subplots(1, n, figsize=(1.55 * n, 1.55 * ratio + 0.05), squeeze=False)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1, wspace=0.02)
    for col, panel in enumerate(panels):
        ax = axes[0, col]
        ax.imshow(panel.background, cmap="gray", vmin=0, vmax=1, aspect=aspect,
                  interpolation="nearest")
        for sl, level, colour in panel.contours:
            if sl.min() < level < sl.max():
                ax.contour(sl, levels=[level], colors=colour, linewidths=CONTOUR_WIDTH)
        style = dict(LABEL_STYLE, transform=ax.transAxes)
        ax.text(0.5, 0.02, panel.geo["coord"], ha="center", va="bottom", **style)
        ax.text(0.02, 0.5, panel.geo["left"], ha="left", va="center", **style)
        ax.text(0.98, 0.5, panel.geo["right"], ha="right", va="center", **style)
        if col == 0 and title:
            ax.text(0.02, 0.98, title, ha="left", va="top", **style)
        ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=STRIP_DPI, facecolor="black")
    plt.close(fig)
    return plt.imread(io.BytesIO(buf.getvalue()), format="png")[..., :3]


def test_contour_lines_are_matplotlibs():
    """The strips' contour vertices are exactly those ``Axes.contour`` computes."""
    from ketabids.reports.figures import pyplot
    from ketabids.reports.participant import _contour_lines

    plt = pyplot()
    dist, _ = _sphere(shape=(30, 40, 3), radius=9)
    image = np.select([dist[..., 1] < 5, dist[..., 1] < 11], [0.2, 1.0], 0).astype(np.float32)
    image[3:6, 30:34] = 1  # a second, separate island
    fig, ax = plt.subplots()
    ours = _contour_lines(image, 0.5)
    theirs = ax.contour(image, levels=[0.5]).get_paths()[0]
    plt.close(fig)
    assert len(ours) == 3  # outer ring, inner hole, island
    np.testing.assert_array_equal(np.concatenate([xy for xy, _ in ours]), theirs.vertices)
    np.testing.assert_array_equal(np.concatenate([c for _, c in ours]), theirs.codes)
    assert _contour_lines(np.zeros((5, 5), np.float32), 0.5) == []


def test_strip_matches_one_axes_per_slice_rendering():
    """One axes per strip (inch coordinates) draws what 7 axes with ``Axes.contour`` drew:
    same canvas, the same pixels except anti-aliasing noise along the lines."""
    import io

    from ketabids.reports.figures import pyplot
    from ketabids.reports.participant import _aspect, _cuts, _panels, _strip, _window

    plt = pyplot()
    dist, affine = _sphere(shape=(40, 48, 44), zooms=(1.0, 1.2, 1.0))
    t1w = (1000 - 40 * dist).clip(0).astype("float32")
    mask = dist < 16
    dseg = np.select([dist < 8, dist < 12, dist < 16], [2, 1, 3], 0).astype("uint8")
    contours = [(mask, 0.5, "red"), (dseg, 0.5, "lime", lambda sl: np.isin(sl, [1, 2])),
                (dseg, 0.5, "yellow", lambda sl: sl == 2)]
    cuts = _cuts(mask)
    for axis in range(3):
        panels = _panels(t1w, _window(t1w, mask), affine, axis, cuts[axis], contours)
        aspect = _aspect((1.0, 1.2, 1.0), axis)
        ours = _strip(panels, aspect, axis, title="subject")
        raw = __import__("base64").b64decode(ours.uri.split(",", 1)[1])
        new = plt.imread(io.BytesIO(raw), format="png")[..., :3]
        ref = _reference_strip_png(panels, aspect, title="subject")
        assert new.shape == ref.shape
        diff = np.abs(new - ref).max(-1)
        lines = (np.abs(ref - ref[..., :1]).max(-1) > 0.1).mean()  # coloured pixels
        assert lines > 0.01  # the contours are there to compare
        assert (diff > 0).mean() < 0.03 and (diff > 0.25).mean() < 0.002, axis


def test_metrics_table_has_units_and_thresholds():
    from ketabids.reports.participant import metrics_table

    table = metrics_table({"tiv_ml": 2100.0, "cnr": 0.8, "fov_coverage": 0.99,
                           "slice_thickness_mm": 1.0})
    assert "<td>mL</td><td>outside 1000-2000 mL</td><td>outside 850-2200 mL</td>" in table
    assert 'class="num bad-warn">2100' in table  # beyond the warn range, within the fail one
    assert 'class="num bad-warn">0.80' in table and "&lt; 0.5" in table  # CNR
    assert ">99</td><td>%</td><td>&lt; 97 %</td>" in table  # shown in the rule's unit
    assert metrics_table({}) == ""


def test_previous_next_links_go_through_the_cohort_page(tmp_path):
    """The links are static (a rerun rewrites nothing); qc.html forwards them to the neighbour's
    report in its table's order."""
    from ketabids.qc.table import rebuild_qc_table, write_subject_qc
    from ketabids.reports.participant import assemble_report, failure_report, render_section
    from ketabids.reports.qc import render_qc_page

    page = assemble_report(subject="01", sections=[render_section(
        subject="01", source_file="x", qc={"verdict": "pass", "reasons": []})])
    assert 'href="qc.html#prev=sub-01" rel="prev"' in page
    assert 'href="qc.html#next=sub-01" rel="next"' in page
    failed = failure_report(tmp_path / "sub-02.html", subject="02", error="boom").read_text()
    assert 'href="qc.html#next=sub-02"' in failed
    for label in ("01", "02", "03"):
        write_subject_qc(tmp_path, label, None, {"cnr": 2.0})
    (tmp_path / "sub-01.html").write_text(page)
    rebuild_qc_table(tmp_path)
    qc = render_qc_page(tmp_path).read_text()
    assert qc.count('<a class="report" href="sub-0') == 2  # sub-03 has no report
    assert "function forward()" in qc and "location.replace(reports[j])" in qc


def test_flicker_blend_keeps_hover_and_captions_under_strips():
    from ketabids.reports.participant import _CSS, _FLICKER_JS, Strip, flicker_html

    strips = [Strip("data:image/png;base64,AAAA", ax, ("z = 1 mm",), "L", "R")
              for ax in ("sagittal", "coronal")]
    block = flicker_html("f", strips, strips)
    # the slider sets a CSS variable of the strip, not the image's inline opacity, so the
    # hover rule (opacity 1) still wins after the slider was used
    assert "setProperty('--blend'" in _FLICKER_JS and "style.opacity" not in _FLICKER_JS
    assert "opacity:var(--blend)" in _CSS and ".flicker:hover img.top{opacity:1}" in _CSS
    assert "style=" not in block
    assert block.count("<figure><div class=\"flicker\"") == 2
    assert block.count("</div><figcaption>") == 2  # each caption right under its strip


def test_strip_png_compression_level_does_not_change_the_page():
    """The strips' intermediate PNG is written at zlib level 1 (to save CPU): the page stores
    them re-encoded with a palette, which must be the same bytes as from a level-6 PNG."""
    from ketabids.reports.figures import png_uri, pyplot
    from ketabids.reports.participant import compact_uri

    plt = pyplot()

    def figure():
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.imshow(np.random.default_rng(0).random((40, 60)), cmap="gray")
        ax.contour(np.random.default_rng(1).random((40, 60)), levels=[0.5], colors="lime")
        return fig

    fast, default = (png_uri(figure(), dpi=100, compress_level=level) for level in (1, 6))
    assert fast != default  # the two intermediate PNGs differ (compression)...
    assert compact_uri(fast) == compact_uri(default)  # ...the pixels, hence the page, do not
