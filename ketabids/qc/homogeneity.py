"""Sample homogeneity of the modulated GM maps (CAT12's "check sample homogeneity").

CAT12 (Gaser et al. 2024, GigaScience 13:giae049; ``cat_stat_check_cov``) correlates every
subject's smoothed, modulated GM map with every other one and shows each subject's mean
correlation: a subject whose map does not look like the others (failed registration or
segmentation, wrong subject, artefact) has a low mean correlation. Here:

1. each map is smoothed with a Gaussian of ``fwhm_mm`` (default 8 mm, CAT12's default
   smoothing for VBM) and sampled every ``step_mm`` (default 3 mm; the smoothed map carries
   nothing finer), inside the voxels where the cohort's mean map exceeds 0.05 x its maximum;
2. ``r_ij`` = Pearson correlation of maps i and j; ``mean_corr_i`` = mean over j != i;
3. a subject is flagged when its ``mean_corr`` is below Tukey's lower fence
   ``Q1 - k x IQR`` of all mean correlations (k = 1.5, Tukey 1977, the boxplot rule CAT12's plot
   shows), and below the cohort median (a tight cohort with a tiny IQR is not over-flagged: the
   value must also be a robust z < -2, ``z = (x - median) / (1.4826 MAD)``).

Measured (benchmarks, 40 processed discovery phantoms, fast mode): mean correlations 0.850-0.930
(median 0.908); the rule flags 2 of the 40 (0.850 and 0.860, at the fence 0.860): a flag asks
for a look at the subject's report, it is not an exclusion. Planting sub-003's map shifted by
4 / 6 mm in place of sub-010 gives 0.826 / 0.732, flagged.

Pearson's r ignores a global rescaling of a map, so the map totals (``total_ml`` = sum x voxel
volume, the GM volume the map carries) are checked too: flagged when the modified z-score
``|x - median| / (1.4826 MAD) > 3.5`` (Iglewicz & Hoaglin 1993). A map rescaled by a factor
inside the cohort's spread of head sizes is indistinguishable from a bigger or smaller head and
is not flagged. Two subjects with (nearly) the same map (r > 0.9999: a file copied twice) are
both flagged.
"""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

FWHM_MM = 8.0
STEP_MM = 3.0
TUKEY_K = 1.5
CORR_MIN_Z = -2.0
TOTAL_MAX_Z = 3.5
DUPLICATE_R = 0.9999
_MAD_TO_SIGMA = 1.482602218505602


def _load(img):
    if isinstance(img, nib.spatialimages.SpatialImage):
        return img
    return nib.load(str(img))


def smooth_map(img, *, fwhm_mm: float = FWHM_MM, step_mm: float = STEP_MM) -> np.ndarray:
    """The map smoothed by a Gaussian of ``fwhm_mm`` (sigma = FWHM / sqrt(8 ln 2)) and
    subsampled every ``step_mm`` (3D float32 array)."""
    img = _load(img)
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))
    sigma = fwhm_mm / np.sqrt(8 * np.log(2)) / zooms
    smooth = ndimage.gaussian_filter(data, sigma, mode="constant")
    step = [max(1, int(round(step_mm / z))) for z in zooms]
    return smooth[:: step[0], :: step[1], :: step[2]].astype(np.float32)


def robust_z(values) -> np.ndarray:
    """``(x - median) / (1.4826 MAD)``; 0 everywhere if MAD is 0.

    Examples
    --------
    >>> robust_z([1.0, 2.0, 3.0]).round(3).tolist()
    [-0.674, 0.0, 0.674]
    """
    x = np.asarray(values, dtype=np.float64)
    med = np.median(x)
    mad = _MAD_TO_SIGMA * np.median(np.abs(x - med))
    if mad <= 0:
        return np.zeros_like(x)
    return (x - med) / mad


def correlation_matrix(maps: np.ndarray) -> np.ndarray:
    """Pearson correlations between the rows of ``maps`` (n subjects x voxels)."""
    x = np.asarray(maps, dtype=np.float64)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1)
    return x @ x.T


def mean_correlations(maps: np.ndarray) -> np.ndarray:
    """Mean Pearson correlation of each row of ``maps`` with every other row."""
    corr = correlation_matrix(maps)
    n = corr.shape[0]
    return (corr.sum(1) - np.diag(corr)) / max(n - 1, 1)


def sample_homogeneity(maps, ids, *, voxel_ml: float | None = None, fwhm_mm: float = FWHM_MM,
                       step_mm: float = STEP_MM, totals=None) -> pd.DataFrame:
    """CAT12-style sample homogeneity: each map's mean correlation with the others, outliers.

    A subject is flagged (for a look, not excluded) when its mean correlation is a low outlier
    (below Q1 - 1.5 IQR with a robust z below -2), its map total is far from the others'
    (robust z beyond 3.5), or its map duplicates another's; the first two need >= 5 maps.

    Parameters
    ----------
    maps : sequence
        Modulated GM images or paths (same template grid), or already smoothed arrays.
    ids : sequence of str
        One id per map.
    voxel_ml : float or None
        Voxel volume of the original maps (read from each image if None).
    fwhm_mm, step_mm : float
        Smoothing and subsampling of the maps (:func:`smooth_map`).
    totals : sequence of float or None
        The maps' totals in mL when ``maps`` are smoothed arrays (e.g. from
        :func:`smoothed_maps_cached`; otherwise ``sum x voxel_ml`` of each array).

    Returns
    -------
    pandas.DataFrame
        One row per subject: ``id``, ``mean_corr``, ``mean_corr_z``, ``total_ml``,
        ``total_z``, ``flagged`` (bool), ``reason``; ``attrs["fence"]`` holds the Tukey fence.

    Raises
    ------
    ValueError
        As many maps as ids, on one grid, are required.
    """
    maps = list(maps)
    ids = [str(i) for i in ids]
    if len(maps) != len(ids):
        raise ValueError(f"sample_homogeneity: {len(maps)} maps for {len(ids)} ids")
    given_totals = list(totals) if totals is not None else None
    totals = []
    smoothed = []
    for k, m in enumerate(maps):
        if isinstance(m, np.ndarray):
            smoothed.append(m.astype(np.float32))
            totals.append(float(given_totals[k]) if given_totals is not None
                          else float(m.sum()) * (voxel_ml or 1.0))
            continue
        img = _load(m)
        vox = voxel_ml or float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
        totals.append(float(np.nansum(np.asarray(img.dataobj, dtype=np.float64))) * vox)
        smoothed.append(smooth_map(img, fwhm_mm=fwhm_mm, step_mm=step_mm))
    shapes = {s.shape for s in smoothed}
    if len(shapes) != 1:
        raise ValueError(f"sample_homogeneity: maps on different grids {sorted(shapes)}")
    stack = np.stack([s.ravel() for s in smoothed])
    mean_map = stack.mean(0)
    inside = mean_map > 0.05 * float(mean_map.max()) if mean_map.max() > 0 else \
        np.ones(mean_map.shape, bool)
    matrix = correlation_matrix(stack[:, inside])
    n = len(ids)
    corr = (matrix.sum(1) - np.diag(matrix)) / max(n - 1, 1) if n > 1 else np.ones(1)
    offdiag = matrix - 2 * np.eye(n)  # the diagonal never wins the max below
    corr_z = robust_z(corr)
    q1, q3 = np.percentile(corr, [25, 75])
    fence = q1 - TUKEY_K * (q3 - q1)
    total_z = robust_z(totals)
    rows = []
    for i, sid in enumerate(ids):
        reasons = []
        if len(ids) >= 5 and corr[i] < fence and corr_z[i] < CORR_MIN_Z:
            reasons.append(f"low mean correlation {corr[i]:.3f} (fence {fence:.3f})")
        if len(ids) >= 5 and abs(total_z[i]) > TOTAL_MAX_Z:
            reasons.append(f"GM map total {totals[i]:.0f} mL (robust z {total_z[i]:+.1f})")
        if n > 1 and offdiag[i].max() > DUPLICATE_R:
            j = int(np.argmax(offdiag[i]))
            reasons.append(f"same map as {ids[j]} (r {offdiag[i, j]:.5f})")
        rows.append({"id": sid, "mean_corr": float(corr[i]), "mean_corr_z": float(corr_z[i]),
                     "total_ml": totals[i], "total_z": float(total_z[i]),
                     "flagged": bool(reasons), "reason": "; ".join(reasons)})
    frame = pd.DataFrame(rows)
    frame.attrs["fence"] = float(fence)
    return frame


def smoothed_maps_cached(paths, cache_dir, *, fwhm_mm: float = FWHM_MM,
                         step_mm: float = STEP_MM) -> tuple[list[np.ndarray], list[float]]:
    """:func:`smooth_map` and the total (mL) of each map file, cached in ``cache_dir`` as
    ``<file name>.npz`` keyed by the file's size and mtime and the smoothing: a cohort page
    rebuilt after each of many participant jobs smooths each map once (measured: 40 maps of
    2 mm took 28 s to smooth; a cached map loads in milliseconds)."""
    from pathlib import Path

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays, totals = [], []
    for path in map(Path, paths):
        stat = path.stat()
        key = np.array([stat.st_size, stat.st_mtime_ns, fwhm_mm * 1000, step_mm * 1000],
                       dtype=np.float64)
        cached = cache_dir / f"{path.name}.npz"
        try:
            with np.load(cached) as data:
                if np.array_equal(data["key"], key):
                    arrays.append(data["smoothed"])
                    totals.append(float(data["total_ml"]))
                    continue
        except (OSError, KeyError, ValueError):
            pass
        img = _load(path)
        vox = float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
        total = float(np.nansum(np.asarray(img.dataobj, dtype=np.float64))) * vox
        smooth = smooth_map(img, fwhm_mm=fwhm_mm, step_mm=step_mm)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, key=key, smoothed=smooth, total_ml=total)
        os.replace(tmp, cached)
        arrays.append(smooth)
        totals.append(total)
    return arrays, totals


def modulated_gm_maps(output_dir) -> tuple[list, list[str]]:
    """The modulated GM maps of a derivative dataset written by ketabids (``sub-*/[ses-*/]anat/
    *_space-*_label-GM_desc-modulated_probseg.nii.gz``) and their ids (``sub-X`` or
    ``sub-X_ses-Y``), sorted."""
    from pathlib import Path

    paths = sorted(Path(output_dir).glob(
        "sub-*/**/anat/*_space-*_label-GM_desc-modulated_probseg.nii.gz"))
    ids = [p.name.split("_space-")[0] for p in paths]
    return paths, ids
