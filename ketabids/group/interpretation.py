"""Weight maps, cross-validation ratio, sign consistency, Haufe patterns and region tables.

* Weights of every outer model are computed in one matrix product ``W = V X`` (sample-space
  coefficients ``V``; see :mod:`ketabids.group.nested`) and live in the preprocessed feature
  space (residualised on covariates; z-scored when ``standardize``).
* Cross-validation ratio (NeuroMiner): mean weight / standard error of the weights over the
  outer models (SE = SD / sqrt(n_models)). Models share most training subjects, so the SE is
  optimistic; treat it as a stability index, not a test statistic.
* Sign consistency: fraction of models whose weight has the sign of the mean weight.
* Activation pattern (Haufe et al. 2014, NeuroImage 87:96): ``A = Cov(X) w / Var(w^T x)``
  computed without forming Cov(X): ``A = X_c^T (X_c w) / (n - 1) / var(X_c w)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["WeightMaps", "weight_maps", "haufe_pattern", "region_table"]


@dataclass
class WeightMaps:
    """Voxel-wise summaries of the outer-fold models' weights (:func:`weight_maps`).

    Attributes
    ----------
    mean : ndarray of shape (p,)
        Mean weight (``desc-weight_statmap``): a filter, not where GM differs.
    cv_ratio : ndarray of shape (p,)
        Mean / standard error over the models (``desc-cvratio_statmap``): a stability index.
    sign_consistency : ndarray of shape (p,)
        Share of models whose weight has the mean's sign (``desc-signconsistency_statmap``).
    n_models : int
        Number of outer models.
    """

    mean: np.ndarray
    cv_ratio: np.ndarray
    sign_consistency: np.ndarray
    n_models: int


def weight_maps(result) -> WeightMaps:
    """Mean weight map, CV ratio and sign consistency over all outer models of a result.

    Parameters
    ----------
    result : NestedCVResult
        A nested CV's result (its ``weights``, one row per outer model).

    Returns
    -------
    WeightMaps
        float32 maps; the CV ratio is 0 where the weights do not vary and NaN-free.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> maps = weight_maps(SimpleNamespace(weights=[[1.0, -1.0], [3.0, 1.0]]))
    >>> maps.mean.tolist(), maps.sign_consistency.tolist()
    ([2.0, 0.0], [1.0, 0.0])
    """
    W = np.asarray(result.weights, np.float64)
    m = W.shape[0]
    mean = W.mean(0)
    se = W.std(0, ddof=1) / np.sqrt(m) if m > 1 else np.full(W.shape[1], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        cvr = np.where(se > 0, mean / se, 0.0)
    sign = np.sign(mean)
    consist = (np.sign(W) == sign).mean(0)
    return WeightMaps(mean.astype(np.float32), cvr.astype(np.float32),
                      consist.astype(np.float32), m)


def haufe_pattern(model, X, covariates=None, sites=None, normalize=True, weights=None):
    """Haufe activation pattern of a fitted :class:`~ketabids.group.estimator.KetaSVC`.

    Weights of a linear model are filters; the pattern ``Cov(X) w / Var(w^T x)`` (Haufe et al.
    2014) says how each feature co-varies with the model's output, which is what can be
    interpreted and shown (module docstring).

    Parameters
    ----------
    model : KetaSVC
        The fitted model (its preprocessing transforms ``X``).
    X : array-like of shape (n, p)
        Features of the participants the pattern is computed on.
    covariates, sites
        As :meth:`~ketabids.group.estimator.KetaSVC.transform_features`.
    normalize : bool
        Divide by the variance of the model's output (Haufe's normalisation).
    weights : array-like of shape (p,) or None
        Weights to use instead of ``model.coef_`` (e.g. the mean CV weight map).

    Returns
    -------
    ndarray of shape (p,)
        The pattern (float64); positive = higher in responders (class 1).
    """
    Xt = model.transform_features(X, covariates, sites)
    w = model.coef_[0] if weights is None else np.asarray(weights, float)
    Xc = Xt - Xt.mean(0)
    s = Xc @ w
    A = Xc.T @ s / (Xt.shape[0] - 1)
    if normalize:
        v = s.var(ddof=1)
        if v > 0:
            A = A / v
    return A


def region_table(atlas_labels, pattern, *, names=None, maps: WeightMaps | None = None,
                 top=None):
    """Per-region summary sorted by |mean pattern| (label 0 = background, dropped).

    Parameters
    ----------
    atlas_labels : array-like of int
        Atlas label of each feature (voxel), same length as ``pattern``.
    pattern : array-like
        The Haufe pattern (:func:`haufe_pattern`).
    names : dict or None
        Label -> region name (default: the label as text).
    maps : WeightMaps or None
        Adds the regions' mean weight, CV ratio and sign consistency.
    top : int or None
        Keep only the first ``top`` regions.

    Returns
    -------
    pandas.DataFrame
        ``label``, ``name``, ``n_voxels``, ``mean_pattern``, ``sign`` (+/-) and, with
        ``maps``, ``mean_weight``, ``mean_cv_ratio``, ``mean_sign_consistency``.

    Raises
    ------
    ValueError
        Labels and pattern of different lengths.

    Examples
    --------
    >>> region_table([0, 1, 1, 2], [9.0, 0.5, 1.5, -3.0], names={1: "frontal"})[
    ...     ["name", "n_voxels", "mean_pattern", "sign"]].values.tolist()
    [['2', 1, -3.0, '-'], ['frontal', 2, 1.0, '+']]
    """
    lab = np.asarray(atlas_labels).astype(np.int64).ravel()
    pat = np.asarray(pattern, float).ravel()
    if lab.shape != pat.shape:
        raise ValueError(f"atlas labels ({lab.size}) and pattern ({pat.size}) differ in length")
    keep = lab != 0
    uniq, inv = np.unique(lab[keep], return_inverse=True)
    cnt = np.bincount(inv, minlength=uniq.size)

    def mean_of(v):
        return np.bincount(inv, weights=np.asarray(v, float).ravel()[keep],
                           minlength=uniq.size) / cnt

    mp = mean_of(pat)
    df = pd.DataFrame({"label": uniq, "name": [(names or {}).get(int(u), str(int(u)))
                                                for u in uniq],
                       "n_voxels": cnt, "mean_pattern": mp,
                       "sign": np.where(mp >= 0, "+", "-")})
    if maps is not None:
        df["mean_weight"] = mean_of(maps.mean)
        df["mean_cv_ratio"] = mean_of(maps.cv_ratio)
        df["mean_sign_consistency"] = mean_of(maps.sign_consistency)
    df = df.iloc[np.argsort(-np.abs(mp), kind="stable")].reset_index(drop=True)
    return df if top is None else df.head(top)
