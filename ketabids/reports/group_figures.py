"""Figures of the group reports (training and prediction), as PNG data URIs.

Drawn with matplotlib (Agg) and nilearn through the shared helpers of
:mod:`ketabids.reports.figures`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ketabids.reports.figures import png_uri, pyplot

__all__ = ["fig_roc", "fig_confusion", "fig_permutation", "fig_decisions",
           "fig_decisions_unlabelled", "fig_reliability", "fig_brain", "fig_slices"]


def fig_roc(y, decision_rows, *, label=None) -> str:
    """ROC of all rows of ``decision_rows`` pooled (bold; AUC = the pooled AUC of the metrics
    table, 3 decimals) and of each row (thin, when there are several)."""
    from sklearn.metrics import roc_curve

    from ketabids.group.metrics import roc_auc

    plt = pyplot()
    y = np.asarray(y)
    rows = np.atleast_2d(np.asarray(decision_rows, float))
    fig, ax = plt.subplots(figsize=(4.2, 4))
    if rows.shape[0] > 1:
        for row in rows:
            fpr, tpr, _ = roc_curve(y, row)
            ax.plot(fpr, tpr, color="0.75", lw=0.7)
    yy = np.tile(y, rows.shape[0])
    fpr, tpr, _ = roc_curve(yy, rows.ravel())
    label = label or ("pooled over repeats" if rows.shape[0] > 1 else "all participants")
    ax.plot(fpr, tpr, color="C0", lw=2, label=f"{label} (AUC {roc_auc(yy, rows.ravel()):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return png_uri(fig)


def fig_confusion(confusion) -> str:
    plt = pyplot()
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v:g}", ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black", fontsize=12)
    ax.set_xticks([0, 1], ["non-resp.", "responder"])
    ax.set_yticks([0, 1], ["non-resp.", "responder"])
    ax.set(xlabel="predicted", ylabel="observed")
    return png_uri(fig)


def fig_permutation(null_bac, observed_bac, p_bac, null_auc=None, observed_auc=None,
                    p_auc=None) -> str:
    plt = pyplot()
    panels = [("BAC", null_bac, observed_bac, p_bac)]
    if null_auc is not None:
        panels.append(("AUC", null_auc, observed_auc, p_auc))
    from ketabids.group.metrics import format_p

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (name, null, obs, p) in zip(np.atleast_1d(axes), panels):
        ax.hist(np.asarray(null, float), bins=30, color="0.7", edgecolor="0.5")
        ax.axvline(obs, color="C3", lw=2,
                   label=f"observed {obs:.3f}, {format_p(p, len(np.asarray(null)))}")
        ax.set(xlabel=f"{name} under permuted labels", ylabel="permutations")
        ax.legend(fontsize=8)
    return png_uri(fig)


def fig_decisions(y, decision) -> str:
    plt = pyplot()
    y, decision = np.asarray(y), np.asarray(decision, float)
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    bins = np.histogram_bin_edges(decision, bins=20)
    for cls, name, color in ((0, "non-responders", "C0"), (1, "responders", "C3")):
        ax.hist(decision[y == cls], bins=bins, alpha=0.55, color=color,
                label=f"{name} (n={int((y == cls).sum())})")
    ax.axvline(0, color="k", lw=1, ls="--")
    ax.set(xlabel="decision value (> 0: predicted responder)", ylabel="participants")
    ax.legend(fontsize=8)
    return png_uri(fig)


def fig_decisions_unlabelled(decision) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.hist(np.asarray(decision, float), bins=20, color="0.6")
    ax.axvline(0, color="k", lw=1, ls="--")
    ax.set(xlabel="decision value (> 0: predicted responder)", ylabel="participants")
    return png_uri(fig)


def fig_reliability(calibration: pd.DataFrame, brier: float | None) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1)
    if len(calibration):  # points only: bins are separate groups, not a curve
        ax.plot(calibration["mean_predicted"], calibration["observed_rate"], "o", color="C0",
                linestyle="none")
        for _, r in calibration.iterrows():
            ax.annotate(str(int(r["n"])), (r["mean_predicted"], r["observed_rate"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=7, color="0.4")
    title = "reliability" + (f" (Brier {brier:.3f})" if brier is not None else "")
    ax.set(xlabel="predicted probability of response", ylabel="observed response rate",
           xlim=(0, 1), ylim=(-0.02, 1.02), title=title)
    return png_uri(fig)


def fig_brain(img, title: str, *, symmetric=True, vmax=None, cmap=None) -> str:
    """Glass brain (4 views) of a statistical map."""
    from nilearn import plotting

    plt = pyplot()
    data = np.asarray(img.dataobj, float)
    if vmax is None:
        finite = np.abs(data[data != 0])
        vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    fig = plt.figure(figsize=(9, 2.6))
    plotting.plot_glass_brain(img, figure=fig, display_mode="lyrz", colorbar=True,
                              plot_abs=not symmetric, vmax=vmax or 1.0,
                              vmin=-vmax if symmetric else 0, threshold=0.0, title=title,
                              cmap=cmap or ("cold_hot" if symmetric else "viridis"))
    return png_uri(fig)


def fig_slices(img, title: str, *, symmetric=True, vmax=None, threshold="auto",
               cmap=None) -> str:
    """Axial slices of a statistical map (top 20 % of |values| by default)."""
    from nilearn import plotting

    plt = pyplot()
    data = np.asarray(img.dataobj, float)
    finite = np.abs(data[data != 0])
    if vmax is None:
        vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    if threshold == "auto":
        threshold = float(np.percentile(finite, 80)) if finite.size else None
    fig = plt.figure(figsize=(9, 2.6))
    kwargs = {} if symmetric else {"vmin": 0.0, "symmetric_cbar": False}
    plotting.plot_stat_map(img, figure=fig, display_mode="z", cut_coords=7, vmax=vmax,
                           threshold=threshold, title=title, colorbar=True, draw_cross=False,
                           cmap=cmap or ("cold_hot" if symmetric else "viridis"), **kwargs)
    return png_uri(fig)
