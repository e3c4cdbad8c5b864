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

from ketabids.qc.coverage import registration_metrics, registration_shape, warp_to_template
from ketabids.qc.header import header_metrics
from ketabids.qc.iqms import anatomical_iqms
from ketabids.qc.segmentation import contrast_from_medians, mask_rim_bright, tissue_metrics


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
    2 mm voxel centres are 1 mm voxel centres and nothing is interpolated).

    When the reference voxels are exactly every n-th voxel of ``img`` (an integer diagonal
    voxel-to-voxel matrix and offset, as for the template's 2 mm and 1 mm grids) the samples are
    taken by slicing: the same values as ``map_coordinates`` at those integer coordinates."""
    from scipy import ndimage

    if img.shape[:3] == reference.shape[:3] and np.allclose(img.affine, reference.affine):
        return np.asarray(img.dataobj, dtype=np.float32)
    vox = np.linalg.inv(img.affine) @ reference.affine
    data = np.asarray(img.dataobj, dtype=np.float32)
    strided = _strided_samples(data, vox, reference.shape[:3])
    if strided is not None:
        return strided
    ijk = np.indices(reference.shape[:3], dtype=np.float32).reshape(3, -1)
    coords = vox[:3, :3] @ ijk + vox[:3, 3:4]
    out = ndimage.map_coordinates(data, coords, order=0, mode="constant", cval=0.0)
    return out.reshape(reference.shape[:3])


def _strided_samples(data, vox, shape):
    """``data[o + s * i]`` per axis (0 where ``o + s * i`` falls outside ``data``) when the
    voxel-to-voxel matrix ``vox`` is an exact positive integer diagonal ``s`` with an integer
    offset ``o``; None otherwise."""
    lin, offset = vox[:3, :3], vox[:3, 3]
    step = np.diag(lin)
    if not (np.array_equal(lin, np.diag(step)) and np.array_equal(step, np.round(step))
            and np.all(step >= 1) and np.array_equal(offset, np.round(offset))):
        return None
    out = np.zeros(shape, np.float32)
    src, dst = [], []
    for n_out, n_in, s, o in zip(shape, data.shape[:3], step.astype(int), offset.astype(int)):
        # output i is inside when 0 <= o + s i <= n_in - 1
        first, last = max(0, -(o // s)), min(n_out - 1, (n_in - 1 - o) // s)
        if last < first:
            return out
        dst.append(slice(first, last + 1))
        src.append(slice(o + s * first, o + s * last + 1, s))
    out[tuple(dst)] = data[tuple(src)]
    return out


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


class _Loader:
    """Reads the given files (paths or images; None stays None) with :func:`_load`:
    ``with _Loader(files, n) as get: get("t1w")``. With ``n_threads`` > 1 they are read in that
    many background threads, in the given order, while the caller computes with the ones
    already read (decompressing gzip releases the GIL); with 1 thread each is read when first
    asked for, in the caller's thread (the node then uses the one core it was given). Same
    values either way. Leaving the block cancels the reads not started."""

    def __init__(self, files: dict, n_threads: int = 1):
        self.files = files
        self.n_threads = max(1, int(n_threads))
        self.pool = None

    def __enter__(self):
        if self.n_threads == 1:
            cache = {}

            def get(key):
                if key not in cache:
                    cache[key] = _load(self.files[key])
                return cache[key]

            return get
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=self.n_threads,
                                       thread_name_prefix="ketabids-qc-load")
        futures = {key: self.pool.submit(_load, value) for key, value in self.files.items()}
        return lambda key: futures[key].result()

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return False


def prepare_metrics(info) -> dict:
    """The QC metrics of the prepare step (:func:`ketabids.anat.prepare.prepare_t1w`) from its
    info dict or JSON file: ``fov_cropped_mm`` (inferior field of view cropped, mm),
    ``intensity_truncated_fraction`` (voxels truncated / head voxels) and
    ``intensity_max_ratio`` (brightest raw voxel / the truncation threshold)."""
    if not isinstance(info, dict):
        import json
        from pathlib import Path

        info = json.loads(Path(info).read_text())
    fov, trunc = info.get("fov", {}), info.get("truncation", {})
    return {"fov_cropped_mm": fov.get("cropped_mm"),
            "intensity_truncated_fraction": trunc.get("truncated_fraction"),
            "intensity_max_ratio": trunc.get("max_ratio")}


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
    F, so ``F = v >= 0.5`` and ``B = v >= 1.5``) and one point mapping (the registration's
    shape, :func:`ketabids.qc.coverage.registration_shape`); the rest is NumPy.
    """
    start = time.perf_counter()
    cpu = time.process_time()
    grid = None
    if anat2std_xfm is not None and template is not None:
        grid = registration_grid(template)
    files = {"t1w": t1w, "mask": brain_mask, **{f"tpm_{k}": v for k, v in tpms.items()},
             "bias": bias}
    if grid is not None:
        files.update(tpl_mask=grid.mask, std=std_t1w, jac=jacobian, tpl_brain=grid.brain)
    with _Loader(files, omp_nthreads) as get:
        out = dict(header_metrics(raw_t1w))
        t1w, mask = get("t1w"), get("mask")
        tpms = {k: get(f"tpm_{k}") for k in tpms}
        iqms = anatomical_iqms(t1w, brain_mask=mask, tpms=tpms, bias=get("bias"))
        out.update(iqms)
        out.update(tissue_metrics(tpms))
        out.update(contrast_from_medians(iqms["summary_wm_median"], iqms["summary_gm_median"],
                                         iqms["summary_csf_median"]))
        out["mask_rim_bright"] = mask_rim_bright(t1w, mask, iqms["summary_wm_median"])
        if grid is not None:
            tpl_mask = get("tpl_mask")
            both = np.ones(t1w.shape[:3], np.float32) + (np.asarray(mask.dataobj) > 0)
            warped = np.asarray(warp_to_template(
                nib.Nifti1Image(both, t1w.affine), anat2std_xfm, tpl_mask,
                omp_nthreads=omp_nthreads).dataobj, dtype=np.float32)
            del both
            std = get("std")
            std = (sample_on_grid(std, tpl_mask) if std is not None else
                   warp_to_template(t1w, anat2std_xfm, tpl_mask, omp_nthreads=omp_nthreads))
            jac = get("jac")
            jac = sample_on_grid(jac, tpl_mask) if jac is not None else None
            out.update(registration_metrics(
                template_mask=tpl_mask, warped_fov=warped, warped_brain_mask=(warped >= 1.5),
                jacobian=jac, std_t1w=std, template_t1w=get("tpl_brain")))
            out.update(registration_shape(anat2std_xfm, tpl_mask, omp_nthreads=omp_nthreads))
    out["qc_seconds"] = round(time.perf_counter() - start, 3)
    out["qc_cpu_seconds"] = round(time.process_time() - cpu, 3)
    return out
