"""A second phantom generator, independent of the demo's head model: the template's tissue
probability maps imaged as partial-volume intensities.

:func:`tpm_phantom` builds a skull-stripped T1w whose every voxel is a mixture of tissues:

1. the truth: the GM, WM and CSF probability maps of the embedded MNI ICBM 2009a template
   (:func:`ketabids.templates.get_template`) read as tissue *fractions* (they sum to 1 inside
   the template brain; the rest of a voxel is background), carried to a native grid through
   ``y = R^T (x + w(x) - t) / s``: a head scale ``s``, a small rotation ``R``, a translation
   ``t`` and a smooth warp ``w`` (a sum of random plane waves of 50-140 mm wavelength, not the
   demo's filtered noise), sampled trilinearly. The warped fractions are the exact truth: the
   image is made from them and nothing else;
2. the intensity of a voxel is the sum of its tissue fractions times the tissue means of a T1
   contrast (:data:`CONTRASTS`: GM/WM ratios 0.62-0.80), times a bias field (``exp`` of a
   random quadratic polynomial of the coordinates, not the demo's Gaussian field), plus Rician
   noise (SD ``noise`` x the WM mean);
3. stored in the axis codes ``orientation`` (e.g. RAS, or LIA as FreeSurfer-conformed scans).

It shares only the template with the demo's phantoms (:mod:`ketabids.demo.head`): no GM
model, no head layers, another warp, bias and contrast. ``priors_affine`` carries the template
priors through the pose and scale only (no warp): priors with a known registration error (the
warp, ``warp_mm`` SD per component), for tests that run the segmentation alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field

import numpy as np

from ketabids.demo.head import rotation_matrix

#: T1 contrasts: tissue means relative to WM (GM/WM ratio 0.62 for a 3T MPRAGE-like contrast,
#: 0.70 and 0.80 for flatter ones, e.g. 1.5T or a short inversion time)
CONTRASTS = {
    "mprage3t": {"csf": 0.25, "gm": 0.62, "wm": 1.0},
    "mprage15t": {"csf": 0.30, "gm": 0.70, "wm": 1.0},
    "flat": {"csf": 0.38, "gm": 0.80, "wm": 1.0},
}
#: WM intensity of the stored image
WM_LEVEL = 1000.0
#: native field of view: the template brain's box grown by this margin (mm)
MARGIN_MM = 12.0


@dataclass
class TPMPhantom:
    """A skull-stripped T1w phantom and its exact truth (all images on the T1w's grid).

    ``t1w``: float32 intensities; ``gm``, ``wm``, ``csf``: the true tissue fractions
    (``1 - gm - wm - csf`` is background); ``brain_mask``: fractions summing to >= 0.5;
    ``priors_affine``: {"GM", "WM", "CSF"} template priors through the pose and scale only;
    ``volumes``: true volumes in mL (``gm_ml``, ``wm_ml``, ``csf_ml``, ``tiv_ml`` = their sum),
    and ``hard_gm_ml``/``hard_wm_ml``/``hard_csf_ml`` of the argmax labels inside the mask;
    ``params``: every drawn parameter (JSON-serialisable).
    """

    t1w: object
    gm: object
    wm: object
    csf: object
    brain_mask: object
    priors_affine: dict
    volumes: dict
    params: dict = dataclass_field(default_factory=dict)

    def truth_labels(self) -> np.ndarray:
        """Hard truth in the ``dseg`` order (1 GM, 2 WM, 3 CSF; 0 outside the mask)."""
        stack = np.stack([np.asarray(x.dataobj) for x in (self.gm, self.wm, self.csf)])
        return np.where(np.asarray(self.brain_mask.dataobj) > 0, np.argmax(stack, 0) + 1, 0)


def plane_wave_field(points, rng, *, sd: float, waves: int = 6,
                     wavelengths=(50.0, 140.0)) -> np.ndarray:
    """A smooth scalar field at world ``points`` (3, ...): the sum of ``waves`` plane waves
    with random directions, wavelengths in ``wavelengths`` (mm) and phases, scaled to standard
    deviation ``sd`` (the SD of a sum of unit sinusoids is ``sqrt(waves / 2)``)."""
    out = np.zeros(points.shape[1:], np.float32)
    for _ in range(waves):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = np.float32(2 * np.pi / rng.uniform(*wavelengths))
        phase = np.float32(rng.uniform(0, 2 * np.pi))
        proj = sum(np.float32(direction[i]) * points[i] for i in range(3))
        out += np.sin(k * proj + phase)
    return out * np.float32(sd / np.sqrt(waves / 2.0))


def _sample(arr, affine, points) -> np.ndarray:
    """Trilinear sample of ``arr`` (grid ``affine``) at world ``points`` (3, ...); 0 outside."""
    from scipy import ndimage

    inv = np.linalg.inv(affine)
    coords = np.stack([sum(np.float32(inv[i, j]) * points[j] for j in range(3))
                       + np.float32(inv[i, 3]) for i in range(3)])
    return ndimage.map_coordinates(arr, coords, order=1, mode="constant", cval=0.0,
                                   output=np.float32)


def _reorient(data, affine, target: str):
    import nibabel.orientations as nio

    if target == "RAS":
        return np.ascontiguousarray(data), affine
    ornt = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.axcodes2ornt(tuple(target)))
    return (np.ascontiguousarray(nio.apply_orientation(data, ornt)),
            affine @ nio.inv_ornt_aff(ornt, data.shape))


def _image(data, affine, dtype):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype), affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img


def tpm_phantom(*, seed: int = 0, resolution: float = 1.0, contrast: str | dict = "mprage3t",
                noise: float = 0.03, bias: float = 0.15, warp_mm: float = 2.0,
                head_scale: float | None = None, max_rotation: float = 5.0,
                orientation: str = "RAS") -> TPMPhantom:
    """Simulate one skull-stripped T1w from the template's tissue probability maps
    (module docstring); deterministic for ``seed``.

    ``resolution``: native voxel size (mm); ``contrast``: a :data:`CONTRASTS` name or a
    {"csf", "gm", "wm"} dict of means relative to WM; ``noise``: Rician noise SD as a fraction
    of the WM mean; ``bias``: SD of the log bias field inside the brain; ``warp_mm``: SD (mm) of
    each component of the warp; ``head_scale``: isotropic scale (drawn in 0.92-1.08 when
    None); ``orientation``: axis codes of the stored images.

    >>> ph = tpm_phantom(resolution=4.0, seed=1)
    >>> ph.t1w.shape == ph.gm.shape, 900 < ph.volumes["gm_ml"] < 1200
    (True, True)
    """
    import nibabel as nib

    from ketabids.templates import get_template

    means = dict(CONTRASTS[contrast]) if isinstance(contrast, str) else dict(contrast)
    tpl = get_template(resolution=1)
    maps = {k: np.asarray(nib.load(getattr(tpl, k)).dataobj, np.float32)
            for k in ("gm", "wm", "csf")}
    t_aff = nib.load(tpl.gm).affine
    rng = np.random.default_rng(seed)
    s = float(rng.uniform(0.92, 1.08) if head_scale is None else head_scale)
    angles = rng.uniform(-max_rotation, max_rotation, 3)
    shift = rng.uniform(-5.0, 5.0, 3)
    rot = rotation_matrix(angles)

    # native grid: axis-aligned (RAS) box around the transformed template brain box
    brain = (maps["gm"] + maps["wm"] + maps["csf"]) > 0.01
    idx = np.argwhere(brain)
    lo_w = t_aff[:3, :3] @ idx.min(0) + t_aff[:3, 3] - MARGIN_MM
    hi_w = t_aff[:3, :3] @ idx.max(0) + t_aff[:3, 3] + MARGIN_MM
    corners = np.array(np.meshgrid(*zip(lo_w, hi_w), indexing="ij")).reshape(3, -1)
    nat = rot @ (s * corners) + shift[:, None]
    lo = np.floor(nat.min(1) / resolution) * resolution
    hi = np.ceil(nat.max(1) / resolution) * resolution
    axes = [np.arange(lo[i], hi[i] + resolution / 2, resolution, dtype=np.float32)
            for i in range(3)]
    shape = tuple(a.size for a in axes)
    n_aff = np.diag([resolution] * 3 + [1.0])
    n_aff[:3, 3] = lo

    x = np.stack(np.meshgrid(*axes, indexing="ij"))
    disp = np.stack([plane_wave_field(x, rng, sd=warp_mm) for _ in range(3)])
    inv_pose = (rot.T / s).astype(np.float32)

    def to_template(points):
        p = points - shift.astype(np.float32)[:, None, None, None]
        return np.stack([sum(inv_pose[i, j] * p[j] for j in range(3)) for i in range(3)])

    y_warped = to_template(x + disp)
    frac = {k: np.clip(_sample(maps[k], t_aff, y_warped), 0.0, 1.0) for k in maps}
    del y_warped
    total = frac["gm"] + frac["wm"] + frac["csf"]
    over = total > 1.0  # interpolation round-off: fractions never exceed one voxel
    for arr in frac.values():
        arr[over] /= total[over]
    total = np.minimum(total, 1.0)
    mask = total >= 0.5
    y_pose = to_template(x)
    priors = {k.upper(): np.clip(_sample(maps[k], t_aff, y_pose), 0.0, 1.0) for k in maps}
    del y_pose

    # bias: exp of a random quadratic polynomial of the coordinates, SD ``bias`` in the brain
    centre = np.array([a.mean() for a in axes], np.float32)
    u = [(x[i] - centre[i]) / np.float32(80.0) for i in range(3)]
    terms = [u[0], u[1], u[2], u[0] * u[1], u[0] * u[2], u[1] * u[2],
             u[0] ** 2, u[1] ** 2, u[2] ** 2]
    poly = sum(np.float32(c) * t for c, t in zip(rng.normal(size=len(terms)), terms))
    poly -= poly[mask].mean()
    poly *= np.float32(bias / max(float(poly[mask].std()), 1e-6))
    del x, u, terms

    img = sum(np.float32(means[k]) * frac[k] for k in frac) * np.exp(poly)
    sigma = np.float32(noise * means["wm"])
    real = img + sigma * rng.standard_normal(shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(shape, dtype=np.float32)
    t1 = np.sqrt(real * real + imag * imag) * np.float32(WM_LEVEL / means["wm"])
    t1[~mask] = 0.0  # skull-stripped: zero background, as a brain-extracted scan

    vox_ml = resolution ** 3 / 1000.0
    hard = np.argmax(np.stack([frac["gm"], frac["wm"], frac["csf"]]), 0)
    volumes = {f"{k}_ml": float(frac[k].sum(dtype=np.float64) * vox_ml)
               for k in ("gm", "wm", "csf")}
    volumes["tiv_ml"] = volumes["gm_ml"] + volumes["wm_ml"] + volumes["csf_ml"]
    for i, k in enumerate(("gm", "wm", "csf")):
        volumes[f"hard_{k}_ml"] = float(((hard == i) & mask).sum() * vox_ml)

    def out(arr, dtype):
        data, aff = _reorient(arr, n_aff, orientation)
        return _image(data, aff, dtype)

    params = {"seed": seed, "resolution": float(resolution), "contrast": means,
              "noise": float(noise), "bias": float(bias), "warp_mm": float(warp_mm),
              "head_scale": s, "rotation_deg": [round(float(a), 4) for a in angles],
              "translation_mm": [round(float(a), 4) for a in shift],
              "orientation": orientation, "template": tpl.space}
    return TPMPhantom(
        t1w=out(t1, np.float32), gm=out(frac["gm"], np.float32), wm=out(frac["wm"], np.float32),
        csf=out(frac["csf"], np.float32), brain_mask=out(mask, np.uint8),
        priors_affine={k: out(v, np.float32) for k, v in priors.items()},
        volumes=volumes, params=params)
