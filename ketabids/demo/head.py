"""Native-space T1w phantoms: a subject's tissue maps imaged through a head model.

:func:`simulate_subject` applies the GM model of :mod:`ketabids.demo.phantom` to the template
tissue maps *before* imaging, then adds a head (scalp, skull, neck), a smooth non-linear
deformation, head-size scaling, a bias field, Rician noise, a rigid pose and a varied header
orientation. The ground truth (native tissue maps, volumes, template-space modulated GM) is
kept in a :class:`SimulatedSubject`. Deterministic for a seed, and for any thread count.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import numpy as np

from ketabids.demo.phantom import (
    DEFAULT_EFFECT_SIZE,
    DEFAULT_VARIATION,
    REFERENCE_AGE,
    add_effect_deformation,
    draw_head_scale,
    gm_factor,
    nifti_image,
    resolve_template,
    smooth_field,
    subject_rng,
    subject_tissues,
    template_maps,
    world_axes,
)

#: Default tissue intensities (fraction of the WM-ish maximum) of the "discovery scanner".
DEFAULT_CONTRAST = {
    "gm": 0.60,
    "wm": 0.85,
    "csf": 0.20,
    "skull": 0.08,
    "fat": 0.95,
    "skin": 0.50,
    "muscle": 0.40,
    "marrow": 0.55,
}
#: Template-world box (mm) the field of view covers: head plus ~5 cm of neck.
FOV_BOX = ((-92.0, 92.0), (-128.0, 98.0), (-118.0, 102.0))
#: Header orientations the demo cycles through (scanner-like and odd ones).
ORIENTATIONS = ("RAS", "LAS", "LPS", "LIA", "PIL", "ASL", "RPI", "IPL")


@functools.lru_cache(maxsize=2)
def _head_model(mask_path: str):
    """Non-brain intensity layers on a padded 2 mm template-space grid (cached per process).

    Returns ``(layers, affine)``: ``layers`` maps a tissue name (skull, fat, skin, muscle,
    marrow, csf) to a float32 fraction map; the rest is air. Built from the Euclidean distance
    to the template brain mask: 0-2 mm extra-axial CSF, 2-7 mm skull, 7-11 mm scalp fat,
    11-13.5 mm skin; below z = -30 mm an elliptical neck (muscle with a 5 mm fat rim and a
    vertebral column) joins the head.
    """
    import nibabel as nib
    from scipy import ndimage

    mask_img = nib.load(mask_path)
    mask = np.asarray(mask_img.dataobj) > 0
    res = 2.0
    box = ((-130.0, 130.0), (-170.0, 132.0), (-190.0, 150.0))
    axes = [np.arange(lo, hi + res / 2, res) for lo, hi in box]
    shape = tuple(a.size for a in axes)
    affine = np.diag([res, res, res, 1.0])
    affine[:3, 3] = [a[0] for a in axes]
    # brain mask resampled (nearest) onto the padded grid
    idx, valid = [], []
    for i in range(3):
        ix = np.round((axes[i] - mask_img.affine[i, 3]) / mask_img.affine[i, i]).astype(int)
        valid.append((ix >= 0) & (ix < mask.shape[i]))
        idx.append(np.clip(ix, 0, mask.shape[i] - 1))
    brain = (
        mask[np.ix_(*idx)]
        & valid[0][:, None, None]
        & valid[1][None, :, None]
        & valid[2][None, None, :]
    )
    dist = ndimage.distance_transform_edt(~brain, sampling=res).astype(np.float32)
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    # neck: an elliptical cylinder below the brain, merged with the head shell
    neck_r = ((x / 52.0) ** 2 + ((y + 22.0) / 58.0) ** 2) ** 0.5
    neck = (neck_r <= 1.0) & (z < -30.0)
    head = (dist <= 13.5) | neck
    depth = ndimage.distance_transform_edt(head, sampling=res).astype(np.float32)

    def band(d, lo, hi):
        return ((d > lo) & (d <= hi)).astype(np.float32)

    near = dist <= 13.5
    layers = {
        "csf": band(dist, 0.0, 2.0) * near,
        "skull": band(dist, 2.0, 7.0),
        "fat": (band(dist, 7.0, 11.0) * (depth > 0)
                + (neck & ~near & (depth <= 5.0) & (depth > 1.5))),
        "skin": ((head & ~brain) & (depth <= 1.5)).astype(np.float32),
    }
    vert = ((x / 11.0) ** 2 + ((y + 42.0) / 13.0) ** 2 <= 1.0) & neck & ~near & (depth > 5.0)
    marrow = ((x / 7.0) ** 2 + ((y + 42.0) / 9.0) ** 2 <= 1.0) & vert
    layers["marrow"] = marrow.astype(np.float32)
    layers["skull"] = np.maximum(layers["skull"], (vert & ~marrow).astype(np.float32))
    layers["muscle"] = (neck & ~near & (depth > 5.0) & ~vert).astype(np.float32)
    # precedence: skin > fat > skull > csf; then a light blur for partial volumes
    taken = np.zeros(shape, dtype=np.float32)
    for name in ("skin", "fat", "marrow", "skull", "muscle", "csf"):
        layers[name] = np.clip(layers[name] - taken, 0.0, 1.0) * ~brain
        taken += layers[name]
    for name in layers:
        layers[name] = ndimage.gaussian_filter(layers[name], 0.6).astype(np.float32)
        layers[name].setflags(write=False)
    return layers, affine


def rotation_matrix(angles_deg) -> np.ndarray:
    """3 x 3 rotation ``Rz Ry Rx`` for angles (degrees) about x, y and z."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _apply_matrix(mat, vectors) -> np.ndarray:
    """``mat @ vectors`` for a 3x3 matrix and (3, ...) vectors, with element-wise numpy (not
    BLAS, whose threading can change the last bits): deterministic for any thread count."""
    out = np.empty(vectors.shape, dtype=np.result_type(mat, vectors))
    for i in range(3):
        out[i] = mat[i, 0] * vectors[0] + mat[i, 1] * vectors[1] + mat[i, 2] * vectors[2]
    return out


def _sample(arr, affine, points, *, order=1) -> np.ndarray:
    """Trilinear sample of ``arr`` (axis-aligned grid ``affine``) at world ``points`` (3, ...)."""
    from scipy import ndimage

    shape = (3,) + (1,) * (points.ndim - 1)
    offset = affine[:3, 3].astype(np.float32).reshape(shape)
    step = np.diag(affine)[:3].astype(np.float32).reshape(shape)
    coords = (points.astype(np.float32, copy=False) - offset) / step
    return ndimage.map_coordinates(
        arr, coords, order=order, mode="constant", cval=0.0, prefilter=False, output=np.float32
    )


def _reorient(data, affine, target: str):
    """Reorder/flip a RAS-ordered array into axis codes ``target`` with a consistent affine."""
    import nibabel.orientations as nio

    if target == "RAS":
        return data, affine
    ornt = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.axcodes2ornt(tuple(target)))
    new = nio.apply_orientation(data, ornt)
    return np.ascontiguousarray(new), affine @ nio.inv_ornt_aff(ornt, data.shape)


@dataclass
class SimulatedSubject:
    """A T1w phantom and its ground truth.

    ``t1w``: the native T1w (int16, header orientation ``params['orientation']``);
    ``gm``, ``wm``, ``csf``: native probability maps and ``brain_mask`` on the T1w grid;
    ``template_gm``: the true Jacobian-modulated GM map on the template grid
    (``sum * voxel_mm3 / 1000`` = native GM in mL); ``volumes``: true native volumes (mL:
    ``tiv_ml, gm_ml, wm_ml, csf_ml``); ``params``: every drawn parameter (JSON-serialisable).
    """

    t1w: object
    gm: object
    wm: object
    csf: object
    brain_mask: object
    template_gm: object
    volumes: dict
    params: dict = dataclass_field(default_factory=dict)


@dataclass(frozen=True)
class SubjectTraits:
    """Who is imaged: the subject-level inputs of :func:`simulate_subject`.

    Parameters
    ----------
    responder : bool or None
        Planted label: True adds the responder GM pattern (frontal +, cerebellar -), False the
        opposite, None nothing.
    effect_size : float
        Relative GM difference of the planted pattern (0 plants nothing).
    effect_volume_share : float
        Share of ``effect_size`` planted as a local volume change (expansion/compression in
        the deformation) rather than as GM probability; clipped to [0, 1].
    age : float
        Years; drives the GM atrophy of :func:`~ketabids.demo.phantom.gm_factor`.
    sex : str
        ``"F"`` or ``"M"``; draws the head size when ``head_scale`` is None.
    head_scale : float or None
        Linear head-size factor ``s`` (None: drawn from ``sex``).
    variation : float
        SD of the individual smooth GM variation.
    """

    responder: bool | None = None
    effect_size: float = DEFAULT_EFFECT_SIZE
    effect_volume_share: float = 0.5
    age: float = REFERENCE_AGE
    sex: str = "F"
    head_scale: float | None = None
    variation: float = DEFAULT_VARIATION


@dataclass(frozen=True)
class Acquisition:
    """How the subject is imaged: grid, storage order and a scanner's contrast, noise and bias.

    The demo's sites (:data:`ketabids.demo.scanners.SCANNERS`) give ``contrast``, ``noise``
    and ``bias_strength`` per scanner.

    Parameters
    ----------
    resolution : float
        Isotropic voxel size of the native grid, mm.
    orientation : str
        Axis codes of the stored image (e.g. ``"RAS"``, ``"LIA"``; data and affine together).
    skull : bool
        Image the scalp/skull/neck model around the brain (False: brain tissues only).
    contrast : dict or None
        Tissue intensities (fraction of the WM-ish maximum) overriding
        :data:`DEFAULT_CONTRAST`, by key (``gm``, ``wm``, ``csf``, ``fat``, ...).
    noise : float
        Rician noise SD as a fraction of the WM intensity.
    bias_strength : float
        Amplitude of the smooth multiplicative bias field ``exp(bias_strength * F)``.
    """

    resolution: float = 2.0
    orientation: str = "RAS"
    skull: bool = True
    contrast: dict | None = None
    noise: float = 0.03
    bias_strength: float = 0.2


@dataclass(frozen=True)
class PoseAndWarp:
    """Where the head lies in the scanner and how its shape departs from the template.

    Parameters
    ----------
    max_rotation : float
        Largest rotation per axis, degrees (drawn uniformly in +/- this).
    max_translation : float
        Largest translation per axis, mm (drawn uniformly in +/- this).
    warp_mm : float
        SD per component of the smooth non-linear displacement, mm (0: none).
    warp_fwhm : float
        Smoothness (FWHM, mm) of that displacement.
    """

    max_rotation: float = 6.0
    max_translation: float = 8.0
    warp_mm: float = 1.5
    warp_fwhm: float = 60.0


def simulate_subject(
    template=None,
    *,
    seed=0,
    traits: SubjectTraits | None = None,
    acquisition: Acquisition | None = None,
    pose: PoseAndWarp | None = None,
) -> SimulatedSubject:
    """Simulate one native-space T1w and its ground truth (deterministic for ``seed``).

    The subject (:class:`SubjectTraits`), its imaging (:class:`Acquisition`) and its pose
    and deformation (:class:`PoseAndWarp`) each default to their class's defaults; vary one
    field with e.g. ``Acquisition(resolution=1.0, orientation="LIA")``. The names below are
    fields of these three.

    Steps, all in one pass of trilinear sampling (no repeated resampling):

    1. template-space tissue maps of the subject: the GM factor of
       :func:`~ketabids.demo.phantom.gm_factor` (individual variation, age atrophy, planted
       effect) applied to the template priors (:func:`~ketabids.demo.phantom.subject_tissues`).
       The planted effect is split: ``1 - effect_volume_share`` of ``effect_size`` changes GM
       probabilities (at the expense of CSF), the rest is a local expansion/compression of the
       frontal and cerebellar regions added to the deformation (Gaussian bumps,
       :func:`~ketabids.demo.phantom.add_effect_deformation`), as a real GM volume difference
       would be;
    2. a map from native world ``x`` to template world ``y``:
       ``y = R^T (x + w(x) - t) / s`` with ``s = head_scale`` (drawn from ``sex`` when None),
       ``R`` a rotation of up to ``max_rotation`` degrees per axis, ``t`` a translation of up
       to ``max_translation`` mm and ``w`` a smooth displacement field (FWHM ``warp_fwhm`` mm, SD
       ``warp_mm`` mm per component); the native grid is axis-aligned (RAS) with ``resolution``
       mm voxels and covers the head and ~5 cm of neck;
    3. intensity = sum of tissue fraction x ``contrast`` (GM 0.6, WM 0.85, CSF 0.2 of max; the
       head layers of a scalp/skull/neck model when ``skull``), times a bias field
       ``exp(bias_strength * F)`` (F smooth, FWHM 150 mm), plus Rician noise (magnitude of a
       complex Gaussian, SD ``noise`` x WM intensity), scaled to int16 (WM ~ 1000);
    4. every image reoriented to the axis codes ``orientation`` (data and affine together).

    Truth: native maps = template tissue maps sampled at ``y(x)``; the template-space modulated
    GM = subject GM x ``s**3 / det(I + dw/dx)`` evaluated at the inverse map (fixed-point
    iteration), so its sum equals the native GM volume up to discretisation (< 1 %).

    Parameters
    ----------
    template : Template, str or None
        Template whose tissue priors are imaged (None: the embedded one at 1 mm when
        ``acquisition.resolution < 1.5``, else 2 mm).
    seed : int, sequence of int or numpy.random.Generator
        Every random draw comes from it.
    traits : SubjectTraits or None
        The subject (None: ``SubjectTraits()``).
    acquisition : Acquisition or None
        Grid, storage order, contrast, noise, bias (None: ``Acquisition()``).
    pose : PoseAndWarp or None
        Rotation, translation and smooth deformation ranges (None: ``PoseAndWarp()``).

    Returns
    -------
    SimulatedSubject
        The T1w, its ground truth and every drawn parameter.
    """
    from ketabids.templates import get_template

    traits = traits or SubjectTraits()
    acquisition = acquisition or Acquisition()
    pose = pose or PoseAndWarp()
    responder, effect_size, age = traits.responder, traits.effect_size, traits.age
    resolution, orientation = acquisition.resolution, acquisition.orientation
    if template is None:
        template = get_template(resolution=1 if resolution < 1.5 else 2)
    template = resolve_template(template)
    maps, t_aff = template_maps(template)
    contrast = {**DEFAULT_CONTRAST, **(acquisition.contrast or {})}
    rng = subject_rng(seed)
    head_scale = traits.head_scale
    if head_scale is None:
        head_scale = draw_head_scale(traits.sex, rng, template)
    s = float(head_scale)
    angles = rng.uniform(-pose.max_rotation, pose.max_rotation, 3)
    shift = rng.uniform(-pose.max_translation, pose.max_translation, 3)
    rot = rotation_matrix(angles)

    share = float(np.clip(traits.effect_volume_share, 0.0, 1.0))
    factor = gm_factor(
        template, seed=rng, responder=responder, effect_size=effect_size * (1.0 - share),
        age=age, variation=traits.variation,
    )
    tissues = subject_tissues(template, factor=factor, age=age)

    # native grid: axis-aligned box around the transformed FOV corners
    corners = np.array(np.meshgrid(*FOV_BOX, indexing="ij")).reshape(3, -1)
    nat = rot @ (s * corners) + shift[:, None]
    lo = np.floor(nat.min(1) / resolution) * resolution - 2 * resolution
    hi = np.ceil(nat.max(1) / resolution) * resolution + 2 * resolution
    axes = [np.arange(lo[i], hi[i] + resolution / 2, resolution, dtype=np.float32)
            for i in range(3)]
    shape = tuple(a.size for a in axes)
    n_aff = np.diag([resolution] * 3 + [1.0])
    n_aff[:3, 3] = lo

    # smooth displacement w(x) (native world, mm) and det(I + dw/dx)
    disp = np.stack([smooth_field(axes, rng, fwhm=pose.warp_fwhm)
                     * np.float32(pose.warp_mm)
                     for _ in range(3)])
    if responder is not None and effect_size and share:
        add_effect_deformation(
            disp, axes, rot=rot, scale=s, shift=shift,
            amount=(1.0 if responder else -1.0) * effect_size * share / 2.0,
        )
    if np.any(disp):
        jac = np.empty((3, 3) + shape, dtype=np.float32)
        for i in range(3):
            grads = np.gradient(disp[i], resolution)
            for j in range(3):
                jac[i, j] = grads[j] + (1.0 if i == j else 0.0)
        det = (
            jac[0, 0] * (jac[1, 1] * jac[2, 2] - jac[1, 2] * jac[2, 1])
            - jac[0, 1] * (jac[1, 0] * jac[2, 2] - jac[1, 2] * jac[2, 0])
            + jac[0, 2] * (jac[1, 0] * jac[2, 1] - jac[1, 1] * jac[2, 0])
        )
        del jac
    else:
        det = np.ones(shape, dtype=np.float32)

    # y(x) = R^T (x + w(x) - t) / s for every native voxel
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    grid += disp
    grid -= shift.astype(np.float32)[:, None, None, None]
    pts = _apply_matrix((rot.T / s).astype(np.float32), grid)
    del grid

    native = {k: np.clip(_sample(tissues[k], t_aff, pts), 0.0, 1.0) for k in ("gm", "wm", "csf")}
    tissue_sum = native["gm"] + native["wm"] + native["csf"]
    brain = tissue_sum >= 0.5  # GM + WM + CSF priors add up to the template brain mask
    img = (contrast["gm"] * native["gm"] + contrast["wm"] * native["wm"]
           + contrast["csf"] * native["csf"])
    if acquisition.skull:
        layers, h_aff = _head_model(str(template.mask))
        head_tpl = np.zeros(next(iter(layers.values())).shape, dtype=np.float32)
        for name, frac in layers.items():
            head_tpl += np.float32(contrast[name]) * frac
        img += np.clip(1.0 - tissue_sum, 0.0, 1.0) * _sample(head_tpl, h_aff, pts)
    del pts
    bias = np.exp(np.float32(acquisition.bias_strength) * smooth_field(axes, rng, fwhm=150.0))
    img *= bias
    sigma = np.float32(acquisition.noise * contrast["wm"])
    real = img + sigma * rng.standard_normal(shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(shape, dtype=np.float32)
    img = np.sqrt(real * real + imag * imag)
    t1 = np.clip(np.round(img * (1000.0 / contrast["wm"])), 0, 32767).astype(np.int16)

    vox_ml = resolution**3 / 1000.0
    volumes = {
        "tiv_ml": float(tissue_sum.sum(dtype=np.float64) * vox_ml),
        "gm_ml": float(native["gm"].sum(dtype=np.float64) * vox_ml),
        "wm_ml": float(native["wm"].sum(dtype=np.float64) * vox_ml),
        "csf_ml": float(native["csf"].sum(dtype=np.float64) * vox_ml),
    }

    # template-space truth: GM(y) * s^3 / det(I + dw/dx)(x*(y)), x* solving x + w(x) = R s y + t
    inside = tissues["gm"] > 0
    ys = np.stack(np.meshgrid(*world_axes(maps["gm"].shape, t_aff), indexing="ij"))[:, inside]
    target = _apply_matrix(rot * s, ys) + shift[:, None]
    xs = target.copy()
    for _ in range(3):
        w_at = np.stack([_sample(disp[i], n_aff, xs) for i in range(3)])
        xs = target - w_at
    det_at = _sample(det, n_aff, xs)
    det_at[det_at <= 0.05] = 1.0  # outside the native grid (never for the brain)
    tpl_gm = np.zeros(maps["gm"].shape, dtype=np.float32)
    tpl_gm[inside] = tissues["gm"][inside] * np.float32(s**3) / det_at

    out = {}
    for key, arr, dtype in (
        ("t1w", t1, np.int16),
        ("gm", native["gm"], np.float32),
        ("wm", native["wm"], np.float32),
        ("csf", native["csf"], np.float32),
        ("brain_mask", brain.astype(np.uint8), np.uint8),
    ):
        data, aff = _reorient(arr, n_aff, orientation)
        out[key] = nifti_image(data, aff, dtype=dtype)
    tpl_img = nifti_image(tpl_gm, t_aff, code=4)
    params = {
        "seed": None if isinstance(seed, np.random.Generator) else seed,
        "responder": responder,
        "effect_size": float(effect_size),
        "age": float(age),
        "sex": str(traits.sex),
        "head_scale": s,
        "resolution": float(resolution),
        "orientation": orientation,
        "rotation_deg": [round(float(a), 4) for a in angles],
        "translation_mm": [round(float(a), 4) for a in shift],
        "warp_mm": float(pose.warp_mm),
        "warp_fwhm": float(pose.warp_fwhm),
        "effect_volume_share": share,
        "bias_strength": float(acquisition.bias_strength),
        "noise": float(acquisition.noise),
        "contrast": contrast,
        "template": template.space,
        "template_resolution": float(template.resolution),
    }
    return SimulatedSubject(
        t1w=out["t1w"],
        gm=out["gm"],
        wm=out["wm"],
        csf=out["csf"],
        brain_mask=out["brain_mask"],
        template_gm=tpl_img,
        volumes=volumes,
        params=params,
    )
