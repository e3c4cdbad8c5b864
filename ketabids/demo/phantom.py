"""Synthetic subjects with a planted, known ketamine-response effect.

Two levels of realism, both deterministic for a seed:

* **Template-space truth** (fast, no imaging): :func:`simulate_template_gm` draws a subject's
  Jacobian-modulated grey-matter (GM) map directly on the template grid, i.e. what the
  participant level would output if it were perfect. :func:`write_synthetic_derivatives` writes
  such maps for every row of a ``participants.tsv`` in the derivative layout of the contract, so
  the group level can be tested on 100-150 subjects in seconds.
* **Native-space T1w phantoms** (:func:`simulate_subject`): the same GM model applied to the
  template tissue maps *before* imaging, then a head (scalp, skull, neck), a smooth non-linear
  deformation, head-size scaling, a bias field, Rician noise, a rigid pose and a varied header
  orientation. The ground truth (native tissue maps, volumes, template-space modulated GM) is kept.

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
from CSF, then WM; GM lost becomes CSF), and the true modulated map also carries the Jacobian of
the phantom's smooth deformation (~8 % local volume variation at the defaults), so the same
``effect_size`` is harder to learn from phantoms than from :func:`simulate_template_gm` maps.

Effect regions (MNI152NLin2009aSym world coordinates, mm, GM prior > 0.3):

* ``frontal``: ``y > +15`` and ``z > -15`` (prefrontal and anterior frontal cortex);
* ``cerebellar``: ``z < -25`` and ``y < -40`` (cerebellar cortex).
"""
from __future__ import annotations

import functools
import json
import zlib
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

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
DERIV_SPACE = "MNI152NLin2009aSym"


# --------------------------------------------------------------------------------------------
# template helpers
# --------------------------------------------------------------------------------------------
def _resolve_template(template):
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
    tpl = _resolve_template(template)
    return _load_maps(str(tpl.gm), str(tpl.wm), str(tpl.csf), str(tpl.mask))


def _world_axes(shape, affine):
    """World coordinates along each axis of an axis-aligned (diagonal) affine grid."""
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("template affine must be diagonal (axis-aligned grid)")
    return [affine[i, i] * np.arange(shape[i]) + affine[i, 3] for i in range(3)]


def _logistic(v):
    return 1.0 / (1.0 + np.exp(-v))


def _soft_weights(shape, affine):
    """Soft (0..1) frontal and cerebellar weights on the grid, before the GM restriction."""
    x, y, z = _world_axes(shape, affine)
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


def _subject_rng(seed, participant_id: str | None = None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if participant_id is None:
        return np.random.default_rng(seed)
    return np.random.default_rng([int(seed or 0), zlib.crc32(participant_id.encode())])


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
    axes = _world_axes(shape, affine)
    rng = _subject_rng(seed)
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
# participants table
# --------------------------------------------------------------------------------------------
PARTICIPANT_COLUMNS = ["participant_id", "age", "sex", "site", "arm", "madrs_pre", "madrs_24h"]


def is_responder(madrs_pre, madrs_24h):
    """Response rule of the study: MADRS drop of at least 50 % from baseline to 24 h."""
    pre = np.asarray(madrs_pre, dtype=float)
    post = np.asarray(madrs_24h, dtype=float)
    return (pre - post) >= 0.5 * pre


def make_participants_table(
    n: int,
    *,
    seed: int = 0,
    saline_fraction: float = 0.0,
    site="A",
    ketamine_response_rate: float = 0.45,
    saline_response_rate: float = 0.2,
    label_prefix: str = "",
    start: int = 1,
):
    """A ``participants.tsv``-shaped :class:`pandas.DataFrame` with ``n`` synthetic patients.

    Columns: ``participant_id`` (``sub-<label_prefix><NNN>``), ``age`` (years, 18-70, mean 45),
    ``sex`` (M/F, half each, shuffled), ``site`` (``site`` if a string, else drawn evenly and
    shuffled from the sequence), ``arm`` (``round(n * saline_fraction)`` saline, rest ketamine),
    ``madrs_pre`` (integer, 28-44, mean ~35) and ``madrs_24h`` (integer). Exactly
    ``round(rate * n_arm)`` responders per arm (MADRS drop >= 50 %, drop 55-90 %);
    non-responders drop 0-40 %. Response is decided only by the MADRS columns
    (:func:`is_responder`), which is also how :func:`write_synthetic_derivatives` recovers it.

    >>> t = make_participants_table(20, seed=1, saline_fraction=0.25)
    >>> list(t.columns) == PARTICIPANT_COLUMNS, int((t.arm == "saline").sum())
    (True, 5)
    """
    import pandas as pd

    if n < 1:
        raise ValueError("n must be >= 1")
    rng = np.random.default_rng(seed)
    n_sal = int(round(n * saline_fraction))
    arms = np.array(["ketamine"] * (n - n_sal) + ["saline"] * n_sal, dtype=object)
    rng.shuffle(arms)
    responders = np.zeros(n, dtype=bool)
    for arm, rate in (("ketamine", ketamine_response_rate), ("saline", saline_response_rate)):
        idx = np.flatnonzero(arms == arm)
        k = int(round(rate * idx.size))
        responders[rng.permutation(idx)[:k]] = True
    ages = np.clip(np.round(rng.normal(45.0, 12.0, n)), 18, 70).astype(int)
    sexes = np.array(["F", "M"] * (n // 2 + 1), dtype=object)[:n]
    rng.shuffle(sexes)
    if isinstance(site, str):
        sites = np.array([site] * n, dtype=object)
    else:
        site = list(site)
        sites = np.array([site[i % len(site)] for i in range(n)], dtype=object)
        rng.shuffle(sites)
    pre = np.clip(np.round(rng.normal(35.0, 3.5, n)), 28, 44).astype(int)
    drop = np.where(responders, rng.uniform(0.55, 0.90, n), rng.uniform(0.0, 0.40, n))
    post = np.round(pre * (1.0 - drop)).astype(int)
    # integer rounding must not flip the rule
    post = np.where(responders, np.minimum(post, pre // 2), np.maximum(post, pre // 2 + 1))
    assert (is_responder(pre, post) == responders).all()
    width = max(3, len(str(start + n - 1)))
    ids = [f"sub-{label_prefix}{start + i:0{width}d}" for i in range(n)]
    return pd.DataFrame(
        {
            "participant_id": ids,
            "age": ages,
            "sex": sexes,
            "site": sites,
            "arm": arms,
            "madrs_pre": pre,
            "madrs_24h": post,
        }
    )


def planted_label(row, *, null: bool = False, rng: np.random.Generator | None = None):
    """The hidden label that drives the planted image effect for one participant row.

    ``True``/``False`` (responder / non-responder, from the MADRS rule) in the ketamine arm,
    ``None`` (no effect) in the saline arm. With ``null=True`` the image label is a coin flip
    from ``rng`` for every participant, independent of the MADRS columns.
    """
    if null:
        rng = rng or np.random.default_rng(0)
        return bool(rng.random() < 0.5)
    if str(row.get("arm", "ketamine")).lower() != "ketamine":
        return None
    return bool(is_responder(row["madrs_pre"], row["madrs_24h"]))


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


def quick_linear_svc(X, y, X_ext, y_ext, X_other=None, *, C=1.0, folds=5):
    """Sanity check that a planted effect is learnable from truth maps (not the study's nested
    protocol): a linear SVC (libsvm, precomputed linear kernel of features z-scored on ``X``),
    returning ``(stratified k-fold CV BAC on X, BAC on X_ext of the model fitted on all of X,
    decision values on X_other or None)``."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import SVC

    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd
    K = Z @ Z.T
    pred = np.zeros_like(y)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(Z, y):
        clf = SVC(kernel="precomputed", C=C).fit(K[np.ix_(train, train)], y[train])
        pred[test] = clf.predict(K[np.ix_(test, train)])
    clf = SVC(kernel="precomputed", C=C).fit(K, y)
    ext = clf.predict(((X_ext - mu) / sd) @ Z.T)
    other = None if X_other is None else clf.decision_function(((X_other - mu) / sd) @ Z.T)
    return balanced_accuracy_score(y, pred), balanced_accuracy_score(y_ext, ext), other


# --------------------------------------------------------------------------------------------
# derivative writer
# --------------------------------------------------------------------------------------------
def _save_nifti(arr, affine, path: Path, *, dtype=np.float32) -> None:
    import nibabel as nib

    from ketabids.io import atomic_path

    img = nib.Nifti1Image(np.asarray(arr, dtype=dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=4)
    img.header.set_sform(affine, code=4)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)


def _write_json(path: Path, obj) -> None:
    from ketabids.io import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


VOLUMES_DICTIONARY = {
    "tiv_ml": {"Description": "Total intracranial volume (GM + WM + CSF)", "Units": "mL"},
    "gm_ml": {"Description": "Grey-matter volume", "Units": "mL"},
    "wm_ml": {"Description": "White-matter volume", "Units": "mL"},
    "csf_ml": {"Description": "Cerebrospinal-fluid volume inside the brain mask", "Units": "mL"},
}


def _derivative_description(name: str) -> dict:
    from ketabids import __version__

    return {
        "Name": name,
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "ketabids",
                "Version": __version__,
                "Description": "ketabids.demo.phantom.write_synthetic_derivatives: synthetic "
                "template-space VBM maps with a planted effect (no imaging was run)",
            }
        ],
    }


def write_synthetic_derivatives(
    bids_dir,
    out_dir,
    *,
    template_resolution: int = 2,
    seed: int = 0,
    effect_size: float = DEFAULT_EFFECT_SIZE,
    variation: float = DEFAULT_VARIATION,
    site_effect: float = 0.0,
    null: bool = False,
    participants=None,
    truth_tsv=None,
):
    """Write the participant-level derivatives the group level reads, without any imaging.

    For every row of ``bids_dir/participants.tsv`` (or of the DataFrame ``participants``;
    columns ``participant_id, age, sex, site, arm, madrs_pre, madrs_24h``) this writes into
    ``out_dir`` (the derivative dataset root)::

        dataset_description.json  (DatasetType derivative)   .bidsignore (*_morph.*)
        sub-X/anat/sub-X_space-MNI152NLin2009aSym_label-GM_desc-modulated_probseg.nii.gz (+ .json)
        sub-X/anat/sub-X_desc-volumes_morph.tsv (+ .json data dictionary)

    The image label comes from the MADRS columns (:func:`planted_label`): responders
    (drop >= 50 %) in the ketamine arm get ``+effect_size/2`` frontal / ``-effect_size/2``
    cerebellar GM, non-responders the opposite, saline participants no effect; ``null=True``
    plants the effect by an independent coin flip instead. Per-subject randomness (anatomy,
    head size) is seeded by ``(seed, participant_id)``, so a subject's map does not depend on
    who else is in the table. ``site_effect`` adds a per-site multiplicative scanner pattern.
    ``truth_tsv`` (optional path, keep it outside ``out_dir``) receives the hidden truth
    (participant_id, planted label, head_scale, volumes). Returns the truth DataFrame.
    """
    import pandas as pd

    from ketabids import __version__
    from ketabids.io import atomic_path
    from ketabids.templates import get_template

    template = get_template(resolution=template_resolution)
    maps, affine = template_maps(template)
    if participants is None:
        tsv = Path(bids_dir) / "participants.tsv"
        if not tsv.is_file():
            from ketabids.errors import MissingInputError

            raise MissingInputError(f"{tsv}: not found; write a participants.tsv first")
        participants = pd.read_csv(tsv, sep="\t", dtype={"participant_id": str})
    missing = [c for c in ("participant_id", "madrs_pre", "madrs_24h") if c not in participants]
    if missing:
        from ketabids.errors import BadDataError

        raise BadDataError(f"participants table lacks column(s) {missing}; add them")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "dataset_description.json", _derivative_description("ketabids synthetic"))
    from ketabids.io import atomic_write_text

    atomic_write_text(out_dir / ".bidsignore", "*_morph.tsv\n*_morph.json\n")
    null_rng = np.random.default_rng([int(seed), 7919])
    rows = []
    for _, row in participants.iterrows():
        pid = str(row["participant_id"])
        sub = pid if pid.startswith("sub-") else f"sub-{pid}"
        rng = _subject_rng(seed, sub)
        label = planted_label(row, null=null, rng=null_rng)
        age = float(row.get("age", REFERENCE_AGE))
        scale = draw_head_scale(row.get("sex", "F"), rng, template)
        gm = simulate_template_gm(
            template,
            seed=rng,
            responder=label,
            effect_size=effect_size,
            age=age,
            head_scale=scale,
            variation=variation,
            site=str(row.get("site", "A")),
            site_effect=site_effect,
        )
        anat = out_dir / sub / "anat"
        stem = f"{sub}_space-{template.space}_label-GM_desc-modulated_probseg"
        _save_nifti(gm, affine, anat / f"{stem}.nii.gz")
        _write_json(
            anat / f"{stem}.json",
            {
                "Template": template.space,
                "Resolution": float(template.resolution),
                "Modulation": "jacobian",
                "SoftwareVersion": __version__,
                "Sources": [f"bids:raw:{sub}/anat/{sub}_T1w.nii.gz"],
                "Description": "Synthetic Jacobian-modulated GM map (ketabids.demo.phantom)",
            },
        )
        vols = template_volumes(gm, template, head_scale=scale, age=age)
        table = pd.DataFrame([{k: round(vols[k], 3) for k in ("tiv_ml", "gm_ml", "wm_ml", "csf_ml")}])
        with atomic_path(anat / f"{sub}_desc-volumes_morph.tsv") as tmp:
            table.to_csv(tmp, sep="\t", index=False)
        _write_json(anat / f"{sub}_desc-volumes_morph.json", VOLUMES_DICTIONARY)
        rows.append(
            {
                "participant_id": sub,
                "arm": row.get("arm", "ketamine"),
                "responder": bool(is_responder(row["madrs_pre"], row["madrs_24h"])),
                "planted": "none" if label is None else ("responder" if label else "nonresponder"),
                "head_scale": round(scale, 5),
                **{k: round(v, 3) for k, v in vols.items()},
            }
        )
    truth = pd.DataFrame(rows)
    if truth_tsv is not None:
        with atomic_path(truth_tsv) as tmp:
            truth.to_csv(tmp, sep="\t", index=False)
    return truth


# --------------------------------------------------------------------------------------------
# native-space T1w phantoms
# --------------------------------------------------------------------------------------------
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
        "fat": band(dist, 7.0, 11.0) * (depth > 0) + (neck & ~near & (depth <= 5.0) & (depth > 1.5)),
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


def _rotation(angles_deg) -> np.ndarray:
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
    return {"gm": gm.astype(np.float32), "wm": wm.astype(np.float32), "csf": csf.astype(np.float32)}


def _reorient(data, affine, target: str):
    """Reorder/flip a RAS-ordered array into axis codes ``target`` with a consistent affine."""
    import nibabel.orientations as nio

    if target == "RAS":
        return data, affine
    ornt = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.axcodes2ornt(tuple(target)))
    new = nio.apply_orientation(data, ornt)
    return np.ascontiguousarray(new), affine @ nio.inv_ornt_aff(ornt, data.shape)


def _nifti(data, affine, *, dtype=np.float32):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img


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


#: Centre (MNI mm), width (SD, mm) and gain of the planted local volume changes. The gains
#: are calibrated so that the GM volume of each :func:`effect_regions` mask changes by about
#: ``amount`` (the core expands more, its surrounding shell is compressed).
EFFECT_BUMPS = {
    "frontal": ((0.0, 42.0, 22.0), 40.0, 2.15),
    "cerebellar": ((0.0, -62.0, -40.0), 28.0, 2.8),
}


def _add_effect_deformation(disp, axes, *, rot, scale, shift, amount) -> None:
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


def simulate_subject(
    template=None,
    *,
    seed=0,
    responder: bool | None = None,
    effect_size: float = DEFAULT_EFFECT_SIZE,
    age: float = REFERENCE_AGE,
    sex: str = "F",
    head_scale: float | None = None,
    resolution: float = 2.0,
    skull: bool = True,
    orientation: str = "RAS",
    bias_strength: float = 0.2,
    noise: float = 0.03,
    contrast: dict | None = None,
    max_rotation: float = 6.0,
    max_translation: float = 8.0,
    warp_mm: float = 1.5,
    warp_fwhm: float = 60.0,
    variation: float = DEFAULT_VARIATION,
    effect_volume_share: float = 0.5,
) -> SimulatedSubject:
    """Simulate one native-space T1w and its ground truth (deterministic for ``seed``).

    Steps, all in one pass of trilinear sampling (no repeated resampling):

    1. template-space tissue maps of the subject: the GM factor of :func:`gm_factor`
       (individual variation, age atrophy, planted effect) applied to the template priors
       (:func:`subject_tissues`). The planted effect is split: ``1 - effect_volume_share`` of
       ``effect_size`` changes GM probabilities (at the expense of CSF), the rest is a local
       expansion/compression of the frontal and cerebellar regions added to the deformation
       (Gaussian bumps, :data:`EFFECT_BUMPS`), as a real GM volume difference would be;
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
    """
    from ketabids.templates import get_template

    if template is None:
        template = get_template(resolution=1 if resolution < 1.5 else 2)
    template = _resolve_template(template)
    maps, t_aff = template_maps(template)
    contrast = {**DEFAULT_CONTRAST, **(contrast or {})}
    rng = _subject_rng(seed)
    if head_scale is None:
        head_scale = draw_head_scale(sex, rng, template)
    s = float(head_scale)
    angles = rng.uniform(-max_rotation, max_rotation, 3)
    shift = rng.uniform(-max_translation, max_translation, 3)
    rot = _rotation(angles)

    share = float(np.clip(effect_volume_share, 0.0, 1.0))
    factor = gm_factor(
        template, seed=rng, responder=responder, effect_size=effect_size * (1.0 - share),
        age=age, variation=variation,
    )
    tissues = subject_tissues(template, factor=factor, age=age)

    # native grid: axis-aligned box around the transformed FOV corners
    corners = np.array(np.meshgrid(*FOV_BOX, indexing="ij")).reshape(3, -1)
    nat = rot @ (s * corners) + shift[:, None]
    lo = np.floor(nat.min(1) / resolution) * resolution - 2 * resolution
    hi = np.ceil(nat.max(1) / resolution) * resolution + 2 * resolution
    axes = [np.arange(lo[i], hi[i] + resolution / 2, resolution, dtype=np.float32) for i in range(3)]
    shape = tuple(a.size for a in axes)
    n_aff = np.diag([resolution] * 3 + [1.0])
    n_aff[:3, 3] = lo

    # smooth displacement w(x) (native world, mm) and det(I + dw/dx)
    disp = np.stack([smooth_field(axes, rng, fwhm=warp_fwhm) * np.float32(warp_mm) for _ in range(3)])
    if responder is not None and effect_size and share:
        _add_effect_deformation(
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
    img = contrast["gm"] * native["gm"] + contrast["wm"] * native["wm"] + contrast["csf"] * native["csf"]
    if skull:
        layers, h_aff = _head_model(str(template.mask))
        head_tpl = np.zeros(next(iter(layers.values())).shape, dtype=np.float32)
        for name, frac in layers.items():
            head_tpl += np.float32(contrast[name]) * frac
        img += np.clip(1.0 - tissue_sum, 0.0, 1.0) * _sample(head_tpl, h_aff, pts)
    del pts
    bias = np.exp(np.float32(bias_strength) * smooth_field(axes, rng, fwhm=150.0))
    img *= bias
    sigma = np.float32(noise * contrast["wm"])
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
    ys = np.stack(np.meshgrid(*_world_axes(maps["gm"].shape, t_aff), indexing="ij"))[:, inside]
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
        out[key] = _nifti(data, aff, dtype=dtype)
    tpl_img = _nifti(tpl_gm, t_aff)
    tpl_img.header.set_qform(t_aff, code=4)
    tpl_img.header.set_sform(t_aff, code=4)
    params = {
        "seed": None if isinstance(seed, np.random.Generator) else seed,
        "responder": responder,
        "effect_size": float(effect_size),
        "age": float(age),
        "sex": str(sex),
        "head_scale": s,
        "resolution": float(resolution),
        "orientation": orientation,
        "rotation_deg": [round(float(a), 4) for a in angles],
        "translation_mm": [round(float(a), 4) for a in shift],
        "warp_mm": float(warp_mm),
        "warp_fwhm": float(warp_fwhm),
        "effect_volume_share": share,
        "bias_strength": float(bias_strength),
        "noise": float(noise),
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
