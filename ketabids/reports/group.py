"""Self-contained HTML reports of group-level training and prediction.

Figures are drawn with matplotlib (Agg backend) and nilearn and embedded as SVG (charts) or PNG
at twice their shown size (brain maps), each shown at the size it was drawn
(:mod:`ketabids.reports.figures`), so a report is one file that can be mailed or archived. The
page skeleton is ``ketabids/data/group_report.html`` (``string.Template``, with print CSS:
no figure or short table split across pages); sections are built here.

Training report: headline (with the audit's and the C selection's warnings), links to every
file of the analysis, cohort (n, responders, participants left out and why, the QC gate),
metrics with 95 % intervals, ROC, confusion matrix, permutation histogram, decision-value
distributions, reliability curve, decision curve, per-site table, audit, per-repeat table,
per-participant table, weight / CV-ratio / sign-consistency / Haufe-pattern maps, region table,
methods paragraph. Prediction report: the same for a frozen model on a new cohort, with the
training estimate beside this cohort's, calibration, the two-arm (specificity) analysis and the
model's provenance.

Files written by other steps of the run into the output folder before the report are rendered
when present (:data:`OPTIONAL_FILES`): ``metrics_by_site.tsv``, ``audit.tsv``,
``decision_curve.tsv``, ``metrics_by_arm.tsv``, ``specificity.tsv`` and the ``c_selection``,
``audit_warnings``, ``calibration_*`` and ``specificity`` blocks of ``metrics.json``.
"""
from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd

from ketabids.bids.derivatives import sidecar_name
from ketabids.config import LabelRule
from ketabids.io import atomic_write_text
from ketabids.reports.figures import Image
from ketabids.reports.group_figures import (
    axial_cuts,
    fig_brain,
    fig_confusion,
    fig_decision_curve,
    fig_decisions,
    fig_decisions_unlabelled,
    fig_permutation,
    fig_reliability,
    fig_roc,
    fig_slices,
)
from ketabids.stats import roc_auc

__all__ = ["RunResults", "write_train_report", "write_predict_report", "methods_paragraph",
           "c_selection_summary", "axial_cuts", "fig_brain", "fig_confusion",
           "fig_decision_curve", "fig_decisions", "fig_decisions_unlabelled",
           "fig_permutation", "fig_reliability", "fig_roc", "fig_slices"]

HAUFE_NOTE = (
    "Weights of a linear classifier are <em>not</em> activation patterns: a voxel can carry a "
    "large weight because it cancels noise shared with other voxels, not because it differs "
    "between responders and non-responders (Haufe et al. 2014, NeuroImage 87:96). The "
    "<strong>pattern</strong> map <code>A = Cov(X) w / Var(w<sup>T</sup>x)</code> is the one to "
    "read as 'where grey matter differs'; weight, CV-ratio and sign-consistency maps describe "
    "the classifier and its stability."
)
METRIC_NAMES = {
    "bac": "Balanced accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity",
    "auc": "ROC AUC", "ppv": "PPV", "npv": "NPV", "accuracy": "Accuracy", "brier": "Brier score",
}
#: Files other steps may write into the folder before the report; rendered when present.
OPTIONAL_FILES = ("metrics_by_site.tsv", "audit.tsv", "decision_curve.tsv",
                  "metrics_by_arm.tsv", "specificity.tsv")
#: Share of outer folds at one edge of the C grid from which the report warns.
C_EDGE_WARNING_SHARE = 0.5
#: Rows of the per-participant table shown before the rest is folded away.
_FOLD_ROWS = 30


# ------------------------------------------------------------------------------- helpers
def _figure(img: Image, caption: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return (f"<figure{cls}>{img.tag(_plain(caption))}"
            f"<figcaption>{caption}</figcaption></figure>")


def _plain(text: str) -> str:
    """``text`` without HTML tags (for alt attributes)."""
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _table(frame: pd.DataFrame, *, numeric_format="{:.3f}", cls: str | None = None,
           sortable: bool = False) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):  # keeps each column's type (iterrows upcasts)
        cells = []
        for value in row:
            if isinstance(value, (bool, np.bool_)):
                cells.append(f"<td>{'yes' if value else 'no'}</td>")
            elif isinstance(value, (float, np.floating)):
                text = "n/a" if not np.isfinite(value) else numeric_format.format(value)
                cells.append(f'<td class="num">{text}</td>')
            elif isinstance(value, (int, np.integer)):
                cells.append(f'<td class="num">{value}</td>')
            else:
                cells.append(f"<td>{html.escape('' if value is None else str(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    classes = " ".join(c for c in (cls, "sortable" if sortable else None) if c)
    attr = f' class="{classes}"' if classes else ""
    return (f"<table{attr}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _pct(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f} %"


def _render(path, *, title: str, subtitle: str, body: str) -> None:
    from ketabids import __version__

    skeleton = resources.files("ketabids").joinpath("data/group_report.html").read_text()
    page = Template(skeleton).safe_substitute(
        title=html.escape(title), subtitle=subtitle, body=body, version=__version__,
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    atomic_write_text(path, page)


def _read_tsv(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / name
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def _read_json(folder: Path, name: str) -> dict:
    path = folder / name
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


# -------------------------------------------------------------------------------- sections
def _files_section(folder: Path, *, extra: tuple[str, ...] = ()) -> str:
    """Links to every TSV / JSON / NIfTI of the analysis folder (data dictionaries included:
    each ``.tsv`` gets ``.json`` next to it), to ``qc.html`` and the participants' reports."""
    names = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    names |= set(extra)
    for name in list(names):
        if name.endswith((".tsv", ".nii.gz")):
            names.add(sidecar_name(name))
    names.discard("report.html")
    order = {".tsv": 0, ".json": 1}

    def key(n):
        return (order.get(Path(n).suffix, 2), n)

    items = []
    for name in sorted(names, key=key):
        items.append(f'<li><a href="{html.escape(name)}">{html.escape(name)}</a></li>')
    out_dir = folder.parent.parent  # OUTPUT_DIR (folder: OUTPUT_DIR/group/<analysis>)
    cohort_links = []
    if (out_dir / "qc.html").is_file():
        cohort_links.append('<a href="../../qc.html">qc.html</a> (cohort quality control: '
                            "every scan's verdict, ratings)")
    if (out_dir / "qc.tsv").is_file():
        cohort_links.append('<a href="../../qc.tsv">qc.tsv</a>')
    body = ('<p>Every table this page summarises, with its data dictionary (the '
            "<code>.json</code> of the same name):</p>"
            f'<ul class="files">{"".join(items)}</ul>')
    if cohort_links:
        body += "<p>Participant level: " + ", ".join(cohort_links) + ".</p>"
    return _section("files", "Files", body)


def _cohort_section(cohort, rule, site_column=None) -> str:
    y = cohort.y
    rows = [("Participants analysed", len(cohort.maps))]
    if y is not None:
        rows += [("Responders", int(y.sum())), ("Non-responders", int((1 - y).sum()))]
    rows += [("Left out (listed below)", len(cohort.excluded)),
             ("Not selected by the row filters", cohort.filtered_out)]
    if cohort.sites is not None:
        sites, counts = np.unique(cohort.sites, return_counts=True)
        rows.append((f"Sites ({site_column})",
                     ", ".join(f"{s}: {c}" for s, c in zip(sites, counts))))
    if cohort.covariate_names:
        rows.append(("Covariates (design columns)", ", ".join(cohort.covariate_names)))
    rows.append(("Label rule", rule.describe()))
    p = cohort.pipeline
    rows.append(("Maps", f"space-{p.get('template')}, {p.get('resolution')} mm, ketabids "
                         f"{p.get('version')}"))
    body = _kv(rows)
    if cohort.excluded:
        body += ("<h3>Left out</h3>" + _table(pd.DataFrame(
            [(e.participant_id, e.reason) for e in cohort.excluded],
            columns=["participant_id", "reason"])))
    else:
        body += "<p>No participant was left out.</p>"
    body += ('<p class="muted">Every candidate, included or not, with the reason: '
             '<a href="cohort.tsv">cohort.tsv</a>.</p>')
    return _section("cohort", "Cohort", body + _qc_section(cohort))


def _qc_section(cohort) -> str:
    """The QC gate: policy, verdict counts, exclusion file, scans kept with warn/fail."""
    gate = getattr(cohort, "qc", None)
    if gate is None:
        return ""
    c = gate.counts()
    rows = [("QC policy (--qc-policy)", gate.policy)]
    if gate.policy == "ignore":
        rows.append(("QC verdicts", "not read"))
    else:
        rows.append(("QC verdicts of the candidates",
                     f"{c['pass']} pass, {c['warn']} warn, {c['fail']} fail, "
                     f"{c['no_record']} without a QC record"))
    by_qc = sum(e["by"] == "qc" for e in gate.excluded)
    rows.append(("Left out for failing QC", by_qc))
    if gate.exclude_file:
        rows.append(("Exclusion file (--exclude-file)",
                     f"{gate.exclude_file} (SHA-256 {gate.exclude_file_sha256[:16]}), "
                     f"{sum(e['by'] == 'review' for e in gate.excluded)} left out by review"))
    body = "<h3>Quality control</h3>" + _kv(rows)
    flagged = gate.kept_flagged
    if flagged:
        body += ("<p>Kept although their QC verdict is warn or fail (review them in "
                 "<code>qc.html</code>; leave one out with <code>--exclude-file</code>):</p>"
                 + _table(pd.DataFrame(
                     [(f["participant_id"], f["verdict"], "; ".join(f["reasons"]))
                      for f in flagged], columns=["participant_id", "QC verdict", "reasons"])))
    if gate.no_record:
        body += (f"<p class='note'>{len(gate.no_record)} participant(s) have no QC record "
                 "(derivatives from a ketabids without QC?) and were kept unchecked: "
                 f"{html.escape(', '.join(gate.no_record[:50]))}"
                 f"{' ...' if len(gate.no_record) > 50 else ''}. Rerun the participant level "
                 "to check them.</p>")
    return body


def _metrics_table(metrics: pd.DataFrame) -> str:
    rows = []
    for _, r in metrics.iterrows():
        plain = r["metric"] in ("brier", "auc")  # not proportions of participants
        fmt = _fmt3 if plain else _pct
        row = {"metric": METRIC_NAMES.get(r["metric"], r["metric"]),
               "aggregation": r["aggregation"], "estimate": fmt(_num(r["estimate"])),
               "95 % interval": f"{fmt(_num(r['ci_low']))} - {fmt(_num(r['ci_high']))}",
               "interval method": r.get("method", "")}
        rows.append(row)
    return _table(pd.DataFrame(rows))


def _fmt3(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _headline_block(h: dict | None, warnings=()) -> str:
    """THE headline result (same text as metrics.json's ``headline.text`` and the closing log
    line), below ~10 per class a visible warning, and the warnings of the audit and of the C
    selection (``warnings``: (title, text) pairs)."""
    out = ""
    if h is not None:
        out = (f'<p class="headline"><strong>Headline result:</strong> '
               f"{html.escape(h['text'])}</p>"
               '<p class="muted">This is the one number to report. The tables below list other '
               "metrics and aggregations for reference only; the permutation p-value belongs "
               "to the headline statistic.</p>")
        if h.get("warning"):
            out += (f'<div class="warn"><strong>Warning:</strong> '
                    f'{html.escape(h["warning"])}</div>')
    for title, text in warnings:
        out += f'<div class="warn"><strong>{html.escape(title)}:</strong> {text}</div>'
    return out


def _kv(rows) -> str:
    return _table(pd.DataFrame([(k, v) for k, v in rows], columns=["", "value"]))


def c_selection_summary(folds: pd.DataFrame, grid) -> dict:
    """Where the outer folds' chosen C fall on the grid: ``{"grid", "share_lower_edge",
    "share_upper_edge", "warning"}`` (the warning when at least
    :data:`C_EDGE_WARNING_SHARE` of the folds chose one end of the grid)."""
    grid = sorted(float(c) for c in grid)
    chosen = pd.to_numeric(folds["C"], errors="coerce").to_numpy(float)
    n = int(np.isfinite(chosen).sum())
    lower = float(np.mean(np.isclose(chosen, grid[0]))) if n else float("nan")
    upper = float(np.mean(np.isclose(chosen, grid[-1]))) if n else float("nan")
    warning = None
    for share, edge, value in ((lower, "smallest", grid[0]), (upper, "largest", grid[-1])):
        if len(grid) > 1 and n and share >= C_EDGE_WARNING_SHARE:
            count = int(round(share * n))
            warning = (f"{'Every' if count == n else f'{count} of {n}'} outer fold"
                       f"{'' if count == n else 's'} chose the {edge} C of the grid "
                       f"({value:g}): the inner cross-validation could not tell the values "
                       "apart or found its best at the edge, so the grid may not contain the "
                       "best C (widen it with --c-grid, or read the inner scores in "
                       "cv_folds.tsv).")
            break
    return {"grid": grid, "share_lower_edge": lower, "share_upper_edge": upper,
            "warning": warning}


def _c_selection_warning(folder: Path, folds, grid) -> tuple[str, str] | None:
    block = _read_json(folder, "metrics.json").get("c_selection")
    if not block and folds is not None and grid:
        block = c_selection_summary(folds, grid)
    if block and block.get("warning"):
        return ("C selection", html.escape(block["warning"]))
    return None


def _audit_warnings(folder: Path) -> list[tuple[str, str]]:
    warnings = _read_json(folder, "metrics.json").get("audit_warnings") or []
    return [("Audit", html.escape(str(w)) + ' (see <a href="#audit">the audit</a>)')
            for w in warnings]


def _audit_section(folder: Path) -> str:
    audit = _read_tsv(folder, "audit.tsv")
    if audit is None:
        return ""
    body = ("<p>Checks that the prediction does not come from site, head size, age, sex or scan "
            "quality rather than from the grey matter (<code>status</code>: pass, warn, or "
            'info; every row in <a href="audit.tsv">audit.tsv</a>).</p>')
    frame = audit.copy()
    body += _table(frame, numeric_format="{:.3g}", cls="audit")
    return _section("audit", "Audit: site and confounds", body)


def _site_section(folder: Path, *, y=None, decision=None, sites=None, site_column=None) -> str:
    """Per-site table: ``metrics_by_site.tsv`` when the run wrote it, else the consensus
    predictions' point estimates per site (no intervals)."""
    table = _read_tsv(folder, "metrics_by_site.tsv")
    if table is not None:
        note = ('<p>Per site (rows of <a href="metrics_by_site.tsv">metrics_by_site.tsv</a>; '
                "AUC n/a where a site has one class only).</p>")
        return _section("sites", "Per site", note + _table(table))
    if sites is None or y is None or decision is None:
        return ""
    rows = []
    sites = np.asarray(sites).astype(str)
    y, decision = np.asarray(y, int), np.asarray(decision, float)
    for site in sorted(set(sites)):
        m = sites == site
        ys, pred = y[m], (decision[m] > 0).astype(int)
        sens = float(np.mean(pred[ys == 1] == 1)) if (ys == 1).any() else float("nan")
        spec = float(np.mean(pred[ys == 0] == 0)) if (ys == 0).any() else float("nan")
        both = (ys == 1).any() and (ys == 0).any()
        rows.append({"site": site, "n": int(m.sum()), "n_responders": int(ys.sum()),
                     "n_nonresponders": int((1 - ys).sum()),
                     "bac": (sens + spec) / 2 if both else float("nan"),
                     "auc": roc_auc(ys, decision[m]) if both else float("nan")})
    note = (f"<p>Per site ({html.escape(str(site_column or 'site'))}): point estimates of the "
            "predictions shown above, one per participant, without intervals; n/a where a site "
            "has one class only.</p>")
    return _section("sites", "Per site", note + _table(pd.DataFrame(rows)))


def _decision_curve_figure(folder: Path) -> str:
    table = _read_tsv(folder, "decision_curve.tsv")
    if table is None or table.empty:
        return ""
    return _figure(fig_decision_curve(table),
                   "Decision curve: net benefit of treating those the model predicts to "
                   "respond, against treating everyone or no one, over the threshold "
                   'probability at which one would treat (<a href="decision_curve.tsv">'
                   "decision_curve.tsv</a>).")


def _participant_table(frame: pd.DataFrame, caption: str, anchor="participants",
                       title="Per participant") -> str:
    """One row per participant (sortable by a click on a column header; filterable)."""
    body = (f"<p>{caption}</p>"
            f'<p class="noprint"><input type="search" class="filter" data-table="{anchor}-t" '
            'placeholder="filter rows (e.g. sub-01, or a site)" aria-label="filter rows"> '
            '<span class="muted">Click a column header to sort.</span></p>'
            f'<div class="scroll" id="{anchor}-t">'
            + _table(frame, numeric_format="{:.3f}", sortable=True, cls="long") + "</div>")
    return _section(anchor, title, body)


def _cv_participants(folder: Path, result, cohort, site_column) -> pd.DataFrame:
    subj = _read_tsv(folder, "cv_predictions.tsv")
    if subj is None:
        subj = result.subjects.copy()
        ids = cohort.participant_ids
        subj.insert(0, "participant_id", [ids[int(r)] for r in subj["row"]])
        subj = subj.drop(columns=["row"])
    if cohort.sites is not None:
        site_of = dict(zip(cohort.participant_ids, np.asarray(cohort.sites).astype(str)))
        subj.insert(1, site_column or "site", [site_of.get(p, "n/a")
                                               for p in subj["participant_id"]])
    return subj


def methods_paragraph(manifest: dict, n: int, n_resp: int, n_perm: int) -> str:
    """The methods section: :func:`ketabids.reports.citation.group_methods` (the one source of
    the group methods text, also in ``logs/.../CITATION.md``) plus the final model's C and the
    CV scheme hash."""
    from ketabids.reports.citation import group_methods, settings_from_manifest

    settings = settings_from_manifest(manifest, n_permutations=n_perm,
                                      label_rule=manifest.get("labels_text"))
    settings.update(n=n, n_responders=n_resp)
    cv = manifest["cv"]
    text = html.escape(group_methods(settings))
    final_c = cv.get("final_C")
    text += (" The final model was refitted on all participants"
             + (f" (C = {final_c:g})" if final_c is not None else "")
             + f" and saved with its manifest (CV scheme hash <code>"
             f"{html.escape(str(cv.get('cv_hash', ''))[:16])}</code>).")
    return _section("methods", "Methods", "<p>" + text + "</p>")


def _nav(items) -> str:
    links = " · ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in items)
    return f'<nav class="noprint">{links}</nav>'


# ------------------------------------------------------------------------------- reports
@dataclass(frozen=True, eq=False)
class RunResults:
    """What a training or a prediction hands its report, beside the files of its folder.

    Parameters
    ----------
    cohort : Cohort
        The participants analysed and those left out (:func:`ketabids.group.cohort.build_cohort`).
    rule : LabelRule
        How the labels were obtained.
    manifest : dict
        The model's manifest.
    perm : PermutationResult, optional
        The permutation test (None: none run).
    calibration : DataFrame, optional
        The reliability table.
    headline : dict, optional
        The headline metric (:func:`ketabids.group.metrics.headline_metric`).
    elapsed : float
        Run time in seconds.
    """

    cohort: object
    rule: object
    manifest: dict
    perm: object = None
    calibration: object = None
    headline: dict | None = None
    elapsed: float = 0.0


def write_train_report(path, run: RunResults, *, features, result, maps, regions,
                       site_column=None) -> None:
    """The training report (see the module docstring). Files of :data:`OPTIONAL_FILES` and
    the optional blocks of ``metrics.json`` in ``path``'s folder are rendered when present.

    Parameters
    ----------
    path, run
        The report's file (``report.html`` of the staged training folder) and the run's
        :class:`RunResults`.
    features : Features
        The feature matrix and its mask (:mod:`ketabids.group.features`).
    result : NestedCVResult
        The nested CV.
    maps : dict
        Map name -> NIfTI image (weight maps and pattern).
    regions : DataFrame or None
        The region table (with an atlas).
    site_column : str, optional
        The ``participants.tsv`` column of the sites.
    """
    cohort, rule, manifest, perm, calibration, headline, elapsed = (
        run.cohort, run.rule, run.manifest, run.perm, run.calibration, run.headline,
        run.elapsed)
    folder = Path(path).parent
    y = cohort.y
    brier = _brier(result.metrics)
    grid = (manifest.get("cv") or {}).get("C_grid")
    warnings = [w for w in [_c_selection_warning(folder, result.folds, grid)] if w]
    warnings = _audit_warnings(folder) + warnings
    summary = [("CV scheme hash", result.cv_hash)]
    scheme = _read_json(folder, "metrics.json").get("cv_scheme")
    if isinstance(scheme, dict):
        summary.append(("Outer CV scheme", ", ".join(
            f"{k} {v}" for k, v in scheme.items() if v is not None)))
    summary.append(("Run time", f"{elapsed:.0f} s"))
    body = [_nav([("files", "Files"), ("cohort", "Cohort"), ("performance", "Performance"),
                  ("sites", "Per site"), ("folds", "Per repeat"),
                  ("participants", "Per participant"), ("maps", "Maps"),
                  ("methods", "Methods"), ("model", "Model")]),
            _headline_block(headline, warnings), _kv(summary),
            _files_section(folder, extra=("tripod_ai.tsv", "model_card.md")),
            _cohort_section(cohort, rule, site_column)]
    perf = ["<p>Intervals: <em>pooled</em> = all out-of-fold predictions of all repeats, "
            "subject-cluster bootstrap; <em>mean_over_repeats</em> = mean of the per-repeat "
            "metrics, interval = spread across CV partitions only (not sampling "
            "uncertainty); <em>consensus</em> = each participant's mean decision over "
            "repeats. With about 100 participants CV accuracy carries roughly +/- 10 % "
            'error bars (Varoquaux 2018). All rows: <a href="metrics.tsv">metrics.tsv</a>, '
            '<a href="metrics.json">metrics.json</a>.</p>', _metrics_table(result.metrics)]
    consensus = result.subjects["predicted"].to_numpy(int)
    n_repeats = result.decision.shape[0]
    figs = [
        _figure(fig_roc(y, result.decision), "ROC of the pooled out-of-fold decision values of "
                f"all {n_repeats} repeats (blue; its AUC is the pooled AUC of the table) and of "
                "each repeat (grey)."),
        _figure(fig_confusion(_confusion(y, consensus)), "Confusion matrix of the consensus "
                f"predictions: one per participant (mean out-of-fold decision over the "
                f"{n_repeats} repeats > 0); the cells sum to n = {len(y)}."),
        _figure(fig_decisions(y, result.decision.mean(axis=0)),
                "Out-of-fold decision values (mean over repeats) by observed class."),
        _figure(fig_reliability(calibration, brier), "Reliability of the out-of-fold Platt "
                "probabilities (mean over repeats), quantile bins of about equal size "
                '(<a href="calibration.tsv">calibration.tsv</a>).'),
    ]
    dc = _decision_curve_figure(folder)
    if dc:
        figs.append(dc)
    if perm is not None:
        figs.append(_figure(fig_permutation(perm.null_bac, perm.observed_bac, perm.p_bac,
                                            perm.null_auc, perm.observed_auc, perm.p_auc),
                            "Permutation null distributions of the pooled BAC and AUC "
                            "(whole nested CV re-run per permutation; "
                            '<a href="permutations.tsv">permutations.tsv</a>).', wide=True))
    perf.append('<div class="figs">' + "".join(figs) + "</div>")
    body.append(_section("performance", "Cross-validated performance", "".join(perf)))
    body.append(_site_section(folder, y=y, decision=result.decision.mean(axis=0),
                              sites=cohort.sites, site_column=site_column))
    body.append(_audit_section(folder))
    body.append(_folds_section(result.folds, grid, len(y), headline))
    subj = _cv_participants(folder, result, cohort, site_column)
    body.append(_participant_table(
        subj, "Out-of-fold result of every participant: <code>decision</code> = mean "
        "out-of-fold decision value over the repeats (&gt; 0: predicted responder), "
        "<code>decision_sd</code> its spread over repeats, <code>proba</code> the mean Platt "
        "probability, <code>n_correct</code> in how many repeats the prediction was right "
        '(<a href="cv_predictions.tsv">cv_predictions.tsv</a>; the final model\'s own decisions '
        'on its training set: <a href="final_model_decisions.tsv">final_model_decisions.tsv'
        "</a>, which are not out-of-fold)."))
    body.append(_maps_section(maps, regions))
    manifest = {**manifest, "labels_text": rule.describe()}
    body.append(methods_paragraph(manifest, len(y), int(y.sum()),
                                  perm.n_permutations if perm else 0))
    body.append(_section("model", "Model", _provenance(manifest)))
    _render(path, title="ketabids: group-level training",
            subtitle=f"{len(y)} participants, {features.X.shape[1]} voxels", body="".join(body))


def _folds_section(folds: pd.DataFrame, grid, n: int, headline) -> str:
    per = folds.groupby("repeat", as_index=False).agg(
        n_folds=("fold", "count"), test_size=("n_test", "median"), bac=("bac", "mean"),
        auc=("auc", "mean"), median_C=("C", "median"), inner_bac=("inner_bac", "mean"))
    per["test_size"] = per["test_size"].round().astype(int)
    pooled = f" ({_pct(headline['estimate'])})" if headline else ""
    text = ("<p>One row per CV <em>repeat</em>: the <strong>mean of its "
            f"{int(per['n_folds'].iloc[0])} outer folds' metrics</strong>, each fold computed "
            f"on about {int(per['test_size'].median())} test participants. This is not the "
            f"headline{pooled}: the headline pools every out-of-fold prediction of all repeats "
            "before computing one BAC, while a fold metric on a handful of participants moves "
            "in large steps and their mean is usually lower. The two differ by construction, "
            "not by error. Every fold, with its chosen C and inner score: "
            '<a href="cv_folds.tsv">cv_folds.tsv</a>.</p>')
    table = _table(per.drop(columns=["n_folds"]).rename(columns={
        "test_size": "test participants per fold", "bac": "mean fold BAC",
        "auc": "mean fold AUC", "inner_bac": "mean inner BAC"}), numeric_format="{:.3g}")
    counts = ""
    if grid:
        chosen = pd.to_numeric(folds["C"], errors="coerce")
        tally = [(f"{c:g}", int(np.isclose(chosen, c).sum())) for c in sorted(grid)]
        counts = ("<p>Outer folds per chosen C (grid order): "
                  + ", ".join(f"C = {c}: {k}" for c, k in tally) + ".</p>")
    return _section("folds", "Per repeat (mean over folds)", text + table + counts)


def _maps_section(maps: dict, regions) -> str:
    brain = [
        _figure(fig_brain(maps["pattern"], "Haufe pattern (final model), top 20 %",
                          threshold=_top(maps["pattern"], 0.2)),
                "Activation pattern of the final model (read this one); voxels below the top "
                "20 % of |values| are not coloured.", wide=True),
        _figure(fig_slices(maps["pattern"], "Haufe pattern, axial"),
                "Pattern map on axial slices from the cerebellum to the vertex, top 20 % of "
                "|values| shown.", wide=True),
        _figure(fig_brain(maps["weight"], "mean weight, top 20 %",
                          threshold=_top(maps["weight"], 0.2)),
                "Mean primal weight of the outer-fold models (top 20 % of |values|).",
                wide=True),
        _figure(fig_brain(maps["cvratio"], "|CV ratio| >= 2", threshold=2.0),
                "Cross-validation ratio (mean weight / its standard error over the outer "
                "models), only voxels with |CVR| &ge; 2 (stable weights) coloured.", wide=True),
        _figure(fig_slices(maps["signconsistency"], "sign consistency", symmetric=False,
                           vmin=0.5, vmax=1.0, threshold=0.5),
                "Share of outer models whose weight sign agrees with the mean sign, on its "
                "possible range 0.5 (no agreement beyond chance, not coloured) to 1 (all "
                "models agree).", wide=True),
    ]
    body = "<p class='note'>" + HAUFE_NOTE + "</p>"
    body += '<div class="figs">' + "".join(brain) + "</div>"
    body += ('<p class="muted">The maps as NIfTI files (template space) are linked under '
             '<a href="#files">Files</a>.</p>')
    if regions is not None and len(regions):
        body += ("<h3>Regions</h3><p>Atlas regions sorted by |mean pattern| (top 25; all in "
                 '<a href="regions.tsv">regions.tsv</a>).</p>' + _table(regions.head(25)))
    elif regions is None:
        body += '<p class="muted">No region table: give --atlas (and --atlas-labels).</p>'
    return _section("maps", "Maps", body)


def _top(img, share: float) -> float | None:
    data = np.abs(np.asarray(img.dataobj, float))
    data = data[np.isfinite(data) & (data != 0)]
    return float(np.percentile(data, 100 * (1 - share))) if data.size else None


def _confusion(y, predicted) -> np.ndarray:
    """2x2 counts ``[[TN, FP], [FN, TP]]`` of one prediction per participant."""
    y, predicted = np.asarray(y, int), np.asarray(predicted, int)
    return np.array([[np.sum((y == 0) & (predicted == 0)), np.sum((y == 0) & (predicted == 1))],
                     [np.sum((y == 1) & (predicted == 0)), np.sum((y == 1) & (predicted == 1))]])


def _brier(metrics) -> float | None:
    if metrics is None:
        return None
    rows = metrics[metrics["metric"] == "brier"]
    return float(rows.iloc[0]["estimate"]) if len(rows) else None


def _label_text(labels: dict) -> str:
    return LabelRule(target=labels.get("target"),
                     response_from=tuple(labels["response_from"]) if labels.get("response_from")
                     else None, response_threshold=labels.get("response_threshold", 0.5),
                     include=tuple(labels.get("include") or ())).describe()


def _qc_text(qc) -> str:
    if not qc:
        return "not recorded (model from a ketabids without the QC gate)"
    left = len(qc.get("excluded") or [])
    review = f", exclusion file SHA-256 {qc['exclude_file_sha256'][:16]}" \
        if qc.get("exclude_file_sha256") else ""
    return f"--qc-policy {qc.get('policy')}, {left} training scan(s) left out{review}"


def _provenance(manifest: dict) -> str:
    f = manifest["features"]
    rows = [
        ("Model file SHA-256", manifest.get("model_sha256")),
        ("Created", manifest.get("created")),
        ("Template / grid", f"{manifest['template']}, {f['analysis_resolution']:g} mm "
                            f"{tuple(f['grid_shape'])}, {f['n_voxels']} voxels"),
        ("Mask", f"{f['mask_source']} > {f['mask_threshold']:g}, SHA-256 "
                 f"{manifest.get('mask_sha256', '')[:16]}"),
        ("Smoothing", f"{f['smoothing_fwhm']:g} mm FWHM"),
        ("Covariates", ", ".join(manifest["covariates"]["names"]) or "none"),
        ("Site rule", f"column {manifest['site'].get('column')}, ComBat "
                      f"{manifest['site'].get('combat')}: "
                      f"{manifest['site'].get('unseen_site_rule')}"),
        ("Labels", _label_text(manifest["labels"])),
        ("QC gate", _qc_text(manifest.get("qc"))),
        ("Training set", f"n = {manifest['training']['n']} "
                         f"({manifest['training']['n_responders']} responders), subjects "
                         f"SHA-256 {manifest['training']['subjects_sha256'][:16]}"),
        ("CV", f"{manifest['cv'].get('n_repeats')} x {manifest['cv'].get('n_outer')}-fold outer,"
               f" {manifest['cv'].get('n_inner')}-fold inner, hash "
               f"{str(manifest['cv'].get('cv_hash'))[:16]}"),
        ("Software", ", ".join(f"{k} {v}" for k, v in manifest.get("software", {}).items())),
    ]
    return _kv(rows)


# ---------------------------------------------------------------------- prediction report
def _training_vs_external(manifest: dict, metrics: pd.DataFrame, headline) -> str:
    """The training (nested CV) estimate beside this cohort's, for BAC and AUC."""
    trained = (manifest.get("metrics") or {})
    intervals = trained.get("intervals") or {}

    def train_row(metric):
        block = intervals.get(metric, {}).get("pooled")
        if not block:
            return None
        return block["estimate"], block.get("ci_low"), block.get("ci_high")

    rows = []
    for metric in ("bac", "auc", "sensitivity", "specificity"):
        fmt = _fmt3 if metric == "auc" else _pct
        here = metrics[metrics["metric"] == metric]
        tr = train_row(metric)
        if here.empty and tr is None:
            continue
        ext = (f"{fmt(_num(here.iloc[0]['estimate']))} ({fmt(_num(here.iloc[0]['ci_low']))} - "
               f"{fmt(_num(here.iloc[0]['ci_high']))})") if len(here) else "n/a"
        tra = (f"{fmt(_num(tr[0]))} ({fmt(_num(tr[1]))} - {fmt(_num(tr[2]))})"
               if tr else "n/a")
        rows.append((METRIC_NAMES[metric], tra, ext))
    p_train = trained.get("p_bac")
    p_here = headline.get("p") if headline else None
    if p_train is not None or p_here is not None:
        rows.append(("Permutation p (BAC)", "n/a" if p_train is None else f"{p_train:.3g}",
                     "n/a" if p_here is None else f"{p_here:.3g}"))
    frame = pd.DataFrame(rows, columns=["", f"training: nested CV, n = "
                                        f"{manifest['training']['n']} (95 % CI)",
                                        f"this cohort: frozen model, n = "
                                        f"{headline['n'] if headline else 'n/a'} (95 % CI)"])
    return ("<p>The training estimate is the model's expected performance on new participants "
            "like its training set; a clearly lower value here means this cohort differs "
            "(scanner, population, protocol) or the training estimate was optimistic.</p>"
            + _table(frame))


def _calibration_rows(block: dict) -> str:
    rows = []
    for key, name, ideal in (("calibration_in_the_large", "Calibration in the large", "0"),
                             ("calibration_slope", "Calibration slope", "1")):
        value = block.get(key)
        if isinstance(value, dict):
            rows.append((name, _fmt3(_num(value.get("value"))),
                         f"{_fmt3(_num(value.get('ci_low')))} - "
                         f"{_fmt3(_num(value.get('ci_high')))}", ideal))
    if not rows:
        return ""
    return ("<h3>Calibration</h3><p>Intercept and slope of the observed labels regressed on the "
            "model's log-odds (ideal 0 and 1; a slope below 1 means over-confident "
            "probabilities).</p>" + _table(pd.DataFrame(
                rows, columns=["", "estimate", "95 % interval", "ideal"])))


def _arm_of(include) -> dict:
    out = {}
    for item in include or ():
        if "=" in str(item):
            key, value = str(item).split("=", 1)
            out[key.strip()] = value.strip()
    return out


def _control_arm_note(rule, manifest, n_pred: int, n: int) -> str:
    """When this cohort's arm (``--include col=value``) differs from the training arm: what
    was predicted for how many, and where the specificity analysis is."""
    train = _arm_of((manifest.get("labels") or {}).get("include"))
    here = _arm_of(rule.as_dict().get("include"))
    differing = {k: (train[k], v) for k, v in here.items() if k in train and train[k] != v}
    if not differing:
        return ""
    col, (tr, v) = next(iter(differing.items()))
    return (f'<div class="note"><strong>Another arm than the training one:</strong> the model '
            f"was trained on {html.escape(col)} = {html.escape(tr)} and applied here to "
            f"{html.escape(col)} = {html.escape(v)}. It predicted {n_pred} of {n} "
            f"participants ({_pct(n_pred / n if n else float('nan'))}) to respond. A "
            "prediction specific to the treatment should do no better than chance in a "
            "control arm; the test of that is the comparison of the two arms (run predict "
            "with <code>--arm-column</code> on both arms: <code>metrics_by_arm.tsv</code>, "
            '<code>specificity.tsv</code>; see <a href="#arms">Arms</a> when present).</div>')


def _arms_section(folder: Path) -> str:
    arms = _read_tsv(folder, "metrics_by_arm.tsv")
    spec = _read_tsv(folder, "specificity.tsv")
    if arms is None and spec is None:
        return ""
    block = _read_json(folder, "metrics.json").get("specificity") or {}
    body = ""
    if block.get("interpretation"):
        body += f'<p class="headline">{html.escape(str(block["interpretation"]))}</p>'
    if arms is not None:
        body += ('<h3>Per arm</h3><p><a href="metrics_by_arm.tsv">metrics_by_arm.tsv</a>'
                 + (f" (reference arm: {html.escape(str(block['reference_arm']))}, treatment "
                    f"arm: {html.escape(str(block.get('treatment_arm')))})"
                    if block.get("reference_arm") else "") + "</p>" + _table(arms))
    if spec is not None:
        body += ('<h3>Specificity to the treatment</h3><p>Differences between the arms '
                 '(<a href="specificity.tsv">specificity.tsv</a>): a model that predicts '
                 "response to the treatment, not response in general, shows a BAC / AUC "
                 "difference and an arm-by-prediction interaction whose interval excludes "
                 "0.</p>" + _table(spec, numeric_format="{:.3g}"))
    return _section("arms", "Arms: is the prediction specific to the treatment?", body)


def _model_name(model_path, manifest) -> str:
    """The model named by its file name, the folder it came from and its hash (not by a full,
    possibly temporary, path)."""
    p = Path(str(model_path))
    parent = p.parent.name if p.suffix else p.name
    name = p.name if p.suffix else "ketabids_model.skops"
    return (f"{name} from .../{parent} (SHA-256 {str(manifest.get('model_sha256', ''))[:16]}, "
            f"trained {manifest.get('created', 'n/a')} on n = {manifest['training']['n']})")


def write_predict_report(path, run: RunResults, *, model_path, predictions, metrics,
                         notes) -> None:
    """The prediction report (frozen model on a new cohort).

    Parameters
    ----------
    path, run
        As :func:`write_train_report` (the staged prediction folder's ``report.html``).
    model_path : path
        The model applied.
    predictions : DataFrame
        One row per participant.
    metrics : DataFrame or None
        The metrics (labelled cohorts).
    notes : list of str
        Warnings shown above the results.
    """
    cohort, rule, manifest, perm, calibration, headline, elapsed = (
        run.cohort, run.rule, run.manifest, run.perm, run.calibration, run.headline,
        run.elapsed)
    folder = Path(path).parent
    body = [_nav([("files", "Files"), ("cohort", "Cohort"), ("performance", "Performance"),
                  ("arms", "Arms"), ("participants", "Per participant"),
                  ("methods", "Methods"), ("model", "Model")])]
    body.append(_headline_block(headline))
    notes = [n for n in notes if not (headline and n == headline.get("warning"))]
    if notes:
        body.append('<div class="note"><ul>' + "".join(f"<li>{html.escape(n)}</li>"
                                                      for n in notes) + "</ul></div>")
    decision = predictions["decision"].to_numpy(float)
    n_pred = int(predictions["predicted"].sum())
    body.append(_control_arm_note(rule, manifest, n_pred, len(predictions)))
    summary = [("Model", _model_name(model_path, manifest)),
               ("Participants predicted", len(predictions)),
               ("Predicted responders", f"{n_pred} of {len(predictions)}"),
               ("Run time", f"{elapsed:.0f} s")]
    body.append(_kv(summary))
    body.append(_files_section(folder, extra=("metrics.json",)))
    body.append(_cohort_section(cohort, rule, manifest["site"].get("column")))
    if metrics is not None:
        y = predictions["y_true"].to_numpy(int)
        perf = [_training_vs_external(manifest, metrics, headline),
                '<h3>All metrics on this cohort</h3><p><a href="metrics.tsv">metrics.tsv</a>'
                "</p>", _metrics_table(metrics),
                _calibration_rows(_read_json(folder, "metrics.json"))]
        figs = [
            _figure(fig_roc(y, decision, label="frozen model"), "ROC on this cohort."),
            _figure(fig_confusion(_confusion(y, predictions["predicted"])),
                    f"Confusion matrix (one prediction per participant; n = {len(y)})."),
            _figure(fig_decisions(y, decision), "Decision values by observed class."),
            _figure(fig_reliability(calibration, _brier(metrics)),
                    "Reliability of the model's probabilities on this cohort, quantile bins of "
                    'about equal size (<a href="calibration.tsv">calibration.tsv</a>).'),
        ]
        dc = _decision_curve_figure(folder)
        if dc:
            figs.append(dc)
        if perm is not None:
            figs.append(_figure(fig_permutation(perm.null_bac, perm.observed_bac, perm.p_bac,
                                                perm.null_auc, perm.observed_auc, perm.p_auc),
                                "Null distributions: this cohort's labels permuted, the "
                                'model frozen (<a href="permutations.tsv">permutations.tsv'
                                "</a>).", wide=True))
        perf.append('<div class="figs">' + "".join(figs) + "</div>")
        body.append(_section("performance", "Performance of the frozen model", "".join(perf)))
        body.append(_site_section(folder, y=y, decision=decision, sites=cohort.sites,
                                  site_column=manifest["site"].get("column")))
    else:
        body.append(_section(
            "performance", "Predictions",
            "<p>No labels were given (or only one class is present): predictions only.</p>"
            '<div class="figs">' + _figure(fig_decisions_unlabelled(decision),
                                           "Decision values.") + "</div>"))
    body.append(_arms_section(folder))
    frame = predictions.copy()
    if cohort.sites is not None:
        site_of = dict(zip(cohort.participant_ids, np.asarray(cohort.sites).astype(str)))
        frame.insert(1, manifest["site"].get("column") or "site",
                     [site_of.get(p, "n/a") for p in frame["participant_id"]])
    body.append(_participant_table(
        frame, "The frozen model's result for every participant: <code>decision</code> "
        "(&gt; 0: predicted responder), <code>proba</code> (Platt probability of response), "
        "<code>predicted</code> (1 = responder)"
        + (", <code>y_true</code> the observed label" if "y_true" in frame else "")
        + ' (<a href="predictions.tsv">predictions.tsv</a>).'))
    body.append(_section(
        "methods", "Methods",
        "<p>The frozen model (not retrained) was applied after the participants' modulated "
        "grey-matter maps went through the same feature computation as at training "
        f"({manifest['features']['smoothing_fwhm']:g} mm FWHM smoothing, "
        f"{manifest['features']['analysis_resolution']:g} mm grid, the model's own mask). "
        "Metrics: Wilson intervals for proportions, DeLong for the AUC, stratified bootstrap "
        "for BAC and Brier; the permutation test permutes this cohort's labels with the model "
        "frozen.</p>"))
    body.append(_section("model", "Model provenance", _provenance(manifest)))
    _render(path, title="ketabids: frozen-model prediction",
            subtitle=f"{len(predictions)} participants, label rule: {rule.describe()}",
            body="".join(body))
