"""Voxel-based morphometry maps and volumes.

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

from ketabids.anat.antsutil import make_image
from ketabids.anat.registration import RegistrationResult, apply_to_template, jacobian_determinant


def _vox_ml(img):
    return float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0


def _load(img):
    return nib.load(str(img)) if not isinstance(img, nib.spatialimages.SpatialImage) else img


def modulate(native_probseg, result: RegistrationResult, template_img, *, jacobian=None,
             omp_nthreads: int = 1):
    """Warp a native probability map to ``template_img``'s grid and modulate it.

    ``template_img``: any template map on the output grid (e.g. ``template.gm`` of the chosen
    resolution). ``jacobian``: a precomputed :func:`~ketabids.anat.registration.jacobian_determinant`
    on that grid (computed here if None; pass it to share it between GM and WM).
    Returns ``(unmodulated, modulated)`` float32 images; negative determinants (folding) are
    clipped to 0.
    """
    native = _load(native_probseg)
    tpl = _load(template_img)
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
    sums = np.bincount(a[a > 0].ravel(), weights=g[a > 0].ravel(), minlength=int(max(idx.max(), a.max()) + 1))
    return pd.DataFrame({"index": idx, "name": labels["name"].to_numpy(),
                         "gm_ml": sums[idx] * vox})


def run_t1w(t1w, template, *, output_template=None, mode: str = "default", seed: int | None = None,
            omp_nthreads: int = 1, out_dir=None, timings: dict | None = None) -> dict:
    """Every participant-level step on one T1w, in the canonical order (reference pipeline for
    the Nipype workflow, the benchmark and the end-to-end tests):

    conform -> N4 (head) -> brain extraction (affine+SyN to ``template``, reused as the
    normalisation) -> priors to native -> N4 again inside the brain mask -> Atropos on that ->
    volumes -> Jacobian -> modulated GM/WM on ``output_template``'s grid (default: ``template``).

    Returns a dict of images and infos: ``t1w`` (conformed), ``preproc`` (bias-corrected),
    ``bias``, ``mask``, ``brain_info``, ``brain_n4`` (brain-masked N4, input of Atropos), ``registration``, ``probs`` {GM,WM,CSF}, ``dseg``,
    ``volumes``, ``jacobian``, ``gm_unmod``, ``gm_mod``, ``wm_unmod``, ``wm_mod``,
    ``conform_info``. ``timings`` (optional dict) is filled with wall seconds per step.
    """
    import time

    from ketabids.anat.antsutil import ants_env
    from ketabids.anat.brain import N4_GRID_MM, extract_brain, n4_bias_correct
    from ketabids.anat.conform import conform_t1w
    from ketabids.anat.registration import apply_to_native, check_mode
    from ketabids.anat.segmentation import segment_tissues

    check_mode(mode)
    timings = {} if timings is None else timings
    out_tpl = output_template or template
    t = time.perf_counter()

    def tick(name):
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 2)
        t = now

    # ITK fixes its thread count at the process's first ITK call (here: to_ants in the first
    # N4, before that step's own ants_env block): set threads and seed for the whole run.
    with ants_env(seed, omp_nthreads):
        out = {}
        img, out["conform_info"] = conform_t1w(t1w)
        out["t1w"] = img
        tick("conform")
        grid_mm = N4_GRID_MM[mode]
        out["preproc"], out["bias"] = n4_bias_correct(img, grid_mm=grid_mm,
                                                      omp_nthreads=omp_nthreads)
        tick("n4")
        out["mask"], out["brain_info"], reg = extract_brain(
            out["preproc"], template, mode=mode, seed=seed, omp_nthreads=omp_nthreads, out_dir=out_dir)
        out["registration"] = reg
        tick("brain+registration")
        priors = {k: apply_to_native(getattr(template, k.lower()), reg, img, omp_nthreads=omp_nthreads)
                  for k in ("GM", "WM", "CSF")}
        tick("priors")
        # second N4 restricted to the brain (as antsCorticalThickness does): the head-wide fit is
        # pulled by scalp/skull; measured on the 1 mm phantom GM/WM Dice .893/.894 -> .914/.930
        out["brain_n4"], _ = n4_bias_correct(out["preproc"], out["mask"], grid_mm=grid_mm,
                                             omp_nthreads=omp_nthreads)
        tick("brain_n4")
        out["probs"], out["dseg"] = segment_tissues(out["brain_n4"], out["mask"], priors, seed=seed,
                                                    omp_nthreads=omp_nthreads)
        out["volumes"] = tissue_volumes(out["probs"])
        tick("atropos")
        out["jacobian"] = jacobian_determinant(reg, _load(out_tpl.gm), omp_nthreads=omp_nthreads)
        for k in ("GM", "WM"):
            out[f"{k.lower()}_unmod"], out[f"{k.lower()}_mod"] = modulate(
                out["probs"][k], reg, out_tpl.gm, jacobian=out["jacobian"], omp_nthreads=omp_nthreads)
        tick("modulation")
    return out
