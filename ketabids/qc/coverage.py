"""Registration quality in template space: coverage, overlap, Jacobian, similarity.

Every function here takes images already on the template grid (pure numpy maths); the two
helpers at the end (:func:`warp_fov_to_template`, :func:`warp_to_template`) are the only ANTs
calls: they resample native images with the forward transform of the participant workflow.

* ``fov_coverage`` = |T & F| / |T|: the share of the template brain mask T covered by the
  subject's field of view F (the native voxel grid, all ones, warped to the template; voxels
  outside the native grid are 0). A 40 mm slab covers about a third of the brain.
* ``brain_dice`` = 2 |B & T| / (|B| + |T|): Dice overlap of the subject brain mask B warped to the
  template with T (the brain extraction is the template mask carried back, so a good
  registration gives a high Dice by construction; a failed one - wrong orientation, partial
  head - a low one).
* Jacobian determinant det(J) of the forward mapping inside T: ``jac_folded_fraction`` =
  share of voxels with det <= 0 (folding: the warp is not invertible there);
  ``logjac_p01``/``logjac_p99`` the 1st/99th percentiles of ln det over det > 0 and
  ``logjac_range`` = their difference (extreme local expansion/compression); ``logjac_median``
  (global scaling: ln of the head size relative to the template).
* ``template_correlation``: Pearson r between the normalised T1w and the template T1w inside
  T. A T1w registered to a T1w template correlates positively (measured on the phantoms and the
  real scans, see ``benchmarks/qc_thresholds.py``); a contrast-inverted image or a failed
  registration does not.
* ``registration_anisotropy`` and ``registration_rotation_deg``: the affine map that best fits
  (least squares) the registration's mapping of the template brain into the subject's world
  coordinates, as a stretch (largest / smallest of its singular values: how unequally the
  template must be scaled along its axes to fit the head) and a rotation (degrees, between the
  head as the header places it and the template). Brains differ from the template by a scaling
  that is nearly the same along every axis (measured 1.01-1.18, the real AOMIC scan the
  largest); a header rotated by 90 degrees leaves a registration that cannot rotate the head
  back (affine optimisers start at the header's orientation) to fit the template's long A-P
  brain into the head's short S-I extent: measured 1.40-1.73 (and 1.46 with both orientation
  codes 0). The angle is context: a registration that did turn the head shows it.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np

from ketabids.qc.iqms import as_array


def fov_coverage(warped_fov, template_mask, threshold: float = 0.5) -> float:
    """``|T & (F >= threshold)| / |T|`` (see the module docstring)."""
    t = as_array(template_mask) > 0
    f = as_array(warped_fov) >= threshold
    n = int(t.sum())
    return float((t & f).sum() / n) if n else float("nan")


def dice(a, b) -> float:
    """Dice overlap ``2|A & B| / (|A| + |B|)`` of two masks (> 0); NaN when both are empty."""
    a = as_array(a) > 0
    b = as_array(b) > 0
    total = int(a.sum() + b.sum())
    return float(2.0 * (a & b).sum() / total) if total else float("nan")


def jacobian_stats(jacobian, template_mask) -> dict:
    """Statistics of det(J) inside the template mask (module docstring)."""
    det = as_array(jacobian)
    t = as_array(template_mask) > 0
    vals = det[t & np.isfinite(det)].astype(np.float64)
    if vals.size == 0:
        return {"jac_folded_fraction": float("nan"), "logjac_p01": float("nan"),
                "logjac_p99": float("nan"), "logjac_range": float("nan"),
                "logjac_median": float("nan")}
    folded = float(np.mean(vals <= 0))
    pos = vals[vals > 0]
    if pos.size == 0:
        p01 = p99 = med = float("nan")
    else:
        log = np.log(pos)
        p01, p99 = (float(v) for v in np.percentile(log, [1, 99]))
        med = float(np.median(log))
    return {"jac_folded_fraction": folded, "logjac_p01": p01, "logjac_p99": p99,
            "logjac_range": p99 - p01, "logjac_median": med}


def template_correlation(std_t1w, template_t1w, template_mask) -> float:
    """Pearson correlation of the normalised T1w and the template T1w inside the template
    mask: ``r = cov(x, y) / (sd(x) sd(y))``; NaN when either is constant there."""
    x = as_array(std_t1w)
    y = as_array(template_t1w)
    if x.shape != y.shape:
        raise ValueError(f"template_correlation: shapes differ {x.shape} vs {y.shape}; "
                         "resample the normalised T1w onto the template grid first")
    t = as_array(template_mask) > 0
    xv = x[t].astype(np.float64)
    yv = y[t].astype(np.float64)
    if xv.size < 3 or xv.std() == 0 or yv.std() == 0:
        return float("nan")
    return float(np.corrcoef(xv, yv)[0, 1])


def linear_shape(linear) -> tuple[float, float]:
    """``(anisotropy, rotation angle in degrees)`` of the 3x3 matrix ``linear``: its largest
    over its smallest singular value, and the angle ``arccos((trace(R) - 1) / 2)`` of the
    rotation closest to it (polar decomposition by SVD, ``R = U V^T``; a reflection is removed by
    flipping the smallest singular direction).

    >>> [round(v, 6) for v in linear_shape(np.diag([1.2, 0.8, 1.0]))]
    [1.5, 0.0]
    >>> c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    >>> [round(v, 6) for v in linear_shape(2 * np.array([[1, 0, 0], [0, c, -s], [0, s, c]]))]
    [1.0, 30.0]
    """
    u, sv, vt = np.linalg.svd(np.asarray(linear, dtype=float)[:3, :3])
    if np.linalg.det(u @ vt) < 0:
        u[:, -1] *= -1
    r = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))
    return float(sv.max() / sv.min()) if sv.min() > 0 else float("inf"), angle


def fitted_shape(source_xyz, target_xyz) -> dict:
    """``registration_anisotropy`` and ``registration_rotation_deg`` (:func:`linear_shape`) of
    the affine map ``target = A source + b`` fitted by least squares to corresponding points
    (rows of x, y, z)."""
    src = np.asarray(source_xyz, dtype=float)
    tgt = np.asarray(target_xyz, dtype=float)
    coef, *_ = np.linalg.lstsq(np.c_[src, np.ones(len(src))], tgt, rcond=None)
    anisotropy, angle = linear_shape(coef[:3].T)
    return {"registration_anisotropy": anisotropy, "registration_rotation_deg": angle}


def registration_metrics(*, template_mask, warped_fov=None, warped_brain_mask=None,
                         jacobian=None, std_t1w=None, template_t1w=None) -> dict:
    """Every metric above whose inputs are given (all on the template grid)."""
    out = {}
    if warped_fov is not None:
        out["fov_coverage"] = fov_coverage(warped_fov, template_mask)
    if warped_brain_mask is not None:
        out["brain_dice"] = dice(as_array(warped_brain_mask) >= 0.5, template_mask)
    if jacobian is not None:
        out.update(jacobian_stats(jacobian, template_mask))
    if std_t1w is not None and template_t1w is not None:
        out["template_correlation"] = template_correlation(std_t1w, template_t1w, template_mask)
    return out


# --------------------------------------------------------------------------------------------
# ANTs helpers (the only non-pure functions of this module)
# --------------------------------------------------------------------------------------------
def warp_to_template(img, forward_transforms, template_img, *, interpolation="linear",
                     omp_nthreads: int = 1) -> nib.Nifti1Image:
    """Resample a native image onto ``template_img``'s grid with the participant workflow's
    forward transform(s) (``from-T1w_to-<template>_mode-image_xfm.h5``); outside the native
    grid the result is 0."""
    from ketabids.anat.registration import RegistrationResult, apply_to_template

    if isinstance(forward_transforms, (str, bytes)) or hasattr(forward_transforms, "__fspath__"):
        forward_transforms = [forward_transforms]
    result = RegistrationResult(forward_transforms=list(forward_transforms),
                                inverse_transforms=[], warped=None)
    if not isinstance(img, nib.spatialimages.SpatialImage):
        img = nib.load(str(img))
    return apply_to_template(img, result, template_img, interpolation=interpolation,
                             omp_nthreads=omp_nthreads)


def registration_shape(forward_transforms, template_mask, *, n_points: int = 4000,
                       omp_nthreads: int = 1) -> dict:
    """``registration_anisotropy`` and ``registration_rotation_deg``: the template brain's voxel
    centres (``template_mask``, at most ``n_points`` of them, evenly strided) mapped into the
    subject's world coordinates by the forward transform(s) (ANTs maps points opposite to
    images: the image transform template <- subject maps template points to subject points),
    then :func:`fitted_shape`. NaN values without brain voxels."""
    import pandas as pd

    from ketabids.anat.antsutil import ants_env, import_ants

    if isinstance(forward_transforms, (str, bytes)) or hasattr(forward_transforms, "__fspath__"):
        forward_transforms = [forward_transforms]
    if not isinstance(template_mask, nib.spatialimages.SpatialImage):
        template_mask = nib.load(str(template_mask))
    ijk = np.argwhere(as_array(template_mask) > 0)
    if len(ijk) < 4:
        return {"registration_anisotropy": float("nan"),
                "registration_rotation_deg": float("nan")}
    ijk = ijk[:: max(1, len(ijk) // n_points)]
    xyz = nib.affines.apply_affine(template_mask.affine, ijk)
    lps = np.array([-1.0, -1.0, 1.0])  # ANTs points are in LPS
    ants = import_ants()
    with ants_env(None, omp_nthreads):
        moved = ants.apply_transforms_to_points(
            3, pd.DataFrame(xyz * lps, columns=["x", "y", "z"]),
            [str(p) for p in forward_transforms])
    return fitted_shape(xyz, moved[["x", "y", "z"]].to_numpy() * lps)


def warp_fov_to_template(native_img, forward_transforms, template_img, *,
                         omp_nthreads: int = 1) -> nib.Nifti1Image:
    """The native field of view (ones on ``native_img``'s grid) warped to the template grid."""
    if not isinstance(native_img, nib.spatialimages.SpatialImage):
        native_img = nib.load(str(native_img))
    ones = nib.Nifti1Image(np.ones(native_img.shape[:3], np.float32), native_img.affine)
    return warp_to_template(ones, forward_transforms, template_img, interpolation="linear",
                            omp_nthreads=omp_nthreads)
