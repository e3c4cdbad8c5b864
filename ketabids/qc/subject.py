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

from ketabids.qc.coverage import registration_metrics, warp_fov_to_template, warp_to_template
from ketabids.qc.header import header_metrics
from ketabids.qc.iqms import anatomical_iqms
from ketabids.qc.segmentation import contrast_metrics, tissue_metrics


def _load(img):
    if img is None or isinstance(img, nib.spatialimages.SpatialImage):
        return img
    return nib.load(str(img))


def compute_subject_qc(*, raw_t1w, t1w, brain_mask, tpms: dict, bias=None,
                       anat2std_xfm=None, template=None, jacobian=None, std_t1w=None,
                       omp_nthreads: int = 1) -> dict:
    """Every QC metric of one T1w, as a flat dict (keys documented in the ``ketabids.qc``
    modules), plus ``qc_seconds`` (wall time of this call).

    ``raw_t1w``: the input file (header metrics); ``t1w``: the conformed, bias-corrected T1w
    (``desc-preproc_T1w``); ``brain_mask``; ``tpms``: ``{"GM","WM","CSF"}`` native probability
    maps; ``bias``: N4 bias field (optional); ``anat2std_xfm``: forward transform file(s);
    ``template``: a :class:`ketabids.templates.Template` (its grid is used for the registration
    metrics); ``jacobian``: det(J) on that grid (optional, e.g. the modulation's); ``std_t1w``:
    the normalised T1w on that grid (optional; warped here otherwise).
    """
    start = time.perf_counter()
    out = dict(header_metrics(raw_t1w))
    t1w = _load(t1w)
    mask = _load(brain_mask)
    tpms = {k: _load(v) for k, v in tpms.items()}
    out.update(anatomical_iqms(t1w, brain_mask=mask, tpms=tpms, bias=_load(bias)))
    out.update(tissue_metrics(tpms))
    out.update(contrast_metrics(t1w, tpms, mask))
    if anat2std_xfm is not None and template is not None:
        tpl_mask = _load(template.mask)
        fov = warp_fov_to_template(t1w, anat2std_xfm, tpl_mask, omp_nthreads=omp_nthreads)
        warped_mask = warp_to_template(
            nib.Nifti1Image((np.asarray(mask.dataobj) > 0).astype(np.float32), mask.affine),
            anat2std_xfm, tpl_mask, omp_nthreads=omp_nthreads)
        std = _load(std_t1w)
        if std is None or std.shape[:3] != tpl_mask.shape[:3]:
            std = warp_to_template(t1w, anat2std_xfm, tpl_mask, omp_nthreads=omp_nthreads)
        jac = _load(jacobian)
        if jac is not None and jac.shape[:3] != tpl_mask.shape[:3]:
            jac = None
        out.update(registration_metrics(template_mask=tpl_mask, warped_fov=fov,
                                        warped_brain_mask=warped_mask, jacobian=jac,
                                        std_t1w=std, template_t1w=_load(template.brain)))
    out["qc_seconds"] = round(time.perf_counter() - start, 3)
    return out
