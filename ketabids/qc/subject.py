"""All QC metrics of one processed T1w, from the files the participant workflow already has.

:func:`compute_subject_qc` is what a QC interface calls: header metrics of the raw input, the
MRIQC-style IQMs of the bias-corrected T1w, tissue volumes/fractions and contrast order, and the
registration metrics on the template grid (field of view and brain mask warped with the forward
transform: two linear resamplings; the Jacobian and the normalised T1w are reused when given).
"""
from __future__ import annotations

import time

import nibabel as nib
import numpy as np

from ketabids.qc.coverage import registration_metrics, warp_to_template
from ketabids.qc.header import header_metrics
from ketabids.qc.iqms import anatomical_iqms
from ketabids.qc.segmentation import contrast_from_medians, tissue_metrics


def _load(img):
    """A nibabel image with its data in memory (each file is read and decompressed once)."""
    if img is None:
        return None
    if not isinstance(img, nib.spatialimages.SpatialImage):
        img = nib.load(str(img))
    if isinstance(img.dataobj, np.ndarray):
        return img
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)


def sample_on_grid(img, reference) -> np.ndarray:
    """``img`` sampled at the voxel centres of ``reference`` (nearest neighbour through the
    affines; 0 outside): e.g. a 1 mm Jacobian on the 2 mm template grid (same origin, so the
    2 mm voxel centres are 1 mm voxel centres and nothing is interpolated)."""
    from scipy import ndimage

    if img.shape[:3] == reference.shape[:3] and np.allclose(img.affine, reference.affine):
        return np.asarray(img.dataobj, dtype=np.float32)
    ijk = np.indices(reference.shape[:3], dtype=np.float32).reshape(3, -1)
    vox = np.linalg.inv(img.affine) @ reference.affine
    coords = vox[:3, :3] @ ijk + vox[:3, 3:4]
    out = ndimage.map_coordinates(np.asarray(img.dataobj, dtype=np.float32), coords, order=0,
                                  mode="constant", cval=0.0)
    return out.reshape(reference.shape[:3])


def registration_grid(template):
    """The 2 mm version of ``template`` (the registration metrics need no finer grid; ANTs
    resampling onto 1 mm costs 8x more), or ``template`` itself if none is available."""
    if getattr(template, "resolution", 2) == 2:
        return template
    from ketabids.templates import get_template

    try:
        return get_template(template.name, 2)
    except Exception:
        return template


def compute_subject_qc(*, raw_t1w, t1w, brain_mask, tpms: dict, bias=None,
                       anat2std_xfm=None, template=None, jacobian=None, std_t1w=None,
                       omp_nthreads: int = 1) -> dict:
    """Every QC metric of one T1w, as a flat dict (keys documented in the ``ketabids.qc``
    modules), plus ``qc_seconds`` (wall time of this call).

    ``raw_t1w``: the input file (header metrics); ``t1w``: the conformed, bias-corrected T1w
    (``desc-preproc_T1w``); ``brain_mask``; ``tpms``: ``{"GM","WM","CSF"}`` native probability
    maps; ``bias``: N4 bias field (optional); ``anat2std_xfm``: forward transform file(s);
    ``template``: a :class:`ketabids.templates.Template` (registration metrics are computed on
    its 2 mm grid, see :func:`registration_grid`); ``jacobian``: det(J) on a grid of that
    template (optional, e.g. the modulation's; sampled at the 2 mm voxel centres);
    ``std_t1w``: the normalised T1w on a grid of that template (optional; warped otherwise).

    Cost: one ANTs resampling (field of view + brain mask in one image: ``v = F + B``, B inside
    F, so ``F = v >= 0.5`` and ``B = v >= 1.5``), the rest is NumPy.
    """
    start = time.perf_counter()
    cpu = time.process_time()
    out = dict(header_metrics(raw_t1w))
    t1w = _load(t1w)
    mask = _load(brain_mask)
    tpms = {k: _load(v) for k, v in tpms.items()}
    iqms = anatomical_iqms(t1w, brain_mask=mask, tpms=tpms, bias=_load(bias))
    out.update(iqms)
    out.update(tissue_metrics(tpms))
    out.update(contrast_from_medians(iqms["summary_wm_median"], iqms["summary_gm_median"],
                                     iqms["summary_csf_median"]))
    if anat2std_xfm is not None and template is not None:
        grid = registration_grid(template)
        tpl_mask = _load(grid.mask)
        both = np.ones(t1w.shape[:3], np.float32) + (np.asarray(mask.dataobj) > 0)
        warped = np.asarray(warp_to_template(
            nib.Nifti1Image(both, t1w.affine), anat2std_xfm, tpl_mask,
            omp_nthreads=omp_nthreads).dataobj, dtype=np.float32)
        std = _load(std_t1w)
        std = (sample_on_grid(std, tpl_mask) if std is not None else
               warp_to_template(t1w, anat2std_xfm, tpl_mask, omp_nthreads=omp_nthreads))
        jac = _load(jacobian)
        jac = sample_on_grid(jac, tpl_mask) if jac is not None else None
        out.update(registration_metrics(
            template_mask=tpl_mask, warped_fov=warped, warped_brain_mask=(warped >= 1.5),
            jacobian=jac, std_t1w=std, template_t1w=_load(grid.brain)))
    out["qc_seconds"] = round(time.perf_counter() - start, 3)
    out["qc_cpu_seconds"] = round(time.process_time() - cpu, 3)
    return out
