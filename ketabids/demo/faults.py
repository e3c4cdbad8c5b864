"""Broken scans made from a good one (nibabel in, nibabel out): the faults the QC gate must catch.

Each generator reproduces a failure seen in real cohorts:

* :func:`slab`: a thin slab (default 40 mm) around the centre along the S-I axis: tiny field
  of view (partial acquisition);
* :func:`drop_orientation`: the data stored in another voxel order (default LIA, as many
  scanners do) and both ``qform_code`` and ``sform_code`` set to 0 (orientation lost by a
  converter): readers can only assume RAS;
* :func:`invert_contrast`: intensities inverted inside the head (T2-like: CSF bright, WM dark),
  background kept dark (wrong contrast given as T1w);
* :func:`flip_lr_header`: the header mirrored left-right (data unchanged);
* :func:`rotate_header`: the header rotated by 90 degrees about the L-R axis (data unchanged):
  the head lies on its face, registration starts 90 degrees off;
* :func:`nearly_blank`: 1 % of the signal plus background noise (failed reconstruction);
* :func:`thick_slices`: slices averaged to ``thickness_mm`` (default 6 mm) along S-I: a thick
  slice 2D acquisition (1 x 1 x 6 mm).

:data:`FAULTS` maps a short name to each generator with its default arguments.

Ordinary scanner inputs that the participant level must handle (the scan made with them should
give the volumes of the scan it was made from and pass QC), in :data:`HANDLED`:

* :func:`extend_neck`: 110 mm of neck and shoulders added below the field of view (a long
  inferior field of view);
* :func:`add_spikes`: 20 voxels of the head set to 1e6 (spikes, hot pixels).
"""
from __future__ import annotations

import nibabel as nib
import numpy as np


def _data(img) -> np.ndarray:
    return np.asarray(img.dataobj, dtype=np.float32)


def _new(data, affine, *, codes=1) -> nib.Nifti1Image:
    out = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    out.set_qform(affine, code=codes)
    out.set_sform(affine, code=codes)
    out.header.set_xyzt_units("mm", "sec")
    return out


def _si_axis(affine) -> int:
    """The voxel axis closest to the world S-I (z) axis."""
    return int(nib.orientations.io_orientation(affine)[:, 0].tolist().index(2))


def slab(img: nib.Nifti1Image, thickness_mm: float = 40.0) -> nib.Nifti1Image:
    """Keep only ``thickness_mm`` around the middle of the volume along S-I."""
    axis = _si_axis(img.affine)
    zoom = float(np.sqrt((img.affine[:3, axis] ** 2).sum()))
    n = max(1, int(round(thickness_mm / zoom)))
    size = img.shape[axis]
    start = max(0, (size - n) // 2)
    index = [slice(None)] * 3
    index[axis] = slice(start, start + n)
    cut = img.slicer[tuple(index)]
    return _new(_data(cut), cut.affine)


def drop_orientation(img: nib.Nifti1Image, store_as: str = "LIA") -> nib.Nifti1Image:
    """Reorder the voxels to ``store_as`` (world unchanged), then zero both orientation codes:
    a reader now sees the voxel sizes only and assumes RAS."""
    ornt = nib.orientations.io_orientation(img.affine)
    target = nib.orientations.axcodes2ornt(tuple(store_as))
    transform = nib.orientations.ornt_transform(ornt, target)
    data = nib.orientations.apply_orientation(_data(img), transform)
    affine = img.affine @ nib.orientations.inv_ornt_aff(transform, img.shape[:3])
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    out.header.set_xyzt_units("mm", "sec")
    out.set_qform(affine, code=0)
    out.set_sform(affine, code=0)
    # what a file written this way holds: nibabel's in-memory affine follows the codes
    return nib.Nifti1Image.from_bytes(out.to_bytes())


def _head(img) -> np.ndarray:
    from ketabids.anat.brain import head_foreground

    return head_foreground(img)


def invert_contrast(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Inside the head: ``x -> P1 + P99 - x`` (clipped at 0), percentiles of the head; outside:
    unchanged. CSF becomes the brightest tissue and WM the darkest (T2-like order)."""
    data = _data(img)
    head = _head(img)
    lo, hi = np.percentile(data[head], [1, 99])
    out = data.copy()
    out[head] = np.clip(lo + hi - data[head], 0, None)
    return _new(out, img.affine)


def flip_lr_header(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Mirror the header left-right about the volume centre (data unchanged)."""
    centre = img.affine @ np.array([*(np.asarray(img.shape[:3]) - 1) / 2.0, 1.0])
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = 2.0 * centre[0]
    return _new(_data(img), flip @ img.affine)


def rotate_header(img: nib.Nifti1Image, degrees: float = 90.0, axis: str = "x"
                  ) -> nib.Nifti1Image:
    """Rotate the header by ``degrees`` about the world ``axis`` through the volume centre
    (data unchanged)."""
    theta = np.radians(degrees)
    c, s = np.cos(theta), np.sin(theta)
    i = "xyz".index(axis)
    j, k = [a for a in range(3) if a != i]
    rot = np.eye(4)
    rot[j, j], rot[j, k], rot[k, j], rot[k, k] = c, -s, s, c
    centre = img.affine @ np.array([*(np.asarray(img.shape[:3]) - 1) / 2.0, 1.0])
    shift = np.eye(4)
    shift[:3, 3] = centre[:3]
    unshift = np.eye(4)
    unshift[:3, 3] = -centre[:3]
    return _new(_data(img), shift @ rot @ unshift @ img.affine)


def nearly_blank(img: nib.Nifti1Image, level: float = 0.01, noise: float = 0.02,
                 seed: int = 0) -> nib.Nifti1Image:
    """``level x`` the image plus Rician-like noise of ``noise x P99`` everywhere."""
    rng = np.random.default_rng(seed)
    data = _data(img)
    p99 = float(np.percentile(data, 99))
    sigma = noise * p99
    re = level * data + rng.normal(0, sigma, data.shape)
    im = rng.normal(0, sigma, data.shape)
    return _new(np.sqrt(re ** 2 + im ** 2).astype(np.float32), img.affine)


def thick_slices(img: nib.Nifti1Image, thickness_mm: float = 6.0) -> nib.Nifti1Image:
    """Average groups of slices along S-I into ``thickness_mm`` slices (a thick-slice
    acquisition's partial-volume blur); the in-plane grid is kept."""
    axis = _si_axis(img.affine)
    zoom = float(np.sqrt((img.affine[:3, axis] ** 2).sum()))
    factor = max(1, int(round(thickness_mm / zoom)))
    data = np.moveaxis(_data(img), axis, -1)
    n = data.shape[-1] // factor
    blocks = data[..., : n * factor].reshape(*data.shape[:-1], n, factor).mean(-1)
    out = np.moveaxis(blocks, -1, axis)
    scale = np.eye(4)
    scale[axis, axis] = factor
    scale[axis, 3] = (factor - 1) / 2.0  # centre of the first block
    return _new(out, img.affine @ scale)


#: name -> generator with its default arguments (tests and benchmarks iterate over these)
FAULTS = {
    "slab40mm": slab,
    "orientation_codes0": drop_orientation,
    "contrast_inverted": invert_contrast,
    "lr_flipped_header": flip_lr_header,
    "rotated90_header": rotate_header,
    "nearly_blank": nearly_blank,
    "thick_slices_6mm": thick_slices,
}


# --------------------------------------------------------------------------------------------
# Ordinary scanner inputs the participant level must handle (not QC faults: a scan made with
# these should still pass QC with the volumes of the scan it was made from)


def _background_noise(data: np.ndarray, head: np.ndarray) -> float:
    """Gaussian sigma of the background (Rician: sigma = sqrt(mean(x^2) / 2) of the air)."""
    air = data[~head]
    air = air[air <= np.percentile(air, 95)] if air.size else air
    return float(np.sqrt(np.mean(air.astype(np.float64) ** 2) / 2.0)) if air.size else 0.0


def extend_neck(img: nib.Nifti1Image, extension_mm: float = 110.0, seed: int = 0
                ) -> nib.Nifti1Image:
    """``img`` (any orientation; returned in RAS+) with ``extension_mm`` of neck and shoulders
    added below its field of view, as a scan planned with a long inferior field of view images
    them.

    Below the lowest slice: the neck, an elliptical cylinder continuing the head's lowest
    cross-section (its centroid and second moments; a 58 x 62 mm ellipse under the head when
    the scan stops above the neck), with a 5 mm fat rim, muscle, a vertebral body (marrow
    inside cortical bone) and the airway; from 50 mm below the old edge the shoulders widen it
    to ~400 mm L-R (cut by the field of view). Intensities from the head: fat at its 99th
    percentile x 0.9, muscle at its median x 0.75, marrow at its median, bone and air dark; a
    coil sensitivity falling linearly to 0.6 at the new edge; Rician noise of the scan's own
    background sigma.
    """
    from scipy import ndimage

    img = nib.as_closest_canonical(img)
    data = _data(img)
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    head = _head(img)
    sigma = _background_noise(data, head)
    values = data[head]
    median, p99 = float(np.median(values)), float(np.percentile(values, 99))
    rng = np.random.default_rng(seed)
    # the neck starts at the lowest slice holding head (slices below it, e.g. zero-filled by a
    # converter, are replaced) and reaches ``extension_mm`` below it
    k_low = int(np.flatnonzero(head.any(axis=(0, 1)))[0])
    n_new = int(round(extension_mm / zooms[2]))
    nx, ny = data.shape[:2]
    x = (np.arange(nx) - (nx - 1) / 2.0) * zooms[0]
    y = (np.arange(ny) - (ny - 1) / 2.0) * zooms[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    # the neck's ellipse: the lowest 10 mm of head, if it is a neck-sized cross-section
    low = head[:, :, k_low: k_low + max(1, int(round(10 / zooms[2])))].any(axis=2)
    area = low.sum() * zooms[0] * zooms[1]
    if 3000.0 < area < 20000.0:
        cx, cy = xx[low].mean(), yy[low].mean()
        # a uniform ellipse's radius is twice its SD; capped at an adult neck's (the lowest
        # head slices may hold the jaw)
        rx, ry = min(2.0 * xx[low].std(), 62.0), min(2.0 * yy[low].std(), 66.0)
    else:
        com = np.array(ndimage.center_of_mass(head))
        cx = (com[0] - (nx - 1) / 2.0) * zooms[0]
        cy = (com[1] - (ny - 1) / 2.0) * zooms[1] - 20.0
        rx, ry = 58.0, 62.0
    ext = np.zeros((nx, ny, n_new), np.float32)
    muscle, fat, marrow = 0.75 * median, 0.9 * p99, median
    for k in range(n_new):
        depth_mm = (n_new - k) * zooms[2]  # distance below the lowest head slice
        widen = np.clip((depth_mm - 50.0) / 40.0, 0.0, 1.0)
        ax = rx + widen * (200.0 - rx)
        ay = ry + widen * (110.0 - ry)
        r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
        body = r <= 1.0
        rim = body & (r > 1.0 - 5.0 / min(ax, ay))
        vert = ((xx - cx) / 12.0) ** 2 + ((yy - (cy - 0.35 * ry)) / 14.0) ** 2
        airway = ((xx - cx) / 8.0) ** 2 + ((yy - (cy + 0.45 * ry)) / 8.0) ** 2 <= 1.0
        sl = np.where(body, muscle, 0.0)
        sl[rim] = fat
        sl[body & (vert <= 1.0)] = 0.08 * median
        sl[body & (vert <= 0.6)] = marrow
        sl[body & airway] = 0.0
        coil = 0.6 + 0.4 * (k / max(n_new - 1, 1))  # 0.6 at the new edge, 1 at the head
        ext[:, :, k] = sl * coil
    ext = ndimage.gaussian_filter(ext, 0.7)  # partial volumes
    if sigma > 0:
        re = ext + rng.normal(0, sigma, ext.shape)
        im = rng.normal(0, sigma, ext.shape)
        ext = np.sqrt(re ** 2 + im ** 2)
    added = n_new - k_low  # slices added to the grid (the others replace empty ones)
    out = np.concatenate([ext.astype(np.float32), data[:, :, k_low:]], axis=2)
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, 2] * added
    return _new(out, affine)


def add_spikes(img: nib.Nifti1Image, n: int = 20, value: float = 1e6, seed: int = 0
               ) -> nib.Nifti1Image:
    """``n`` voxels of the head foreground set to ``value`` (a reconstruction spike or hot
    pixels), at positions drawn with ``seed``."""
    data = _data(img).copy()
    head = np.flatnonzero(_head(img))
    rng = np.random.default_rng(seed)
    data.flat[rng.choice(head, size=n, replace=False)] = value
    return _new(data, img.affine)


#: ordinary inputs the participant level must process as well as the scan they were made from
HANDLED = {
    "neck_shoulders_110mm": extend_neck,
    "spikes_1e6": add_spikes,
}
