"""The participant QC report: one self-contained HTML file per subject.

Figures are PNG images embedded as base64 (matplotlib, Agg backend, no files next to the HTML),
one strip of :data:`N_CUTS` slices per axis, each slice labelled with its world coordinate (mm)
and the strip with its orientation (L/R, A/P):

* tissue boundaries as contours over the visible, preprocessed T1w: brain mask (red), GM outer
  boundary (green), GM/WM boundary (yellow); labels are read by name
  (:data:`ketabids.anat.segmentation.CLASSES`), so a new label order changes nothing here;
* spatial normalisation: the normalised T1w and the template, same slices, same template edges
  (cyan), stacked in a flicker element: hovering (or the slider) switches between them, as
  sMRIPrep's SVG flicker does (pure HTML/CSS/JS, nothing loaded from elsewhere).

:func:`render_section` makes one T1w's part (one per session), opened by its QC verdict and
reasons; :func:`assemble_report` wraps the sections with a verdict summary at the top, an Errors
section, the methods paragraph, settings and software versions; :func:`failure_report` is the
page of a subject whose processing failed.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ketabids.reports.figures import png_uri, pyplot

#: slices per axis in every figure strip
N_CUTS = 7
#: resolution of the strips: 2 device pixels per CSS pixel of the page's width (a 7-slice strip
#: is about 2170 px wide; shown at the page's width, click to see it at full size)
STRIP_DPI = 200
#: contour line width (points) and the slice labels' style: white on a dark box, legible on a
#: bright neck or skull
CONTOUR_WIDTH = 1.1
LABEL_STYLE = {"color": "white", "fontsize": 7.5,
               "bbox": {"boxstyle": "square,pad=0.15", "facecolor": "black", "alpha": 0.6,
                        "linewidth": 0}}
#: contour colours: brain mask, outer GM boundary, GM/WM boundary (high contrast on grey)
MASK_COLOUR, GM_COLOUR, WM_COLOUR, TEMPLATE_COLOUR = "#ff3cf0", "#39ff14", "#ffe600", "#00e5ff"
_AXIS_NAMES = ("sagittal", "coronal", "axial")
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_WORLD = {"L": "x", "R": "x", "A": "y", "P": "y", "S": "z", "I": "z"}
_VERDICT_ORDER = ("pass", "warn", "fail")

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:1.5em auto;
color:#222;padding:0 1em;font-size:15px;line-height:1.45}
h1{font-size:1.6rem;border-bottom:2px solid #345}h2{font-size:1.3rem;color:#345;margin-top:1.6em}
h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5em 0;font-size:.92rem}td,th{border:1px solid #ccc;
padding:.25em .6em;text-align:left}th{background:#eef}td.num{text-align:right;
font-variant-numeric:tabular-nums}
.note{background:#fff8e0;border-left:4px solid #e0a000;padding:.4em .8em;margin:.4em 0}
.fig{max-width:100%;height:auto;display:block}.methods{background:#f6f6f6;padding:.8em;
border-radius:4px}
code{font-size:90%}
.verdict{padding:.5em .9em;border-radius:4px;color:#fff;margin:.5em 0}
.verdict.pass{background:#2e7d32}.verdict.warn{background:#ef6c00}.verdict.fail{background:#c62828}
.verdict ul{margin:.3em 0 0 0}.error{background:#fdecea;border-left:4px solid #c62828;
padding:.4em .8em}
.flicker{position:relative;display:inline-block;max-width:100%;cursor:crosshair;
--blend:0}
.flicker img{display:block;max-width:100%;height:auto}
.flicker img.top{position:absolute;left:0;top:0;opacity:var(--blend)}
.flicker:hover img.top{opacity:1}
.flicker-ctl{font-size:.9em;color:#555}
figure{margin:.3em 0 1em}figcaption{color:#555;font-size:.85rem}
img.zoomable{cursor:zoom-in}
#zoom{display:none;position:fixed;inset:0;background:rgba(0,0,0,.92);overflow:auto;z-index:9;
cursor:zoom-out;padding:1em}
#zoom.on{display:block}#zoom img{display:block;margin:auto}
#zoom p{color:#ddd;text-align:center;margin:.3em}
nav.subjects{display:flex;gap:1.5em;font-size:.95rem;margin:.4em 0}
.key{display:inline-block;width:1.4em;height:.35em;vertical-align:middle;margin:0 .3em}
td.bad-warn{color:#b45309;font-weight:bold}td.bad-fail{color:#c62828;font-weight:bold}
@media print{.flicker-ctl,#zoom,nav.subjects{display:none}figure,table{break-inside:avoid}}
"""

_FLICKER_JS = """
function ketabidsFlicker(slider){
  // the blend is a CSS variable of the strips: hovering still shows the template fully
  const box=document.getElementById(slider.dataset.target);
  box.querySelectorAll('.flicker').forEach(f=>{f.style.setProperty('--blend',slider.value/100);});
}
function ketabidsZoom(img){
  // the strip at its full resolution (2 device pixels per shown pixel), scrollable
  const z=document.getElementById('zoom');
  const big=z.querySelector('img');
  big.src=img.src; big.alt=img.alt;
  big.width=img.naturalWidth; big.height=img.naturalHeight;
  z.querySelector('p').textContent=(img.title||img.alt)+' (click or Esc to close)';
  z.classList.add('on');
}
document.addEventListener('keydown',e=>{if(e.key==='Escape'){
  const z=document.getElementById('zoom'); if(z){z.classList.remove('on');}}});
"""

#: the zoom overlay of the strips (one per page)
_ZOOM = ("<div id='zoom' onclick=\"this.classList.remove('on')\" role='dialog' "
         "aria-label='enlarged figure'><p></p><img alt=''></div>")


def _png(fig) -> str:
    """The figure as a PNG data URI, with a fixed canvas (no tight bounding box), so two
    figures of the same layout overlay pixel for pixel; zlib level 1, since the page stores
    every strip re-encoded with a palette (:func:`compact_uri`: the same bytes in the page)."""
    return png_uri(fig, dpi=STRIP_DPI, facecolor="black", tight=False, compress_level=1)


def _cuts(mask: np.ndarray, n: int = N_CUTS) -> list[list[int]]:
    """``n`` slice indices per axis, evenly spread over the central 80 % of the mask's
    bounding box."""
    from ketabids.anat.antsutil import bounding_box

    box = bounding_box(mask, margin=0)
    lo = [s.start or 0 for s in box]
    hi = [(n_vox if s.stop is None else s.stop) - 1 for s, n_vox in zip(box, mask.shape)]
    return [[int(round(lo[a] + (hi[a] - lo[a]) * f)) for f in np.linspace(0.1, 0.9, n)]
            for a in range(3)]


def _slice(data, axis, index):
    """Voxel slice ``index`` along ``axis`` as shown (``np.rot90``): a view, nothing copied
    (``np.take`` would copy the whole volume of a Fortran-ordered NIfTI array first)."""
    key = [slice(None)] * 3
    key[axis] = index
    return np.rot90(data[tuple(key)])


def _aspect(zooms, axis):
    rest = [z for a, z in enumerate(zooms) if a != axis]
    return rest[1] / rest[0]


def _window(data, mask=None) -> tuple[float, float] | None:
    """Display window ``(lo, hi)``: the 1st and 99.5th percentiles inside ``mask`` (of the
    nonzero voxels without one); None when there is nothing to measure."""
    values = data[mask] if mask is not None and mask.any() else data[data != 0]
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, [1, 99.5])
    return lo, hi


def _scaled(data, window):
    """``clip((data - lo) / max(hi - lo, 1e-6), 0, 1)`` (``data`` itself without a window)."""
    if window is None:
        return data
    lo, hi = window
    return np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1)


def slice_geometry(affine, shape, axis: int, index: int) -> dict:
    """World coordinate and orientation labels of voxel slice ``index`` along ``axis``, as the
    strip shows it (``np.rot90`` of the slice: columns = first remaining voxel axis, rows =
    second, top = its last voxel).

    Returns ``{"coord": "x = -12 mm", "left": "L", "right": "R", "top": "S"}``.

    >>> g = slice_geometry(np.diag([2.0, 2.0, 2.0, 1.0]), (10, 10, 10), 2, 5)
    >>> g["coord"], g["left"], g["right"], g["top"]
    ('z = 10 mm', 'L', 'R', 'A')
    """
    import nibabel as nib

    codes = nib.orientations.aff2axcodes(affine)
    u, v = [a for a in range(3) if a != axis]
    centre = (np.asarray(shape[:3], float) - 1) / 2
    centre[axis] = index
    world = np.asarray(affine)[:3, :3] @ centre + np.asarray(affine)[:3, 3]
    name = _WORLD.get(codes[axis], "xyz"[axis])
    value = world["xyz".index(name)]
    return {"coord": f"{name} = {value:.0f} mm", "left": _OPPOSITE.get(codes[u], "?"),
            "right": codes[u], "top": codes[v]}


class Strip(NamedTuple):
    """One figure strip: PNG data URI, axis name, the slices' world coordinates and the
    orientation letters of the image's left and right edges."""

    uri: str
    axis: str
    coords: tuple
    left: str
    right: str

    def caption(self) -> str:
        return (f"{self.axis}, {len(self.coords)} slices: {', '.join(self.coords)}; image "
                f"left = {self.left}, right = {self.right}")


class _Panel(NamedTuple):
    """One slice of a strip, already cut out of its volumes: ``background`` in [0, 1],
    ``contours`` as ``(2D array, level, colour)``, ``geo`` from :func:`slice_geometry`."""

    background: np.ndarray
    contours: list
    geo: dict


def _panels(background, window, affine, axis, cuts, contours=()) -> list[_Panel]:
    """The panels of one strip: each slice cut once from each volume (views), the background
    scaled by ``window``; ``contours`` as ``(volume, level, colour)`` or
    ``(volume, level, colour, to_float)`` with ``to_float`` mapping the slice to the float image
    whose ``level`` line is drawn (e.g. a label slice to a 0/1 tissue mask)."""
    out = []
    for index in cuts:
        lines = []
        for volume, level, colour, *convert in contours:
            sl = _slice(volume, axis, index)
            sl = convert[0](sl) if convert else sl
            lines.append((np.asarray(sl, dtype=np.float32), level, colour))
        out.append(_Panel(_scaled(_slice(background, axis, index), window), lines,
                          slice_geometry(affine, background.shape, axis, index)))
    return out


def _contour_lines(image: np.ndarray, level: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``level`` iso-lines of a 2D image as ``((k, 2) vertices, path codes)`` pairs,
    vertices as (column, row): the lines ``Axes.contour`` draws (contourpy's ``mpl2014``
    algorithm with corner masking, matplotlib's defaults), without a ContourSet per slice."""
    import contourpy

    if not image.min() < level < image.max():
        return []
    generator = contourpy.contour_generator(z=image, name="mpl2014", corner_mask=True,
                                            line_type=contourpy.LineType.SeparateCode)
    vertices, codes = generator.lines(level)
    return list(zip(vertices, codes))


def _strip(panels: list[_Panel], aspect: float, axis: int, title=None) -> Strip:
    """One row of slices along ``axis``: grey background, coloured contour lines (0.7 pt),
    coordinates and orientation letters.

    The layout is that of ``n`` image axes side by side (``subplots(1, n)``, no margins,
    ``wspace=0.02``, each image centred in its cell at its aspect ratio), drawn in ONE axes
    whose data unit is the inch: panel boxes, contour vertices and labels are placed by the
    same arithmetic matplotlib applies to separate axes (creating and drawing 7 axes per strip
    cost more than the images)."""
    from matplotlib.collections import PathCollection
    from matplotlib.path import Path as MplPath

    plt = pyplot()
    n = len(panels)
    first = panels[0].background
    ratio = first.shape[0] * aspect / max(first.shape[1], 1)
    width, height = 1.55 * n, 1.55 * ratio + 0.05
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_autoscale_on(False)
    cell = width / (n + 0.02 * (n - 1))
    lines = {}
    coords = []
    style = LABEL_STYLE
    for col, panel in enumerate(panels):
        rows, cols = panel.background.shape
        box = aspect * rows / max(cols, 1)  # height / width of the image box
        bw, bh = (cell, cell * box) if height / cell > box else (height / box, height)
        bx = col * cell * 1.02 + (cell - bw) / 2
        by = (height - bh) / 2
        ax.imshow(panel.background, cmap="gray", vmin=0, vmax=1, aspect="auto",
                  interpolation="nearest", extent=(bx, bx + bw, by, by + bh))
        scale = np.array([bw / cols, -bh / rows])
        offset = np.array([bx + 0.5 * bw / cols, by + bh - 0.5 * bh / rows])
        for k, (sl, level, colour) in enumerate(panel.contours):
            lines.setdefault(k, (colour, []))[1].extend(
                MplPath(xy * scale + offset, codes) for xy, codes in _contour_lines(sl, level))
        geo = panel.geo
        coords.append(geo["coord"])
        ax.text(bx + 0.5 * bw, by + 0.02 * bh, geo["coord"], ha="center", va="bottom", **style)
        ax.text(bx + 0.02 * bw, by + 0.5 * bh, geo["left"], ha="left", va="center", **style)
        ax.text(bx + 0.98 * bw, by + 0.5 * bh, geo["right"], ha="right", va="center", **style)
        if col == 0 and title:
            ax.text(bx + 0.02 * bw, by + 0.98 * bh, title, ha="left", va="top", **style)
    for colour, paths in lines.values():
        if paths:
            ax.add_collection(PathCollection(paths, facecolors="none", edgecolors=colour,
                                             linewidths=CONTOUR_WIDTH, zorder=2), autolim=False)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    return Strip(_png(fig), _AXIS_NAMES[axis], tuple(coords), geo["left"], geo["right"])


def dseg_labels() -> dict:
    """``{"GM": value, "WM": value, "CSF": value}`` of the ``dseg`` images, from the one
    definition of the label values (:data:`ketabids.anat.segmentation.LABELS`)."""
    from ketabids.anat.segmentation import LABELS

    return {abbreviation: value for value, (_, abbreviation) in LABELS.items()}


def plot_segmentation(t1w_img, mask_img, dseg_img=None, n_cuts: int = N_CUTS) -> list[Strip]:
    """Tissue boundaries as contours over the T1w, one :class:`Strip` per axis (sagittal,
    coronal, axial).

    Each volume is read once; only the 3 x ``n_cuts`` displayed slices are cut out, scaled and
    turned into contour images (the window is measured on the whole brain)."""
    t1w = np.asanyarray(t1w_img.dataobj, dtype=np.float32)
    mask = np.asanyarray(mask_img.dataobj) > 0
    zooms = t1w_img.header.get_zooms()[:3]
    contours = [(mask, 0.5, MASK_COLOUR)]
    if dseg_img is not None:
        dseg = np.asanyarray(dseg_img.dataobj)
        if not np.issubdtype(dseg.dtype, np.integer):
            dseg = dseg.astype(int)
        labels = dseg_labels()
        contours += [(dseg, 0.5, GM_COLOUR,
                      lambda sl: np.isin(sl, [labels["GM"], labels["WM"]])),
                     (dseg, 0.5, WM_COLOUR, lambda sl: sl == labels["WM"])]
    window = _window(t1w, mask)
    cuts = _cuts(mask, n_cuts)
    return [_strip(_panels(t1w, window, t1w_img.affine, axis, cuts[axis], contours),
                   _aspect(zooms, axis), axis) for axis in range(3)]


def plot_normalisation(std_img, template_brain_img, template_wm_img, template_mask_img,
                       n_cuts: int = N_CUTS) -> dict:
    """The normalised T1w and the template, same slices, template edges (brain outline and
    GM/WM boundary, cyan) on both; returns ``{"subject": [3 strips], "template": [3 strips]}``
    (one :class:`Strip` per axis) for the flicker element."""
    std = np.asanyarray(std_img.dataobj, dtype=np.float32)
    zooms = std_img.header.get_zooms()[:3]

    def on_grid(img, interpolation):
        if img.shape[:3] == std.shape and np.allclose(img.affine, std_img.affine):
            return np.asanyarray(img.dataobj, dtype=np.float32)
        from nilearn.image import resample_to_img

        return np.asanyarray(resample_to_img(img, std_img, interpolation=interpolation,
                                             force_resample=True, copy_header=True).dataobj,
                             dtype=np.float32)

    tmask = on_grid(template_mask_img, "nearest") > 0
    wm = on_grid(template_wm_img, "linear")
    tpl = on_grid(template_brain_img, "linear")
    contours = [(tmask, 0.5, TEMPLATE_COLOUR), (wm, 0.5, TEMPLATE_COLOUR)]
    cuts = _cuts(tmask, n_cuts)
    out = {"subject": [], "template": []}
    for key, data in (("subject", std), ("template", tpl)):
        window = _window(data, tmask)
        for axis in range(3):
            out[key].append(_strip(
                _panels(data, window, std_img.affine, axis, cuts[axis], contours),
                _aspect(zooms, axis), axis, title=key))
    return out


def _uri(strip) -> str:
    return strip.uri if isinstance(strip, Strip) else str(strip)


def _caption(strip) -> str:
    return strip.caption() if isinstance(strip, Strip) else ""


def _shown_size(uri: str) -> tuple[int, int] | None:
    """CSS size at which a strip is shown: its PNG size / 2 (drawn at :data:`STRIP_DPI`, 2
    device pixels per CSS pixel); None for a URI that is not a PNG."""
    import base64

    from ketabids.reports.figures import png_size

    if not uri.startswith("data:image/png;base64,"):
        return None
    try:
        w, h = png_size(base64.b64decode(uri.split(",", 1)[1][:64]))
    except (ValueError, TypeError, base64.binascii.Error):
        return None
    return w // 2, h // 2


def compact_uri(uri: str, colours: int = 256) -> str:
    """A strip's PNG data URI stored with a ``colours`` palette (median cut): the page is about
    2.5 times smaller, the grey levels and contour colours stay (a strip holds a few hundred
    distinct colours, mostly anti-aliasing); other URIs unchanged."""
    import base64

    from ketabids.reports.figures import quantize_png

    if not uri.startswith("data:image/png;base64,"):
        return uri
    try:
        data = quantize_png(base64.b64decode(uri.split(",", 1)[1]), colours)
    except (OSError, ValueError):
        return uri
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(uri: str, alt: str, *, cls="fig", title="", zoom=True) -> str:
    uri = compact_uri(uri)
    size = _shown_size(uri)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    extra = (' onclick="ketabidsZoom(this)"' if zoom else "") + \
        (f' title="{html.escape(title)}"' if title else "")
    cls = cls + (" zoomable" if zoom else "")
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="{uri}"{dims}{extra}>'


def _strip_img(strip, alt: str) -> str:
    """A strip with its slice coordinates and orientation as caption right under it; a click
    shows it at full resolution."""
    caption = _caption(strip)
    return ("<figure>" + _img(_uri(strip), alt, title=caption)
            + (f"<figcaption>{html.escape(caption)}</figcaption>" if caption else "")
            + "</figure>")


def flicker_html(element_id: str, bottom: list[str], top: list[str], *, bottom_label="subject",
                 top_label="template") -> str:
    """A before/after element: ``bottom`` strips shown, ``top`` strips on hover (CSS) or at the
    slider's blend (a CSS variable, so hovering still switches fully); each strip with its
    caption under it; self-contained."""
    eid = html.escape(element_id)
    rows = "".join(
        f'<figure><div class="flicker" title="{html.escape(_caption(b))}">'
        + _img(_uri(b), bottom_label, zoom=False)
        + _img(_uri(t), top_label, cls="fig top", zoom=False)
        + "</div>"
        + (f"<figcaption>{html.escape(_caption(b))}</figcaption>" if _caption(b) else "")
        + "</figure>"
        for b, t in zip(bottom, top))
    return (f'<p class="flicker-ctl">Hover a strip to switch to the {html.escape(top_label)}, '
            f'or blend: {html.escape(bottom_label)} '
            f'<input type="range" min="0" max="100" value="0" data-target="{eid}" '
            f'oninput="ketabidsFlicker(this)" aria-label="blend"> {html.escape(top_label)}</p>'
            f'<div id="{eid}" class="flicker-box">{rows}</div>')


#: QC metrics shown beside the images, in this order
REPORT_METRICS = ["tiv_ml", "icvs_gm", "cnr", "cjv", "snr_total", "fov_coverage", "brain_dice",
                  "template_correlation", "logjac_range", "slice_thickness_mm"]


def _limit_text(rule, threshold) -> str:
    if threshold is None or isinstance(threshold, bool):
        return "-"
    scale, unit = rule.scale, f" {rule.unit}" if rule.unit else ""

    def fmt(v):
        text = f"{v * scale:.{rule.digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text

    if rule.kind == "above":
        return f"&gt; {fmt(threshold)}{unit}"
    if rule.kind == "below":
        return f"&lt; {fmt(threshold)}{unit}"
    if rule.kind == "outside":
        low, high = threshold
        return f"outside {fmt(low)}-{fmt(high)}{unit}"
    return "-"


def metrics_table(record: dict, metrics=REPORT_METRICS) -> str:
    """The QC metrics of one T1w with their meaning, unit and the thresholds they were judged
    against (:data:`ketabids.qc.rules.RULES`), the ones beyond a threshold marked."""
    from ketabids.qc.rules import RULES_BY_METRIC

    rows = []
    for key in metrics:
        value = record.get(key)
        if value is None or isinstance(value, bool):
            continue
        rule = RULES_BY_METRIC.get(key)
        if rule is None:
            name, unit, shown, warn, fail, state = key, "", _fmt(value), "-", "-", ""
        else:
            name = (rule.label or key).strip()
            unit = rule.unit
            shown = f"{float(value) * rule.scale:.{rule.digits}f}"
            warn, fail = _limit_text(rule, rule.warn), _limit_text(rule, rule.fail)
            state = ("fail" if rule._bad(float(value), rule.fail) else
                     "warn" if rule._bad(float(value), rule.warn) else "")
        cls = f' class="num bad-{state}"' if state else ' class="num"'
        rows.append(f"<tr><td>{html.escape(name)} <code>{html.escape(key)}</code></td>"
                    f"<td{cls}>{html.escape(shown)}</td><td>{html.escape(unit) or '-'}</td>"
                    f"<td>{warn}</td><td>{fail}</td></tr>")
    if not rows:
        return ""
    return ("<table class='metrics'><thead><tr><th>QC metric</th><th>value</th><th>unit</th>"
            "<th>warn if</th><th>fail if</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def subject_nav(subject: str) -> str:
    """Links to the previous / next subject's report and to the cohort page. They go through
    ``qc.html`` (``qc.html#prev=sub-X``), which lists every subject and forwards to the
    neighbour's report: the page itself never changes when subjects are added, so a rerun
    rewrites nothing."""
    sub = html.escape(f"sub-{subject}")
    return ("<nav class='subjects' aria-label='subjects'>"
            f'<a href="qc.html#prev={sub}" rel="prev">&larr; previous subject</a>'
            '<a href="qc.html">all subjects (qc.html)</a>'
            f'<a href="qc.html#next={sub}" rel="next">next subject &rarr;</a></nav>')


def _table(rows: list[dict] | dict, header=("Item", "Value")) -> str:
    if isinstance(rows, dict):
        rows = [{header[0]: k, header[1]: v} for k, v in rows.items()]
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    num = ' class="num"'
    body = "".join("<tr>" + "".join(
        f"<td{num if isinstance(r.get(c), (int, float)) else ''}>"
        f"{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if value is None:
        return "-"
    return str(value)


def verdict_html(record: dict | None, title: str = "") -> str:
    """The QC verdict box of one T1w: verdict, reasons, and where the rules are documented."""
    if not record:
        return ('<div class="verdict warn" data-verdict="warn"><b>QC: not computed</b>'
                f"{html.escape(title)}</div>")
    verdict = str(record.get("verdict", "fail"))
    if verdict not in _VERDICT_ORDER:
        verdict = "fail"
    reasons = [str(r) for r in record.get("reasons") or []]
    items = "".join(f"<li>{html.escape(r)}</li>" for r in reasons)
    return (f'<div class="verdict {verdict}" data-verdict="{verdict}"><b>QC {verdict}</b>'
            f"{(' (' + html.escape(title) + ')') if title else ''}"
            + (f"<ul>{items}</ul>" if items else ": every rule passed")
            + "</div>")


@dataclass(frozen=True)
class SectionFigures:
    """The figures of one T1w's report section.

    ``segmentation``: a data URI or a list of them (one strip per axis); ``normalisation``: a
    data URI, a list, or ``{"subject": [...], "template": [...]}`` (then shown as a flicker).
    """

    segmentation: object = None
    normalisation: object = None


def render_section(*, subject, session=None, source_file, notes=(), skull_stripped=False,
                   figures: SectionFigures | None = None, volumes=None, regional=None,
                   template="", qc=None) -> str:
    """One T1w's part of the report (HTML fragment), opened by its QC verdict (``qc``: the
    record of ``desc-qc_metrics.json``); ``figures``: its :class:`SectionFigures`."""
    figures = figures or SectionFigures()
    segmentation_png, normalisation_png = figures.segmentation, figures.normalisation
    title = f"sub-{subject}" + (f" ses-{session}" if session else "")
    anchor = html.escape(title.replace(" ", "_"))
    parts = [f'<section id="{anchor}">', f"<h2>{title}</h2>", verdict_html(qc),
             f"<p>Input: <code>{html.escape(str(source_file))}</code></p>"]
    error = (qc or {}).get("error")
    if error:
        parts.append(f'<p class="error" data-error="1"><b>Error:</b> '
                     f"<code>{html.escape(str(error).splitlines()[0])}</code></p>")
    if skull_stripped:
        parts.append('<p class="note"><b>The input was already skull-stripped</b>: brain '
                     "extraction kept the given brain (no skull to remove).</p>")
    for note in notes:
        parts.append(f'<p class="note">{html.escape(str(note))}</p>')
    if volumes is not None:
        parts.append("<h3>Volumes (mL)</h3>" + _table(volumes))
    if qc:
        table = metrics_table(qc)
        if table:
            parts.append("<h3>Main QC metrics</h3><p>Each with its unit and the thresholds of "
                         "the QC rules (<code>qc.json</code>); a value beyond one is coloured. "
                         "All metrics: <code>desc-qc_metrics.json</code>.</p>" + table)
    if segmentation_png:
        strips = segmentation_png if isinstance(segmentation_png, list) else [segmentation_png]
        parts.append("<h3>Brain mask and tissue segmentation</h3>"
                     "<p>Contours over the preprocessed T1w: brain mask"
                     f"<span class='key' style='background:{MASK_COLOUR}'></span>, outer GM "
                     f"boundary<span class='key' style='background:{GM_COLOUR}'></span>, "
                     f"GM/WM boundary<span class='key' style='background:{WM_COLOUR}'></span>; "
                     "one row per axis (sagittal, coronal, axial), world coordinates in mm. "
                     "Click a row to see it at full resolution.</p>"
                     + "".join(_strip_img(strip, f"segmentation {name}")
                               for strip, name in zip(strips, _AXIS_NAMES)))
    if normalisation_png:
        parts.append(f"<h3>Spatial normalisation to {html.escape(template)}</h3>"
                     "<p>The T1w in template space with the template's edges (brain outline "
                     f"and GM/WM boundary<span class='key' style='background:{TEMPLATE_COLOUR}'>"
                     "</span>). Hover a row (or move the slider) to see the template itself: "
                     "the anatomy should not jump.</p>")
        if isinstance(normalisation_png, dict):
            parts.append(flicker_html(f"flicker-{anchor}", normalisation_png["subject"],
                                      normalisation_png["template"]))
        else:
            strips = normalisation_png if isinstance(normalisation_png, list) \
                else [normalisation_png]
            parts.extend(_strip_img(strip, "normalisation") for strip in strips)
    if regional is not None:
        parts.append("<details><summary>Regional GM volumes (mL)</summary>"
                     + _table(regional) + "</details>")
    parts.append("</section>")
    return "\n".join(parts)


def _worst_verdict(sections) -> str | None:
    found = [v for sec in sections for v in re.findall(r'data-verdict="(pass|warn|fail)"', sec)]
    return max(found, key=_VERDICT_ORDER.index) if found else None


def assemble_report(*, subject, sections, methods="", settings=None, versions=None) -> str:
    """The complete, self-contained HTML report of one subject: links to the previous / next
    subject (:func:`subject_nav`), QC verdict(s) at the top, then each T1w's section, an Errors
    section, methods, settings and software versions."""
    worst = _worst_verdict(sections)
    errors = [m for sec in sections
              for m in re.findall(r'<p class="error" data-error="1">(.*?)</p>', sec, re.S)]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>ketabids: sub-{html.escape(subject)}</title><style>{_CSS}</style>",
             f"<script>{_FLICKER_JS}</script>",
             "</head><body>", subject_nav(subject),
             f"<h1>ketabids report: sub-{html.escape(subject)}</h1>"]
    if worst is not None:
        parts.append(f'<p class="verdict {worst}" id="qc-summary"><b>QC {worst}</b> '
                     f"(worst over {len(sections)} T1w image(s); reasons in each section "
                     "below, rules in <code>qc.json</code>, cohort view in "
                     '<a href="qc.html">qc.html</a>)</p>')
    parts.append("<p>Quality-control report of the participant level (voxel-based morphometry). "
                 "Check that the brain mask and tissue boundaries follow the anatomy and that "
                 "the normalised T1w matches the template.</p>")
    parts.extend(sections)
    parts.append('<h2 id="errors">Errors</h2>')
    parts.append("".join(f'<p class="error">{e}</p>' for e in errors) if errors
                 else "<p>No errors.</p>")
    parts.append("<h2>Methods</h2>")
    parts.append(f'<div class="methods"><p>{html.escape(methods)}</p>'
                 "<p><small>References: Ashburner J, Friston KJ (2000) NeuroImage 11:805. "
                 "Avants BB et al. (2008) Med Image Anal 12:26. Avants BB et al. (2011) "
                 "Neuroinformatics 9:381. Fonov V et al. (2009) NeuroImage 47:S102. "
                 "Gorgolewski K et al. (2011) Front Neuroinform 5:13 (Nipype). Tustison NJ et al. "
                 "(2010) IEEE TMI 29:1310.</small></p></div>")
    parts.append("<h2>Settings</h2>" + _table(settings or {}, ("Setting", "Value")))
    parts.append("<h2>Software</h2>" + _table(versions or {}, ("Package", "Version")))
    parts.append(_ZOOM)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def failure_report(path, *, subject, error, crash_files=(), finished_steps=(), failed_step=None,
                   inputs=()) -> Path:
    """``sub-X.html`` of a subject whose processing failed: the error in one line, the crash
    file(s), the input(s) and the steps that had finished. Written atomically; returns the
    path."""
    from ketabids.io import atomic_write_text

    first = str(error).splitlines()[0] if str(error).strip() else "processing failed"
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>ketabids: sub-{esc(subject)} (failed)</title><style>{_CSS}</style>",
             "</head><body>", subject_nav(subject),
             f"<h1>ketabids report: sub-{esc(subject)}</h1>",
             '<p class="verdict fail" data-verdict="fail"><b>QC fail</b>: processing failed; '
             "this subject has no "
             "derivatives and is left out of the group level.</p>",
             '<h2 id="errors">Errors</h2>',
             f'<p class="error"><b>Error:</b> <code>{esc(first)}</code></p>']
    if failed_step:
        parts.append(f"<p>Failed step: <code>{esc(str(failed_step))}</code></p>")
    if crash_files:
        parts.append("<p>Crash file(s) (full traceback and the node's inputs):</p><ul>"
                     + "".join(f"<li><code>{esc(str(c))}</code></li>" for c in crash_files)
                     + "</ul>")
    else:
        parts.append("<p>No crash file was written; see the log of the run.</p>")
    if inputs:
        parts.append("<p>Input(s): " + ", ".join(f"<code>{esc(str(i))}</code>" for i in inputs)
                     + "</p>")
    parts.append("<h2>Steps that finished</h2>")
    if finished_steps:
        parts.append("<ol>" + "".join(f"<li><code>{esc(str(s))}</code></li>"
                                      for s in finished_steps) + "</ol>")
    else:
        parts.append("<p>(none recorded)</p>")
    parts.append("<p>Fix the cause (the error names the file or step), then run the participant "
                 "level again for this subject.</p></body></html>")
    path = Path(path)
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
