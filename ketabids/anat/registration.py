"""Nonlinear normalisation of a T1w to a template with ANTs SyN, transforms kept as files.

Conventions (ANTs): ``fixed`` = the template, ``moving`` = the subject. The *forward* transform
maps template points to subject points, so it resamples a subject image onto the template grid
(``apply_to_template``); the *inverse* resamples template images (priors, masks, atlases) onto
the subject grid (``apply_to_native``). Both are written as ANTs composite HDF5 files
(``write_composite_transform=True``): ``from-T1w_to-<TPL>_mode-image_xfm.h5`` (forward) and
``from-<TPL>_to-T1w_mode-image_xfm.h5`` (inverse), each holding the affine and the SyN field
(and any initial transform), readable by ``antsApplyTransforms`` and ``ants.apply_transforms``.

The registration always runs on grids of ``registration_mm`` mm
(:class:`~ketabids.anat.settings.ProcessingSettings` of the mode): the template and
(when finer) the subject are resampled to it, so both get the same shrink/smoothing per level.
Transforms live in world coordinates, so they apply to the full-resolution images unchanged.

Modes (numbers in :class:`~ketabids.anat.settings.ProcessingSettings`); the affine stage is
the one antspyx runs before SyN (:data:`AFFINE_STAGE`: Mattes MI, up to 2100x1200x1200x0
iterations at shrink factors 4x2x2x1 of the registration grid). The affine + SyN (and SyN-only)
registration is antspyx's ``"SyN"`` (``"SyNOnly"``) command line built here
(:func:`syn_arguments`) and run through antspyx's library entry point (:func:`run_syn`), so
that SyN's convergence test is the mode's (``syn_convergence``, ANTs' and fMRIPrep's
``1e-6, 10``) and not antspyx's fixed ``1e-7, 8``; with ``1e-7, 8`` the transforms are
``ants.registration``'s, bit for bit:

* ``default``: 2 mm grid: affine at 8/4/4 mm, then SyN (Mattes MI) with up to 100x70x50x20
  iterations at 16/8/4/2 mm.
* ``fast``: for demos/CI, reduced accuracy by design (``mode`` is recorded in every info dict):
  2.5 mm grid: affine at 10/5/5 mm, then SyN with 40x20x6 iterations at 10/5/2.5 mm, its
  gradient step (0.53) and update-field variance (1.92 voxels^2) set so that it regularises
  as the default mode in millimetres (:mod:`ketabids.anat.settings`). A 3 mm grid fails the
  brain extraction of real scans and a 4 mm grid loses GM on phantoms.

``mask`` (a template-space mask, e.g. the dilated template brain mask) restricts the metric to
the brain and its surroundings in every stage, so a head with skull and neck registers to a
brain-only template. With ``affine_moving_mask`` (a subject-space mask, the head's interior in
:func:`ketabids.anat.brain.extract_brain`) the affine stage runs as antsRegistration calls of
its own, the same stage (:data:`AFFINE_STAGE`) on the whole subject and with that mask on the
subject side; SyN continues from the candidate whose linear part has the smaller determinant
(:func:`affine_determinant`: subject volume per template volume), so a template brain
stretched over the whole head loses, unless that candidate lines the brain up clearly worse
than the other (:func:`affine_fit`, the correlation with the template brain lower by more than
:data:`AFFINE_FIT_MARGIN`): an affine stage can also settle on a shrunken template brain that
does not fit at all (a demo phantom: correlation -0.08 against 0.84).

With ``mask`` the template grid is cropped to the mask's bounding box plus
:data:`CROP_MARGIN_VOX` voxels (:func:`crop_to_mask`; 99x117x95 -> 89x106x86 at 2 mm): a SyN
iteration costs in proportion to the template voxels, and the brain masks stay within 1 % of
the whole grid's.

The subject is padded with :data:`PAD_MM` of background (its minimum) on every side before it
is registered (:func:`pad_background`). ITK leaves a template point out of the metric when it
maps outside the subject's grid, but scores it against zeros when the grid goes on,
zero-filled, past the end of the scan: without the pad, the same cut-off head registers
differently whether its file stops at the cut or was resampled onto a larger grid (a
reoriented, conformed or rotated copy). With it, beyond the data reads as background, which
pulls the template in where a cut goes deep into the brain. 20 mm covers the metric mask's
8 mm beyond the template brain and a cut 12 mm into it, at no measurable cost.

Nearly all of the time is SyN's finest level: an iteration there warps both images to the
midpoint, smooths, composes and inverts two displacement fields, all in proportion to the
voxels of the template grid, whatever the metric. That level pays for itself on real scans
(brain-mask Dice and TIV against fMRIPrep). The measurements behind this paragraph and the
ones above are in ``docs/benchmarks.md`` ("Processing modes").
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ketabids.anat.antsutil import (
    ants_env,
    bounding_box,
    box_affine,
    import_ants,
    make_image,
    to_ants,
    to_nib,
)
from ketabids.anat.settings import MODES, ProcessingSettings
from ketabids.io import atomic_path
from ketabids.templates import derived_file

#: the affine stage antspyx (0.6) runs before SyN (iterations, shrink factors and smoothing
#: fixed by antspyx; metric and sampling its defaults); recorded in every registration's info
AFFINE_STAGE = {
    "transform": "Affine[0.25]",
    "metric": "Mattes MI, 32 bins, 20 % regular sampling",
    "iterations": (2100, 1200, 1200, 0),
    "shrink_factors": (4, 2, 2, 1),
    "smoothing_sigmas_vox": (3, 2, 1, 0),
}


#: mm of background added on every side of the subject image before it is registered
#: (:func:`pad_background`); None: the image as it is
PAD_MM: float | None = 20.0

#: voxels of the registration grid kept around the metric mask when the template is cropped to
#: it (:func:`crop_to_mask`); None: the whole template grid
CROP_MARGIN_VOX: int | None = 3

#: an affine candidate with the smaller determinant is passed over when its fit
#: (:func:`affine_fit`) is below the other's by more than this; candidates that both fit differ
#: by ~0.005 (docs/benchmarks.md, "Brain extraction: which affine candidate")
AFFINE_FIT_MARGIN = 0.1


@dataclass
class RegistrationResult:
    """Output of :func:`register_to_template` (paths are ANTs composite HDF5 files).

    ``forward_transforms``: resample subject -> template (``ants.apply_transforms(fixed=template,
    moving=subject, transformlist=forward_transforms)``). ``inverse_transforms``: template ->
    subject. ``warped``: the moving image on the registration template grid
    (``info["fixed_shape"]``). ``info``: mode,
    resolution, settings, similarity metrics.
    """

    forward_transforms: list[Path]
    inverse_transforms: list[Path]
    warped: nib.Nifti1Image
    info: dict = field(default_factory=dict)


def template_on_grid(template_img, resolution: float, interp: str = "linear"):
    """ANTs image of a template map resampled to ``resolution`` mm (same origin); nibabel or
    ANTs or path in. A template already at that resolution is returned unchanged.

    A template given as a file path is resampled once per machine and kept in the derived-file
    cache (:func:`ketabids.templates.derived_file`, written atomically; the ITK NIfTI round trip
    is exact): every registration needs the template and its mask on the registration grid,
    and resampling the 1 mm embedded template takes ~1.3 s per subject (both maps), reading a
    cached map back ~0.01 s.
    """
    ants = import_ants()

    cached = None
    if isinstance(template_img, (str, Path)):
        cached = derived_file(template_img, _grid_tag(resolution, interp))
        if cached is not None and cached.is_file():
            try:
                return ants.image_read(str(cached))
            except Exception:  # noqa: BLE001 - unreadable cache entry: computed again below
                pass
    img = _as_ants(template_img)
    if np.allclose(img.spacing, resolution, atol=1e-3):
        return img
    out = ants.resample_image(
        img, (resolution,) * 3, use_voxels=False, interp_type=0 if interp == "linear" else 1
    )
    if cached is not None:
        try:
            with atomic_path(cached, suffix=".nii.gz") as tmp:
                ants.image_write(out, str(tmp))
        except OSError:  # a full or read-only cache folder costs time, not the result
            pass
    return out


def cache_template_grids(template) -> list[Path]:
    """Resample ``template``'s brain and mask onto every mode's registration grid ahead of
    time (the container image does this when it is built); returns the cached files."""
    out = []
    for res in sorted({ProcessingSettings.for_mode(m).registration_mm for m in MODES}):
        for src, interp in ((template.brain, "linear"), (template.mask, "nearest")):
            template_on_grid(src, res, interp)
            path = derived_file(src, _grid_tag(res, interp))
            if path is not None and path.is_file():
                out.append(path)
    return out


def pad_background(img, mm: float):
    """``img`` (ANTs) with ``mm`` of background (its minimum value) added on every side; world
    coordinates are kept."""
    ants = import_ants()

    width = [int(np.ceil(mm / s - 1e-6)) for s in img.spacing]
    return ants.pad_image(img, pad_width=[(w, w) for w in width], value=float(img.min()))


def crop_to_mask(img, mask, margin: int = CROP_MARGIN_VOX):
    """``img`` and ``mask`` (ANTs images on one grid) cropped to the bounding box of ``mask > 0``
    plus ``margin`` voxels (clipped to the grid); world coordinates are kept.

    Why the registration can run on the cropped template: with a metric mask nothing outside
    it drives the warp, and ANTs' SyN holds the displacement field at zero on the border of its
    domain (the fixed grid), so the field fades to zero inside the margin and outside the box
    only the affine part acts, as it does far from the brain on the whole grid. The cost of a
    SyN iteration is proportional to the number of fixed voxels.
    """
    ants = import_ants()

    m = mask.numpy() > 0
    if not m.any():
        return img, mask
    box = bounding_box(m, margin)
    lo, hi = [b.start for b in box], [b.stop for b in box]
    return ants.crop_indices(img, lo, hi), ants.crop_indices(mask, lo, hi)


def _grid_tag(resolution: float, interp: str) -> str:
    return f"grid-{resolution:g}mm_interp-{interp}"


def _mask_on(mask, reference):
    """A mask (nibabel/ANTs/path) on ``reference``'s grid (ANTs, nearest neighbour)."""
    ants = import_ants()

    return ants.resample_image_to_target(_as_ants(mask), reference, interp_type="nearestNeighbor")


def _as_ants(img):
    ants = import_ants()

    if isinstance(img, ants.ANTsImage):
        return img
    if isinstance(img, (str, Path)):
        img = nib.load(str(img))
    return to_ants(img)


def register_to_template(
    moving_img,
    template,
    *,
    processing: ProcessingSettings | None = None,
    mask=None,
    affine_moving_mask=None,
    type_of_transform: str | None = None,
    initial_transform=None,
    seed: int | None = None,
    omp_nthreads: int = 1,
    out_dir=None,
) -> RegistrationResult:
    """Register ``moving_img`` (subject, nibabel) to ``template`` (a
    :class:`~ketabids.templates.Template`; its ``brain`` image is the target).

    ``processing``: the mode's :class:`~ketabids.anat.settings.ProcessingSettings` (grid,
    SyN iterations, step, variance, convergence; None: the default mode).
    ``mask``: template-space mask image (nibabel/ANTs/path) restricting the metric in all
    stages. ``affine_moving_mask``: a
    subject-space mask for a second affine stage (``"SyN"`` without ``initial_transform``
    only): the affine stage (:data:`AFFINE_STAGE`, seeded alike) runs as two antsRegistration
    calls of its own, without and with that mask, and SyN follows (``SyNOnly``) from the one
    :func:`pick_affine_candidate` picks, folded into the composite files as before;
    ``info["affine_candidates"]`` records both determinants, both fits and which was kept.
    ``type_of_transform``: ``"SyN"`` (affine + SyN, default), ``"Affine"`` or ``"SyNOnly"``
    (needs ``initial_transform``: list of transform files, applied first and folded into the
    composite). Transforms are written in ``out_dir``
    (a new temporary folder if None) as ``from-T1w_to-template_xfm.h5`` and
    ``from-template_to-T1w_xfm.h5``.
    """
    ants = import_ants()

    settings = processing or ProcessingSettings.for_mode("default")
    res = settings.registration_mm
    kind = type_of_transform or "SyN"
    if affine_moving_mask is not None and (kind != "SyN" or initial_transform is not None):
        # before anything is written (out_dir=None would leave an empty temporary folder)
        raise ValueError("affine_moving_mask needs type_of_transform='SyN' and no "
                         "initial_transform")
    # every ITK call (resampling and conversions too) inside the block: ITK fixes its thread
    # count at the first ITK call of the process
    with ants_env(seed, omp_nthreads):
        fixed = template_on_grid(template.brain, res)
        moving = _as_ants(moving_img)
        if min(moving.spacing) < 0.8 * res:
            # same grid spacing as the fixed image: ANTs shrink factors and smoothing sigmas are in
            # voxels of each image, so a 1 mm subject against a 2 mm template would be smoothed
            # half as much as the template at every level (measured: brain-mask Dice 0.885 vs
            # 0.99).
            moving = ants.resample_image(moving, (res,) * 3, use_voxels=False, interp_type=0)
        if PAD_MM:
            moving = pad_background(moving, PAD_MM)
        fixed_mask = None
        if mask is not None:
            fixed_mask = _mask_on(mask, fixed)
            if CROP_MARGIN_VOX is not None:
                fixed, fixed_mask = crop_to_mask(fixed, fixed_mask, CROP_MARGIN_VOX)
        out_dir = (Path(out_dir) if out_dir is not None
                   else Path(tempfile.mkdtemp(prefix="ketabids-reg-")))
        out_dir.mkdir(parents=True, exist_ok=True)
        prefix = str(out_dir / "reg_")
        init = None
        if initial_transform is not None:
            transforms = (initial_transform if isinstance(initial_transform, (list, tuple))
                          else [initial_transform])
            init = [str(p) for p in transforms]
        run_kind = kind
        affine_files, affine_info = [], None
        if affine_moving_mask is not None:
            names = ("whole", "masked")
            dets, fits = [], []
            for name, subject_mask in zip(names, (None, _mask_on(affine_moving_mask, moving))):
                affine = ants.registration(
                    fixed,
                    moving,
                    type_of_transform="Affine",
                    outprefix=f"{prefix}affine-{name}_",
                    mask=fixed_mask,
                    moving_mask=subject_mask,
                    mask_all_stages=True,
                    aff_iterations=AFFINE_STAGE["iterations"],
                    aff_shrink_factors=AFFINE_STAGE["shrink_factors"],
                    aff_smoothing_sigmas=AFFINE_STAGE["smoothing_sigmas_vox"],
                )
                affine_files.append(Path(affine["fwdtransforms"][-1]))
                dets.append(affine_determinant(affine_files[-1]))
                fits.append(affine_fit(fixed, moving, affine_files[-1]))
            keep = pick_affine_candidate(dets, fits)
            init = [str(affine_files[keep])]
            affine_info = {"determinants": {n: round(d, 4) for n, d in zip(names, dets)},
                           "correlations": {n: round(r, 4) for n, r in zip(names, fits)},
                           "kept": names[keep]}
            run_kind = "SyNOnly"
        if run_kind == "Affine":
            reg = ants.registration(fixed, moving, type_of_transform="Affine", outprefix=prefix,
                                    initial_transform=init, mask=fixed_mask,
                                    mask_all_stages=fixed_mask is not None,
                                    write_composite_transform=True)
        else:
            reg = run_syn(fixed, moving, settings, initial_transform=init, outprefix=prefix,
                          mask=fixed_mask, affine_stage=run_kind == "SyN")
    fwd = out_dir / "from-T1w_to-template_xfm.h5"
    inv = out_dir / "from-template_to-T1w_xfm.h5"
    Path(reg["fwdtransforms"]).replace(fwd)
    Path(reg["invtransforms"]).replace(inv)
    for path in affine_files:  # the kept one is folded into the composites
        path.unlink(missing_ok=True)
    warped = reg["warpedmovout"]
    info = {
        "mode": settings.mode,
        "type_of_transform": kind,
        "resolution_mm": res,
        "settings": settings.registration_info(),
        # SyNOnly has no affine stage (its initial transform stands for it)
        "affine_stage": {"SyN": AFFINE_STAGE, "SyNOnly": None}.get(kind, "antspyx defaults"),
        "masked_metric": fixed_mask is not None,
        # with affine_moving_mask: both affine stages' determinants and the one SyN started from
        "affine_candidates": affine_info,
        # the template grid the registration ran on (with a metric mask: cropped to its box)
        "fixed_shape": [int(n) for n in fixed.shape],
        # background (mm) added around the subject before registration
        "background_pad_mm": PAD_MM,
    }
    return RegistrationResult([fwd], [inv], to_nib(warped), info)


def syn_arguments(fixed: str, moving: str, settings: ProcessingSettings, *, initial_transform,
                  outprefix: str, outputs: tuple[str, str], mask: str = "NA",
                  affine_stage: bool = True, seed: int | None = None) -> list[str]:
    """The ``antsRegistration`` command line of the affine + SyN (``affine_stage``) or SyN-only
    registration, images given as antspyx pointer strings (or file paths).

    The stages are antspyx's ``"SyN"`` / ``"SyNOnly"`` (0.6) argument for argument (the affine
    stage :data:`AFFINE_STAGE`, SyN ``[grad_step, update_variance, 0]`` with the Mattes metric
    at shrink factors ``2^(n-1)..1`` and sigmas ``n-1..0`` voxels), except SyN's convergence
    test, which antspyx fixes at ``[iterations, 1e-7, 8]`` (a level practically never stops
    early) and which here is ``settings.syn_convergence`` (threshold, window): each level stops
    once the metric's slope over the window falls below the threshold, as in ANTs' own
    ``antsRegistrationSyN.sh`` and fMRIPrep's normalisation (``1e-6, 10``). With ``(1e-7, 8)``
    the command is antspyx's. ``initial_transform``: transform files (applied first), or None
    for the centre-of-mass alignment antspyx uses. ``outputs``: the warped moving and warped
    fixed images. ``mask``: the fixed-side metric mask, in every stage.
    """
    n = len(settings.reg_iterations)
    threshold, window = settings.syn_convergence
    masks = f"[{mask},NA]"
    if initial_transform:
        init = list(initial_transform)
    else:  # antspyx's: centres of mass aligned before an affine stage, identity before SyN only
        init = [f"[{fixed},{moving},1]" if affine_stage else "Identity"]
    args = ["--dimensionality", "3"]
    for transform in init:
        args += ["-r", transform]
    if affine_stage:
        args += [
            "--metric", f"mattes[{fixed},{moving},1,32,regular,0.2]",
            "--transform", AFFINE_STAGE["transform"],
            "--convergence", "x".join(str(i) for i in AFFINE_STAGE["iterations"]),
            "--smoothing-sigmas", "x".join(str(i) for i in AFFINE_STAGE["smoothing_sigmas_vox"]),
            "--shrink-factors", "x".join(str(i) for i in AFFINE_STAGE["shrink_factors"]),
            "-x", masks,
        ]
    args += [
        "--metric", f"{settings.syn_metric}[{fixed},{moving},1,{settings.syn_sampling}]",
        "--transform", f"SyN[{settings.syn_grad_step:f},{settings.syn_update_variance:f},"
                       f"{0.0:f}]",
        "--convergence", "[{},{:g},{}]".format(
            "x".join(str(i) for i in settings.reg_iterations), threshold, window),
        "--smoothing-sigmas", "x".join(str(n - 1 - i) for i in range(n)),
        "--shrink-factors", "x".join(str(2 ** (n - 1 - i)) for i in range(n)),
        "-u", "0",
        "-z", "1",
        "--output", f"[{outprefix},{outputs[0]},{outputs[1]}]",
        "-x", masks,
    ]
    if seed is not None:
        args += ["--random-seed", str(seed)]
    return args + ["--float", "1", "--write-composite-transform", "1"]


def run_syn(fixed, moving, settings: ProcessingSettings, *, initial_transform, outprefix: str,
            mask=None, affine_stage: bool = True) -> dict:
    """Run :func:`syn_arguments`' registration of ANTs images through antspyx's library entry
    point (in-process, as ``ants.registration`` does, seeded by :func:`ants_env`'s seed).
    Returns antspyx's keys: ``warpedmovout`` and the composite ``fwdtransforms`` /
    ``invtransforms`` files."""
    ants = import_ants()
    from ants.internal import get_lib_fn, get_pointer_string, process_arguments

    # every image handed over by pointer string stays referenced until the call returns
    fixed, moving = fixed.clone("float"), moving.clone("float")
    warped, warped_fixed = fixed.clone(), moving.clone()
    binary = None if mask is None else mask != 0
    args = syn_arguments(
        get_pointer_string(fixed), get_pointer_string(moving), settings,
        initial_transform=initial_transform, outprefix=outprefix,
        outputs=(get_pointer_string(warped), get_pointer_string(warped_fixed)),
        mask="NA" if binary is None else get_pointer_string(binary),
        affine_stage=affine_stage, seed=ants.config._random_seed,
    )
    if get_lib_fn("antsRegistration")(process_arguments(args)) != 0:
        raise RuntimeError(f"antsRegistration failed (output prefix {outprefix})")
    return {"warpedmovout": warped, "fwdtransforms": f"{outprefix}Composite.h5",
            "invtransforms": f"{outprefix}InverseComposite.h5"}


def pick_affine_candidate(determinants, fits, margin: float = AFFINE_FIT_MARGIN) -> int:
    """Index of the affine candidate SyN starts from: the smaller determinant (a template
    brain stretched over the head loses), unless its fit is below the other's by more than
    ``margin`` (a NaN fit counts as the worst).

    >>> pick_affine_candidate([0.65, 0.64], [0.85, 0.84])
    1
    >>> pick_affine_candidate([0.65, 0.59], [0.84, -0.08])
    0
    """
    fit = np.nan_to_num(np.asarray(fits, float), nan=-np.inf)
    keep = int(np.argmin(determinants))
    other = 1 - keep
    return other if fit[keep] < fit[other] - margin else keep


def affine_fit(fixed, moving, path) -> float:
    """Pearson correlation of ``fixed`` (the template brain on the registration grid) and
    ``moving`` resampled onto it by the affine transform file ``path``, inside the template
    brain (``fixed > 0``): how well an affine candidate lines the subject's brain up."""
    ants = import_ants()

    warped = ants.apply_transforms(fixed, moving, [str(path)], interpolator="linear")
    x, y = fixed.numpy(), warped.numpy()
    inside = x > 0
    xv, yv = x[inside].astype(np.float64), y[inside].astype(np.float64)
    if xv.size < 3 or xv.std() == 0 or yv.std() == 0:
        return float("nan")
    return float(np.corrcoef(xv, yv)[0, 1])


def affine_determinant(path) -> float:
    """Determinant of the linear part of an ANTs affine transform file: subject volume per
    template volume (the transform maps template points to subject points)."""
    ants = import_ants()

    params = np.asarray(ants.read_transform(str(path)).parameters, float)
    return float(np.linalg.det(params[:9].reshape(3, 3)))


def apply_to_template(img, result: RegistrationResult, template_img, *, interpolation="linear",
                      omp_nthreads: int = 1) -> nib.Nifti1Image:
    """Resample a subject-space image onto ``template_img``'s grid (a template map: path,
    nibabel or ANTs) with the forward transform. ``interpolation``: ``linear``,
    ``nearestNeighbor``, ``genericLabel``, ``lanczosWindowedSinc``..."""
    ants = import_ants()

    fixed = _as_ants(template_img)
    with ants_env(None, omp_nthreads):
        out = ants.apply_transforms(
            fixed, _as_ants(img), [str(p) for p in result.forward_transforms],
            interpolator=interpolation,
        )
    return to_nib(out)


def apply_to_native(img, result: RegistrationResult, native_img, *, interpolation="linear",
                    omp_nthreads: int = 1, within=None, margin: int = 4) -> nib.Nifti1Image:
    """Resample a template-space image (path/nibabel/ANTs) onto the subject grid
    ``native_img`` (nibabel) with the inverse transform.

    ``within`` (boolean array on ``native_img``'s grid, optional): only the bounding box of
    ``within`` plus ``margin`` voxels is resampled, the rest of the full grid is 0 (the values
    inside the box are those of the full-grid resampling: each output voxel is sampled at its
    own world position). For maps used inside the brain mask only (the tissue priors: the
    segmentation works on the mask's box + 2 voxels); on AOMIC sub-0001 the box (+4) is 23 % of the
    256^3 grid.
    """
    ants = import_ants()

    like = native_img if isinstance(native_img, nib.Nifti1Image) else None
    box = None
    if within is not None:
        if like is None:
            raise TypeError("apply_to_native(within=...) needs native_img as a nibabel image")
        box = bounding_box(np.asarray(within, bool), margin)
    with ants_env(None, omp_nthreads):
        if box is None:
            ref = _as_ants(native_img)
        else:
            # the reference grid is the box alone (its geometry, no voxel values are read):
            # converting the whole native image only to crop it cost ~1 s per call on 256^3
            shape = tuple(b.stop - b.start for b in box)
            ref = to_ants(make_image(np.zeros(shape, np.float32), box_affine(like.affine, box)))
        out = ants.apply_transforms(
            ref, _as_ants(img), [str(p) for p in result.inverse_transforms],
            interpolator=interpolation,
        )
    if box is None:
        return to_nib(out, like=like)
    full = np.zeros(like.shape[:3], np.float32)
    full[box] = out.numpy()
    return make_image(full, like.affine)


def jacobian_determinant(result: RegistrationResult, template_img, *, omp_nthreads: int = 1
                         ) -> nib.Nifti1Image:
    """det(J) of the forward mapping (template point -> subject point) on ``template_img``'s
    grid: subject volume per unit template volume, affine part included.

    The forward composite is collapsed into one displacement field ``u`` on the template grid
    (``antsApplyTransforms --output [field,1]``, :func:`compose_field`); ``det(I + grad u)`` is
    then computed by ITK (:func:`ants.create_jacobian_determinant_image`), which accounts for
    voxel directions.
    """
    ants = import_ants()

    fixed = _as_ants(template_img)
    tmp = Path(tempfile.mkdtemp(prefix="ketabids-jac-"))
    try:
        with ants_env(None, omp_nthreads):
            field_path = compose_field(fixed, result.forward_transforms, tmp / "fwd_field.nii")
            det = ants.create_jacobian_determinant_image(fixed, str(field_path), do_log=False)
    finally:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
    return to_nib(det)


def compose_field(reference, transforms, path) -> Path:
    """Collapse ``transforms`` (ANTs order) into one displacement field on ``reference``'s grid
    (an ANTs image), written at ``path`` (double precision; a ``.nii`` path is written
    uncompressed). Same call as ``ants.apply_transforms(compose=...)``, which always writes
    ``<prefix>comptx.nii.gz``: gzip of the 1 mm field (8.7 M voxels x 3 doubles, 186 MB) cost
    6 of its 8.2 CPU s on AOMIC sub-0001 (2.2 s uncompressed; the Jacobian computed from it is
    bit-identical). Uses antspyx's ``ants.internal`` entry point to ``antsApplyTransforms``
    (antspyx 0.6)."""
    from ants.internal import get_lib_fn, process_arguments

    ref = reference.clone("double")
    args = ["-d", ref.dimension, "-i", ref, "-o", f"[{path},1]", "-r", ref, "-n", "linear"]
    for t in transforms:
        args += ["-t", str(t)]
    args = process_arguments(args) + ["-z", "1", "-v", "0", "--float", "0", "-e", "0", "-f", "0"]
    if get_lib_fn("antsApplyTransforms")(args) != 0 or not Path(path).exists():
        raise RuntimeError(f"antsApplyTransforms could not compose {transforms} into {path}")
    return Path(path)
