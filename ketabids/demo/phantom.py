"""Synthetic subjects with a planted, known ketamine-response effect: the tissue maths.

Everything here lives on the template grid and is deterministic for a seed:
:func:`simulate_template_gm` draws a subject's Jacobian-modulated grey-matter (GM) map directly
on the template grid, i.e. what the participant level would output if it were perfect
(:mod:`ketabids.demo.derivatives` writes such maps as a derivative dataset);
:func:`subject_tissues` gives the subject's template-space tissue maps from which
:func:`ketabids.demo.head.simulate_subject` images a native-space T1w phantom.

The subject model, for template voxel ``y`` (all factors multiplicative)::

    GM_mod(y) = P_GM(y) * V(y) * A(age) * E(y) * S_site(y) * s**3

* ``P_GM``: the template GM prior;
* ``V = 1 + variation * (0.7 * F_coarse + 0.7 * F_fine)``: individual anatomy, two smooth
  zero-mean unit-variance Gaussian random fields (FWHM ~ 60 mm and ~ 14 mm); the coarse one
  makes lobe-sized differences, so the planted effect competes with natural variation in the
  same regions (this is what makes ``effect_size`` tune difficulty);
* ``A = 1 - 0.003 * (age - 45)``: global GM atrophy of 0.3 % per year around age 45;
* ``E = 1 + sign * effect_size / 2 * (w_frontal - w_cerebellar)``: the planted effect, with
  ``sign = +1`` for responders, ``-1`` for non-responders, ``0`` (no effect) for ``None``
  (saline arm, null cohorts); ``w_*`` are soft (4 mm logistic edges) region weights, see
  :func:`effect_regions`. Responders and non-responders therefore differ by ``effect_size``
  (a fraction, 0.06 = 6 %) of regional GM, in opposite directions in the two regions;
* ``S_site = 1 + site_effect * (0.5 + F_site)``: a scanner effect (global offset plus a smooth
  pattern seeded by the site name), 1 when ``site_effect == 0``;
* ``s``: the linear head-size scale relative to the template (volume scales with ``s**3``).

In the T1w phantoms the same factor multiplies the GM prior before imaging (GM gained is taken
from CSF, then WM; GM lost becomes CSF), and part of the planted effect can be a local volume
change (:func:`add_effect_deformation`); the true modulated map also carries the Jacobian of
the phantom's smooth deformation (~8 % local volume variation at the defaults), so the same
``effect_size`` is harder to learn from phantoms than from :func:`simulate_template_gm` maps.

Effect regions (MNI152NLin2009aSym world coordinates, mm, GM prior > 0.3):

* ``frontal``: ``y > +15`` and ``z > -15`` (prefrontal and anterior frontal cortex);
* ``cerebellar``: ``z < -25`` and ``y < -40`` (cerebellar cortex).
"""
from __future__ import annotations

import functools
import zlib

import numpy as np

#: Region boundaries (MNI mm); see the module docstring.
FRONTAL_Y_MIN = 15.0
FRONTAL_Z_MIN = -15.0
CEREBELLAR_Z_MAX = -25.0
CEREBELLAR_Y_MAX = -40.0
REGION_GM_MIN = 0.3
#: Scale (mm) of the logistic edge of the soft effect weights: 10-90 % rise over 4 mm.
EDGE_MM = 4.0 / 4.394
#: GM atrophy per year of age, and the age with no atrophy factor.
ATROPHY_PER_YEAR = 0.003
REFERENCE_AGE = 45.0
#: WM loses less volume with age than GM (fraction of the GM rate).
WM_ATROPHY_RATIO = 0.5

#: Defaults shared by the table maker, the derivative writer and the demo.
DEFAULT_EFFECT_SIZE = 0.08
DEFAULT_VARIATION = 0.04


# --------------------------------------------------------------------------------------------
# template helpers
# --------------------------------------------------------------------------------------------
def resolve_template(template):
    """Accept a :class:`~ketabids.templates.Template`, a resolution (1 or 2) or None (2 mm)."""
    from ketabids.templates import get_template

    if template is None:
        return get_template(resolution=2)
    if isinstance(template, (int, float)):
        return get_template(resolution=int(template))
    return template


@functools.lru_cache(maxsize=8)
def _load_maps(gm_path: str, wm_path: str, csf_path: str, mask_path: str):
    """Template maps as float32 arrays (cached; treat as read-only) and the affine."""
    import nibabel as nib

    gm_img = nib.load(gm_path)
    maps = {
        "gm": np.asarray(gm_img.dataobj, dtype=np.float32),
        "wm": np.asarray(nib.load(wm_path).dataobj, dtype=np.float32),
        "csf": np.asarray(nib.load(csf_path).dataobj, dtype=np.float32),
        "mask": np.asarray(nib.load(mask_path).dataobj) > 0,
    }
    for arr in maps.values():
        arr.setflags(write=False)
    return maps, gm_img.affine.copy()


def template_maps(template=None):
    """``(maps, affine)``: read-only float32 GM/WM/CSF priors and boolean brain mask."""
    tpl = resolve_template(template)
    return _load_maps(str(tpl.gm), str(tpl.wm), str(tpl.csf), str(tpl.mask))


def world_axes(shape, affine):
    """World coordinates along each axis of an axis-aligned (diagonal) affine grid."""
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("template affine must be diagonal (axis-aligned grid)")
    return [affine[i, i] * np.arange(shape[i]) + affine[i, 3] for i in range(3)]


def _logistic(v):
    return 1.0 / (1.0 + np.exp(-v))


def _soft_weights(shape, affine):
    """Soft (0..1) frontal and cerebellar weights on the grid, before the GM restriction."""
    x, y, z = world_axes(shape, affine)
    fy = _logistic((y - FRONTAL_Y_MIN) / EDGE_MM)
    fz = _logistic((z - FRONTAL_Z_MIN) / EDGE_MM)
    cy = _logistic((CEREBELLAR_Y_MAX - y) / EDGE_MM)
    cz = _logistic((CEREBELLAR_Z_MAX - z) / EDGE_MM)
    ones = np.ones(shape[0], dtype=np.float32)
    frontal = np.einsum("i,j,k->ijk", ones, fy, fz).astype(np.float32)
    cerebellar = np.einsum("i,j,k->ijk", ones, cy, cz).astype(np.float32)
    return frontal, cerebellar


def effect_regions(template=None) -> dict[str, np.ndarray]:
    """Boolean masks of the planted-effect regions on the template grid.

    ``frontal``: MNI ``y > +15 mm`` and ``z > -15 mm``; ``cerebellar``: ``z < -25 mm`` and
    ``y < -40 mm``; both restricted to voxels whose template GM prior is > 0.3.

    >>> regions = effect_regions(2)
    >>> sorted(regions), bool(regions["frontal"].any()), bool(regions["cerebellar"].any())
    (['cerebellar', 'frontal'], True, True)
    """
    maps, affine = template_maps(template)
    frontal, cerebellar = _soft_weights(maps["gm"].shape, affine)
    gm = maps["gm"] > REGION_GM_MIN
    return {"frontal": (frontal > 0.5) & gm, "cerebellar": (cerebellar > 0.5) & gm}


# --------------------------------------------------------------------------------------------
# smooth random fields
# --------------------------------------------------------------------------------------------
def _gauss_basis(coords, spacing, sigma, n_centres):
    """Matrix (len(coords), n_centres) of Gaussian bumps centred every ``spacing`` mm."""
    centres = coords[0] - spacing + spacing * np.arange(n_centres)
    d = (coords[:, None] - centres[None, :]) / sigma
    return np.exp(-0.5 * d * d).astype(np.float32)


def smooth_field(axes, rng: np.random.Generator, fwhm: float) -> np.ndarray:
    """A smooth zero-mean, unit-variance random field on the grid given by world ``axes``.

    The field is a sum of Gaussian bumps of width ``fwhm`` (mm) centred on a lattice of spacing
    ``fwhm / 2`` with independent standard-normal amplitudes, evaluated separably (three small
    matrix products, no filtering of a full-size volume), then standardised over the grid.
    """
    sigma = fwhm / 2.3548
    spacing = fwhm / 2.0
    mats, n_c = [], []
    for coords in axes:
        coords = np.asarray(coords, dtype=np.float64)
        n = int(np.ceil((coords[-1] - coords[0]) / spacing)) + 3
        n_c.append(n)
        mats.append(_gauss_basis(coords, spacing, sigma, n))
    coef = rng.standard_normal(tuple(n_c)).astype(np.float32)
    # numpy's own einsum loops (optimize=False), not BLAS: bit-identical for any thread count
    field = np.einsum("ia,abc->ibc", mats[0], coef, optimize=False)
    field = np.einsum("jb,ibc->ijc", mats[1], field, optimize=False)
    field = np.einsum("kc,ijc->ijk", mats[2], field, optimize=False)
    field -= field.mean()
    field /= max(float(field.std()), 1e-12)
    return field.astype(np.float32)


def _site_rng(site: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(str(site).encode()))


def subject_rng(seed, participant_id: str | None = None) -> np.random.Generator:
    """The generator of one subject: ``seed`` itself if it is a Generator, else seeded by
    ``seed`` (and ``participant_id``, so a subject's draws do not depend on the others)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if participant_id is None:
        return np.random.default_rng(seed)
    return np.random.default_rng([int(seed or 0), zlib.crc32(participant_id.encode())])


# --------------------------------------------------------------------------------------------
# a subject's GM map on the template grid
# --------------------------------------------------------------------------------------------
def gm_factor(
    template=None,
    *,
    seed=None,
    responder: bool | None = None,
    effect_size: float = DEFAULT_EFFECT_SIZE,
    age: float = REFERENCE_AGE,
    variation: float = DEFAULT_VARIATION,
    site: str | None = None,
    site_effect: float = 0.0,
) -> np.ndarray:
    """The multiplicative GM factor ``V * A * E * S_site`` (module docstring) on the grid.

    ``seed`` is an int, a sequence of ints or a :class:`numpy.random.Generator`.
    """
    maps, affine = template_maps(template)
    shape = maps["gm"].shape
    axes = world_axes(shape, affine)
    rng = subject_rng(seed)
    factor = np.ones(shape, dtype=np.float32)
    if variation:
        coarse = smooth_field(axes, rng, fwhm=60.0)
        fine = smooth_field(axes, rng, fwhm=14.0)
        factor += np.float32(variation * 0.7) * (coarse + fine)
    factor *= np.float32(1.0 - ATROPHY_PER_YEAR * (float(age) - REFERENCE_AGE))
    if responder is not None and effect_size:
        sign = 1.0 if responder else -1.0
        frontal, cerebellar = _soft_weights(shape, affine)
        factor *= 1.0 + np.float32(sign * effect_size / 2.0) * (frontal - cerebellar)
    if site is not None and site_effect:
        pattern = smooth_field(axes, _site_rng(site), fwhm=50.0)
        factor *= 1.0 + np.float32(site_effect) * (0.5 + pattern)
    return np.clip(factor, 0.0, None)


def simulate_template_gm(
    template=None,
    *,
    seed=None,
    responder: bool | None = None,
    effect_size: float = DEFAULT_EFFECT_SIZE,
    age: float = REFERENCE_AGE,
    head_scale: float = 1.0,
    variation: float = DEFAULT_VARIATION,
    site: str | None = None,
    site_effect: float = 0.0,
) -> np.ndarray:
    """One subject's Jacobian-modulated GM map on the template grid (float32, mL per voxel
    volume fraction, so ``sum * voxel_volume_mm3 / 1000`` is the subject's GM volume in mL).

    ``GM_mod = P_GM * gm_factor(...) * head_scale**3``, capped at ``head_scale**3`` (a voxel
    cannot hold more GM than its own native volume). See the module docstring for every factor.

    >>> a = simulate_template_gm(2, seed=1, responder=True)
    >>> b = simulate_template_gm(2, seed=1, responder=True)
    >>> bool((a == b).all()), a.dtype.name
    (True, 'float32')
    """
    maps, _ = template_maps(template)
    factor = gm_factor(
        template,
        seed=seed,
        responder=responder,
        effect_size=effect_size,
        age=age,
        variation=variation,
        site=site,
        site_effect=site_effect,
    )
    scale3 = np.float32(head_scale) ** 3
    gm = np.minimum(maps["gm"] * factor, np.float32(1.0)) * scale3
    return gm.astype(np.float32)


# --------------------------------------------------------------------------------------------
# head size, volumes and tissue maps of a subject
# --------------------------------------------------------------------------------------------
def draw_head_scale(sex: str, rng: np.random.Generator, template=None) -> float:
    """Linear head-size scale so that TIV ~ N(1500, 110) mL (M) or N(1330, 100) mL (F)."""
    maps, affine = template_maps(template)
    tpl_tiv = float(_tissue_sum(maps, affine)["tiv_ml"])
    mean, sd = (1500.0, 110.0) if str(sex).upper().startswith("M") else (1330.0, 100.0)
    tiv = float(np.clip(rng.normal(mean, sd), mean - 3 * sd, mean + 3 * sd))
    return (tiv / tpl_tiv) ** (1.0 / 3.0)


def _tissue_sum(maps, affine):
    vox_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    return {
        "tiv_ml": float((maps["gm"] + maps["wm"] + maps["csf"]).sum() * vox_ml),
        "gm_ml": float(maps["gm"].sum() * vox_ml),
        "wm_ml": float(maps["wm"].sum() * vox_ml),
    }


def template_volumes(gm_mod, template=None, *, head_scale=1.0, age=REFERENCE_AGE) -> dict:
    """True volumes (mL) of a template-space subject: GM from the modulated map, TIV from the
    template (GM+WM+CSF priors) scaled by ``head_scale**3``, WM from the template WM prior with
    half the GM atrophy rate, CSF = TIV - GM - WM (lost tissue becomes CSF)."""
    maps, affine = template_maps(template)
    vox_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    base = _tissue_sum(maps, affine)
    s3 = float(head_scale) ** 3
    tiv = base["tiv_ml"] * s3
    gm = float(np.asarray(gm_mod, dtype=np.float64).sum() * vox_ml)
    wm = base["wm_ml"] * s3 * (1.0 - WM_ATROPHY_RATIO * ATROPHY_PER_YEAR * (age - REFERENCE_AGE))
    return {"tiv_ml": tiv, "gm_ml": gm, "wm_ml": wm, "csf_ml": max(tiv - gm - wm, 0.0)}


def subject_tissues(template=None, *, factor: np.ndarray, age: float = REFERENCE_AGE):
    """A subject's unmodulated template-space tissue maps after the GM ``factor``.

    GM becomes ``min(P_GM * factor, GM+WM+CSF)``; GM gained is taken from CSF first, then
    WM; GM lost becomes CSF. WM shrinks by half the GM atrophy rate (to CSF). So
    GM + WM + CSF (the intracranial fraction) is unchanged voxel by voxel.
    """
    maps, _ = template_maps(template)
    gm0, wm0, csf0 = maps["gm"], maps["wm"], maps["csf"]
    total = gm0 + wm0 + csf0
    wm = wm0 * np.float32(1.0 - WM_ATROPHY_RATIO * ATROPHY_PER_YEAR * (age - REFERENCE_AGE))
    gm = np.minimum(gm0 * factor, total)
    wm = np.minimum(wm, total - gm)
    csf = np.clip(total - gm - wm, 0.0, None)
    return {"gm": gm.astype(np.float32), "wm": wm.astype(np.float32),
            "csf": csf.astype(np.float32)}


# --------------------------------------------------------------------------------------------
# the planted effect as a local volume change (T1w phantoms)
# --------------------------------------------------------------------------------------------
#: Centre (MNI mm), width (SD, mm) and gain of the planted local volume changes. The gains
#: are calibrated so that the GM volume of each :func:`effect_regions` mask changes by about
#: ``amount`` (the core expands more, its surrounding shell is compressed).
EFFECT_BUMPS = {
    "frontal": ((0.0, 42.0, 22.0), 40.0, 2.15),
    "cerebellar": ((0.0, -62.0, -40.0), 28.0, 2.8),
}


def add_effect_deformation(disp, axes, *, rot, scale, shift, amount) -> None:
    """Add the volume part of the planted effect to the native displacement ``disp`` in place.

    Around each region centre ``c`` (mapped to native space), ``w(x) = -/+ b (x - c) g(x)``
    with ``g`` a Gaussian bump: ``det(I + dw/dx) ~ 1 -/+ 3 b`` at the core, so the native
    volume per template volume there is ``1 +/- 3 b`` (frontal +, cerebellar - for
    ``amount > 0``), with ``3 b = gain * amount``; the surrounding shell is compressed in turn.
    """
    for name, direction in (("frontal", 1.0), ("cerebellar", -1.0)):
        centre, sigma, gain = EFFECT_BUMPS[name]
        b = gain * amount / 3.0
        c = rot @ (scale * np.asarray(centre)) + shift
        d = [np.asarray(axes[i], dtype=np.float64) - c[i] for i in range(3)]
        g1 = [np.exp(-0.5 * (di / (scale * sigma)) ** 2) for di in d]
        bump = np.einsum("i,j,k->ijk", g1[0], g1[1], g1[2]).astype(np.float32)
        for i in range(3):
            shape = [1, 1, 1]
            shape[i] = -1
            disp[i] -= np.float32(direction * b) * d[i].astype(np.float32).reshape(shape) * bump


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
def nifti_image(data, affine, *, dtype=np.float32, code: int = 1):
    """A NIfTI image in mm with both qform and sform set to ``affine`` with ``code``
    (1 scanner, 4 template space)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=code)
    img.header.set_sform(affine, code=code)
    return img
