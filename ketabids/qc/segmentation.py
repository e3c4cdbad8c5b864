"""Plausibility of the segmentation: volumes, tissue fractions, T1-like contrast order.

* Volumes (mL): ``V_k = sum(p_k) * voxel volume / 1000`` for k in GM, WM, CSF, TIV = their sum
  (as :func:`ketabids.anat.vbm.tissue_volumes`).
* Fractions of TIV (MRIQC's ``icvs_*``): ``icvs_k = V_k / TIV``; ``gm_brain_fraction`` =
  GM / (GM + WM).
* Contrast order: the medians of the T1w intensity in each tissue (probability > 0.85, the
  MRIQC tissue masks) must satisfy ``median WM > median GM > median CSF`` for a T1-weighted
  image. ``contrast_wm_gm`` = median WM / median GM and ``contrast_gm_csf`` = median GM /
  median CSF (both > 1 for T1w, < 1 for a T2-like, inverted contrast). The tissue maps are
  those of the segmentation, which is initialised from the template priors, so on an inverted
  image the "WM" class still sits where WM is and its median is the darkest.
* Brain-mask edge (ours): ``mask_rim_bright`` = share of the voxels of the brain mask's outer
  rim (within :data:`RIM_MM` of its edge: the mask minus its erosion) brighter than the median
  WM intensity. A correct intracranial mask ends in CSF and dura (darker than GM) or cortex;
  a mask that leaked through the skull takes in scalp fat and marrow, brighter than WM on a T1w.
  It catches leaked masks that every other rule lets through (TIV below its fail threshold,
  tissue shares, template overlap and correlation in range); the values on phantoms, real
  scans and leaked masks are in ``docs/benchmarks.md`` ("Quality control").
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from ketabids.anat.antsutil import bounding_box
from ketabids.qc.iqms import TISSUE_THRESHOLD, as_array, zooms

#: thickness (mm) of the brain mask's outer rim examined by :func:`mask_rim_bright`
RIM_MM = 2.0


def _voxel_ml(img) -> float:
    if isinstance(img, nib.spatialimages.SpatialImage):
        return float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
    if isinstance(img, (str, bytes)) or hasattr(img, "__fspath__"):
        return _voxel_ml(nib.load(str(img)))
    raise TypeError("tissue_metrics needs nibabel images or paths (voxel size)")


def tissue_metrics(tpms: dict) -> dict:
    """Tissue volumes and fractions from the native tissue maps (module docstring).

    Parameters
    ----------
    tpms : dict
        ``{"GM", "WM", "CSF"}`` -> probability (fraction) images or paths (the voxel size is
        read from them).

    Returns
    -------
    dict
        ``tiv_ml``, ``gm_ml``, ``wm_ml``, ``csf_ml``, ``icvs_gm``, ``icvs_wm``, ``icvs_csf``,
        ``gm_brain_fraction`` (NaN fractions for an empty segmentation).

    Raises
    ------
    TypeError
        Bare arrays (no voxel size).

    Examples
    --------
    >>> aff = np.diag([10.0, 10.0, 10.0, 1.0])                  # 1 mL voxels
    >>> maps = {k: nib.Nifti1Image(np.full((2, 2, 2), v, np.float32), aff)
    ...         for k, v in (("GM", 0.5), ("WM", 0.25), ("CSF", 0.25))}
    >>> m = tissue_metrics(maps)
    >>> round(m["tiv_ml"], 6), round(m["icvs_gm"], 6), round(m["gm_brain_fraction"], 3)
    (8.0, 0.5, 0.667)
    """
    vols = {k: float(np.sum(as_array(tpms[k]), dtype=np.float64)) * _voxel_ml(tpms[k])
            for k in ("GM", "WM", "CSF")}
    tiv = sum(vols.values())
    out = {"tiv_ml": tiv, "gm_ml": vols["GM"], "wm_ml": vols["WM"], "csf_ml": vols["CSF"]}
    for k in ("GM", "WM", "CSF"):
        out[f"icvs_{k.lower()}"] = vols[k] / tiv if tiv > 0 else float("nan")
    gw = vols["GM"] + vols["WM"]
    out["gm_brain_fraction"] = vols["GM"] / gw if gw > 0 else float("nan")
    return out


def contrast_from_medians(median_wm: float, median_gm: float, median_csf: float) -> dict:
    """The contrast keys of :func:`contrast_metrics` from given tissue medians.

    Parameters
    ----------
    median_wm, median_gm, median_csf : float
        Tissue medians (e.g. the IQMs' ``summary_*_median``, which use the same > 0.85 masks,
        eroded).

    Returns
    -------
    dict
        ``median_wm``, ``median_gm``, ``median_csf``, ``contrast_wm_gm``, ``contrast_gm_csf``
        (NaN for a denominator that is not positive), ``t1_contrast_order``.

    Examples
    --------
    >>> c = contrast_from_medians(120.0, 80.0, 40.0)
    >>> c["contrast_wm_gm"], c["t1_contrast_order"]
    (1.5, True)
    >>> contrast_from_medians(40.0, 80.0, 120.0)["t1_contrast_order"]      # T2-like
    False
    """
    def ratio(a, b):
        return a / b if b and np.isfinite(b) and b > 0 else float("nan")

    return {"median_wm": median_wm, "median_gm": median_gm, "median_csf": median_csf,
            "contrast_wm_gm": ratio(median_wm, median_gm),
            "contrast_gm_csf": ratio(median_gm, median_csf),
            "t1_contrast_order": bool(median_wm > median_gm > median_csf)}


def contrast_metrics(t1w, tpms: dict, brain_mask=None) -> dict:
    """Tissue medians of ``t1w`` and the contrast ratios (module docstring).

    Parameters
    ----------
    t1w : nibabel image, path or ndarray
        The T1w.
    tpms : dict
        ``{"GM", "WM", "CSF"}`` -> probability maps on the same grid (tissue = > 0.85).
    brain_mask : nibabel image, path, ndarray or None
        Restricts the tissue masks.

    Returns
    -------
    dict
        As :func:`contrast_from_medians`: ``t1_contrast_order`` is True for WM > GM > CSF.
    """
    data = as_array(t1w)
    brain = np.ones(data.shape, bool) if brain_mask is None else as_array(brain_mask) > 0
    med = {}
    for k in ("WM", "GM", "CSF"):
        sel = (as_array(tpms[k]) > TISSUE_THRESHOLD) & brain
        med[k] = float(np.median(data[sel])) if sel.any() else float("nan")
    return contrast_from_medians(med["WM"], med["GM"], med["CSF"])


def mask_rim_bright(t1w, brain_mask, median_wm: float, rim_mm: float = RIM_MM) -> float:
    """Share of the brain mask's outer rim brighter than the median WM (module docstring).

    The rim is the mask minus its erosion by ``round(rim_mm / smallest voxel size)`` voxels
    (6-connected, at least one), computed on the mask's bounding box.

    Parameters
    ----------
    t1w : nibabel image or path
        The T1w (its voxel size sets the rim's thickness in voxels).
    brain_mask : nibabel image, path or ndarray
        Brain mask on the same grid.
    median_wm : float
        Median WM intensity of the T1w.
    rim_mm : float
        Thickness of the rim (mm).

    Returns
    -------
    float
        The share, 0-1; NaN for an empty mask or an undefined WM median.
    """
    if not isinstance(t1w, nib.spatialimages.SpatialImage):
        t1w = nib.load(str(t1w))
    mask = as_array(brain_mask) > 0
    if not mask.any() or not np.isfinite(median_wm):
        return float("nan")
    steps = max(1, int(round(rim_mm / min(zooms(t1w)))))
    box = bounding_box(mask, margin=1)
    m = mask[box]
    rim = m & ~ndimage.binary_erosion(m, iterations=steps, border_value=0)
    data = np.asarray(t1w.dataobj[box], dtype=np.float32)  # the box only, not the whole grid
    return float(np.mean(data[rim] > median_wm))
