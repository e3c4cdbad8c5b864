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

The returned image has qform = sform = the chosen affine (code 1) and no scaling.
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ketabids.anat.antsutil import make_image
from ketabids.errors import BadDataError


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


def conform_t1w(in_file) -> tuple[nib.Nifti1Image, dict]:
    """Load ``in_file`` (path or nibabel image) and return ``(conformed image, info)``.

    ``info``: ``orientation`` (original axis codes, e.g. ``"LIA"``), ``zooms`` and ``shape``
    (original, spatial), ``affine_source`` (``"qform"``, ``"sform"`` or ``"none"``),
    ``oblique`` (bool), ``scaled`` (scl_slope/inter applied) and ``notes`` (list of strings).

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
            f"anisotropic voxels {tuple(round(float(z), 3) for z in zooms)} mm kept (no resampling)")

    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt("RAS")
    transform = nib.orientations.ornt_transform(ornt, ras)
    data = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, shape[:3])
    # Fortran order, as NIfTI stores voxels: written and handed to ANTs without a transpose
    out = make_image(np.asfortranarray(data, dtype=np.float32), new_affine)
    if orientation != "RAS":
        notes.append(f"reoriented {orientation} -> RAS (axis permutation, no interpolation)")
    info = {
        "file": name,
        "orientation": orientation,
        "zooms": tuple(float(z) for z in zooms),
        "shape": tuple(int(s) for s in shape[:3]),
        "affine_source": source,
        "oblique": oblique,
        "scaled": bool(scaled),
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
    conform_t1w(path)
