"""Self-contained HTML reports of group-level training and prediction.

Figures are drawn with matplotlib (Agg backend) and nilearn and embedded as base64 PNG, so a
report is one file that can be mailed or archived. The page skeleton is
``ketabids/data/group_report.html`` (``string.Template``); sections are built here.

Training report: cohort (n, responders, participants left out and why, the QC gate), metrics
with 95 % intervals, ROC, confusion matrix, permutation histogram,
decision-value distributions, reliability curve, weight / CV-ratio / sign-consistency /
Haufe-pattern maps, region table, methods paragraph. Prediction report: the same for a frozen
model on a new cohort, plus the model's provenance.
"""
from __future__ import annotations

import html
import time
from importlib import resources
from string import Template

import numpy as np
import pandas as pd

from ketabids.io import atomic_write_text
from ketabids.reports.group_figures import (fig_brain, fig_confusion, fig_decisions,
                                             fig_decisions_unlabelled, fig_permutation,
                                             fig_reliability, fig_roc, fig_slices)

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


# ------------------------------------------------------------------------------- helpers
def _figure(uri: str, caption: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return (f'<figure{cls}><img src="{uri}" alt="{html.escape(caption)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _table(frame: pd.DataFrame, *, numeric_format="{:.3f}") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):  # keeps each column's type (iterrows upcasts)
        cells = []
        for value in row:
            if isinstance(value, (float, np.floating)):
                text = "n/a" if not np.isfinite(value) else numeric_format.format(value)
                cells.append(f'<td class="num">{text}</td>')
            elif isinstance(value, (int, np.integer)):
                cells.append(f'<td class="num">{value}</td>')
            else:
                cells.append(f"<td>{html.escape('' if value is None else str(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _pct(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f} %"


def _render(path, *, title: str, subtitle: str, body: str) -> None:
    from ketabids import __version__

    skeleton = resources.files("ketabids").joinpath("data/group_report.html").read_text()
    page = Template(skeleton).safe_substitute(
        title=html.escape(title), subtitle=subtitle, body=body, version=__version__,
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    atomic_write_text(path, page)


# -------------------------------------------------------------------------------- sections
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
    body = _table(pd.DataFrame(rows, columns=["", "value"]))
    if cohort.excluded:
        body += ("<h3>Left out</h3>" + _table(pd.DataFrame(
            [(e.participant_id, e.reason) for e in cohort.excluded],
            columns=["participant_id", "reason"])))
    else:
        body += "<p>No participant was left out.</p>"
    return "<h2>Cohort</h2>" + body + _qc_section(cohort)


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
        fmt = (lambda v: "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}") if plain \
            else _pct
        row = {"metric": METRIC_NAMES.get(r["metric"], r["metric"]),
               "aggregation": r["aggregation"], "estimate": fmt(_num(r["estimate"])),
               "95 % interval": f"{fmt(_num(r['ci_low']))} - {fmt(_num(r['ci_high']))}",
               "interval method": r.get("method", "")}
        rows.append(row)
    return _table(pd.DataFrame(rows))


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _headline_block(h: dict | None) -> str:
    """THE headline result (same text as metrics.json's ``headline.text`` and the closing log
    line) and, below ~10 per class, a visible warning."""
    if h is None:
        return ""
    out = (f'<p class="headline"><strong>Headline result:</strong> '
           f"{html.escape(h['text'])}</p>"
           '<p class="muted">This is the one number to report. The table below lists other '
           "metrics and aggregations for reference only; the permutation p-value belongs to "
           "the headline statistic.</p>")
    if h.get("warning"):
        out += f'<div class="warn"><strong>Warning:</strong> {html.escape(h["warning"])}</div>'
    return out


def _kv(rows) -> str:
    return _table(pd.DataFrame([(k, v) for k, v in rows], columns=["", "value"]))


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
    return "<h2>Methods</h2><p>" + text + "</p>"


# ------------------------------------------------------------------------------- reports
def write_train_report(path, *, cohort, rule, features, result, perm, calibration, maps,
                       regions, manifest, headline=None, site_column=None, elapsed=0.0) -> None:
    """The training report (see the module docstring)."""
    y = cohort.y
    brier = _brier(result.metrics)
    summary = [("CV scheme hash", result.cv_hash), ("Run time", f"{elapsed:.0f} s")]
    body = [_headline_block(headline), _kv(summary), _cohort_section(cohort, rule, site_column)]
    body.append("<h2>Cross-validated performance</h2>")
    body.append("<p>Intervals: <em>pooled</em> = all out-of-fold predictions of all repeats, "
                "subject-cluster bootstrap; <em>mean_over_repeats</em> = mean of the per-repeat "
                "metrics, interval = spread across CV partitions only (not sampling "
                "uncertainty); <em>consensus</em> = each participant's mean decision over "
                "repeats. With about 100 participants CV accuracy carries roughly +/- 10 % "
                "error bars (Varoquaux 2018).</p>")
    body.append(_metrics_table(result.metrics))
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
                "(numbers = participants per bin)."),
    ]
    if perm is not None:
        figs.append(_figure(fig_permutation(perm.null_bac, perm.observed_bac, perm.p_bac,
                                            perm.null_auc, perm.observed_auc, perm.p_auc),
                            "Permutation null distributions of the pooled BAC and AUC "
                            "(whole nested CV re-run per permutation).", wide=True))
    body.append('<div class="figs">' + "".join(figs) + "</div>")
    body.append("<h2>Per-fold results</h2>")
    folds = result.folds
    body.append(_table(folds.groupby("repeat", as_index=False).agg(
        bac=("bac", "mean"), auc=("auc", "mean"), median_C=("C", "median"),
        inner_bac=("inner_bac", "mean")), numeric_format="{:.3f}"))
    body.append('<p class="muted">Mean over the folds of each repeat; every fold is in '
                "<code>cv_folds.tsv</code>.</p>")
    body.append("<h2>Maps</h2><p class='note'>" + HAUFE_NOTE + "</p>")
    brain = [
        _figure(fig_brain(maps["pattern"], "Haufe pattern (final model)"),
                "Activation pattern of the final model (read this one).", wide=True),
        _figure(fig_slices(maps["pattern"], "Haufe pattern, axial"),
                "Pattern map, top 20 % of |values| shown.", wide=True),
        _figure(fig_brain(maps["weight"], "mean weight over outer models"),
                "Mean primal weight of the outer-fold models.", wide=True),
        _figure(fig_brain(maps["cvratio"], "CV ratio (mean / SE)"),
                "Cross-validation ratio: mean weight / its standard error over outer models "
                "(|CVR| > 2 ~ stable).", wide=True),
        _figure(fig_slices(maps["signconsistency"], "sign consistency", symmetric=False,
                           vmax=1.0, threshold=None),
                "Share of outer models whose weight sign agrees with the mean sign (0.5 = "
                "no agreement beyond chance, 1 = all models agree).", wide=True),
    ]
    body.append('<div class="figs">' + "".join(brain) + "</div>")
    if regions is not None and len(regions):
        body.append("<h2>Regions</h2><p>Atlas regions sorted by |mean pattern| "
                    "(top 25; all in <code>regions.tsv</code>).</p>")
        body.append(_table(regions.head(25)))
    elif regions is None:
        body.append('<p class="muted">No region table: give --atlas (and --atlas-labels).</p>')
    manifest = {**manifest, "labels_text": rule.describe()}
    body.append(methods_paragraph(manifest, len(y), int(y.sum()),
                                  perm.n_permutations if perm else 0))
    body.append("<h2>Model</h2>" + _provenance(manifest))
    _render(path, title="ketabids: group-level training",
            subtitle=f"{len(y)} participants, {features.X.shape[1]} voxels", body="".join(body))


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
    from ketabids.group.labels import LabelRule

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


def write_predict_report(path, *, cohort, rule, manifest, model_path, predictions, metrics, perm,
                         calibration, notes, headline=None, elapsed=0.0) -> None:
    """The prediction report (frozen model on a new cohort)."""
    body = [_headline_block(headline)]
    notes = [n for n in notes if not (headline and n == headline.get("warning"))]
    if notes:
        body.append('<div class="note"><ul>' + "".join(f"<li>{html.escape(n)}</li>"
                                                      for n in notes) + "</ul></div>")
    decision = predictions["decision"].to_numpy(float)
    n_pred = int(predictions["predicted"].sum())
    summary = [("Model", str(model_path)), ("Participants predicted", len(predictions)),
               ("Predicted responders", f"{n_pred} of {len(predictions)}"),
               ("Run time", f"{elapsed:.0f} s")]
    body.append(_kv(summary))
    body.append(_cohort_section(cohort, rule, manifest["site"].get("column")))
    if metrics is not None:
        y = predictions["y_true"].to_numpy(int)
        body.append("<h2>Performance of the frozen model</h2>")
        body.append(_metrics_table(metrics))
        figs = [
            _figure(fig_roc(y, decision, label="frozen model"), "ROC on this cohort."),
            _figure(fig_confusion(_confusion(y, predictions["predicted"])),
                    f"Confusion matrix (one prediction per participant; n = {len(y)})."),
            _figure(fig_decisions(y, decision), "Decision values by observed class."),
            _figure(fig_reliability(calibration, _brier(metrics)),
                    "Reliability of the model's probabilities on this cohort, quantile bins of "
                    "about equal size (numbers = participants per bin)."),
        ]
        if perm is not None:
            figs.append(_figure(fig_permutation(perm.null_bac, perm.observed_bac, perm.p_bac,
                                                perm.null_auc, perm.observed_auc, perm.p_auc),
                                "Null distributions: this cohort's labels permuted, the "
                                "model frozen.", wide=True))
        body.append('<div class="figs">' + "".join(figs) + "</div>")
    else:
        body.append("<h2>Predictions</h2><p>No labels were given (or only one class is "
                    "present): predictions only.</p>")
        body.append('<div class="figs">' + _figure(fig_decisions_unlabelled(decision),
                                                   "Decision values.") + "</div>")
    body.append("<h2>Methods</h2><p>The frozen model (not retrained) was applied after the "
                "participants' modulated grey-matter maps went through the same feature "
                f"computation as at training ({manifest['features']['smoothing_fwhm']:g} mm "
                f"FWHM smoothing, {manifest['features']['analysis_resolution']:g} mm grid, the "
                "model's own mask). Metrics: Wilson intervals for proportions, DeLong for the "
                "AUC, stratified bootstrap for BAC and Brier; the permutation test permutes "
                "this cohort's labels with the model frozen.</p>")
    body.append("<h2>Model provenance</h2>" + _provenance(manifest))
    _render(path, title="ketabids: frozen-model prediction",
            subtitle=f"{len(predictions)} participants, label rule: {rule.describe()}",
            body="".join(body))
