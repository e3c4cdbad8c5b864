"""The participant QC report: one self-contained HTML file per subject.

Figures are PNG images embedded as base64 (matplotlib, Agg backend, no files next to the HTML):

* brain-mask contour (red) and tissue labels (CSF blue, GM green, WM yellow) over the
  preprocessed T1w, three orientations;
* the T1w in template space with the template's edges (brain outline and GM/WM boundary, cyan)
  on top: misregistration shows as edges not following the subject's anatomy.

:func:`render_section` makes one T1w's part (one per session); :func:`assemble_report` wraps the
sections with the methods paragraph, settings and software versions.
"""
from __future__ import annotations

import html

import numpy as np

from ketabids.reports.figures import png_uri, pyplot

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;
color:#222;padding:0 1em}
h1{border-bottom:2px solid #345}h2{color:#345;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#eef}
.note{background:#fff8e0;border-left:4px solid #e0a000;padding:.4em .8em;margin:.4em 0}
.fig{max-width:100%}.methods{background:#f6f6f6;padding:.8em;border-radius:4px}
code{font-size:90%}
"""


def _cuts(mask: np.ndarray, n: int = 3) -> list[list[int]]:
    """Slice indices per axis, evenly spread inside the mask's bounding box."""
    idx = np.argwhere(mask) if mask.any() else np.argwhere(np.ones_like(mask))
    lo, hi = idx.min(0), idx.max(0)
    return [[int(round(lo[a] + (hi[a] - lo[a]) * f)) for f in np.linspace(0.25, 0.75, n)]
            for a in range(3)]


def _slice(data, axis, index):
    return np.rot90(np.take(data, index, axis=axis))


def _aspect(zooms, axis):
    rest = [z for a, z in enumerate(zooms) if a != axis]
    return rest[1] / rest[0]


def _norm(data, mask=None):
    values = data[mask] if mask is not None and mask.any() else data[data != 0]
    if values.size == 0:
        return data
    lo, hi = np.percentile(values, [1, 99.5])
    return np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1)


def _mosaic(background, zooms, cuts, overlay) -> str:
    """3 x 3 slices (rows: the three axes, at ``cuts``) of ``background`` in grey with
    ``overlay(ax, axis, index)`` drawn on each; returns a ``data:`` URI (PNG)."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 3, figsize=(9, 9))
    for axis in range(3):
        for col, index in enumerate(cuts[axis]):
            ax = axes[axis, col]
            ax.imshow(_slice(background, axis, index), cmap="gray", aspect=_aspect(zooms, axis),
                      interpolation="nearest")
            overlay(ax, axis, index)
            ax.set_axis_off()
    fig.subplots_adjust(wspace=0.02, hspace=0.02)
    return png_uri(fig, dpi=72, facecolor="black")


def plot_segmentation(t1w_img, mask_img, dseg_img=None) -> str:
    """Mask contour (red) and tissue overlay on the T1w; returns a ``data:`` URI (PNG)."""
    from matplotlib.colors import ListedColormap

    t1w = np.asanyarray(t1w_img.dataobj, dtype=np.float32)
    mask = np.asanyarray(mask_img.dataobj) > 0
    dseg = np.asanyarray(dseg_img.dataobj).astype(int) if dseg_img is not None else None
    zooms = t1w_img.header.get_zooms()[:3]
    cmap = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 1), (1, 0.9, 0.1, 1), (0.2, 0.4, 1, 1)])  # 1 GM 2 WM 3 CSF

    def overlay(ax, axis, index):
        if dseg is not None:
            ax.imshow(_slice(dseg, axis, index), cmap=cmap, vmin=0, vmax=3, alpha=0.3,
                      aspect=_aspect(zooms, axis), interpolation="nearest")
        m = _slice(mask, axis, index).astype(float)
        if m.any() and not m.all():
            ax.contour(m, levels=[0.5], colors="red", linewidths=0.8)

    return _mosaic(_norm(t1w, mask), zooms, _cuts(mask), overlay)


def plot_normalisation(std_img, template_wm_img, template_mask_img) -> str:
    """The T1w in template space with the template's edges (brain outline and GM/WM boundary,
    cyan); returns a ``data:`` URI (PNG)."""
    std = np.asanyarray(std_img.dataobj, dtype=np.float32)
    tmask = np.asanyarray(template_mask_img.dataobj) > 0
    wm = np.asanyarray(template_wm_img.dataobj, dtype=np.float32)
    zooms = std_img.header.get_zooms()[:3]
    if std.shape != tmask.shape:  # different grids: resample the template onto the image
        from nilearn.image import resample_to_img

        tmask = np.asanyarray(resample_to_img(template_mask_img, std_img,
                                              interpolation="nearest").dataobj) > 0
        wm = np.asanyarray(resample_to_img(template_wm_img, std_img).dataobj)

    def overlay(ax, axis, index):
        for data, level in ((tmask.astype(float), 0.5), (wm, 0.5)):
            sl = _slice(data, axis, index)
            if sl.min() < level < sl.max():
                ax.contour(sl, levels=[level], colors="cyan", linewidths=0.6)

    return _mosaic(_norm(std, tmask), zooms, _cuts(tmask), overlay)


def _table(rows: list[dict] | dict, header=("Item", "Value")) -> str:
    if isinstance(rows, dict):
        rows = [{header[0]: k, header[1]: v} for k, v in rows.items()]
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if value is None:
        return "-"
    return str(value)


def render_section(*, subject, session=None, source_file, notes=(), skull_stripped=False,
                   segmentation_png=None, normalisation_png=None, volumes=None, regional=None,
                   template="") -> str:
    """One T1w's part of the report (HTML fragment)."""
    title = f"sub-{subject}" + (f" ses-{session}" if session else "")
    parts = [f'<section id="{html.escape(title.replace(" ", "_"))}">', f"<h2>{title}</h2>",
             f"<p>Input: <code>{html.escape(str(source_file))}</code></p>"]
    if skull_stripped:
        parts.append('<p class="note"><b>The input was already skull-stripped</b>: brain '
                     "extraction kept the given brain (no skull to remove).</p>")
    for note in notes:
        parts.append(f'<p class="note">{html.escape(str(note))}</p>')
    if volumes is not None:
        parts.append("<h3>Volumes (mL)</h3>" + _table(volumes))
    if segmentation_png:
        parts.append("<h3>Brain mask and tissue segmentation</h3>"
                     "<p>Red: brain-mask outline; overlay: CSF (blue), GM (green), WM (yellow).</p>"
                     f'<img class="fig" alt="segmentation" src="{segmentation_png}">')
    if normalisation_png:
        parts.append(f"<h3>Spatial normalisation to {html.escape(template)}</h3>"
                     "<p>The T1w in template space; cyan: template brain outline and GM/WM "
                     "boundary. They should follow the subject's anatomy.</p>"
                     f'<img class="fig" alt="normalisation" src="{normalisation_png}">')
    if regional is not None:
        parts.append("<details><summary>Regional GM volumes (mL)</summary>"
                     + _table(regional) + "</details>")
    parts.append("</section>")
    return "\n".join(parts)


def assemble_report(*, subject, sections, methods="", settings=None, versions=None) -> str:
    """The complete, self-contained HTML report of one subject."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>ketabids: sub-{html.escape(subject)}</title><style>{_CSS}</style>",
             "</head><body>", f"<h1>ketabids report: sub-{html.escape(subject)}</h1>",
             "<p>Quality-control report of the participant level (voxel-based morphometry). "
             "Check that the brain mask follows the brain, that tissue labels are plausible and "
             "that the template edges follow the anatomy after normalisation.</p>"]
    parts.extend(sections)
    parts.append("<h2>Methods</h2>")
    parts.append(f'<div class="methods"><p>{html.escape(methods)}</p>'
                 "<p><small>References: Ashburner J, Friston KJ (2000) NeuroImage 11:805. "
                 "Avants BB et al. (2008) Med Image Anal 12:26. Avants BB et al. (2011) "
                 "Neuroinformatics 9:381. Fonov V et al. (2009) NeuroImage 47:S102. "
                 "Gorgolewski K et al. (2011) Front Neuroinform 5:13 (Nipype). Tustison NJ et al. "
                 "(2010) IEEE TMI 29:1310.</small></p></div>")
    parts.append("<h2>Settings</h2>" + _table(settings or {}, ("Setting", "Value")))
    parts.append("<h2>Software</h2>" + _table(versions or {}, ("Package", "Version")))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
