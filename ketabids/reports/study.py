"""The study report of a training run: a TRIPOD+AI checklist and a model card, from the run's own
records.

:func:`write_study_report` reads the files of a finished (staged) ``group/train`` folder --
``metrics.json``, the model manifest ``ketabids_model.json``, ``cohort.tsv``, ``cv_folds.tsv``,
``calibration.tsv`` and, when the run wrote them, ``metrics_by_site.tsv``, ``audit.tsv`` and
``decision_curve.tsv`` -- and writes next to them:

``tripod_ai.tsv``
    One row per item of the TRIPOD+AI checklist (Collins et al. 2024, BMJ 385:e078378; item
    texts paraphrased): ``item, section, topic, text, status, content, source``. ``status`` is
    ``filled`` when the run's records answer the item (``content`` says how, ``source`` names
    the file or field it comes from), else ``to be written by the authors`` (what only the
    authors know: context, ethics, funding, interpretation...), with ``source`` pointing at the
    records that help write it.
``model_card.md``
    Intended use and what the model must not be used for, training data and exclusions,
    metrics overall (the numbers of ``metrics.json``, 3 decimals) and per site, calibration,
    the audit's and the C selection's warnings, caveats.

Nothing here recomputes a result: every number is read from the run's files, so the checklist
and the card cannot disagree with the report or ``metrics.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ketabids.bids.derivatives import MANIFEST_NAME
from ketabids.io import atomic_write_text, write_tsv

__all__ = ["write_study_report", "tripod_ai_rows", "model_card", "TRIPOD_AI_ITEMS",
           "AUTHORS", "FILLED"]

FILLED = "filled"
AUTHORS = "to be written by the authors"
TRIPOD_COLUMNS = ["item", "section", "topic", "text", "status", "content", "source"]

#: TRIPOD+AI items (Collins GS et al. 2024, BMJ 385:e078378), texts paraphrased:
#: (item, section, topic, text).
TRIPOD_AI_ITEMS = [
    ("1", "Title", "Title", "Identify the study as developing or evaluating a multivariable "
     "prediction model, the target population and the outcome."),
    ("2", "Abstract", "Abstract", "See the TRIPOD+AI for Abstracts checklist."),
    ("3a", "Introduction", "Background", "Healthcare context and rationale for developing or "
     "evaluating the model, including existing models."),
    ("3b", "Introduction", "Background", "Target population and intended purpose of the model "
     "in the care pathway, including its intended users."),
    ("3c", "Introduction", "Background", "Known health inequalities between sociodemographic "
     "groups."),
    ("4", "Introduction", "Objectives", "Study objectives, including whether the study develops "
     "or evaluates a model (or both)."),
    ("5a", "Methods", "Data", "Sources of data, separately for development and evaluation "
     "data, the rationale for using them and their representativeness."),
    ("5b", "Methods", "Data", "Dates of the data: start and end of accrual, end of follow-up."),
    ("6a", "Methods", "Participants", "Study setting, number and location of centres."),
    ("6b", "Methods", "Participants", "Eligibility criteria of the participants."),
    ("6c", "Methods", "Participants", "Treatments received and how they were handled."),
    ("7", "Methods", "Data preparation", "Data pre-processing and quality checking, and "
     "whether they were similar across sociodemographic groups."),
    ("8a", "Methods", "Outcome", "Definition of the outcome and its time horizon, how and when "
     "it was assessed, and why it was chosen."),
    ("8b", "Methods", "Outcome", "Qualifications and demographics of outcome assessors when "
     "the assessment is subjective."),
    ("8c", "Methods", "Outcome", "Actions to blind the assessment of the outcome."),
    ("9a", "Methods", "Predictors", "Choice of the initial predictors and any pre-selection "
     "before modelling."),
    ("9b", "Methods", "Predictors", "Definition of every predictor, how and when it was "
     "measured (and blinding)."),
    ("9c", "Methods", "Predictors", "Qualifications and demographics of predictor assessors "
     "when the measurement is subjective."),
    ("10", "Methods", "Sample size", "How the study size was arrived at and why it suffices."),
    ("11", "Methods", "Missing data", "How missing data were handled; reasons for omitting "
     "data."),
    ("12a", "Methods", "Analytical methods", "How the data were used (development, "
     "evaluation), including any partitioning."),
    ("12b", "Methods", "Analytical methods", "How predictors were handled (functional form, "
     "rescaling, transformation, standardisation)."),
    ("12c", "Methods", "Analytical methods", "Type of model, rationale, all model-building "
     "steps including hyper-parameter tuning, and the internal validation method."),
    ("12d", "Methods", "Analytical methods", "How heterogeneity of parameters and performance "
     "across clusters (e.g. centres) was handled and quantified."),
    ("12e", "Methods", "Analytical methods", "Every measure and plot used to evaluate "
     "performance (discrimination, calibration, clinical utility) and why."),
    ("12f", "Methods", "Analytical methods", "Any model updating (e.g. recalibration) arising "
     "from the evaluation."),
    ("12g", "Methods", "Analytical methods", "For evaluation, how the model's predictions were "
     "calculated (formula, code, object, interface)."),
    ("13", "Methods", "Class imbalance", "Class-imbalance methods, why and how, and any "
     "recalibration."),
    ("14", "Methods", "Fairness", "Approaches used to address model fairness and their "
     "rationale."),
    ("15", "Methods", "Model output", "Output of the model (probabilities, classes) and how any "
     "classification threshold was chosen."),
    ("16", "Methods", "Training versus evaluation", "Differences between development and "
     "evaluation data (setting, eligibility, outcome, predictors)."),
    ("17", "Methods", "Ethical approval", "Ethics committee and informed consent (or waiver)."),
    ("18a", "Open science", "Funding", "Sources of funding and the funders' role."),
    ("18b", "Open science", "Conflicts of interest", "Conflicts of interest and financial "
     "disclosures."),
    ("18c", "Open science", "Protocol", "Where the protocol can be accessed, or that none was "
     "prepared."),
    ("18d", "Open science", "Registration", "Registration name and number, or that the study "
     "was not registered."),
    ("18e", "Open science", "Data sharing", "Availability of the study data."),
    ("18f", "Open science", "Code sharing", "Availability of the analysis code."),
    ("19", "Open science", "Patient and public involvement", "Patient and public involvement, "
     "or its absence."),
    ("20a", "Results", "Participants", "Flow of participants, with the numbers with and "
     "without the outcome."),
    ("20b", "Results", "Participants", "Characteristics overall and per data source or "
     "setting: predictors, sample size, outcome events, missing data."),
    ("20c", "Results", "Participants", "For evaluation, the distribution of important "
     "predictors compared with the development data."),
    ("21", "Results", "Model development", "Number of participants and outcome events in each "
     "analysis (development, tuning, evaluation)."),
    ("22", "Results", "Model specification", "The full model (formula, code, object) allowing "
     "predictions in new individuals, and any access restrictions."),
    ("23a", "Results", "Model performance", "Performance estimates with confidence intervals, "
     "including key subgroups."),
    ("23b", "Results", "Model performance", "Heterogeneity of performance across clusters, if "
     "examined."),
    ("24", "Results", "Model updating", "Results of any model updating and the updated "
     "model's performance."),
    ("25", "Discussion", "Interpretation", "Overall interpretation of the results, including "
     "fairness, in the context of the objectives and previous studies."),
    ("26", "Discussion", "Limitations", "Limitations (sample, size, overfitting, missing data) "
     "and their effect on bias, uncertainty and generalisability."),
    ("27a", "Discussion", "Usability", "How poor-quality or unavailable input data should be "
     "assessed and handled when the model is used."),
    ("27b", "Discussion", "Usability", "Whether users interact with the input data or the "
     "model, and the expertise they need."),
    ("27c", "Discussion", "Usability", "Next steps for research, with a view to applicability "
     "and generalisability."),
]


# ----------------------------------------------------------------------------- reading
def _read_json(folder: Path, name: str) -> dict:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_tsv(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / name
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


class _Run:
    """The records of one training run (read once)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.metrics = _read_json(self.folder, "metrics.json")
        self.manifest = _read_json(self.folder, MANIFEST_NAME)
        self.manifest_name = MANIFEST_NAME
        self.cohort = _read_tsv(self.folder, "cohort.tsv")
        self.folds = _read_tsv(self.folder, "cv_folds.tsv")
        self.calibration = _read_tsv(self.folder, "calibration.tsv")
        self.by_site = _read_tsv(self.folder, "metrics_by_site.tsv")
        self.audit = _read_tsv(self.folder, "audit.tsv")
        self.decision_curve = _read_tsv(self.folder, "decision_curve.tsv")
        self.headline = self.metrics.get("headline") or {}
        self.summary = self.metrics.get("summary") or {}

    # small accessors ------------------------------------------------------------------
    def interval(self, metric: str, aggregation: str = "pooled") -> dict | None:
        return ((self.summary.get("intervals") or {}).get(metric) or {}).get(aggregation)

    @property
    def site_column(self):
        return (self.manifest.get("site") or {}).get("column")

    @property
    def sites(self) -> list:
        return list((self.manifest.get("site") or {}).get("training_sites") or [])

    def label_rule(self) -> str:
        from ketabids.reports.group import _label_text

        labels = self.manifest.get("labels")
        return _label_text(labels) if labels else "n/a"

    def methods(self) -> str:
        from ketabids.reports.citation import group_methods, settings_from_manifest

        perm = self.metrics.get("permutation") or {}
        return group_methods(settings_from_manifest(
            self.manifest, n_permutations=int(perm.get("n_permutations") or 0),
            label_rule=self.label_rule()))

    def excluded(self) -> list[dict]:
        return list(self.metrics.get("excluded") or [])

    def c_selection(self) -> dict | None:
        block = self.metrics.get("c_selection")
        if block:
            return block
        grid = (self.manifest.get("cv") or {}).get("C_grid")
        if self.folds is None or not grid:
            return None
        from ketabids.reports.group import c_selection_summary

        return c_selection_summary(self.folds, grid)

    def warnings(self) -> list[str]:
        out = []
        if self.headline.get("warning"):
            out.append(str(self.headline["warning"]))
        out += [str(w) for w in self.metrics.get("audit_warnings") or []]
        c = self.c_selection()
        if c and c.get("warning"):
            out.append(str(c["warning"]))
        return out


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f} %"


def _f3(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if value != value else f"{value:.3f}"


# -------------------------------------------------------------------------- TRIPOD+AI
def tripod_ai_rows(folder) -> pd.DataFrame:
    """The TRIPOD+AI checklist of the training run in ``folder`` (columns
    :data:`TRIPOD_COLUMNS`): the items the run's records answer are ``filled``, with what
    answers them and where it comes from; the others are ``to be written by the authors``."""
    run = _Run(folder)
    m, h = run.manifest, run.headline
    cv, feats = m.get("cv") or {}, m.get("features") or {}
    site = m.get("site") or {}
    n, n_resp = h.get("n", m.get("training", {}).get("n")), h.get("n_responders")
    excluded = run.excluded()
    qc = m.get("qc") or {}
    filled: dict[str, tuple[str, str]] = {}

    filled["4"] = (
        "Development of a model for the label rule below with internal validation by "
        f"{cv.get('n_repeats')} x repeated nested cross-validation (no external evaluation "
        "in this run; see group/predict-* for evaluations).", "metrics.json: settings")
    filled["5a"] = (
        f"Development data: {len(run.cohort) if run.cohort is not None else 'n/a'} "
        "candidate participants of the BIDS dataset (participants.tsv) with the participant "
        "level's modulated grey-matter maps; the authors add rationale and representativeness.",
        "cohort.tsv")
    if run.sites:
        filled["6a"] = (f"{len(run.sites)} site(s) ({site.get('column')}: "
                        f"{', '.join(map(str, run.sites))}).",
                        f"{run.manifest_name}: site.training_sites; cohort.tsv")
    include = (m.get("labels") or {}).get("include") or []
    filled["6b"] = (
        "Rows selected by " + (", ".join(include) if include else "no row filter")
        + f"; a label and a map required; QC gate --qc-policy {qc.get('policy', 'n/a')}"
        + (" with an exclusion file" if qc.get("exclude_file_sha256") else "")
        + ". Clinical eligibility: the authors.", "metrics.json: qc, excluded; cohort.tsv")
    filled["7"] = (
        "Participant level: bias correction, brain extraction, tissue segmentation, "
        "normalisation to the template, Jacobian modulation; automatic QC rules with a "
        "verdict per scan (qc.tsv, qc.html); group-level QC gate as in 6b. Not compared "
        "across sociodemographic groups by the tool.",
        f"{run.manifest_name}: pipeline, qc; qc.tsv; logs/*/CITATION.md")
    filled["8a"] = (f"{run.label_rule()} (from participants.tsv).",
                    f"{run.manifest_name}: labels")
    filled["9a"] = (
        f"All {feats.get('n_voxels', 'n/a')} voxels of the {feats.get('mask_source', 'n/a')} "
        "grey-matter mask; no voxel pre-selection"
        + (f"; covariates {', '.join(m['covariates']['names'])} regressed out within folds"
           if (m.get("covariates") or {}).get("names") else "") + ".",
        f"{run.manifest_name}: features, covariates")
    filled["9b"] = (
        f"Jacobian-modulated grey-matter maps in {m.get('template')} space, smoothed "
        f"{feats.get('smoothing_fwhm', 'n/a')} mm FWHM, resampled to "
        f"{feats.get('analysis_resolution', 'n/a')} mm, masked at "
        f"{feats.get('mask_threshold', 'n/a')}; measured on the pre-treatment T1w.",
        f"{run.manifest_name}: features")
    filled["11"] = (
        f"{len(excluded)} candidate(s) left out (no label, no map, QC, review), each with "
        "its reason; no imputation.", "cohort.tsv; metrics.json: excluded")
    filled["12a"] = (
        f"All {n} participants used for development; performance by "
        f"{cv.get('n_repeats')} x {cv.get('n_outer')}-fold outer cross-validation, "
        f"{cv.get('n_inner')}-fold inner CV for tuning (CV scheme hash "
        f"{str(cv.get('cv_hash', ''))[:16]}).", "metrics.json: settings; cv_folds.tsv")
    filled["12b"] = (
        "Voxel values as in 9b; covariates residualised within each training fold"
        + ("; ComBat site harmonisation within folds" if site.get("combat") else "")
        + ("; features z-scored within folds" if cv.get("standardize") else "") + ".",
        f"{run.manifest_name}: covariates, site, cv")
    filled["12c"] = (
        "Linear support-vector classifier (class weights balanced), C tuned over "
        f"{cv.get('C_grid')} by inner CV balanced accuracy; final model refitted on all "
        f"participants (C = {cv.get('final_C')}); internal validation by repeated nested CV "
        "and a permutation test of the whole procedure.", "metrics.json: settings")
    if run.sites:
        filled["12d"] = (
            "Performance per site" + (" (metrics_by_site.tsv)" if run.by_site is not None
                                      else " (report, Per site)")
            + (f"; ComBat harmonisation of {site.get('column')}" if site.get("combat") else "")
            + (f"; outer CV {run.metrics['cv_scheme'].get('outer')}"
               if isinstance(run.metrics.get("cv_scheme"), dict) else "") + ".",
            "metrics_by_site.tsv" if run.by_site is not None else "report.html#sites")
    measures = ("balanced accuracy (headline, pooled out-of-fold), sensitivity, specificity, "
                "ROC AUC, PPV, NPV, Brier score with 95 % intervals; permutation test; "
                "reliability diagram")
    if run.decision_curve is not None:
        measures += "; decision curve (net benefit)"
    filled["12e"] = (measures + ".", "metrics.tsv; calibration.tsv; permutations.tsv"
                     + ("; decision_curve.tsv" if run.decision_curve is not None else ""))
    filled["12f"] = ("No updating: the model is frozen after training (probabilities from a "
                     "Platt sigmoid fitted at training).", run.manifest_name)
    filled["12g"] = ("Predictions of new participants: ketabids group predict with the saved "
                     "model (decision = w . x + b on the same features).",
                     f"ketabids_model.skops; {run.manifest_name}")
    filled["13"] = ("Class weights inversely proportional to class frequency in every fit; "
                    "headline is balanced accuracy; no resampling.",
                    f"{run.manifest_name}: estimator_class")
    filled["15"] = ("Decision value (> 0: predicted responder, threshold fixed at 0, not "
                    "tuned) and Platt probability of response.",
                    "cv_predictions.tsv; final_model_decisions.tsv")
    software = m.get("software") or {}
    filled["18f"] = (f"ketabids {software.get('ketabids', 'n/a')} (open source); software "
                     "versions of the run recorded.", f"{run.manifest_name}: software; logs/")
    filled["20a"] = (
        f"{len(run.cohort) if run.cohort is not None else 'n/a'} candidates, "
        f"{len(excluded)} left out, {n} analysed: {n_resp} responders, "
        f"{h.get('n_nonresponders')} non-responders.", "cohort.tsv; metrics.json: headline")
    filled["20b"] = ("Per participant: label, site, covariates and inclusion status; per site "
                     "counts in the report.", "cohort.tsv")
    if run.folds is not None and len(run.folds):
        sizes = run.folds["n_test"]
        fold_text = f"; outer test folds of {int(sizes.min())}-{int(sizes.max())} participants"
    else:
        fold_text = ""
    filled["21"] = (f"Development and tuning: n = {n} ({n_resp} responders){fold_text}.",
                    "metrics.json: headline; cv_folds.tsv")
    filled["22"] = ("The full model (coefficients, intercept, Platt parameters, mask, feature "
                    "settings) as a skops file with its manifest; weight and pattern maps as "
                    "NIfTI.", f"ketabids_model.skops; {run.manifest_name}; *_statmap.nii.gz")
    if h.get("text"):
        filled["23a"] = (
            f"{h['text']}; AUC {_f3((run.interval('auc') or {}).get('estimate'))}.",
            "metrics.tsv; metrics.json: headline, summary")
    if run.sites:
        filled["23b"] = ("Per-site performance" + (" with intervals"
                                                   if run.by_site is not None else ""),
                         "metrics_by_site.tsv" if run.by_site is not None
                         else "report.html#sites")
    filled["24"] = ("Not applicable: no model updating.", run.manifest_name)
    filled["27a"] = ("Scans are checked by automatic QC rules (verdict pass / warn / fail); "
                     "--qc-policy decides whether failing scans are left out; reviewers rate "
                     "scans in qc.html and pass an exclusion file.",
                     "qc.tsv; qc.html; metrics.json: qc")
    filled["27b"] = ("Users run a BIDS-App on T1w images; a rater trained to read T1w images "
                     "reviews the QC pages; the model needs no other input.", "README")

    pointers = {
        "1": "model_card.md", "2": "metrics.json: headline.text", "3b": "model_card.md",
        "10": "metrics.json: headline (n, responders; warning below 10 per class)",
        "16": "group/predict-*/report.html", "20c": "group/predict-*/cohort.tsv",
        "25": "report.html; model_card.md", "26": "model_card.md: Warnings, Caveats",
        "14": "audit.tsv" if run.audit is not None else "cohort.tsv (covariates)",
        "17": "n/a", "18e": "n/a", "5b": "participants.tsv (authors' records)",
    }
    rows = []
    for item, section, topic, text in TRIPOD_AI_ITEMS:
        if item in filled:
            content, source = filled[item]
            rows.append((item, section, topic, text, FILLED, content, source))
        else:
            rows.append((item, section, topic, text, AUTHORS, "n/a", pointers.get(item, "n/a")))
    return pd.DataFrame(rows, columns=TRIPOD_COLUMNS)


# ---------------------------------------------------------------------------- model card
def _md_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def model_card(folder) -> str:
    """``model_card.md`` of the training run in ``folder`` (Markdown): every number read from
    ``metrics.json`` (3 decimals), per-site rows from ``metrics_by_site.tsv`` when present."""
    run = _Run(folder)
    m, h = run.manifest, run.headline
    cv, feats, site = m.get("cv") or {}, m.get("features") or {}, m.get("site") or {}
    software = m.get("software") or {}
    perm = run.metrics.get("permutation") or {}
    excluded = run.excluded()
    lines = [
        "# Model card: ketabids ketamine-response classifier", "",
        f"Generated by ketabids {software.get('ketabids', 'n/a')} from the records of this "
        "training run (`metrics.json`, `ketabids_model.json`, `cohort.tsv`); every number "
        "below is copied from `metrics.json`.", "",
        "## Model details", "",
        f"- Type: linear support-vector classifier on {feats.get('n_voxels', 'n/a')} voxels "
        f"of Jacobian-modulated grey matter ({m.get('template')}, "
        f"{feats.get('analysis_resolution', 'n/a')} mm grid, {feats.get('smoothing_fwhm')} mm "
        f"FWHM), C = {cv.get('final_C')}, class weights balanced.",
        "- Output: decision value (> 0 = predicted responder) and Platt probability.",
        f"- Files: `ketabids_model.skops` (SHA-256 {str(m.get('model_sha256', 'n/a'))[:16]}), "
        f"manifest `{run.manifest_name}`, created {m.get('created', 'n/a')}.",
        f"- Covariates: {', '.join((m.get('covariates') or {}).get('names') or []) or 'none'}; "
        f"site column: {site.get('column') or 'none'}; ComBat: {site.get('combat')}.", "",
        "## Intended use", "",
        "- Research on whether pre-treatment brain structure predicts response "
        f"({run.label_rule()}) in adults with treatment-resistant depression, and external "
        "validation of that prediction on new cohorts scanned and processed the same way "
        "(ketabids participant level, T1w MRI).",
        "- Users: imaging researchers, reading the predictions together with the training "
        "report, the QC pages and the caveats below.", "",
        "## Must not be used for", "",
        "- Deciding whether an individual patient receives ketamine, or any clinical decision: "
        "the model is not a medical device and has not been evaluated prospectively.",
        "- Populations, outcomes, treatments or image types other than those it was trained "
        "on (children, other diagnoses, other response definitions, non-T1w or other "
        "pipelines) without a new validation.",
        "- Scans that failed quality control, or sites whose effect the model has not seen, "
        "without checking performance there first.", "",
        "## Training data", "",
        f"- n = {h.get('n', 'n/a')} participants ({h.get('n_responders', 'n/a')} responders, "
        f"{h.get('n_nonresponders', 'n/a')} non-responders); label rule: {run.label_rule()}.",
        f"- Sites: {', '.join(map(str, run.sites)) if run.sites else 'not given'}.",
        f"- Left out: {len(excluded)} candidate(s)"
        + (": " + "; ".join(f"{e.get('participant_id')} ({e.get('reason')})"
                            for e in excluded[:20]) + (" ..." if len(excluded) > 20 else "")
           if excluded else "") + " (all in `cohort.tsv`).",
        f"- QC gate: --qc-policy {(m.get('qc') or {}).get('policy', 'n/a')}.", "",
        "## Metrics", "",
        f"Headline: {h.get('text', 'n/a')}.", "",
    ]
    rows = []
    for metric in ("bac", "sensitivity", "specificity", "auc", "ppv", "npv", "brier"):
        block = run.interval(metric)
        if block:
            rows.append((metric, "pooled", _f3(block.get("estimate")), _f3(block.get("ci_low")),
                         _f3(block.get("ci_high"))))
    if rows:
        lines += [_md_table(pd.DataFrame(rows, columns=["metric", "aggregation", "estimate",
                                                        "ci_low", "ci_high"])), ""]
    if perm:
        lines += [f"Permutation test ({perm.get('n_permutations')} permutations of the whole "
                  f"nested CV): p (BAC) = {_f3(run.summary.get('p_bac'))}, p (AUC) = "
                  f"{_f3(run.summary.get('p_auc'))}.", ""]
    lines += ["Estimates are out-of-fold (repeated nested cross-validation), proportions "
              "between 0 and 1; all aggregations in `metrics.tsv`.", "",
              "### Per site", ""]
    if run.by_site is not None:
        lines += [_md_table(run.by_site.fillna("n/a")), "", "From `metrics_by_site.tsv`.", ""]
    elif run.sites:
        lines += ["Per-site point estimates are in the training report (section Per site); "
                  "this run wrote no `metrics_by_site.tsv`.", ""]
    else:
        lines += ["No site column was given: performance per site is unknown.", ""]
    lines += ["## Calibration", ""]
    brier = run.interval("brier")
    if brier:
        lines.append(f"- Brier score {_f3(brier.get('estimate'))} (95 % CI "
                     f"{_f3(brier.get('ci_low'))}-{_f3(brier.get('ci_high'))}).")
    if run.calibration is not None and len(run.calibration):
        cal = run.calibration
        lines.append(f"- Reliability over {len(cal)} bins of out-of-fold probabilities "
                     "(`calibration.tsv`): mean predicted vs observed rate "
                     + ", ".join(f"{_f3(p)}/{_f3(o)}" for p, o in
                                 zip(cal["mean_predicted"], cal["observed_rate"])) + ".")
    lines += ["- Probabilities come from a Platt sigmoid fitted at training; recalibrate on a "
              "new cohort before reading them as risks.", "", "## Warnings", ""]
    warnings = run.warnings()
    lines += [f"- {w}" for w in warnings] if warnings else ["- None raised by this run."]
    if run.audit is not None:
        lines += ["", "Audit checks (`audit.tsv`):", "",
                  _md_table(run.audit.astype(object).fillna("n/a"))]
    lines += ["", "## Caveats", "",
              "- Cross-validated estimates from one cohort are optimistic for other scanners "
              "and populations; external validation (ketabids group predict on an independent "
              "cohort) is the test.",
              "- With about 100 participants, cross-validated accuracy carries roughly "
              "+/- 10 % error (Varoquaux 2018): read the interval, not the point.",
              "- A prediction specific to ketamine should be at chance in a control (placebo / "
              "saline) arm; check with a specificity analysis before interpreting it as a "
              "treatment-response marker.",
              "- Weight maps are not activation patterns; read the Haufe pattern map "
              "(`space-*_desc-pattern_statmap.nii.gz`).", "",
              "## Methods (from the run)", "", run.methods(), ""]
    return "\n".join(lines)


def write_study_report(folder) -> list[Path]:
    """Write ``tripod_ai.tsv`` and ``model_card.md`` into the training output ``folder`` (after
    ``metrics.json`` and the manifest are written, before the sidecars). Returns their paths."""
    folder = Path(folder)
    tripod = folder / "tripod_ai.tsv"
    write_tsv(tripod_ai_rows(folder), tripod)
    card = folder / "model_card.md"
    atomic_write_text(card, model_card(folder))
    return [tripod, card]
