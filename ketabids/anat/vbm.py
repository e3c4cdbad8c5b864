"""Voxel-based morphometry maps and volumes (the step order is the workflow's:
:func:`ketabids.workflows.anatomical.init_anat_wf`).

Modulation (Ashburner & Friston 2000): with ``phi`` the forward mapping template point ->
subject point and ``p`` the native tissue probability,

    unmodulated(x) = p(phi(x)),   modulated(x) = p(phi(x)) * det(D phi(x)),

so that ``sum(modulated) * template_voxel_volume`` = integral of ``p`` over the subject =
the native tissue volume (change of variables). The Jacobian determinant includes the affine
part (global head size), i.e. the maps carry absolute volume; divide by TIV (group level) for
proportional scaling.

Volumes: ``V_tissue = sum(p) * voxel_volume / 1000`` mL over the brain mask;
TIV = GM + WM + CSF. The brain mask includes the sulcal and extra-cerebral CSF within 2 mm of
the registration brain mask (:func:`ketabids.anat.brain.intracranial_mask`), so TIV is the
intracranial volume as SPM/CAT12 define it (GM + WM + CSF inside the skull) and comparable with
fMRIPrep's brain-mask volume (AOMIC sub-0001: see benchmarks/real_fidelity.py).
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from ketabids.anat.antsutil import bounding_box, box_affine, make_image
from ketabids.anat.registration import RegistrationResult, apply_to_template, jacobian_determinant


def _vox_ml(img):
    return float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0


def _load(img):
    return nib.load(str(img)) if not isinstance(img, nib.spatialimages.SpatialImage) else img


def modulate(native_probseg, result: RegistrationResult, template_img, *, jacobian=None,
             omp_nthreads: int = 1):
    """Warp a native probability map to ``template_img``'s grid and modulate it.

    ``template_img``: any template map on the output grid (e.g. ``template.gm`` of the chosen
    resolution). ``jacobian``: a precomputed
    :func:`~ketabids.anat.registration.jacobian_determinant` on that grid (computed here if None;
    pass it to share it between GM and WM). Returns ``(unmodulated, modulated)`` float32 images;
    negative determinants (folding) are
    clipped to 0.
    """
    native = _load(native_probseg)
    tpl = _load(template_img)
    # only the map's non-zero box (+1 voxel of zeros) is handed to ANTs: linear interpolation
    # gives 0 outside it either way, and a tissue map of a 256^3 head fills a quarter of its grid
    data = np.asarray(native.dataobj, dtype=np.float32)
    box = bounding_box(data != 0, margin=1)
    native = make_image(np.asfortranarray(data[box]), box_affine(native.affine, box))
    warped = apply_to_template(native, result, tpl, interpolation="linear",
                               omp_nthreads=omp_nthreads)
    if jacobian is None:
        jacobian = jacobian_determinant(result, tpl, omp_nthreads=omp_nthreads)
    det = np.clip(np.asarray(jacobian.dataobj, dtype=np.float32), 0, None)
    un = np.clip(np.asarray(warped.dataobj, dtype=np.float32), 0, 1)
    return make_image(un, tpl.affine), make_image((un * det).astype(np.float32), tpl.affine)


def tissue_volumes(probsegs: dict, mask=None) -> dict:
    """``{"tiv_ml", "gm_ml", "wm_ml", "csf_ml"}`` from native probability images
    ({"GM","WM","CSF"}), optionally restricted to ``mask``."""
    out = {}
    m = None
    if mask is not None:
        m = np.asarray(_load(mask).dataobj) > 0
    for name in ("GM", "WM", "CSF"):
        img = _load(probsegs[name])
        p = np.asarray(img.dataobj, dtype=np.float64)
        if m is not None:
            p = p * m
        out[f"{name.lower()}_ml"] = float(p.sum() * _vox_ml(img))
    out["tiv_ml"] = out["gm_ml"] + out["wm_ml"] + out["csf_ml"]
    return {k: round(out[k], 3) for k in ("tiv_ml", "gm_ml", "wm_ml", "csf_ml")}


def regional_volumes(modulated_gm, atlas_img, labels: pd.DataFrame) -> pd.DataFrame:
    """GM volume (mL) per atlas region from a modulated GM map.

    ``atlas_img``: integer label image in template space (resampled nearest-neighbour onto the
    map's grid if needed). ``labels``: DataFrame with columns ``index`` and ``name`` (BIDS
    ``dseg.tsv``). Returns columns ``index, name, gm_ml`` (one row per label, 0 if absent).
    """
    from ketabids.anat.atlas import labels_on_grid

    gm = _load(modulated_gm)
    a = labels_on_grid(_load(atlas_img), gm.shape[:3], gm.affine)
    if not {"index", "name"} <= set(labels.columns):
        raise ValueError("labels table needs columns 'index' and 'name'")
    g = np.asarray(gm.dataobj, dtype=np.float64)
    vox = _vox_ml(gm)
    idx = labels["index"].astype(int).to_numpy()
    sums = np.bincount(a[a > 0].ravel(), weights=g[a > 0].ravel(),
                       minlength=int(max(idx.max(), a.max()) + 1))
    return pd.DataFrame({"index": idx, "name": labels["name"].to_numpy(),
                         "gm_ml": sums[idx] * vox})
