"""The cohort QC page ``OUTPUT_DIR/qc.html``: one self-contained HTML file.

Contents: the verdict counts; a sortable, filterable table of every subject/session (verdict,
reasons, TIV, GM, sample homogeneity, link to ``sub-X.html``, and a rating widget); strip plots
(inline SVG) of TIV, GM, the main QC metrics and the sample homogeneity, each with a real axis
(ticks, unit), every rule threshold drawn and labelled (so the margin to it can be seen), and
each subject a dot coloured by its verdict, its id and value on hover. Ratings (as MRIQC's
widget) are kept in the browser's ``localStorage`` (a reload does not lose them) until cleared,
and exported as ``qc_ratings.tsv`` with ``participant_id, session, rating, comment``; nothing is
sent anywhere.

:func:`render_qc_page` takes the cohort table (``qc.tsv`` as a DataFrame) and optionally the
homogeneity table of :func:`ketabids.qc.homogeneity.sample_homogeneity`, writes atomically, and
forwards the subjects' "previous / next subject" links (``qc.html#prev=sub-X``) to the
neighbour's report, in the table's order.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ketabids.io import atomic_write_text
from ketabids.qc.rules import RULES_BY_METRIC

COLOURS = {"pass": "#2e7d32", "warn": "#ef6c00", "fail": "#c62828"}
#: metrics shown as distributions, in this order
DISTRIBUTIONS = ["tiv_ml", "gm_ml", "icvs_gm", "cnr", "cjv", "snr_total", "efc", "inu_range",
                 "fov_coverage", "brain_dice", "template_correlation", "logjac_range"]
#: names and units of the plotted metrics without a QC rule
_PLAIN = {"gm_ml": ("GM volume", "mL"), "efc": ("entropy focus criterion (EFC)", ""),
          "homogeneity_mean_corr": ("sample homogeneity: mean correlation", "")}
#: threshold line styles: (dash, colour)
_LINE = {"warn": ("3,2", "#ef6c00"), "fail": ("6,3", "#c62828")}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em auto;max-width:1200px;
color:#222;padding:0 1em;font-size:15px;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.3rem;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9rem}th,td{border-bottom:1px solid #ddd;padding:3px 8px;
text-align:left}th{background:#f3f3f3;position:sticky;top:0;cursor:pointer}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
.v{font-weight:bold;color:#fff;border-radius:3px;padding:1px 6px}
.pass{background:#2e7d32}.warn{background:#ef6c00}.fail{background:#c62828}
.counts span{margin-right:1.5em;font-size:1.1em}
.dists{display:flex;flex-wrap:wrap;gap:10px}
.dists svg{background:#fafafa;border:1px solid #e4e4e4}
.dists svg circle:hover{stroke:#000;stroke-width:1.5}
.tools{margin:.6em 0;display:flex;gap:1em;flex-wrap:wrap;align-items:center}
.tools input[type=search]{min-width:18em;font-size:.95rem;padding:.2em .4em}
.muted{color:#666;font-size:.85rem}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em}
.scroll{max-height:36em;overflow:auto}
@media print{.tools,button{display:none}.scroll{max-height:none;overflow:visible}
svg,tr{break-inside:avoid}}
"""

_JS = """
const KEY='ketabids-qc-ratings:'+location.pathname;
function rowKey(tr){return tr.dataset.pid+'|'+(tr.dataset.ses||'');}
function saveRatings(){
  const saved={};
  document.querySelectorAll('tr[data-pid]').forEach(tr=>{
    const r=tr.querySelector('select').value, c=tr.querySelector('input').value;
    if(r||c){saved[rowKey(tr)]={rating:r,comment:c};}
  });
  try{localStorage.setItem(KEY,JSON.stringify(saved));}catch(e){}
  const n=Object.keys(saved).length;
  document.getElementById('saved').textContent=n?n+' rating(s) kept in this browser':'';
}
function loadRatings(){
  let saved={};
  try{saved=JSON.parse(localStorage.getItem(KEY)||'{}');}catch(e){saved={};}
  document.querySelectorAll('tr[data-pid]').forEach(tr=>{
    const s=saved[rowKey(tr)]; if(!s){return;}
    tr.querySelector('select').value=s.rating||''; tr.querySelector('input').value=s.comment||'';
  });
  saveRatings();
}
function clearRatings(){
  if(!confirm('Forget the ratings kept in this browser for this page?')){return;}
  document.querySelectorAll('tr[data-pid]').forEach(tr=>{
    tr.querySelector('select').value=''; tr.querySelector('input').value='';});
  try{localStorage.removeItem(KEY);}catch(e){}
  saveRatings();
}
function exportRatings(){
  const rows=[["participant_id","session","rating","comment"]];
  document.querySelectorAll("tr[data-pid]").forEach(tr=>{
    const r=tr.querySelector("select").value, c=tr.querySelector("input").value;
    if(r||c){rows.push([tr.dataset.pid,tr.dataset.ses||"n/a",r||"n/a",
      c.replace(/[\\t\\n]/g," ")||"n/a"]);}
  });
  const blob=new Blob([rows.map(r=>r.join("\\t")).join("\\n")+"\\n"],
                      {type:"text/tab-separated-values"});
  const a=document.createElement("a");a.href=URL.createObjectURL(blob);
  a.download="qc_ratings.tsv";a.click();
}
function cellValue(tr,i){
  const td=tr.children[i]; const t=td?(td.dataset.sort||td.textContent).trim():'';
  const n=parseFloat(t); return (t!==''&&!isNaN(n)&&/^[-+0-9.eE]+$/.test(t))?n:t.toLowerCase();
}
function filterRows(){
  const q=document.getElementById('filter').value.trim().toLowerCase();
  const v=document.getElementById('verdict-filter').value;
  document.querySelectorAll('tr[data-pid]').forEach(tr=>{
    tr.hidden=(q!==''&&!tr.textContent.toLowerCase().includes(q)&&!rowKey(tr).toLowerCase().includes(q))
      ||(v!==''&&tr.dataset.verdict!==v);
  });
}
function forward(){
  // sub-X.html links here as qc.html#prev=sub-X / #next=sub-X: open the neighbour's report
  const m=/^#(prev|next)=(sub-[^&]+)$/.exec(decodeURIComponent(location.hash));
  if(!m){return false;}
  const reports=[];
  document.querySelectorAll('tr[data-pid] a.report').forEach(a=>{
    const h=a.getAttribute('href'); if(!reports.includes(h)){reports.push(h);}});
  const i=reports.indexOf(m[2]+'.html');
  const j=m[1]==='prev'?i-1:i+1;
  if(i>=0&&j>=0&&j<reports.length){location.replace(reports[j]);return true;}
  const note=document.getElementById('forward');
  note.textContent=(i<0?m[2]+' has no report listed here':
    m[2]+' is the '+(m[1]==='prev'?'first':'last')+' subject with a report')+'.';
  note.hidden=false; return false;
}
document.addEventListener('DOMContentLoaded',()=>{
  if(forward()){return;}
  const table=document.getElementById('subjects');
  table.querySelectorAll('thead th').forEach((th,i)=>{
    if(th.dataset.nosort){return;}
    th.addEventListener('click',()=>{
      const asc=th.getAttribute('aria-sort')!=='ascending';
      table.querySelectorAll('thead th').forEach(h=>h.removeAttribute('aria-sort'));
      th.setAttribute('aria-sort',asc?'ascending':'descending');
      const body=table.tBodies[0]; const rows=Array.from(body.rows);
      rows.sort((a,b)=>{const x=cellValue(a,i),y=cellValue(b,i);
        const c=(typeof x===typeof y)?(x<y?-1:x>y?1:0):(typeof x==='number'?-1:1);
        return asc?c:-c;});
      rows.forEach(r=>body.appendChild(r));
    });
  });
  document.querySelectorAll('tr[data-pid] select, tr[data-pid] input').forEach(
    el=>el.addEventListener('input',saveRatings));
  document.getElementById('filter').addEventListener('input',filterRows);
  document.getElementById('verdict-filter').addEventListener('change',filterRows);
  loadRatings();
});
"""


def _num(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value


def metric_axis(metric) -> tuple[str, str, float]:
    """(name, unit, scale) of a plotted metric: from its QC rule, else from :data:`_PLAIN`."""
    rule = RULES_BY_METRIC.get(metric)
    if rule is not None:
        return (rule.label or metric).strip(), rule.unit, float(rule.scale or 1.0)
    name, unit = _PLAIN.get(metric, (metric.replace("_", " "), ""))
    return name, unit, 1.0


def thresholds(metric) -> list[tuple[float, str]]:
    """``(value, level)`` of every rule threshold of ``metric`` (level ``warn`` or ``fail``),
    in the metric's own units (not scaled)."""
    rule = RULES_BY_METRIC.get(metric)
    out = []
    if rule is None:
        return out
    for thr, level in ((rule.warn, "warn"), (rule.fail, "fail")):
        for t in (thr if isinstance(thr, (tuple, list)) else [thr]):
            if isinstance(t, (int, float)) and not isinstance(t, bool):
                out.append((float(t), level))
    return out


def _ticks(x0: float, x1: float) -> list[float]:
    from matplotlib.ticker import MaxNLocator

    return [float(t) for t in MaxNLocator(nbins=5).tick_values(x0, x1) if x0 <= t <= x1]


def _fmt_tick(value: float, step: float) -> str:
    digits = max(0, -int(math.floor(math.log10(step))) if step > 0 else 0)
    return f"{value:.{digits}f}"


def strip_svg(metric: str, values, verdicts, ids, *, lines=None, width=340, height=104,
              seed=0) -> str:
    """One strip plot: dots (jittered vertically, coloured by verdict, id and value on hover)
    on a real x axis (ticks, unit); every threshold a labelled vertical line (dotted orange =
    warn, dashed red = fail), the axis always wide enough to show it. ``lines``: ``(value,
    level)`` pairs (default: the metric's QC rule thresholds)."""
    name, unit, scale = metric_axis(metric)
    values = np.asarray(values, float) * scale
    lines = [(t * scale, lvl) for t, lvl in (thresholds(metric) if lines is None else lines)]
    finite = values[np.isfinite(values)]
    ends = list(finite) + [t for t, _ in lines]
    lo, hi = (min(ends), max(ends)) if ends else (0.0, 1.0)
    span = (hi - lo) or abs(hi) or 1.0
    x0, x1 = lo - 0.06 * span, hi + 0.06 * span
    left, right, top, axis_y = 10, width - 10, 30, height - 34

    def sx(v):
        return left + (right - left) * (v - x0) / (x1 - x0)

    label = name + (f" ({unit})" if unit else "")
    items = [f'<text x="{left}" y="13" font-size="12" font-weight="bold">'
             f"{html.escape(label)}</text>",
             f'<line x1="{left}" y1="{axis_y}" x2="{right}" y2="{axis_y}" stroke="#555"/>']
    ticks = _ticks(x0, x1)
    step = (ticks[1] - ticks[0]) if len(ticks) > 1 else span
    for t in ticks:
        x = sx(t)
        items.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" '
                     'stroke="#555"/>'
                     f'<text x="{x:.1f}" y="{axis_y + 16}" font-size="11" text-anchor="middle">'
                     f"{_fmt_tick(t, step)}</text>")
    items.append(f'<text x="{(left + right) / 2:.0f}" y="{height - 4}" font-size="11" '
                 f'text-anchor="middle" fill="#555">{html.escape(metric)}'
                 + (f" [{html.escape(unit)}]" if unit else "") + "</text>")
    for k, (t, level) in enumerate(sorted(lines)):
        dash, colour = _LINE[level]
        x = sx(t)
        anchor = "start" if x < (left + right) / 2 else "end"
        dx = 3 if anchor == "start" else -3
        items.append(f'<line class="threshold" data-level="{level}" data-value="{t:.6g}" '
                     f'x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{axis_y}" stroke="{colour}" '
                     f'stroke-width="1.5" stroke-dasharray="{dash}"/>'
                     f'<text x="{x + dx:.1f}" y="{top - 1 + 9 * (k % 2)}" font-size="10" '
                     f'fill="{colour}" text-anchor="{anchor}">{level} {t:.4g}</text>')
    if not lines:
        items.append(f'<text x="{right}" y="13" font-size="10" text-anchor="end" '
                     'fill="#777">no QC rule</text>')
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(top + 6, axis_y - 6, len(values))
    for value, verdict, pid, y in zip(values, verdicts, ids, jitter):
        if np.isfinite(value):
            colour = COLOURS.get(str(verdict), "#777")
            items.append(f'<circle cx="{sx(value):.1f}" cy="{y:.1f}" r="3.5" fill="{colour}" '
                         f'fill-opacity="0.8"><title>{html.escape(str(pid))}: '
                         f"{_cell(float(value), 4)}{(' ' + html.escape(unit)) if unit else ''}"
                         "</title></circle>")
    return (f'<svg width="{width}" height="{height}" role="img" '
            f'aria-label="{html.escape(metric)}" data-metric="{html.escape(metric)}" '
            f'viewBox="0 0 {width} {height}">' + "".join(items) + "</svg>")


def _row_ids(table: pd.DataFrame) -> list[str]:
    out = []
    for _, row in table.iterrows():
        pid, ses = str(row.get("participant_id")), row.get("session")
        has = isinstance(ses, str) and ses not in ("", "n/a")
        out.append(f"{pid}_{ses}" if has else pid)
    return out


def distributions_svg(table: pd.DataFrame, metrics=DISTRIBUTIONS, **kwargs) -> str | None:
    """One :func:`strip_svg` per metric present in ``table`` (inline SVG, plain markup: no
    plotting library, cheap enough to rebuild after every participant run)."""
    metrics = [m for m in metrics if m in table.columns
               and np.isfinite(pd.to_numeric(table[m], errors="coerce")).any()]
    if not metrics:
        return None
    verdicts = table.get("verdict", pd.Series(["pass"] * len(table))).astype(str).to_numpy()
    ids = _row_ids(table)
    plots = [strip_svg(m, pd.to_numeric(table[m], errors="coerce").to_numpy(float), verdicts,
                       ids, seed=k, **kwargs) for k, m in enumerate(metrics)]
    return "<div class='dists'>" + "".join(plots) + "</div>"


def homogeneity_svg(homogeneity: pd.DataFrame, verdict_of: dict | None = None) -> str | None:
    """The sample homogeneity (mean correlation of each map with the others) as a strip plot
    with the lower fence drawn as the fail line; ids on hover."""
    if homogeneity is None or homogeneity.empty:
        return None
    fence = homogeneity.attrs.get("fence")
    lines = [(float(fence), "fail")] if fence is not None and np.isfinite(fence) else []
    ids = [str(i) for i in homogeneity["id"]]
    verdicts = ["fail" if f else (verdict_of or {}).get(i, "pass")
                for i, f in zip(ids, homogeneity["flagged"])]
    svg = strip_svg("homogeneity_mean_corr", homogeneity["mean_corr"].to_numpy(float),
                    verdicts, ids, lines=lines, width=700, height=110)
    return svg.replace(">fail ", ">fence ")
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
    return f'<a class="report" href="{html.escape(name)}">{html.escape(name)}</a>'


def render_qc_html(table: pd.DataFrame, *, homogeneity: pd.DataFrame | None = None,
                   output_dir=None, title: str = "ketabids: cohort quality control") -> str:
    """The page as a string (see the module docstring)."""
    from ketabids.qc.table import add_homogeneity

    table = table.copy()
    if "homogeneity_mean_corr" not in table.columns or homogeneity is not None:
        table = add_homogeneity(table, homogeneity) if len(table) else table
    verdicts = table.get("verdict", pd.Series(dtype=str)).astype(str)
    counts = {lvl: int((verdicts == lvl).sum()) for lvl in ("pass", "warn", "fail")}
    fence = homogeneity.attrs.get("fence") if homogeneity is not None else None
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
             f"<script>{_JS}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p id='forward' class='note' hidden></p>",
             "<p class='counts'>" + "".join(
                 f"<span><b class='v {k}'>{k}</b> {v}</span>" for k, v in counts.items())
             + f"<span>{len(table)} T1w image(s)</span></p>",
             "<p>Verdicts follow the rules in <code>qc.json</code> (each with its source); every "
             "value is in <a href='qc.tsv'>qc.tsv</a>. Review the warn/fail subjects in their "
             "reports, rate them below (ratings are kept in this browser until you clear them), "
             "export them, and pass the exported file (or your own exclusion TSV: "
             "participant_id, session, reason) to the group level with "
             "<code>--exclude-file</code>.</p>",
             "<h2>Subjects</h2>"
             "<div class='tools'><input type='search' id='filter' placeholder='filter: id, "
             "reason, ...' aria-label='filter rows'><label>verdict <select id='verdict-filter'>"
             "<option value=''>all</option><option>pass</option><option>warn</option>"
             "<option>fail</option></select></label><span class='muted'>Click a column header "
             "to sort.</span></div>",
             "<div class='scroll'><table id='subjects'><thead><tr><th>participant</th>"
             "<th>session</th><th>verdict</th><th>reasons</th><th>TIV (mL)</th>"
             "<th>GM (mL)</th><th title='mean correlation of the GM map with all others'>"
             "homogeneity (mean r)</th><th>homogeneity flag</th><th>report</th>"
             "<th data-nosort='1'>rating</th><th data-nosort='1'>comment</th></tr></thead><tbody>"]
    order = {"fail": 0, "warn": 1, "pass": 2}
    for _, row in table.iterrows():
        pid = str(row.get("participant_id"))
        ses = row.get("session")
        ses = "" if ses is None or (isinstance(ses, float) and math.isnan(ses)) else str(ses)
        verdict = str(row.get("verdict", "n/a"))
        flag = row.get("homogeneity_flag")
        flag = flag if isinstance(flag, str) and flag not in ("", "n/a") else ""
        reasons = row.get("reasons")
        reasons = "" if not isinstance(reasons, str) else reasons
        corr = _num(row.get("homogeneity_mean_corr"))
        parts.append(
            f"<tr data-pid='{html.escape(pid)}' data-ses='{html.escape(ses)}' "
            f"data-verdict='{html.escape(verdict)}'>"
            f"<td>{html.escape(pid)}</td><td>{html.escape(ses) or 'n/a'}</td>"
            f"<td data-sort='{order.get(verdict, 3)}'><span class='v {html.escape(verdict)}'>"
            f"{html.escape(verdict)}</span></td>"
            f"<td>{html.escape(reasons)}</td>"
            f"<td class='num'>{_cell(_num(row.get('tiv_ml')), 4)}</td>"
            f"<td class='num'>{_cell(_num(row.get('gm_ml')), 4)}</td>"
            f"<td class='num'>{'n/a' if not np.isfinite(corr) else f'{corr:.4f}'}</td>"
            f"<td>{html.escape(flag)}</td>"
            f"<td>{_report_link(output_dir, pid)}</td>"
            "<td><select aria-label='rating'><option value=''></option><option>accept</option>"
            "<option>doubtful</option><option>exclude</option></select></td>"
            "<td><input type='text' size='24' aria-label='comment'></td></tr>")
    parts.append("</tbody></table></div><p><button onclick='exportRatings()'>Export ratings "
                 "(qc_ratings.tsv)</button> <button onclick='clearRatings()'>Clear saved "
                 "ratings</button> <span id='saved' class='muted'></span></p>")
    dist = distributions_svg(table)
    if dist:
        parts.append("<h2>Distributions</h2><p>Each dot is a T1w, coloured by its verdict "
                     "(hover for its id and value). Every threshold of the QC rules is drawn "
                     "and labelled (dotted orange: warn, dashed red: fail), the axis widened "
                     f"to show it, so the margin to it can be read.</p>{dist}")
    hom = homogeneity_svg(homogeneity, dict(zip(_row_ids(table), verdicts))) \
        if homogeneity is not None else None
    if hom:
        parts.append("<h2>Sample homogeneity</h2><p>Mean correlation of each smoothed "
                     "(8 mm) modulated GM map with all others (CAT12's check; also in the "
                     "table above and in <code>qc.tsv</code>). Red: flagged (below the lower "
                     f"fence Q1 - 1.5 IQR = {_cell(fence, 4)} (dashed) and robust z &lt; -2, "
                     "a map total beyond robust |z| 3.5, or a duplicated map); other dots "
                     "coloured by verdict. Hover a dot for its id.</p>"
                     f"<div class='dists'>{hom}</div>")
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
