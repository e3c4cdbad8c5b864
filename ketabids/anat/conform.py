"""Load a T1w image and conform it: one clean float32 3D image in closest-canonical RAS+.

What :func:`conform_t1w` does, in order:

1. Load (an unreadable file is a :class:`~ketabids.errors.BadDataError`).
2. Shape: a 4D image with a single volume (or trailing singleton axes) is squeezed to 3D; more
   than one volume, fewer than 3 spatial axes or a spatial axis of length 1 (a 2D slice) are
   refused.
3. Orientation header: following the nipreps convention, a valid qform (code > 0) is used
   (rigid, written by the scanner); else a valid sform; else the voxel sizes alone (RAS assumed,
   noted). When both are valid and disagree by more than 0.01 mm / 0.1 % the qform wins and a
   note says so.
4. Intensities: ``scl_slope``/``scl_inter`` applied, cast to float32; non-finite values or an
   image with a single value (empty) are refused.
5. Reorientation to the closest canonical RAS+ voxel order (a pure axis permutation/flip: no
   interpolation; an oblique affine stays oblique, which ANTs handles natively).
   Anisotropic voxels are kept as they are (no resampling): every later step works in world
   coordinates.
6. Sub-millimetre voxels: every voxel axis finer than ``SUBMM_THRESHOLD_MM`` (0.85 mm) is
   resampled to ``FINEST_MM`` (1 mm) (:func:`resample_coarser`: area averaging, same field
   of view and orientation), so a 0.5 mm scan costs the time
   and memory of a 1 mm one (measured in ``docs/benchmarks.md``); its outputs are on that 1 mm
   grid. Axes of 0.85-1 mm (e.g. 0.9 mm in-plane) are kept: at most 1.6x the voxels of 1 mm.

The returned image has qform = sform = the chosen affine (code 1) and no scaling.
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ketabids.anat.antsutil import make_image
from ketabids.errors import BadDataError

#: the finest grid (mm) the participant level processes
FINEST_MM = 1.0
#: voxel axes finer than this (mm) are resampled to :data:`FINEST_MM`
SUBMM_THRESHOLD_MM = 0.85


def _bad(path, problem, fix):
    return BadDataError(f"{path}: {problem}; {fix}")


def _choose_affine(img, notes):
    header = img.header
    qform, qcode = img.get_qform(coded=True)
    sform, scode = img.get_sform(coded=True)
    qcode, scode = int(qcode or 0), int(scode or 0)
    if qcode > 0 and qform is not None:
        if scode > 0 and sform is not None and not np.allclose(qform, sform, atol=1e-2, rtol=1e-3):
            notes.append(
                "qform and sform disagree; used the qform (rigid scanner orientation), "
                "as fMRIPrep/sMRIPrep do"
            )
        return qform, "qform"
    if scode > 0 and sform is not None:
        return sform, "sform"
    zooms = header.get_zooms()[:3]
    notes.append("no valid qform or sform; assumed RAS orientation from the voxel sizes")
    return np.diag([*zooms, 1.0]), "none"


def _area_weights(n_old: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(index, weight)``, each ``(taps, n_new)``: new voxel i (``scale`` old voxels wide) is
    ``sum_t weight[t, i] * old[index[t, i]]``. The weight of old voxel j is the length of its
    overlap with new voxel i (old voxel j spans ``[j - 0.5, j + 0.5]``, new voxel i
    ``[-0.5 + i s, -0.5 + (i + 1) s]`` in old voxel units), each new voxel's weights
    normalised to sum 1 (a last voxel reaching past the field of view averages what it
    holds); unused taps have weight 0."""
    n_new = max(1, int(round(n_old / scale)))
    taps = int(np.ceil(scale)) + 1
    index = np.zeros((taps, n_new), np.intp)
    weight = np.zeros((taps, n_new), np.float64)
    for i in range(n_new):
        lo, hi = -0.5 + i * scale, -0.5 + (i + 1) * scale
        first = max(0, int(np.floor(lo + 0.5)))
        for t, j in enumerate(range(first, min(n_old - 1, int(np.ceil(hi - 0.5))) + 1)):
            index[t, i] = j
            weight[t, i] = max(0.0, min(hi, j + 0.5) - max(lo, j - 0.5))
    weight /= np.where(weight.sum(0) > 0, weight.sum(0), 1.0)
    used = weight.any(axis=1)  # an integer scale needs one tap fewer
    return index[used], weight[used].astype(np.float32)


def resample_coarser(img: nib.Nifti1Image, zooms) -> nib.Nifti1Image:
    """``img`` resampled to voxel sizes ``zooms`` (each >= the current one) on a grid with the
    same orientation (direction cosines) and field of view (the outer voxel faces stay where
    they were, to within one new voxel).

    Area averaging, axis by axis: each new voxel is the overlap-weighted mean of the old
    voxels it covers (:func:`_area_weights`), i.e. what a scan with the larger voxels would
    have measured (a box filter of the new voxel's size: anti-aliased, noise averaged). A 0.5 mm
    512^3 scan to 1 mm takes ~2 s (scipy's Gaussian filter + linear ``affine_transform`` took
    ~25 s, a sparse matrix product ~17 s).
    """
    old = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    new = np.maximum(np.asarray(zooms, float), old)
    scale = new / old  # old voxels per new voxel
    data = np.asarray(img.dataobj, dtype=np.float32)
    todo = [axis for axis in range(3) if scale[axis] > 1.0 + 1e-6]
    while todo:
        # the axis with the largest memory stride first: gathering whole planes or rows is
        # ~30x quicker than gathering single voxels (np.take on a 512^3 volume: 12 s per tap)
        axis = max(todo, key=lambda a: data.strides[a])
        todo.remove(axis)
        index, weight = _area_weights(data.shape[axis], float(scale[axis]))
        shape = [1, 1, 1]
        shape[axis] = -1
        lead = (slice(None),) * axis
        out = None
        for idx, w in zip(index, weight):
            term = data[lead + (idx,)]
            term *= w.reshape(shape)
            out = term if out is None else np.add(out, term, out=out)
        data = out
    vox = np.eye(4)
    vox[:3, :3] = np.diag(scale)
    vox[:3, 3] = -0.5 + 0.5 * scale  # new voxel i's centre: -0.5 + (i + 0.5) s old voxels
    return make_image(np.asfortranarray(data, dtype=np.float32), img.affine @ vox)


def conform_t1w(in_file, *, resample: bool = True) -> tuple[nib.Nifti1Image, dict]:
    """Load ``in_file`` (path or nibabel image) and return ``(conformed image, info)``.

    ``resample=False`` skips step 6 (sub-millimetre voxels to 1 mm): the input checks.

    ``info``: ``orientation`` (original axis codes, e.g. ``"LIA"``), ``zooms`` and ``shape``
    (original, spatial), ``affine_source`` (``"qform"``, ``"sform"`` or ``"none"``),
    ``oblique`` (bool), ``scaled`` (scl_slope/inter applied), ``resampled_zooms`` (the
    processing grid's voxel sizes when step 6 resampled, else None) and ``notes`` (list of
    strings).

    Raises :class:`~ketabids.errors.BadDataError` with a one-line message naming the file and
    the fix for 4D, 2D, empty or non-finite images and unreadable files.
    """
    if isinstance(in_file, nib.spatialimages.SpatialImage):
        img, name = in_file, in_file.get_filename() or "<in-memory image>"
    else:
        name = str(in_file)
        try:
            img = nib.load(str(in_file))
        except FileNotFoundError:
            raise _bad(name, "file not found", "check the path") from None
        except Exception as exc:
            raise _bad(name, f"cannot be read as a NIfTI image ({str(exc)[:150]})",
                       "re-export the scan as NIfTI (e.g. with dcm2niix)") from None
    notes: list[str] = []
    if not isinstance(img, nib.Nifti1Image):  # Nifti2, MGH...: keep data + affine
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)

    shape = img.shape
    if len(shape) > 3:
        if all(s == 1 for s in shape[3:]):
            notes.append(f"squeezed a {len(shape)}D image with a single volume to 3D")
        else:
            raise _bad(name, f"is {len(shape)}D with shape {shape} (several volumes)",
                       "give a single 3D T1w volume (average or pick one run)")
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise _bad(name, f"is not a 3D volume (shape {shape})",
                   "give a 3D T1w volume, not a 2D slice")

    affine, source = _choose_affine(img, notes)
    try:
        data = np.asanyarray(img.dataobj)  # applies scl_slope / scl_inter
    except Exception as exc:
        raise _bad(name, f"voxel data cannot be read ({str(exc)[:150]})",
                   "the file is truncated or corrupt; re-export it") from None
    data = np.asarray(data, dtype=np.float32).reshape(shape[:3])
    if not np.all(np.isfinite(data)):
        n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise _bad(name, f"contains {n_bad} non-finite voxels (NaN/Inf)",
                   "re-export the scan or replace the non-finite voxels with 0")
    if data.size == 0 or float(data.max()) == float(data.min()):
        raise _bad(name, "is empty (every voxel has the same value)",
                   "check the scan was exported correctly")
    # nibabel moves scl_slope/scl_inter from the header into the array proxy on load
    slope = getattr(img.dataobj, "slope", None)
    inter = getattr(img.dataobj, "inter", None)
    if slope is None:
        slope, inter = img.header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    scaled = slope != 1.0 or inter != 0.0
    if scaled:
        notes.append(f"applied scl_slope={slope:g}, scl_inter={inter:g}")

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms <= 0) or not np.all(np.isfinite(affine)):
        raise _bad(name, "has a degenerate orientation matrix (zero or non-finite voxel size)",
                   "fix the NIfTI header (qform/sform)")
    orientation = "".join(nib.aff2axcodes(affine))
    cosines = affine[:3, :3] / zooms
    oblique = bool(np.any(np.abs(np.abs(cosines) - np.round(np.abs(cosines))) > 1e-3))
    if oblique:
        notes.append("oblique acquisition: kept the oblique affine (no resampling)")
    if zooms.max() / zooms.min() > 1.01:
        notes.append(
            f"anisotropic voxels {tuple(round(float(z), 3) for z in zooms)} mm kept "
            "(no resampling)")

    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt("RAS")
    transform = nib.orientations.ornt_transform(ornt, ras)
    data = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, shape[:3])
    # Fortran order, as NIfTI stores voxels: written and handed to ANTs without a transpose
    out = make_image(np.asfortranarray(data, dtype=np.float32), new_affine)
    if orientation != "RAS":
        notes.append(f"reoriented {orientation} -> RAS (axis permutation, no interpolation)")
    resampled = None
    out_zooms = np.sqrt((new_affine[:3, :3] ** 2).sum(0))
    if resample and np.any(out_zooms < SUBMM_THRESHOLD_MM):
        target = np.where(out_zooms < SUBMM_THRESHOLD_MM, FINEST_MM, out_zooms)
        out = resample_coarser(out, target)
        resampled = tuple(round(float(z), 4) for z in np.sqrt((out.affine[:3, :3] ** 2).sum(0)))
        notes.append(
            f"sub-millimetre voxels {tuple(round(float(z), 3) for z in out_zooms)} mm resampled "
            f"to {tuple(round(z, 3) for z in resampled)} mm (area-averaged); every "
            "native-space output is on this grid")
    info = {
        "file": name,
        "orientation": orientation,
        "zooms": tuple(float(z) for z in zooms),
        "shape": tuple(int(s) for s in shape[:3]),
        "affine_source": source,
        "oblique": oblique,
        "scaled": bool(scaled),
        "resampled_zooms": resampled,
        "notes": notes,
    }
    return out, info


def check_t1w(path) -> None:
    """Check one input T1w before any processing (cheap: the header and one read of the data).

    Raises :class:`~ketabids.errors.BadDataError` naming the file and the fix for a symlink to
    a missing file (an annexed file not fetched), a missing, unreadable or empty file, and
    everything :func:`conform_t1w` refuses (not a NIfTI, truncated, 4D, NaN/Inf, constant).
    The participant runner calls it per subject so one bad file fails only its subject.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise _bad(path, f"is a symlink to a missing file ({os.readlink(path)}; an annexed file "
                   "not fetched?)", f"run 'datalad get {path}' (or 'git annex get') and rerun")
    if not path.is_file():
        raise _bad(path, "file not found", "check the dataset")
    if not os.access(path, os.R_OK):
        raise _bad(path, "cannot be read (permission denied)", "fix its permissions")
    if path.stat().st_size == 0:
        raise _bad(path, "is empty (0 bytes)", "re-export the scan (e.g. with dcm2niix)")
    conform_t1w(path, resample=False)
