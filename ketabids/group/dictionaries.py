"""Data dictionaries (JSON sidecars) of every group-level table and map.

BIDS describes a TSV with a JSON sidecar of the same name whose keys are the columns, each with
``LongName``, ``Description``, ``Units`` and, for coded columns, ``Levels``; a NIfTI sidecar
describes the image. :func:`sidecar_for` returns that dictionary for any file the group level
writes, so a reader (or a script) never has to guess what ``decision_sd``, ``n_correct``,
``proba`` or the coding of ``y_true`` mean, or the units of a map.

Terms used below:

* **feature**: the participant's Jacobian-modulated GM map (GM probability x Jacobian
  determinant: mL of native grey matter per mL of template space), smoothed, resampled to the
  analysis grid and masked; then, within each training fold, residualised on the covariates
  (and ComBat-harmonised / z-scored when those options are on).
* **decision value**: the linear SVC's ``w . x + b`` (positive = predicted responder). Its scale
  depends on C and the features: compare decision values within one analysis only.
* **out-of-fold**: computed by a model that did not see the participant (outer CV test fold).

The file names and columns are those written by :mod:`ketabids.group.train`
(``group/train/``) and :mod:`ketabids.group.predict` (``group/predict-<name>/``).
``permutations.tsv`` means different things in the two folders: pass the path (or ``mode``) to get
the right one.
"""
from __future__ import annotations

import copy
import re
from pathlib import PurePath

from ketabids.bids.derivatives import sidecar_name

__all__ = ["sidecar_for", "sidecar_name", "write_sidecars", "TABLES", "MAPS"]

_BINARY = {"0": "non-responder (negative class)", "1": "responder (positive class)"}
_PROB = "probability (0-1)"
_DEC = "arbitrary (SVC decision units)"

_Y_TRUE = {"LongName": "Observed label",
           "Description": "Label from participants.tsv as defined by the label rule of the "
                          "analysis (--target, or --response-from with --response-threshold); "
                          "see metrics.json or the model manifest for the rule.",
           "Levels": _BINARY}
_PID = {"LongName": "Participant identifier", "Description": "BIDS participant_id (sub-<label>)."}
_PREDICTED = {"LongName": "Predicted label",
              "Levels": _BINARY}

_METRIC_LEVELS = {
    "bac": "balanced accuracy = (sensitivity + specificity) / 2",
    "sensitivity": "true-positive rate: responders predicted responder / responders",
    "specificity": "true-negative rate: non-responders predicted non-responder / non-responders",
    "auc": "area under the ROC curve of the decision values (Mann-Whitney, ties count 1/2)",
    "ppv": "positive predictive value: responders among those predicted responder",
    "npv": "negative predictive value: non-responders among those predicted non-responder",
    "accuracy": "share of correct predictions (not balanced: depends on the class ratio)",
    "brier": "Brier score: mean squared difference between probability and label (lower is "
             "better)",
}

#: Column dictionaries of the group TSV files, by file name (train variant where both exist).
TABLES: dict[str, dict] = {
    "cohort.tsv": {
        "participant_id": _PID,
        "status": {"LongName": "Inclusion status",
                   "Description": "Whether the participant entered the analysis.",
                   "Levels": {"included": "in the analysis",
                              "excluded": "left out; the reason column says why"}},
        "reason": {"LongName": "Reason for exclusion",
                   "Description": "Why the participant was left out (no label, no map, not in "
                                  "participants.tsv, 'QC fail: ...', 'excluded by review "
                                  "(<exclusion file>): ...'); n/a when included."},
        "qc_verdict": {"LongName": "QC verdict",
                       "Description": "Verdict of the participant level's quality control for "
                                      "the scan (its desc-qc_metrics.json), as the group level's "
                                      "--qc-policy used it.",
                       "Levels": {"pass": "every QC rule passed",
                                  "warn": "at least one warning (kept; review it in qc.html)",
                                  "fail": "at least one failed rule or a processing error "
                                          "(left out unless --qc-policy warn or ignore)",
                                  "n/a": "no QC record, or --qc-policy ignore"}},
        "qc_reasons": {"LongName": "QC reasons",
                       "Description": "Reasons of a warn/fail QC verdict, separated by '; '; "
                                      "n/a for pass or without a QC record."},
        "label": {**_Y_TRUE, "LongName": "Label used", "Description": _Y_TRUE["Description"]
                  + " n/a for excluded participants or a prediction without labels."},
        "map": {"LongName": "Grey-matter map",
                "Description": "File name of the participant's space-<template> Jacobian-"
                               "modulated GM map (desc-modulated_probseg) that was used."},
        "site": {"LongName": "Site",
                 "Description": "Value of the --site-column of participants.tsv (stratification"
                                ", within-site permutations, ComBat)."},
    },
    "cv_predictions.tsv": {
        "participant_id": _PID,
        "y_true": _Y_TRUE,
        "decision": {"LongName": "Out-of-fold decision value (mean over repeats)",
                     "Description": "Mean over the CV repeats of the decision value given to "
                                    "this participant by the outer-fold model that did not see "
                                    "it. > 0 = predicted responder.", "Units": _DEC},
        "decision_sd": {"LongName": "SD of the out-of-fold decision value over repeats",
                        "Description": "Standard deviation (ddof = 1) across CV repeats of the "
                                       "out-of-fold decision value: how much the prediction of "
                                       "this participant depends on the random CV partition "
                                       "(0 with a single repeat).", "Units": _DEC},
        "proba": {"LongName": "Out-of-fold probability of response (mean over repeats)",
                  "Description": "Mean over the CV repeats of the out-of-fold probability of "
                                 "class 1, from the Platt sigmoid fitted within each outer "
                                 "training fold on inner-CV decision values.", "Units": _PROB},
        "predicted": {**_PREDICTED,
                      "Description": "Consensus prediction: 1 when the mean out-of-fold "
                                     "decision value is > 0."},
        "n_correct": {"LongName": "Repeats with a correct prediction",
                      "Description": "Number of CV repeats (out of --n-repeats) in which the "
                                     "out-of-fold prediction of this participant was correct.",
                      "Units": "count"},
    },
    "cv_folds.tsv": {
        "repeat": {"LongName": "CV repeat", "Description": "Index of the CV repeat (0-based)."},
        "fold": {"LongName": "Outer fold", "Description": "Index of the outer fold within its "
                                                          "repeat (0-based)."},
        "n_train": {"LongName": "Training participants", "Units": "count",
                    "Description": "Participants in the outer training set."},
        "n_test": {"LongName": "Test participants", "Units": "count",
                   "Description": "Participants in the outer test fold."},
        "n_train_pos": {"LongName": "Training responders", "Units": "count",
                        "Description": "Participants with label 1 in the outer training set."},
        "n_test_pos": {"LongName": "Test responders", "Units": "count",
                       "Description": "Participants with label 1 in the outer test fold."},
        "C": {"LongName": "Chosen C",
              "Description": "SVC regularisation parameter chosen by the inner CV of this "
                             "training set (highest mean inner BAC; ties: smallest C)."},
        "inner_bac": {"LongName": "Inner-CV balanced accuracy at the chosen C",
                      "Description": "Mean balanced accuracy over the inner folds for the "
                                     "chosen C (a selection score, optimistic: not a result).",
                      "Units": "proportion (0-1)"},
        "bac": {"LongName": "Balanced accuracy of this test fold", "Units": "proportion (0-1)",
                "Description": "Balanced accuracy on this outer test fold only (small folds "
                               "give coarse values; the pooled value is in metrics.tsv)."},
        "sensitivity": {"LongName": "Sensitivity of this test fold", "Units": "proportion (0-1)",
                        "Description": "n/a when the fold has no responder."},
        "specificity": {"LongName": "Specificity of this test fold", "Units": "proportion (0-1)",
                        "Description": "n/a when the fold has no non-responder."},
        "auc": {"LongName": "AUC of this test fold", "Units": "proportion (0-1)",
                "Description": "ROC AUC of the decision values in this fold; n/a with one class."},
        "brier": {"LongName": "Brier score of this test fold",
                  "Description": "Mean squared difference between out-of-fold probability and "
                                 "label in this fold.", "Units": "squared probability (0-1)"},
    },
    "metrics.tsv": {
        "metric": {"LongName": "Metric", "Description": "Classification metric.",
                   "Levels": _METRIC_LEVELS},
        "aggregation": {
            "LongName": "Aggregation",
            "Description": "Which predictions the estimate is computed from.",
            "Levels": {
                "pooled": "all out-of-fold predictions of all repeats together (the headline "
                          "statistic; the permutation p-value is for the pooled BAC and AUC)",
                "mean_over_repeats": "mean of the per-repeat values; its interval is the "
                                     "2.5-97.5 percentile range across repeats (CV-partition "
                                     "variability only, not a sampling interval)",
                "consensus": "one prediction per participant from the mean out-of-fold "
                             "decision value (cv_predictions.tsv)",
                "single": "one prediction per participant (frozen model applied to a cohort)",
            }},
        "estimate": {"LongName": "Point estimate",
                     "Description": "Value of the metric (proportions in 0-1, not %)."},
        "ci_low": {"LongName": "Lower bound of the 95% interval",
                   "Description": "Lower bound; the method column says how it was computed."},
        "ci_high": {"LongName": "Upper bound of the 95% interval",
                    "Description": "Upper bound; the method column says how it was computed."},
        "method": {"LongName": "Interval method",
                   "Description": "How the interval was computed: stratified subject-cluster "
                                  "bootstrap (pooled: a resampled participant brings all its "
                                  "repeats), across-repeat percentile, Wilson score "
                                  "(proportions), DeLong (AUC), stratified bootstrap over "
                                  "participants."},
    },
    "calibration.tsv": {
        "bin_low": {"LongName": "Lowest probability in the bin", "Units": _PROB,
                    "Description": "Quantile bins: participants sorted by probability and split "
                                   "into groups of (nearly) equal size (about 10 per bin, 2 to "
                                   "10 bins); this is the smallest probability in the group."},
        "bin_high": {"LongName": "Highest probability in the bin", "Units": _PROB,
                     "Description": "Largest probability in the quantile bin."},
        "n": {"LongName": "Participants in the bin", "Units": "count",
              "Description": "Participants in the quantile bin."},
        "mean_predicted": {"LongName": "Mean predicted probability", "Units": _PROB,
                           "Description": "Mean probability of response in the bin (train: "
                                          "out-of-fold probability averaged over repeats)."},
        "observed_rate": {"LongName": "Observed response rate", "Units": _PROB,
                          "Description": "Share of participants with label 1 in the bin."},
    },
    "permutations.tsv": {
        "permutation": {"LongName": "Permutation", "Description": "Index (1-based)."},
        "null_bac": {"LongName": "Pooled BAC under permuted labels", "Units": "proportion (0-1)",
                     "Description": "Pooled out-of-fold balanced accuracy of the whole nested CV "
                                    "re-run (folds, C selection, refits) with permuted labels "
                                    "(within site when a site column is given)."},
        "null_auc": {"LongName": "Pooled AUC under permuted labels", "Units": "proportion (0-1)",
                     "Description": "Pooled out-of-fold AUC of the same permuted re-run."},
    },
    "final_model_decisions.tsv": {
        "participant_id": _PID,
        "y_true": _Y_TRUE,
        "decision": {"LongName": "IN-SAMPLE decision value of the final model",
                     "Description": "Decision value of the final model (refitted on all "
                                    "participants) for its own training participants. In-sample"
                                    ": optimistic, NOT an estimate of performance; use "
                                    "cv_predictions.tsv for that. Kept to check the saved model "
                                    "(its hash is in the manifest).", "Units": _DEC},
        "proba": {"LongName": "IN-SAMPLE probability of response of the final model",
                  "Description": "Platt probability of class 1 from the final model for its own "
                                 "training participants (the sigmoid itself was fitted on CV "
                                 "decisions). In-sample: not a performance estimate.",
                  "Units": _PROB},
    },
    "regions.tsv": {
        "label": {"LongName": "Atlas label", "Description": "Label value in --atlas (0, the "
                                                            "background, is not listed)."},
        "name": {"LongName": "Region name", "Description": "From --atlas-labels (else the "
                                                           "label value)."},
        "n_voxels": {"LongName": "Analysis voxels in the region", "Units": "count",
                     "Description": "Voxels of the analysis mask carrying this label (atlas "
                                    "resampled to the analysis grid, nearest neighbour)."},
        "mean_pattern": {"LongName": "Mean Haufe pattern",
                         "Description": "Mean of the activation-pattern map over the region's "
                                        "voxels; rows are sorted by its absolute value. Positive "
                                        "= more GM goes with a responder prediction.",
                         "Units": "feature units per decision unit"},
        "sign": {"LongName": "Sign of the mean pattern",
                 "Levels": {"+": "more GM with response", "-": "less GM with response"}},
        "mean_weight": {"LongName": "Mean SVC weight", "Units": "decision units per feature "
                                                                "unit",
                        "Description": "Mean over the region of the mean outer-model weight "
                                       "map (weight statmap)."},
        "mean_cv_ratio": {"LongName": "Mean CV ratio", "Units": "unitless",
                          "Description": "Mean over the region of the cvratio statmap."},
        "mean_sign_consistency": {"LongName": "Mean sign consistency",
                                  "Units": "proportion (0-1)",
                                  "Description": "Mean over the region of the "
                                                 "signconsistency statmap."},
    },
    "predictions.tsv": {
        "participant_id": _PID,
        "decision": {"LongName": "Decision value of the frozen model",
                     "Description": "Decision value of the trained model (--model) for this "
                                    "participant, who was not in its training set. > 0 = "
                                    "predicted responder.", "Units": _DEC},
        "proba": {"LongName": "Probability of response",
                  "Description": "Platt probability of class 1 from the frozen model.",
                  "Units": _PROB},
        "predicted": {**_PREDICTED, "Description": "1 when the decision value is > 0."},
        "y_true": {**_Y_TRUE, "Description": _Y_TRUE["Description"] + " Present only when "
                   "this cohort has labels."},
    },
    "decision_curve.tsv": {
        "threshold": {"LongName": "Threshold probability", "Units": _PROB,
                      "Description": "Probability of response at or above which a clinician "
                                     "would treat (pt): treating a non-responder is weighed as "
                                     "pt / (1 - pt) of a responder treated. 0.01 to 0.99 in "
                                     "steps of 0.01; read the range of thresholds that is "
                                     "clinically sensible."},
        "net_benefit_model": {
            "LongName": "Net benefit of treating by the model",
            "Description": "TP/n - FP/n * pt/(1 - pt) when participants with a probability >= "
                           "pt are treated (Vickers & Elkin 2006). train: out-of-fold "
                           "probabilities, counts pooled over the CV repeats; predict: the "
                           "frozen model's probabilities. The model is useful at pt where this "
                           "exceeds both treat-all and treat-none.",
            "Units": "true positives per participant"},
        "net_benefit_treat_all": {
            "LongName": "Net benefit of treating everyone",
            "Description": "prevalence - (1 - prevalence) * pt/(1 - pt), prevalence = share of "
                           "responders in this cohort.",
            "Units": "true positives per participant"},
        "net_benefit_treat_none": {
            "LongName": "Net benefit of treating no one",
            "Description": "0 at every threshold (the reference).",
            "Units": "true positives per participant"},
    },
    "metrics_by_arm.tsv": {
        "arm": {"LongName": "Treatment arm",
                "Description": "Value of --arm-column; the first row is the treatment arm "
                               "(the one the model predicts response to), the second the "
                               "reference arm (metrics.json 'specificity')."},
        "n": {"LongName": "Participants", "Units": "count",
              "Description": "Participants of this arm with a prediction and a label."},
        "n_responders": {"LongName": "Responders", "Units": "count",
                         "Description": "Participants of this arm with label 1."},
        "n_nonresponders": {"LongName": "Non-responders", "Units": "count",
                            "Description": "Participants of this arm with label 0."},
        "n_predicted_responders": {"LongName": "Predicted responders", "Units": "count",
                                   "Description": "Participants of this arm whose decision "
                                                  "value is > 0 (predicted to respond)."},
        "bac": {"LongName": "Balanced accuracy in this arm", "Units": "proportion (0-1)",
                "Description": "(sensitivity + specificity) / 2 of the frozen model's "
                               "predictions in this arm; n/a when the arm lacks a class."},
        "bac_ci_low": {"LongName": "Lower bound of the 95% interval of bac",
                       "Units": "proportion (0-1)",
                       "Description": "Stratified bootstrap over the arm's participants "
                                      "(percentile)."},
        "bac_ci_high": {"LongName": "Upper bound of the 95% interval of bac",
                        "Units": "proportion (0-1)",
                        "Description": "Stratified bootstrap over the arm's participants "
                                       "(percentile)."},
        "auc": {"LongName": "AUC in this arm", "Units": "proportion (0-1)",
                "Description": "ROC AUC of the decision values in this arm; n/a when the arm "
                               "lacks a class."},
        "auc_ci_low": {"LongName": "Lower bound of the 95% interval of auc",
                       "Units": "proportion (0-1)", "Description": "DeLong interval."},
        "auc_ci_high": {"LongName": "Upper bound of the 95% interval of auc",
                        "Units": "proportion (0-1)", "Description": "DeLong interval."},
    },
    "specificity.tsv": {
        "analysis": {
            "LongName": "Analysis",
            "Description": "Comparison of the treatment arm with the reference arm "
                           "(metrics.json 'specificity' names both).",
            "Levels": {
                "bac_difference": "BAC(treatment arm) - BAC(reference arm)",
                "auc_difference": "AUC(treatment arm) - AUC(reference arm)",
                "interaction_log_odds": "coefficient of decision x arm in the logistic model "
                                        "response ~ z * arm (z = decision value in SD units, "
                                        "arm = 1 for the treatment arm): > 0 = the decision "
                                        "value predicts response more strongly in the "
                                        "treatment arm (a predictive, treatment-specific "
                                        "marker)",
                "slope_treatment_arm": "log odds ratio of response per SD of the decision "
                                       "value in the treatment arm (same model)",
                "slope_reference_arm": "log odds ratio of response per SD of the decision "
                                       "value in the reference arm (same model): clearly > 0 "
                                       "= the marker is (also) prognostic"}},
        "estimate": {"LongName": "Point estimate",
                     "Description": "Differences in proportion units (0.1 = 10 percentage "
                                    "points); logistic rows in log odds (ratio) units."},
        "ci_low": {"LongName": "Lower bound of the 95% interval",
                   "Description": "Differences: percentile bootstrap stratified by arm and "
                                  "label; interaction: profile (penalised) likelihood; slopes: "
                                  "Wald (detail says which)."},
        "ci_high": {"LongName": "Upper bound of the 95% interval",
                    "Description": "As ci_low."},
        "p_value": {"LongName": "p-value (two-sided)",
                    "Description": "Differences: permutation of the arm labels within label "
                                   "class, (1 + #|null| >= |observed|) / (1 + permutations); "
                                   "interaction: likelihood-ratio test of the model with vs "
                                   "without decision x arm; slopes: Wald."},
        "detail": {"LongName": "Method details",
                   "Description": "How the row was computed (resamples, permutations, model, "
                                  "maximum likelihood or Firth's penalised likelihood when an "
                                  "arm's classes are separated)."},
    },
}

# ---- CV schemes, C selection, site metrics and the site/confound audit -------------
TABLES["cv_folds.tsv"].update({
    "at_lower_edge": {"LongName": "C at the grid's lower edge",
                      "Description": "1 when the chosen C is the smallest value of the grid "
                                     "(the best C may be smaller still).",
                      "Levels": {"0": "no", "1": "yes"}},
    "at_upper_edge": {"LongName": "C at the grid's upper edge",
                      "Description": "1 when the chosen C is the largest value of the grid "
                                     "(the best C may be larger still).",
                      "Levels": {"0": "no", "1": "yes"}},
    "flat_inner_curve": {"LongName": "Flat inner-CV curve",
                         "Description": "1 when every C of the grid gave the same mean inner "
                                        "balanced accuracy: C was not chosen (the tie went to "
                                        "the smallest C).", "Levels": {"0": "no", "1": "yes"}},
    "n_best_C": {"LongName": "C values tied for best", "Units": "count",
                 "Description": "Number of grid values with the best mean inner balanced "
                                "accuracy (1 = a clear choice)."},
})
_CI = "bounds of the 95% interval (stratified bootstrap for BAC; DeLong for one prediction "\
    "per participant, subject-cluster bootstrap for pooled CV repeats, for AUC)"
TABLES["metrics_by_site.tsv"] = {
    "site": {"LongName": "Site", "Description": "Value of the site column (--site-column; at "
                                                "prediction the model's site column)."},
    "n": {"LongName": "Participants", "Units": "count",
          "Description": "Participants of this site in the analysis."},
    "n_responders": {"LongName": "Responders", "Units": "count",
                     "Description": "Participants of this site with label 1."},
    "n_nonresponders": {"LongName": "Non-responders", "Units": "count",
                        "Description": "Participants of this site with label 0."},
    "bac": {"LongName": "Balanced accuracy at this site", "Units": "proportion (0-1)",
            "Description": "Training: pooled out-of-fold predictions of all CV repeats of this "
                           "site's participants; prediction: the frozen model's predictions. "
                           "A site with one class: the recall of that class (no interval)."},
    "bac_ci_low": {"LongName": "BAC 95% interval, lower bound", "Units": "proportion (0-1)",
                   "Description": "Lower " + _CI + "; n/a when the site has one class."},
    "bac_ci_high": {"LongName": "BAC 95% interval, upper bound", "Units": "proportion (0-1)",
                    "Description": "Upper " + _CI + "; n/a when the site has one class."},
    "auc": {"LongName": "AUC at this site", "Units": "proportion (0-1)",
            "Description": "AUC of this site's decision values; n/a when the site has one "
                           "class."},
    "auc_ci_low": {"LongName": "AUC 95% interval, lower bound", "Units": "proportion (0-1)",
                   "Description": "Lower " + _CI + "."},
    "auc_ci_high": {"LongName": "AUC 95% interval, upper bound", "Units": "proportion (0-1)",
                    "Description": "Upper " + _CI + "."},
}
TABLES["audit.tsv"] = {
    "check": {"LongName": "Audit check",
              "Description": "What is checked (ketabids.group.audit): leave_site_out_bac, "
                             "response_rate_by_site, site_predictability, decision_vs_<variable> "
                             "(site, age, sex, TIV, QC metrics), qc_covariates_only_bac.",
              "Levels": {
                  "leave_site_out_bac": "balanced accuracy of the same nested CV with one site "
                                        "held out per outer fold (value) beside the headline "
                                        "balanced accuracy (reference)",
                  "response_rate_by_site": "p-value (value) of the difference in responder "
                                           "share between sites; reference 0.05",
                  "site_predictability": "balanced accuracy of predicting the site from the "
                                         "features (value); reference = chance, 1 / sites",
                  "decision_vs_site": "share of the out-of-fold decision's within-class "
                                      "variance between sites (eta squared, value); reference "
                                      "0.06",
                  "decision_vs_<variable>": "within-class Pearson correlation of the out-of-fold "
                                            "decision with the variable (value); reference 0.3",
                  "qc_covariates_only_bac": "balanced accuracy of the same nested CV on the QC "
                                            "metrics and covariates alone (value); reference "
                                            "0.5 = chance"}},
    "value": {"LongName": "Measured value",
              "Description": "The check's statistic (see the levels of 'check'); n/a when it "
                             "could not be computed (detail says why)."},
    "reference": {"LongName": "Reference value",
                  "Description": "What the value is judged against: the headline BAC, chance, "
                                 "a significance level or an effect-size threshold (see "
                                 "'check')."},
    "status": {"LongName": "Verdict", "Description": "Outcome of the check.",
               "Levels": {"pass": "nothing to report",
                          "warn": "a possible site or confound effect: read the detail; the "
                                  "warning is also in metrics.json audit_warnings and the log",
                          "info": "informative only (not computable, or not a problem alone)"}},
    "detail": {"LongName": "Detail", "Description": "One plain sentence: the figures behind the "
                                                    "verdict (intervals, p-values)."},
}


# The TRIPOD+AI checklist of a training run (ketabids.reports.study).
TABLES["tripod_ai.tsv"] = {
    "item": {"LongName": "TRIPOD+AI item",
             "Description": "Item number of the TRIPOD+AI checklist (Collins GS et al. 2024, "
                            "BMJ 385:e078378), e.g. 12c."},
    "section": {"LongName": "Checklist section",
                "Description": "Section of the article the item belongs to (Title, Abstract, "
                               "Introduction, Methods, Open science, Results, Discussion)."},
    "topic": {"LongName": "Item topic", "Description": "Topic of the item (e.g. Outcome)."},
    "text": {"LongName": "Item text", "Description": "What the item asks for (paraphrased; "
                                                     "the checklist itself is authoritative)."},
    "status": {"LongName": "Status",
               "Description": "Whether this run's own records answer the item.",
               "Levels": {"filled": "answered from the run's records (content, source)",
                          "to be written by the authors": "only the authors can answer it "
                          "(source points at records that help)"}},
    "content": {"LongName": "Content",
                "Description": "How the run's records answer the item; n/a when the item is "
                               "to be written by the authors."},
    "source": {"LongName": "Source",
               "Description": "File (and field) of this folder or OUTPUT_DIR the content comes "
                              "from, or that helps the authors; n/a when none."},
}

_PREDICT_PERMUTATIONS = {
    "permutation": TABLES["permutations.tsv"]["permutation"],
    "null_bac": {"LongName": "BAC under permuted labels", "Units": "proportion (0-1)",
                 "Description": "Balanced accuracy of the frozen model's predictions (fixed) "
                                "against permuted labels (within site when sites are known)."},
    "null_auc": {"LongName": "AUC under permuted labels", "Units": "proportion (0-1)",
                 "Description": "AUC of the frozen model's decision values against permuted "
                                "labels."},
}

_MAP_COMMON = ("Values inside the analysis mask on the analysis grid (template space; voxels "
               "outside the mask are 0).")

#: Sidecars of the group NIfTI maps, by ``desc`` (statmaps) or ``mask``.
MAPS: dict[str, dict] = {
    "weight": {
        "Description": "Mean linear-SVC weight map over all outer-fold models (n_repeats x "
                       "n_outer). " + _MAP_COMMON,
        "Units": "decision units per feature unit",
        "Aggregation": "mean over the outer-fold models of the repeated nested CV",
        "Computation": "w = V X per outer model (sample-space dual coefficients times the "
                       "in-fold preprocessed features); a filter, not a pattern: its sign and "
                       "size at a voxel do not say that GM there differs between groups (see "
                       "the pattern map)."},
    "cvratio": {
        "Description": "Cross-validation ratio of the weights (NeuroMiner): mean weight / "
                       "standard error over the outer-fold models. " + _MAP_COMMON,
        "Units": "unitless",
        "Aggregation": "over the outer-fold models",
        "Computation": "mean(w) / (SD(w) / sqrt(n_models)); the models share most training "
                       "participants, so this is a stability index, not a test statistic."},
    "signconsistency": {
        "Description": "Share of outer-fold models whose weight has the sign of the mean "
                       "weight. " + _MAP_COMMON,
        "Units": "proportion (0-1)",
        "Aggregation": "over the outer-fold models",
        "Computation": "mean(sign(w_m) == sign(mean w))"},
    "pattern": {
        "Description": "Haufe activation pattern of the final model (refitted on all "
                       "participants): how the features co-vary with its decision value. "
                       "Positive = more GM with a responder prediction. " + _MAP_COMMON,
        "Units": "feature units per decision unit",
        "Aggregation": "final model, all training participants",
        "Computation": "A = Cov(X, s) / Var(s) with s = X w, X the final model's preprocessed "
                       "features (Haufe et al. 2014, NeuroImage 87:96)."},
    "finalweight": {
        "Description": "Weight map of the final model refitted on all participants (the model "
                       "saved in ketabids_model.skops). " + _MAP_COMMON,
        "Units": "decision units per feature unit",
        "Aggregation": "final model, all training participants",
        "Computation": "coef_ of the final linear SVC (C chosen by inner CV on all "
                       "participants); a filter, not a pattern."},
    "mask": {
        "Type": "ROI",
        "Description": "Analysis mask: 1 = voxel used as a feature. Grey-matter mask defined "
                       "without labels: the template's GM prior on the analysis grid > 0.2 "
                       "(or, when the template grid does not match, the mean smoothed GM map of "
                       "all selected participants > 0.2; the manifest's mask_source says "
                       "which). The same mask is stored inside the .skops model.",
        "Units": "binary (0/1)",
        "Levels": {"0": "not analysed", "1": "analysed voxel (feature)"}},
}

_STATMAP_RE = re.compile(r"(?:^|_)desc-(?P<desc>[a-z0-9]+)_statmap\.nii(?:\.gz)?$")
_SPACE_RE = re.compile(r"(?:^|_)space-(?P<space>[A-Za-z0-9]+)")
_MASK_RE = re.compile(r"(?:^|_)mask\.nii(?:\.gz)?$")
_INDICATOR_RE = re.compile(r"^(?P<name>.+)\[(?P<level>.+)\]$")


def _mode_of(path: PurePath, mode: str | None) -> str:
    if mode is not None:
        if mode not in ("train", "predict"):
            raise ValueError(f"mode {mode!r}: 'train' or 'predict'")
        return mode
    return "predict" if path.parent.name.startswith("predict") else "train"


def _column_entry(column: str) -> dict:
    """Covariate and other run-dependent columns of cohort.tsv."""
    match = _INDICATOR_RE.match(column)
    if match:
        return {"LongName": f"Covariate {match['name']} = {match['level']}",
                "Description": f"Indicator (1/0) of level '{match['level']}' of the categorical "
                               f"covariate '{match['name']}' (reference level: the first in "
                               "sorted order), as entered in the in-fold covariate regression.",
                "Levels": {"0": "other level", "1": match["level"]}}
    if column == "tiv":
        return {"LongName": "Total intracranial volume",
                "Description": "Covariate from the participant level's desc-volumes_morph.tsv "
                               "(tiv_ml).", "Units": "mL"}
    return {"LongName": f"Covariate {column}",
            "Description": f"Numeric covariate '{column}' from participants.tsv as entered in the "
                           "in-fold covariate regression (units as in participants.tsv)."}


def sidecar_for(filename: str, *, columns=None, mode: str | None = None,
                template: str | None = None, resolution: float | None = None) -> dict:
    """The JSON sidecar (a new dict) of a group-level TSV or NIfTI map.

    ``filename`` may be a path: a ``predict-*`` parent folder selects the prediction meaning of
    ``permutations.tsv`` (or give ``mode``). ``columns`` (the TSV's header) restricts the
    dictionary to those columns and adds entries for run-dependent ones (covariates in
    cohort.tsv); a column no rule covers is an error, so nothing is written undescribed.
    ``template``/``resolution`` go into map sidecars (``SpatialReference``, ``Resolution``).

    >>> sidecar_for("group/predict-ext/permutations.tsv")["null_bac"]["LongName"]
    'BAC under permuted labels'
    >>> sidecar_for("cohort.tsv", columns=["participant_id", "sex[M]"])["sex[M]"]["Levels"]
    {'0': 'other level', '1': 'M'}
    """
    path = PurePath(filename)
    name = path.name
    if name.endswith(".tsv"):
        if name not in TABLES:
            raise KeyError(f"{name}: no data dictionary; add one to ketabids.group.dictionaries")
        table = TABLES[name]
        if name == "permutations.tsv" and _mode_of(path, mode) == "predict":
            table = _PREDICT_PERMUTATIONS
        if columns is None:
            return copy.deepcopy(table)
        out = {}
        for column in columns:
            if column in table:
                out[column] = copy.deepcopy(table[column])
            elif name == "cohort.tsv":
                out[column] = _column_entry(column)
            else:
                raise KeyError(f"{name}: column {column!r} has no description; add it to "
                               "ketabids.group.dictionaries")
        return out
    statmap = _STATMAP_RE.search(name)
    key = statmap["desc"] if statmap else ("mask" if _MASK_RE.search(name) else None)
    if key is None or key not in MAPS:
        raise KeyError(f"{name}: no sidecar; add one to ketabids.group.dictionaries")
    out = copy.deepcopy(MAPS[key])
    space = _SPACE_RE.search(name)
    template = template or (space["space"] if space else None)
    if template:
        out["SpatialReference"] = template
    if resolution is not None:
        out["Resolution"] = f"{float(resolution):g} mm isotropic analysis grid"
    return out


def write_sidecars(folder, *, mode: str, template: str | None = None,
                   resolution: float | None = None) -> list:
    """Write the JSON sidecar of every ``.tsv`` and NIfTI file in ``folder`` (a group output
    folder, before it is published); returns the sidecar paths.

    TSV sidecars describe exactly the file's header columns (:func:`sidecar_for` with
    ``columns``), so an undescribed column is an error rather than a silent gap. A JSON file of
    that name written before (``metrics.json``: the headline result, settings) keeps its keys;
    the column descriptions are added to it.
    """
    import json
    from pathlib import Path

    from ketabids.io import write_json

    written = []
    for path in sorted(Path(folder).iterdir()):
        name = path.name
        if not (name.endswith(".tsv") or name.endswith(".nii.gz") or name.endswith(".nii")):
            continue
        if name.endswith(".tsv"):
            with open(path, encoding="utf-8") as handle:
                columns = handle.readline().rstrip("\n").split("\t")
            sidecar = sidecar_for(name, columns=columns, mode=mode)
        else:
            sidecar = sidecar_for(name, mode=mode, template=template, resolution=resolution)
        target = path.with_name(sidecar_name(name))
        if target.is_file():
            sidecar.update(json.loads(target.read_text()))
        write_json(target, sidecar)
        written.append(target)
    return written
