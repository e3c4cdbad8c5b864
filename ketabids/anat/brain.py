"""Bias-field correction and template-based brain extraction.

* :func:`n4_bias_correct`: N4 (Tustison 2010) on the head foreground, on a grid shrunk by
  ``shrink``; ``corrected = image / bias``.
* :func:`extract_brain`: the subject (head with skull, scalp and neck, or an already
  skull-stripped brain) is registered to the brain-only template with the metric restricted to
  the template brain mask dilated by ``DILATE_MM`` (so skull and neck do not pull), affine + SyN
  (:func:`ketabids.anat.registration.register_to_template`); the affine stage runs on the whole
  head and on its interior (``HEAD_INTERIOR_MM`` below the surface, :func:`head_interior`) and
  SyN starts from the one that scales the template less (the template's brain-to-zero edge
  must not settle on the scalp-to-air edge); the template brain mask is carried back
  through the inverse transform (linear, threshold 0.5), then holes filled and the largest
  component kept, then extended into the surrounding CSF (:func:`intracranial_mask`) so the
  mask, and TIV, include sulcal and extra-cerebral CSF as SPM/CAT12 and fMRIPrep count them. The
  same registration is returned so it can be reused for normalisation.
* Already skull-stripped input is detected *before* registration: the foreground (voxels above
  1 % of the 99th intensity percentile, largest component, holes filled) is smaller than
  ``STRIPPED_MAX_ML`` and >= 95 % of the voxels outside it hold one single value (zero fill). Then
  the mask is that foreground (the input's own extraction is respected) and the registration
  uses no metric mask. ``info["skull_stripped_input"]`` reports it.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from ketabids.anat.antsutil import (
    ants_env,
    bounding_box,
    box_affine,
    import_ants,
    make_image,
    to_ants,
)
from ketabids.anat.registration import apply_to_native, register_to_template
from ketabids.anat.settings import ProcessingSettings

DILATE_MM = 8.0
#: voxels around the head foreground's bounding box where the template brain mask is carried back
FG_MARGIN_VOX = 8
STRIPPED_MAX_ML = 2300.0
#: B-spline of the head-wide N4 bias field: ``None`` = antspyx's default, one span per axis at
#: the first level, refined over ``len(N4_ITERATIONS)`` levels
N4_SPLINE_MM = None
N4_ITERATIONS = (50, 50, 30)
#: the second N4, inside the brain mask and weighted by the GM + WM priors (the input of the
#: segmentation): 200 mm B-spline distance refined over 4 levels (25 mm knots at the end), as
#: fMRIPrep's/ANTs' brain-extraction N4 (see :func:`n4_bias_correct` for the measurements)
TISSUE_N4_SPLINE_MM = 200.0
TISSUE_N4_ITERATIONS = (50, 50, 50, 50)
#: the brain extraction's second affine stage sees the head deeper than this below its surface
#: on the subject side (see :func:`head_interior`, :func:`extract_brain`)
HEAD_INTERIOR_MM = 5.0
#: intracranial extension of the registration brain mask (see :func:`intracranial_mask`)
RING_MM = 2.0
CSF_FLOOR = 0.3


def voxel_ml(img: nib.Nifti1Image) -> float:
    """Volume of one voxel in mL."""
    return float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    # component sizes by bincount: 0.1 s on 256^3 where ndimage.sum_labels took 1 s
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def head_foreground(img: nib.Nifti1Image, fraction: float = 0.1) -> np.ndarray:
    """Boolean head (or brain) foreground, robust to Rician background noise.

    ``thr = fraction x`` the 98th percentile (above the minimum) of the image smoothed by 1
    voxel; the largest component of ``smoothed > thr`` (ignores noise specks), intersected with
    ``image > thr`` (keeps the true edge), closed by 1 voxel and holes filled (dark skull and
    ventricles inside the head count as foreground)."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    lo = float(data.min())
    smooth = ndimage.gaussian_filter(data - lo, 1.0)
    pos = smooth[smooth > 0]
    if pos.size == 0:
        return np.zeros(data.shape, bool)
    thr = fraction * float(np.percentile(pos, 98))
    above = smooth > thr
    # the rest works on the box of ``above`` + 2 voxels (the closing reaches 1 voxel out, the
    # box's outer shell stays background, so components and holes are the whole grid's):
    # 2.3-3.3 -> 1.1-1.5 s on AOMIC sub-0001's 256^3 head (computed twice per subject)
    box = bounding_box(above, margin=2)
    fg = _largest_component(above[box]) & (data[box] - lo > thr)
    fg = _largest_component(ndimage.binary_closing(fg, iterations=1, border_value=0) | fg)
    out = np.zeros(data.shape, bool)
    out[box] = ndimage.binary_fill_holes(fg)
    return out


def n4_bias_correct(img: nib.Nifti1Image, mask: nib.Nifti1Image | None = None, *,
                    weight: nib.Nifti1Image | None = None, shrink: int | None = None,
                    grid_mm: float = ProcessingSettings.for_mode("default").n4_grid_mm,
                    spline_mm: float | None = N4_SPLINE_MM, iterations=N4_ITERATIONS,
                    omp_nthreads: int = 1):
    """N4 bias-field correction. Returns ``(corrected, bias_field)`` with ``corrected = img /
    bias`` inside ``mask`` (default: the head foreground) and ``img`` outside it.

    ``weight`` (optional, same grid): N4's confidence image, the weight of each voxel in the
    histogram sharpening and the B-spline fit (e.g. the GM + WM priors, so the field is fitted
    on brain tissue and not on CSF or vessels, as fMRIPrep's brain extraction weights its last
    N4 by tissue posteriors).

    ``shrink`` (None = automatic): N4 fits on a grid shrunk by this factor; automatic picks
    ``round(grid_mm / smallest voxel size)`` so the fit runs on a ~``grid_mm`` grid whatever
    the input resolution (the cost is set by the number of shrunk voxels).

    ``spline_mm``: B-spline control-point distance (mm) of the first fitting level, halved at
    each of the ``len(iterations)`` levels; ``None``: antspyx's default mesh of one span per
    axis (3 levels: ~4 spans at the end). The one-span head-wide field leaves a residual bias
    on real scans: AOMIC sub-0001's WM (fMRIPrep/FAST's labels) has a median of 275 in the top
    sixth of the brain against ~325 mid-brain, GM 178 against ~205. The segmentation's input is
    therefore corrected again inside the brain mask with :data:`TISSUE_N4_SPLINE_MM` /
    :data:`TISSUE_N4_ITERATIONS` and the GM + WM priors as ``weight`` (with the WM prior alone
    as weight the field in the top sixth was 0.88 of its mean). Measured with the same
    segmentation (partial-volume mixture, :mod:`ketabids.anat.segmentation`), GM/WM Dice against
    FAST and GM/WM volume error (AOMIC) | phantom GM/WM Dice and GM error (1 mm, truth known):

    * one-span field inside the mask: .832/.893, GM -5.5 %, WM -6.0 % | .925/.924, GM -1.4 %;
    * 200 mm x 4 levels weighted by the GM + WM priors: .851/.906, -5.2 %, -1.6 % |
      .918/.910, -3.9 % (the phantom's tissue fractions are smooth template probabilities,
      which a fine field partly takes for bias);
    * weighted by the WM prior only: .862/.912, WM 0 % | .906/.896, GM -5.4 % (the field is
      extrapolated from WM into the cortex: phantom GM intensity CV 0.053 -> 0.071);
    * unweighted 100 mm x 4 levels (head-wide): the real scan's WM -18 % -> -1 % with Atropos,
      but the phantom's GM/WM intensity ratio 0.72 -> 0.84 (contrast absorbed);
    * 3 levels instead of 4: .844/.899; an 8 mm fitting grid instead of 4 mm: .850/.905 |
      .910/.900, 5x quicker (the fast mode's choice).

    Intensities are shifted to be positive first (N4 works on log intensities) and shifted back.
    """
    ants = import_ants()

    if shrink is None:
        zoom = float(min(np.sqrt((img.affine[:3, :3] ** 2).sum(0))))
        shrink = max(1, int(round(grid_mm / zoom)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    m = (np.asarray(mask.dataobj) > 0) if mask is not None else head_foreground(img)
    offset = float(data[m].min()) if m.any() else 0.0
    shift = 1.0 - offset if offset < 1.0 else 0.0
    # with a given mask (the brain), fit on the mask's bounding box only: the same voxels in the
    # fit at a fraction of the cost (a 1 mm brain box is a quarter of a 256^3 head grid)
    box = (bounding_box(m, margin=2 * int(shrink)) if mask is not None and m.any()
           else (slice(None),) * 3)
    sub_aff = box_affine(img.affine, box)
    mb = m[box]
    with ants_env(None, omp_nthreads):  # to_ants is an ITK call: inside, so threads are set
        shifted = np.where(mb, data[box] + shift, 0).astype(np.float32, copy=False)
        a_img = to_ants(make_image(shifted, sub_aff))
        a_mask = to_ants(make_image(mb.astype(np.float32), sub_aff))
        a_weight = None
        if weight is not None:
            w = np.clip(np.asarray(weight.dataobj, dtype=np.float32)[box], 0, None) * mb
            a_weight = to_ants(make_image(w.astype(np.float32), sub_aff))
        bias = ants.n4_bias_field_correction(
            a_img, mask=a_mask, weight_mask=a_weight, shrink_factor=int(shrink),
            spline_param=None if spline_mm is None else float(spline_mm),
            convergence={"iters": list(iterations), "tol": 1e-7}, return_bias_field=True,
        )
    # outside the mask (hence outside the box) the bias is 1 and the image unchanged; in place
    # and on the selected voxels only (a 256^3 head: 1.1-1.3 s instead of 1.8-2.2 s, same values)
    b_box = bias.numpy().astype(np.float32, copy=False)  # a copy of ANTs' buffer: ours to edit
    b_box[~(mb & (b_box > 0))] = 1.0
    b = np.ones(data.shape, np.float32)
    b[box] = b_box
    # voxels at the image minimum (zero-filled background of a skull-stripped scan) stay as they
    # are, and no voxel is pushed below the original minimum
    lo = float(data.min())
    d = data[box]
    corrected = data.copy()
    sel = mb & (d > lo)
    values = (d[sel] + shift) / b_box[sel] - shift
    np.maximum(values, lo, out=values)
    corrected[box][sel] = values
    return make_image(corrected, img.affine), make_image(b, img.affine)


def intracranial_mask(img: nib.Nifti1Image, mask: np.ndarray, *, ring_mm: float = RING_MM,
                      floor: float = CSF_FLOOR) -> np.ndarray:
    """The brain mask extended into the surrounding CSF: the intracranial volume as SPM/CAT12
    and fMRIPrep's brain mask count it (sulcal and extra-cerebral CSF included).

    The template brain mask carried back by registration follows the gyral crowns (the
    template's brain is the average brain, its mask its non-zero voxels). Voxels within
    ``ring_mm`` of it (Euclidean distance) are added when brighter than ``floor x`` the median
    intensity inside the mask: CSF on a T1w sits at ~0.55 of that median, bone and air below
    ~0.3; then the component touching the brain is kept and holes are filled. The segmentation
    labels the added voxels (mostly CSF), so the GM map stays clean while TIV = GM + WM + CSF
    counts the fluid. Measured on AOMIC sub-0001 against fMRIPrep's mask (1444 mL): Dice 0.950 ->
    0.971, volume 1329 -> 1445 mL, reference GM outside the mask 58 -> 12 mL; a 3 mm ring
    overshoots (1498 mL, Dice 0.969). Through the CLI (default mode): mask Dice 0.971, TIV
    1443 mL (-0.1 %); on the 1 mm phantom brain-mask Dice 0.992, TIV +1.2 % of the truth.
    """
    m = np.asarray(mask, bool)
    if not m.any():
        return m
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    # everything happens within ring_mm of the mask: work on its bounding box grown by the
    # ring plus one background voxel (same result as on the whole grid: the nearest mask voxel
    # of any box voxel is in the box, and the box's outer shell is background, so holes are
    # the same); the distance transform of a 1 mm head grid took 4.5 s, of the box 0.3-0.8 s
    box = bounding_box(m, margin=int(np.ceil(ring_mm / float(zooms.min()))) + 1)
    sub = m[box]
    data = np.asarray(img.dataobj[box], dtype=np.float32)
    dist = ndimage.distance_transform_edt(~sub, sampling=zooms)
    level = float(np.median(data[sub]))
    grown = sub | ((dist <= ring_mm) & (data > floor * level))
    labels, _ = ndimage.label(grown)
    keep = np.unique(labels[sub])
    out = np.zeros(m.shape, bool)
    out[box] = ndimage.binary_fill_holes(np.isin(labels, keep[keep > 0]))
    return out


def head_interior(img: nib.Nifti1Image, fg: np.ndarray, *, depth_mm: float = HEAD_INTERIOR_MM,
                  grid_mm: float = 2.0) -> nib.Nifti1Image:
    """The head foreground ``fg`` deeper than ``depth_mm`` below the head's surface: a uint8 mask
    on ``img``'s grid subsampled to about ``grid_mm`` (every ``floor(grid_mm / voxel)``-th
    voxel, so its voxel centres are ``img``'s; the registration resamples it to its own grid).

    The surface is where the head meets background voxels of the image; where the head runs
    into the edge of the field of view there is no surface (the scan was cut, not the head).
    :func:`extract_brain` runs its affine stage once more with the subject side of the metric
    restricted to it (see there why).
    """
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    step = np.maximum(1, np.floor(grid_mm / zooms + 1e-6)).astype(int)
    sub = np.asarray(fg, bool)[::step[0], ::step[1], ::step[2]]
    # the box's one-voxel shell is background wherever the head does not reach the grid's edge
    box = bounding_box(sub, margin=1)
    out = np.zeros(sub.shape, np.uint8)
    out[box] = ndimage.distance_transform_edt(sub[box], sampling=zooms * step) > depth_mm
    affine = np.array(img.affine, float)
    affine[:3, :3] = affine[:3, :3] * step
    return make_image(out, affine)


def detect_skull_stripped(img: nib.Nifti1Image, fg: np.ndarray | None = None
                          ) -> tuple[bool, dict]:
    """Is ``img`` an already brain-extracted scan? Returns ``(flag, evidence)``.
    ``fg``: :func:`head_foreground` of ``img`` if already computed."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    fg = head_foreground(img) if fg is None else fg
    fg_ml = float(fg.sum()) * voxel_ml(img)
    outside = data[~fg]
    at_min = 0.0
    if outside.size:  # share of the background holding one single value (zero fill)
        _, counts = np.unique(outside, return_counts=True)
        at_min = float(counts.max() / outside.size)
    stripped = bool(fg_ml < STRIPPED_MAX_ML and at_min >= 0.95)
    return stripped, {"foreground_ml": round(fg_ml, 1),
                      "background_at_min_fraction": round(at_min, 4)}


def _dilated_template_mask(template, resolution: float):
    ants = import_ants()

    from ketabids.anat.registration import template_on_grid

    m = template_on_grid(template.mask, resolution, interp="nearest")
    radius = max(1, int(round(DILATE_MM / resolution)))
    return ants.iMath(ants.threshold_image(m, 0.5, 1e9), "MD", radius)


def extract_brain(img: nib.Nifti1Image, template, *,
                  processing: ProcessingSettings | None = None, seed: int | None = None,
                  omp_nthreads: int = 1, out_dir=None):
    """Brain mask of ``img`` (bias-corrected T1w, nibabel) by registration to ``template``.

    ``processing``: the mode's :class:`~ketabids.anat.settings.ProcessingSettings` (None: the
    default mode). Returns ``(mask, info, registration)``: uint8 mask on ``img``'s grid;
    ``info`` with
    ``skull_stripped_input`` (bool), the detection evidence, ``brain_ml`` and ``mode``;
    ``registration``: the :class:`~ketabids.anat.registration.RegistrationResult` of the
    affine + SyN registration used (reuse it for normalisation and prior warping).

    The affine stage runs twice, on the whole head and on its interior (:func:`head_interior`,
    ``HEAD_INTERIOR_MM`` below the surface, on the subject side of the metric), and SyN starts
    from the one that scales the template less
    (:func:`~ketabids.anat.registration.register_to_template`, ``affine_moving_mask``). The
    brain-only template's brain-to-zero edge also fits a head's scalp-to-air edge, and the
    masked Mattes MI can settle there, stretching the template brain over the head: a failure
    that depends on the random seed and is always an enlargement. The whole head alone lets
    some seeds stretch the template brain over the head; the interior alone lets others leak
    (ITK drops the template points mapped outside a moving mask, so leaving the interior costs
    nothing); keeping the candidate that scales the template less catches both, at the cost of
    a second affine stage (docs/benchmarks.md, "Processing modes", has the measured masks),
    unless that candidate fits the template brain clearly worse than the other: an affine
    stage can also settle on a shrunken template that does not fit at all
    (:func:`~ketabids.anat.registration.pick_affine_candidate`).
    """
    processing = processing or ProcessingSettings.for_mode("default")
    res = processing.registration_mm
    fg = head_foreground(img)
    stripped, evidence = detect_skull_stripped(img, fg)
    if stripped:
        reg = register_to_template(img, template, processing=processing, seed=seed,
                                   omp_nthreads=omp_nthreads, out_dir=out_dir)
        mask = fg
    else:
        with ants_env(seed, omp_nthreads):  # ITK fixes its thread count at its first call
            metric_mask = _dilated_template_mask(template, res)
        reg = register_to_template(img, template, processing=processing, mask=metric_mask,
                                   affine_moving_mask=head_interior(img, fg, grid_mm=res),
                                   seed=seed, omp_nthreads=omp_nthreads, out_dir=out_dir)
        # carried back on the head's bounding box (+ FG_MARGIN_VOX) only: the brain lies inside
        # the head (AOMIC sub-0001: 2.4 -> 1.5 CPU s)
        warped = apply_to_native(template.mask, reg, img, interpolation="linear",
                                 omp_nthreads=omp_nthreads, within=fg, margin=FG_MARGIN_VOX)
        mask = np.asarray(warped.dataobj) >= 0.5
        mask = ndimage.binary_fill_holes(_largest_component(mask))
        mask = intracranial_mask(img, mask)
    out = make_image(mask.astype(np.uint8), img.affine)
    info = {
        "skull_stripped_input": stripped,
        "detection": evidence,
        "brain_ml": round(float(mask.sum()) * voxel_ml(img), 1),
        "mode": processing.mode,
        "method": ("input already skull-stripped: mask = its non-background voxels"
                   if stripped else
                   f"template brain mask carried back from a {res:g} mm affine+SyN registration "
                   f"(subject padded with {reg.info['background_pad_mm'] or 0:g} mm of "
                   "background; "
                   f"metric masked by the template brain mask dilated {DILATE_MM:g} mm; the "
                   "affine stage run on the whole head and on the head deeper than "
                   f"{HEAD_INTERIOR_MM:g} mm, the smaller scaling kept), extended "
                   f"{RING_MM:g} mm into voxels above {CSF_FLOOR:g} x its median intensity "
                   "(sulcal and extra-cerebral CSF)"),
    }
    return out, info, reg
