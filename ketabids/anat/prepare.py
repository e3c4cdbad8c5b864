"""What the conformed T1w goes through before N4: intensity truncation and field-of-view crop.

* :func:`truncate_intensities`: intensities clipped to the ``TRUNCATE_PERCENTILES``
  (0.01 and 99.9) of the head foreground, as sMRIPrep's and antsBrainExtraction's
  ``TruncateImageIntensity`` (0.01-0.999 quantiles) do before N4: a handful of extreme voxels
  (spikes, a hot pixel, a reconstruction artefact) otherwise sets N4's histogram range and the
  registration's intensity bins. The percentiles are robust: 20 voxels at 1e6 in a 1 mm head
  (~1.7 million head voxels, 0.001 % of them) move neither threshold.
* :func:`crop_field_of_view`: a long inferior field of view (neck and shoulders) is cropped
  ``FOV_KEEP_MM`` below the top of the head along the world superior axis, as FSL's
  ``robustfov`` does (170 mm there; see :data:`FOV_KEEP_MM`): the crop is a sub-grid (whole
  slices of the voxel axis closest to S-I, no resampling), so world coordinates, hence
  transforms, are unchanged. It applies only when at least ``FOV_MIN_CUT_MM`` of head lies
  below the cut, so an ordinary head scan (and every demo phantom) is processed whole.
* :func:`restore_grid`: a native-space result computed on the cropped grid put back on the
  conformed grid (the outputs keep the grid of the input, filled with a constant or an image
  outside the crop).
"""
from __future__ import annotations

import nibabel as nib
import numpy as np

from ketabids.anat.antsutil import make_image

#: lower/upper percentiles (of the head foreground's intensities) the T1w is clipped to
TRUNCATE_PERCENTILES = (0.01, 99.9)
#: distance (mm) kept below the top of the head. FSL's robustfov keeps 170 mm (its default
#: "brain size"); an adult vertex-to-cerebellum span is ~120-135 mm below ~5-10 mm of scalp and
#: skull, but a head pitched forward by 25 degrees spans ~15 mm more along the scanner axis,
#: so ketabids keeps 180 mm
FOV_KEEP_MM = 180.0
#: head foreground (mm along the superior axis) that must lie below the cut for a crop to
#: happen: shorter extensions are left alone. The registration copes with ~5 cm of neck below
#: the head (the demo phantoms' field of view has 196-216 mm of head and neck below the top of
#: the head, i.e. 16-36 mm beyond the cut; AOMIC sub-0001 184 mm); 110 mm more sent the brain
#: mask ~70 mm down
FOV_MIN_CUT_MM = 40.0
#: smallest head cross-section (mm^2) that counts as head when looking for its top (ignores
#: noise specks and hair above the scalp)
TOP_MIN_AREA_MM2 = 100.0


def _zooms(affine) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))


def truncate_intensities(img: nib.Nifti1Image, fg: np.ndarray | None = None, *,
                         percentiles=TRUNCATE_PERCENTILES):
    """``img`` clipped to the ``percentiles`` of its head foreground ``fg`` (default:
    :func:`ketabids.anat.brain.head_foreground`). Returns ``(clipped image, info)``.

    The low threshold is ``min(lower percentile, 0)``: negative outliers are clipped, a zero
    background is not. ``info``: ``low``/``high`` (the thresholds), ``truncated_fraction``
    (voxels clipped, anywhere in the image, as a share of the head's voxels: ~0.001 by
    construction; more means bright or dark voxels outside the head, e.g. artefacts),
    ``max_ratio`` (the largest raw intensity / ``high``: 1.0-1.2 on the real scans and demo
    phantoms, 1e3 and more with spikes), ``n_truncated``.
    """
    from ketabids.anat.brain import head_foreground

    data = np.asarray(img.dataobj, dtype=np.float32)
    fg = head_foreground(img) if fg is None else np.asarray(fg, bool)
    values = data[fg] if fg.any() else data.ravel()
    low, high = (float(v) for v in np.percentile(values, percentiles))
    # the low end clips negative outliers only: a zero (or positive) background below the
    # head's lowest percentile stays as it is
    low = min(low, 0.0)
    below, above = data < low, data > high
    n = int(np.count_nonzero(below) + np.count_nonzero(above))
    out = np.clip(data, low, high) if n else data
    info = {
        "low": round(low, 4), "high": round(high, 4),
        "percentiles": [float(p) for p in percentiles],
        "n_truncated": n,
        "truncated_fraction": round(n / max(int(values.size), 1), 6),
        "max_ratio": round(float(data.max()) / high, 3) if high > 0 else None,
    }
    return make_image(np.asfortranarray(out, dtype=np.float32), img.affine), info


def superior_axis(affine) -> tuple[int, int]:
    """``(voxel axis closest to world S-I, +1 if increasing index goes superior else -1)``."""
    ornt = nib.orientations.io_orientation(affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    return axis, int(ornt[axis, 1])


def crop_field_of_view(img: nib.Nifti1Image, fg: np.ndarray | None = None, *,
                       keep_mm: float = FOV_KEEP_MM, min_cut_mm: float = FOV_MIN_CUT_MM):
    """Crop a long inferior field of view: keep the slices (along the voxel axis closest to
    world S-I) whose centres lie less than ``keep_mm`` below the top of the head.
    Returns ``(image, info)``; the image is ``img`` itself when nothing is cropped.

    The top of the head is the most superior slice whose head foreground (``fg``, default
    :func:`ketabids.anat.brain.head_foreground`) covers at least ``TOP_MIN_AREA_MM2``;
    distances are measured in world millimetres along S-I (the slice's centre voxel), so an
    oblique grid is handled. Nothing is cropped when less than ``min_cut_mm`` of head
    foreground lies below the cut.

    ``info``: ``cropped_mm`` (extent removed along S-I, 0 when nothing is cropped),
    ``head_extent_mm`` (top of the head to the lowest head voxel), ``keep_mm``,
    ``slices`` (``[first, stop)`` kept along ``axis``), ``axis``, ``shape`` (original).
    """
    from ketabids.anat.brain import head_foreground

    fg = head_foreground(img) if fg is None else np.asarray(fg, bool)
    axis, _ = superior_axis(img.affine)
    n = img.shape[axis]
    zooms = _zooms(img.affine)
    others = tuple(a for a in range(3) if a != axis)
    area = fg.sum(axis=others) * float(np.prod(zooms[list(others)]))
    # world S-I coordinate of each slice's centre voxel
    centre = (np.asarray(img.shape[:3]) - 1) / 2.0
    ijk = np.tile(centre, (n, 1))
    ijk[:, axis] = np.arange(n)
    z = (np.c_[ijk, np.ones(n)] @ np.asarray(img.affine).T)[:, 2]
    info = {"cropped_mm": 0.0, "keep_mm": float(keep_mm), "axis": axis,
            "shape": [int(s) for s in img.shape[:3]], "slices": [0, int(n)],
            "head_extent_mm": 0.0}
    head = np.flatnonzero(area >= TOP_MIN_AREA_MM2)
    if head.size == 0:
        return img, info
    z_top = float(z[head].max())
    z_low = float(z[np.flatnonzero(area > 0)].min())
    info["head_extent_mm"] = round(z_top - z_low, 1)
    keep = z >= z_top - keep_mm
    if z_top - keep_mm - z_low < min_cut_mm or keep.all():
        return img, info
    idx = np.flatnonzero(keep)
    first, stop = int(idx.min()), int(idx.max()) + 1
    index = [slice(None)] * 3
    index[axis] = slice(first, stop)
    data = np.asarray(img.dataobj, dtype=np.float32)[tuple(index)]
    affine = np.array(img.affine, dtype=float)
    affine[:3, 3] = affine[:3, :3] @ np.eye(3)[axis] * first + affine[:3, 3]
    # world extent removed along S-I (the slices below the cut; above, for a grid stored
    # superior-to-inferior)
    info.update(cropped_mm=round(float(abs(z[first] - z[0]) + abs(z[n - 1] - z[stop - 1])), 1),
                slices=[first, stop])
    return make_image(np.asfortranarray(data), affine), info


def restore_grid(img: nib.Nifti1Image, reference: nib.Nifti1Image, fill=0.0, dtype=None
                 ) -> nib.Nifti1Image:
    """``img`` (on a sub-grid of ``reference``: same voxel axes, integer offset) placed on
    ``reference``'s grid; voxels outside ``img`` are ``fill`` (a number, or an image on
    ``reference``'s grid whose values are kept there). ``img`` itself when the grids match.

    Raises ValueError when ``img`` is not a sub-grid of ``reference``.
    """
    if img.shape[:3] == reference.shape[:3] and np.allclose(img.affine, reference.affine,
                                                            atol=1e-4):
        return img
    vox = np.linalg.inv(reference.affine) @ img.affine
    offset = vox[:3, 3]
    if not (np.allclose(vox[:3, :3], np.eye(3), atol=1e-4)
            and np.allclose(offset, np.round(offset), atol=1e-3)):
        raise ValueError("restore_grid: the image is not a sub-grid of the reference")
    offset = np.round(offset).astype(int)
    data = np.asarray(img.dataobj)
    dtype = dtype or data.dtype
    if isinstance(fill, nib.spatialimages.SpatialImage):
        out = np.array(fill.dataobj, dtype=dtype)
    else:
        out = np.full(reference.shape[:3], fill, dtype=dtype)
    src, dst = [], []
    for o, n_in, n_ref in zip(offset, data.shape[:3], reference.shape[:3]):
        a, b = max(o, 0), min(o + n_in, n_ref)
        if b <= a:
            raise ValueError("restore_grid: the image lies outside the reference grid")
        dst.append(slice(a, b))
        src.append(slice(a - o, b - o))
    out[tuple(dst)] = data[tuple(src)]
    return make_image(np.asfortranarray(out), reference.affine)


def prepare_t1w(img: nib.Nifti1Image):
    """Truncate intensities (:func:`truncate_intensities`), then crop a long inferior field of
    view (:func:`crop_field_of_view`). Returns ``(processing image, truncated image on the
    conformed grid, info, notes)``; ``info`` holds ``truncation`` and ``fov``."""
    from ketabids.anat.brain import head_foreground

    fg = head_foreground(img)
    truncated, t_info = truncate_intensities(img, fg)
    cropped, f_info = crop_field_of_view(truncated, fg)
    notes = []
    if f_info["cropped_mm"] > 0:
        notes.append(
            f"long field of view: cropped {f_info['cropped_mm']:g} mm below the head (kept "
            f"{f_info['keep_mm']:g} mm below its top, as FSL robustfov); native outputs are "
            "on the input's grid, zero (T1w: uncorrected) below the crop")
    if t_info["max_ratio"] is not None and t_info["max_ratio"] > 10:
        notes.append(
            f"intensity outliers: the brightest voxel was {t_info['max_ratio']:.3g} x the "
            f"head's {TRUNCATE_PERCENTILES[1]:g}th percentile; intensities truncated to "
            f"[{t_info['low']:.4g}, {t_info['high']:.4g}]")
    info = {"truncation": t_info, "fov": f_info}
    return cropped, truncated, info, notes
