"""The cohort QC page ``OUTPUT_DIR/qc.html``: one self-contained HTML file.

Contents: the verdict counts; a table of every subject/session (verdict, reasons, TIV, GM, link to
``sub-X.html``, and a rating widget); small distributions of TIV, GM and the main QC metrics with
the rule thresholds drawn and each subject coloured by its verdict; the sample-homogeneity plot
(mean correlation of each modulated GM map with the others, flagged subjects in red). The rating
widget (as MRIQC's) exports ``qc_ratings.tsv`` with ``participant_id, session, rating, comment``
from the browser; nothing is sent anywhere.

:func:`render_qc_page` takes the cohort table (``qc.tsv`` as a DataFrame) and optionally the
homogeneity table of :func:`ketabids.qc.homogeneity.sample_homogeneity`, and writes atomically.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ketabids.io import atomic_write_text
from ketabids.qc.rules import RULES_BY_METRIC
from ketabids.reports.figures import png_uri, pyplot

COLOURS = {"pass": "#2e7d32", "warn": "#ef6c00", "fail": "#c62828"}
#: metrics shown as distributions, in this order
DISTRIBUTIONS = ["tiv_ml", "gm_ml", "icvs_gm", "cnr", "cjv", "snr_total", "efc", "inu_range",
                 "fov_coverage", "brain_dice", "template_correlation", "logjac_range"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:.9em}th,td{border-bottom:1px solid #ddd;padding:3px 8px;
text-align:left}th{background:#f3f3f3;position:sticky;top:0}
.v{font-weight:bold;color:#fff;border-radius:3px;padding:1px 6px}
.pass{background:#2e7d32}.warn{background:#ef6c00}.fail{background:#c62828}
.counts span{margin-right:1.5em;font-size:1.1em}img{max-width:100%}
"""

_JS = """
function exportRatings(){
  const rows=[["participant_id","session","rating","comment"]];
  document.querySelectorAll("tr[data-pid]").forEach(tr=>{
    const r=tr.querySelector("select").value, c=tr.querySelector("input").value;
    if(r||c){rows.push([tr.dataset.pid,tr.dataset.ses||"n/a",r||"n/a",
      c.replace(/[\\t\\n]/g," ")||"n/a"]);}
  });
  const blob=new Blob([rows.map(r=>r.join("\\t")).join("\\n")+"\\n"],{type:"text/tab-separated-values"});
  const a=document.createElement("a");a.href=URL.createObjectURL(blob);
  a.download="qc_ratings.tsv";a.click();
}
"""


def _num(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value


def distributions_figure(table: pd.DataFrame, metrics=DISTRIBUTIONS) -> str | None:
    """Small strip plots (one per metric present) with the rule thresholds; a PNG data URI."""
    metrics = [m for m in metrics if m in table.columns
               and np.isfinite(pd.to_numeric(table[m], errors="coerce")).any()]
    if not metrics:
        return None
    plt = pyplot()
    ncol = 4
    nrow = int(math.ceil(len(metrics) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol, 1.6 * nrow), squeeze=False)
    rng = np.random.default_rng(0)
    verdicts = table.get("verdict", pd.Series(["pass"] * len(table))).astype(str)
    for ax, metric in zip(axes.ravel(), metrics):
        values = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
        jitter = rng.uniform(-0.3, 0.3, len(values))
        for level, colour in COLOURS.items():
            sel = (verdicts == level).to_numpy() & np.isfinite(values)
            ax.scatter(values[sel], jitter[sel], s=12, color=colour, alpha=0.8, label=level)
        rule = RULES_BY_METRIC.get(metric)
        if rule is not None:
            for thr, style in ((rule.warn, ":"), (rule.fail, "--")):
                for t in (thr if isinstance(thr, (tuple, list)) else [thr]):
                    if isinstance(t, (int, float)) and not isinstance(t, bool):
                        lo, hi = np.nanmin(values), np.nanmax(values)
                        span = (hi - lo) or abs(hi) or 1.0
                        if lo - span <= t <= hi + span:  # only thresholds near the data
                            ax.axvline(t, color="#555", ls=style, lw=0.8)
        ax.set_title(metric, fontsize=9)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
        ax.set_ylim(-0.6, 0.6)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    return png_uri(fig)


def homogeneity_figure(homogeneity: pd.DataFrame) -> str | None:
    """Mean correlation per subject (sorted), flagged subjects in red and labelled, the lower
    fence dashed; a PNG data URI."""
    if homogeneity is None or homogeneity.empty:
        return None
    plt = pyplot()
    frame = homogeneity.sort_values("mean_corr").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 2.6))
    colours = [COLOURS["fail"] if f else "#1565c0" for f in frame["flagged"]]
    ax.scatter(np.arange(len(frame)), frame["mean_corr"], c=colours, s=18)
    for i, row in frame[frame["flagged"]].iterrows():
        ax.annotate(str(row["id"]), (i, row["mean_corr"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points", color=COLOURS["fail"])
    fence = homogeneity.attrs.get("fence")
    if fence is not None and np.isfinite(fence):
        ax.axhline(fence, color="#555", ls="--", lw=0.8, label="lower fence Q1 - 1.5 IQR")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("subjects, sorted", fontsize=8)
    ax.set_ylabel("mean correlation", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return png_uri(fig)


def _cell(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _report_link(output_dir: Path | None, pid: str) -> str:
    name = f"{pid}.html"
    if output_dir is not None and not (Path(output_dir) / name).is_file():
        return "(no report)"
    return f'<a href="{html.escape(name)}">{html.escape(name)}</a>'


def render_qc_html(table: pd.DataFrame, *, homogeneity: pd.DataFrame | None = None,
                   output_dir=None, title: str = "ketabids: cohort quality control") -> str:
    """The page as a string (see the module docstring)."""
    table = table.copy()
    verdicts = table.get("verdict", pd.Series(dtype=str)).astype(str)
    counts = {lvl: int((verdicts == lvl).sum()) for lvl in ("pass", "warn", "fail")}
    flagged = {}
    if homogeneity is not None and not homogeneity.empty:
        flagged = {str(r["id"]): r["reason"] for _, r in homogeneity.iterrows() if r["flagged"]}
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style><script>{_JS}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p class='counts'>" + "".join(
                 f"<span><b class='v {k}'>{k}</b> {v}</span>" for k, v in counts.items())
             + f"<span>{len(table)} T1w image(s)</span></p>",
             "<p>Verdicts follow the rules in <code>qc.json</code> (each with its source). "
             "Review the warn/fail subjects in their reports, rate them below if you like, and "
             "write the subjects to exclude in an exclusion TSV (participant_id, session, "
             "reason) for the group level.</p>",
             "<h2>Subjects</h2><table><tr><th>participant</th><th>session</th><th>verdict</th>"
             "<th>reasons</th><th>TIV (mL)</th><th>GM (mL)</th><th>homogeneity</th>"
             "<th>report</th><th>rating</th><th>comment</th></tr>"]
    for _, row in table.iterrows():
        pid = str(row.get("participant_id"))
        ses = row.get("session")
        ses = "" if ses is None or (isinstance(ses, float) and math.isnan(ses)) else str(ses)
        verdict = str(row.get("verdict", "n/a"))
        key = pid + (f"_{ses}" if ses else "")
        homog = flagged.get(key) or flagged.get(pid) or ""
        reasons = row.get("reasons")
        reasons = "" if not isinstance(reasons, str) else reasons
        parts.append(
            f"<tr data-pid='{html.escape(pid)}' data-ses='{html.escape(ses)}'>"
            f"<td>{html.escape(pid)}</td><td>{html.escape(ses) or 'n/a'}</td>"
            f"<td><span class='v {html.escape(verdict)}'>{html.escape(verdict)}</span></td>"
            f"<td>{html.escape(reasons)}</td><td>{_cell(_num(row.get('tiv_ml')), 4)}</td>"
            f"<td>{_cell(_num(row.get('gm_ml')), 4)}</td><td>{html.escape(homog)}</td>"
            f"<td>{_report_link(output_dir, pid)}</td>"
            "<td><select><option value=''></option><option>accept</option>"
            "<option>doubtful</option><option>exclude</option></select></td>"
            "<td><input type='text' size='24'></td></tr>")
    parts.append("</table><p><button onclick='exportRatings()'>Export ratings "
                 "(qc_ratings.tsv)</button></p>")
    dist = distributions_figure(table)
    if dist:
        parts.append("<h2>Distributions</h2><p>Each dot is a T1w, coloured by verdict; dotted "
                     f"lines: warn thresholds, dashed: fail thresholds.</p><img src='{dist}' "
                     "alt='QC metric distributions'>")
    hom = homogeneity_figure(homogeneity) if homogeneity is not None else None
    if hom:
        parts.append("<h2>Sample homogeneity</h2><p>Mean correlation of each smoothed "
                     "(8 mm) modulated GM map with all others (CAT12's check); red: flagged "
                     "(below Q1 - 1.5 IQR and robust z &lt; -2, a map total beyond robust "
                     f"|z| 3.5, or a duplicated map).</p><img src='{hom}' "
                     "alt='sample homogeneity'>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_qc_page(output_dir, table: pd.DataFrame | None = None, *,
                   homogeneity: pd.DataFrame | None = None) -> Path:
    """Write ``OUTPUT_DIR/qc.html`` (atomically) from ``table`` (default: ``qc.tsv``)."""
    output_dir = Path(output_dir)
    if table is None:
        from ketabids.qc.table import read_qc_table

        table = read_qc_table(output_dir)
    path = output_dir / "qc.html"
    atomic_write_text(path, render_qc_html(table, homogeneity=homogeneity,
                                           output_dir=output_dir))
    return path
