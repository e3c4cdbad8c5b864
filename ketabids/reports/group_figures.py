"""Figures of the group reports (training and prediction).

Charts are SVG (:func:`ketabids.reports.figures.svg_image`), brain maps PNG at twice the shown
size (:func:`~ketabids.reports.figures.png_image`); all drawn with one font scale
(:data:`ketabids.reports.figures.STYLE`) at the size the page shows them. Count axes have
integer ticks.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from ketabids.reports.figures import STYLE, Image, png_image, pyplot, svg_image

__all__ = ["fig_roc", "fig_confusion", "fig_permutation", "fig_decisions",
           "fig_decisions_unlabelled", "fig_reliability", "fig_brain", "fig_slices",
           "fig_decision_curve", "axial_cuts"]


def _styled(func):
    """Draw ``func``'s figure under the report style (one font scale)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        plt = pyplot()
        with plt.rc_context(STYLE):
            return func(*args, **kwargs)
    return wrapper


def _integer_y(ax):
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


@_styled
def fig_roc(y, decision_rows, *, label=None) -> Image:
    """ROC of all rows of ``decision_rows`` pooled (bold; AUC = the pooled AUC of the metrics
    table, 3 decimals) and of each row (thin, when there are several)."""
    from sklearn.metrics import roc_curve

    from ketabids.stats import roc_auc

    plt = pyplot()
    y = np.asarray(y)
    rows = np.atleast_2d(np.asarray(decision_rows, float))
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    if rows.shape[0] > 1:
        for row in rows:
            fpr, tpr, _ = roc_curve(y, row)
            ax.plot(fpr, tpr, color="0.78", lw=0.7)
    yy = np.tile(y, rows.shape[0])
    fpr, tpr, _ = roc_curve(yy, rows.ravel())
    label = label or ("pooled over repeats" if rows.shape[0] > 1 else "all participants")
    ax.plot(fpr, tpr, color="C0", lw=2, label=f"{label}\nAUC {roc_auc(yy, rows.ravel()):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           aspect="equal")
    ax.legend(loc="lower right", frameon=False)
    return svg_image(fig)


@_styled
def fig_confusion(confusion) -> Image:
    """2x2 counts ``[[TN, FP], [FN, TP]]``."""
    plt = pyplot()
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(3.0, 2.7))
    ax.imshow(cm, cmap="Blues", vmin=0)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=STYLE["font.size"] + 3,
                color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks([0, 1], ["non-responder", "responder"])
    ax.set_yticks([0, 1], ["non-resp.", "responder"])
    ax.set(xlabel="predicted", ylabel="observed")
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)
    return svg_image(fig)


@_styled
def fig_permutation(null_bac, observed_bac, p_bac, null_auc=None, observed_auc=None,
                    p_auc=None) -> Image:
    """Permutation null histograms with the observed value; the value and p are in the panel
    title (no legend over the bars)."""
    from ketabids.stats import format_p

    plt = pyplot()
    panels = [("BAC", null_bac, observed_bac, p_bac)]
    if null_auc is not None:
        panels.append(("AUC", null_auc, observed_auc, p_auc))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.7),
                             layout="constrained")
    for ax, (name, null, obs, p) in zip(np.atleast_1d(axes), panels):
        null = np.asarray(null, float)
        lo, hi = min(null.min(), obs), max(null.max(), obs)
        pad = 0.05 * (hi - lo or 1.0)
        ax.hist(null, bins=np.linspace(lo - pad, hi + pad, 31), color="0.72", edgecolor="0.5")
        ax.axvline(obs, color="C3", lw=2)
        ax.set_title(f"observed {name} {obs:.3f} (red line)\n{format_p(p, null.size)}",
                     fontsize=STYLE["font.size"])
        ax.set(xlabel=f"{name} under permuted labels", ylabel="permutations")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.08)
        _integer_y(ax)
    return svg_image(fig)


@_styled
def fig_decisions(y, decision) -> Image:
    """Decision values by observed class (counts, integer ticks)."""
    plt = pyplot()
    y, decision = np.asarray(y), np.asarray(decision, float)
    fig, ax = plt.subplots(figsize=(3.8, 2.7))
    bins = np.histogram_bin_edges(decision, bins=20)
    for cls, name, color in ((0, "non-responders", "C0"), (1, "responders", "C3")):
        ax.hist(decision[y == cls], bins=bins, alpha=0.55, color=color,
                label=f"{name} (n = {int((y == cls).sum())})")
    ax.axvline(0, color="k", lw=1, ls="--")
    ax.set(xlabel="decision value (> 0: predicted responder)", ylabel="participants")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
    _integer_y(ax)
    ax.legend(loc="upper left", frameon=False)
    return svg_image(fig)


@_styled
def fig_decisions_unlabelled(decision) -> Image:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.8, 2.7))
    ax.hist(np.asarray(decision, float), bins=20, color="0.6")
    ax.axvline(0, color="k", lw=1, ls="--")
    ax.set(xlabel="decision value (> 0: predicted responder)", ylabel="participants")
    _integer_y(ax)
    return svg_image(fig)


@_styled
def fig_reliability(calibration: pd.DataFrame, brier: float | None) -> Image:
    """Observed response rate against mean predicted probability per bin (points, the number
    of participants of each bin beside it, inside the axes)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1)
    if len(calibration):  # points only: bins are separate groups, not a curve
        ax.plot(calibration["mean_predicted"], calibration["observed_rate"], "o", color="C0",
                linestyle="none")
        for _, r in calibration.iterrows():
            x, yv = float(r["mean_predicted"]), float(r["observed_rate"])
            ax.annotate(f"n={int(r['n'])}", (x, yv), textcoords="offset points",
                        xytext=(-6 if x > 0.8 else 6, 8 if yv < 0.85 else -12),
                        ha="right" if x > 0.8 else "left", fontsize=STYLE["font.size"] - 1,
                        color="0.35")
    title = (f"{len(calibration)} bins" + (f", Brier {brier:.3f}" if brier is not None else ""))
    ax.set(xlabel="predicted probability of response", ylabel="observed response rate",
           xlim=(0, 1), ylim=(-0.03, 1.03), title=title, aspect="equal")
    return svg_image(fig)


@_styled
def fig_decision_curve(table: pd.DataFrame) -> Image:
    """Net benefit of the model, of treating all and of treating none against the threshold
    probability (``decision_curve.tsv``)."""
    plt = pyplot()
    t = table.apply(pd.to_numeric, errors="coerce")
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    ax.plot(t["threshold"], t["net_benefit_model"], color="C0", lw=2, label="model")
    ax.plot(t["threshold"], t["net_benefit_treat_all"], color="0.4", lw=1, label="treat all")
    ax.plot(t["threshold"], t["net_benefit_treat_none"], color="k", lw=1, ls="--",
            label="treat none")
    top = np.nanmax(t[["net_benefit_model", "net_benefit_treat_all"]].to_numpy(float))
    ax.set(xlabel="threshold probability", ylabel="net benefit", xlim=(0, 1),
           ylim=(-0.05, max(0.05, top * 1.1 if np.isfinite(top) else 1.0)))
    ax.legend(frameon=False, loc="upper right")
    return svg_image(fig)


def axial_cuts(img, n: int = 8) -> list[float]:
    """``n`` axial z (mm) spread over the extent of the map's non-zero voxels, from the 5th to
    the 97th percentile of their z, so the dorsal cortex is included."""
    data = np.asarray(img.dataobj)
    k = np.nonzero(data)[2]
    if k.size == 0:
        k = np.arange(data.shape[2])
    lo, hi = np.percentile(k, [5, 97])
    ks = np.linspace(lo, hi, n)
    aff = img.affine
    return [float(round(aff[2, 2] * kk + aff[2, 3], 1)) for kk in ks]


def _robust_max(data) -> float:
    finite = np.abs(data[np.isfinite(data) & (data != 0)])
    return float(np.percentile(finite, 99.5)) if finite.size else 1.0


@_styled
def fig_brain(img, title: str, *, threshold: float | None = None, symmetric=True, vmax=None,
              cmap=None) -> Image:
    """Glass brain (4 views) of a statistical map, voxels with ``|value| < threshold`` not
    coloured."""
    from nilearn import plotting

    plt = pyplot()
    data = np.asarray(img.dataobj, float)
    vmax = vmax or _robust_max(data)
    if threshold is not None and threshold >= vmax:
        vmax = threshold * 1.25
    fig = plt.figure(figsize=(9, 2.5))
    plotting.plot_glass_brain(img, figure=fig, display_mode="lyrz", colorbar=True,
                              plot_abs=not symmetric, vmax=vmax,
                              vmin=-vmax if symmetric else 0, threshold=threshold or 0.0,
                              title=title, cmap=cmap or ("cold_hot" if symmetric else "viridis"))
    return png_image(fig)


@_styled
def fig_slices(img, title: str, *, symmetric=True, vmin=None, vmax=None, threshold="auto",
               cmap=None, n_cuts: int = 8) -> Image:
    """Axial slices (from ventral to dorsal, :func:`axial_cuts`) of a statistical map (top
    20 % of |values| by default)."""
    from nilearn import plotting

    plt = pyplot()
    data = np.asarray(img.dataobj, float)
    finite = np.abs(data[data != 0])
    vmax = vmax or _robust_max(data)
    if threshold == "auto":
        threshold = float(np.percentile(finite, 80)) if finite.size else None
    fig = plt.figure(figsize=(10, 2.0))
    kwargs = {} if symmetric else {"vmin": 0.0 if vmin is None else vmin,
                                   "symmetric_cbar": False}
    plotting.plot_stat_map(img, figure=fig, display_mode="z", cut_coords=axial_cuts(img, n_cuts),
                           vmax=vmax, threshold=threshold, title=title, colorbar=True,
                           draw_cross=False, cbar_tick_format="%.2f",
                           cmap=cmap or ("cold_hot" if symmetric else "viridis"), **kwargs)
    return png_image(fig)
