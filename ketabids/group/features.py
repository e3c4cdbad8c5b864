"""Feature matrices from modulated grey-matter maps, identical at training and prediction.

One function, :func:`compute_features`, turns the participant level's Jacobian-modulated GM maps
(``space-<TPL>_label-GM_desc-modulated_probseg``) into an ``n_subjects x n_voxels`` float32
matrix; prediction calls it with the settings and mask stored in the model, so both go through
the very same code.

Per map:

1. **smoothing**: isotropic Gaussian, ``sigma = FWHM / (2 sqrt(2 ln 2))`` (in voxels: divided by
   the voxel size), zero outside the field of view (``mode="constant"``);
2. **resampling** to the analysis grid. When the analysis grid is the input grid taken every
   ``k``-th voxel (same corner voxel, e.g. the template's 1 mm grid -> its 2 mm grid) the
   Gaussian is applied one axis at a time and each axis is subsampled right after its pass: this
   equals smoothing the whole volume then taking every ``k``-th voxel exactly, for ~40 % less
   work. Any other grid: smooth, then trilinear interpolation (``scipy.ndimage.affine_transform``).
3. **masking**: the voxels of a grey-matter mask that never looks at labels. Default
   (``mask_source="template"``): the template's GM prior on the analysis grid > ``mask_threshold``
   (0.2). When the template's grid does not match (another template, odd resolution) the mask is
   instead the mean smoothed GM map of *all* selected participants > ``mask_threshold``
   (``"sample-mean"``); labels are never used either way. The mask is stored with the model.

The maps are read with a thread pool (``nprocs``): gzip decompression releases the GIL.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ketabids.errors import BadDataError, MissingInputError, NoDataError
from ketabids.group.labels import Exclusion
from ketabids.templates import DEFAULT_TEMPLATE

LOGGER = logging.getLogger("ketabids")
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class FeatureSettings:
    """Everything that defines the features (stored in the model manifest)."""

    template: str = DEFAULT_TEMPLATE
    smoothing_fwhm: float = 8.0
    analysis_resolution: float = 2.0
    mask_source: str = "template"  # "template" or "sample-mean" (what was actually used)
    mask_threshold: float = 0.2

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MapInfo:
    """One participant's modulated GM map and what its sidecar says."""

    subject: str
    path: Path
    session: str | None
    template: str | None
    resolution: float | None
    version: str | None
    volumes: Path | None


@dataclass
class Features:
    """The feature matrix and how it was made."""

    X: np.ndarray  # (n, n_voxels) float32
    subjects: list[str]
    mask: np.ndarray  # bool, analysis grid
    affine: np.ndarray
    settings: FeatureSettings
    source_grid: dict  # the input maps' grid: shape, affine
    mask_hash: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mask.shape)

    def to_image(self, values: np.ndarray):
        """A NIfTI on the analysis grid with ``values`` (one per mask voxel) inside the mask."""
        import nibabel as nib

        data = np.zeros(self.mask.shape, dtype=np.float32)
        data[self.mask] = values
        img = nib.Nifti1Image(data, self.affine)
        img.header.set_xyzt_units("mm")
        img.header.set_qform(self.affine, code=4)
        img.header.set_sform(self.affine, code=4)
        return img


def mask_hash(mask: np.ndarray, affine: np.ndarray) -> str:
    """SHA-256 over the mask's shape, affine (rounded to 1e-4 mm) and voxels."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(mask.shape), np.round(affine, 4).tolist()]).encode())
    digest.update(np.packbits(np.asarray(mask, bool).ravel()).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- finding
def find_maps(output_dir, *, template: str, subjects=None, sessions=None, layout=None
              ) -> tuple[dict[str, MapInfo], list[Exclusion]]:
    """The modulated GM map of each subject in OUTPUT_DIR, through a pybids query.

    ``space=<template>, label=GM, desc=modulated, suffix=probseg``; ``sessions`` restricts the
    sessions. A subject with several maps left (several sessions) is an error: select one session.
    Requested subjects without a map come back as exclusions. ``layout`` may be a pybids layout
    that already indexes OUTPUT_DIR (e.g. BIDS_DIR with OUTPUT_DIR added as derivatives).
    """
    output_dir = Path(output_dir).resolve()
    query = dict(space=template, label="GM", desc="modulated", suffix="probseg",
                 extension=[".nii", ".nii.gz"], return_type="object")
    if sessions:
        query["session"] = [s.removeprefix("ses-") for s in sessions]
    if subjects:
        query["subject"] = [s.removeprefix("sub-") for s in subjects]
    files = []
    if layout is not None:  # e.g. BIDS_DIR's layout with OUTPUT_DIR added as derivatives
        try:
            files = layout.get(scope="all", **query)
        except Exception:  # a layout without these entities: index OUTPUT_DIR below
            files = []
        files = [f for f in files if output_dir in Path(f.path).resolve().parents]
    if not files:
        files = derivatives_layout(output_dir).get(**query)
        files = [f for f in files if output_dir in Path(f.path).resolve().parents]
    found = defaultdict(list)
    for f in files:
        found[f.entities["subject"]].append(f)
    maps, problems = {}, []
    for subject, entries in sorted(found.items()):
        if len(entries) > 1:
            problems.append(f"sub-{subject} ({', '.join(Path(e.path).name for e in entries)})")
            continue
        entry = entries[0]
        path = Path(entry.path)
        meta = _sidecar(path)
        maps[subject] = MapInfo(
            subject=subject, path=path, session=entry.entities.get("session"),
            template=meta.get("Template"), resolution=_float(meta.get("Resolution")),
            version=meta.get("SoftwareVersion"), volumes=_volumes_tsv(path),
        )
    if problems:
        raise BadDataError(
            f"{output_dir}: several modulated GM maps for {'; '.join(problems)}; the group level "
            "uses one scan per participant: select one session with --session-label"
        )
    excluded = [Exclusion(f"sub-{s.removeprefix('sub-')}",
                          missing_map_reason(output_dir, s.removeprefix("sub-"), template))
                for s in (subjects or []) if s.removeprefix("sub-") not in maps]
    return maps, excluded


def missing_map_reason(output_dir, subject: str, template: str) -> str:
    """Why ``subject`` has no space-``template`` map: its participant run failed (crash files
    in ``logs/sub-<label>/``), its maps are in another template space, or it was not run."""
    output_dir = Path(output_dir)
    crashes = sorted((output_dir / "logs" / f"sub-{subject}").glob("crash-*"),
                     key=lambda p: p.stat().st_mtime)
    if crashes:
        return f"its participant run failed (details: {crashes[-1]})"
    spaces = sorted({part.split("-", 1)[1] for p in (output_dir / f"sub-{subject}").glob(
        "**/*_label-GM_desc-modulated_probseg.nii*") for part in p.name.split("_")
        if part.startswith("space-")})
    if spaces:
        return (f"no space-{template} modulated GM map, only space-{', '.join(spaces)} "
                f"(rerun the participant level with --template {template}, or pass --template "
                f"{spaces[0]})")
    return (f"no space-{template} modulated GM map in OUTPUT_DIR (run the participant level "
            "for it)")


def derivatives_layout(output_dir: Path):
    """A pybids layout of OUTPUT_DIR as a derivative dataset (group/ and reports ignored)."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    if not (output_dir / "dataset_description.json").is_file():
        raise MissingInputError(
            f"{output_dir}: no dataset_description.json, so no participant-level derivatives "
            "here; run the participant level first (same OUTPUT_DIR)"
        )
    try:
        import re

        indexer = BIDSLayoutIndexer(
            validate=False, index_metadata=False,
            ignore=[re.compile(r"/(group|figures|logs|work|code|sourcedata)/"),
                    re.compile(r"\.html$")])
        return BIDSLayout(str(output_dir), validate=False, is_derivative=True, indexer=indexer)
    except Exception as exc:
        raise BadDataError(f"{output_dir}: pybids cannot index the derivatives ({exc})") from exc


def _sidecar(path: Path) -> dict:
    name, side = path.name, None
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            side = path.with_name(name[: -len(ext)] + ".json")
            break
    if side is None or not side.is_file():
        return {}
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadDataError(f"{side}: unreadable JSON sidecar ({exc}); rerun the participant "
                           "level for this subject") from exc


def _volumes_tsv(map_path: Path) -> Path | None:
    prefix = map_path.name.split("_space-")[0]
    candidate = map_path.with_name(f"{prefix}_desc-volumes_morph.tsv")
    return candidate if candidate.is_file() else None


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_consistency(maps: dict[str, MapInfo], *, template: str) -> dict:
    """One template, resolution and pipeline version across all maps (from the sidecars).

    Returns ``{"template", "resolution", "version"}``; otherwise raises BadDataError listing the
    participants that differ from the majority.
    """
    if not maps:
        raise NoDataError(f"no space-{template} modulated GM maps selected")
    report = {}
    for key, label in (("template", "Template"), ("resolution", "Resolution"),
                       ("version", "SoftwareVersion")):
        groups = defaultdict(list)
        for info in maps.values():
            groups[getattr(info, key)].append(f"sub-{info.subject}")
        if len(groups) > 1:
            majority = max(groups, key=lambda g: len(groups[g]))
            odd = "; ".join(f"{v!r}: {', '.join(s[:10])}{' ...' if len(s) > 10 else ''}"
                            for v, s in groups.items() if v != majority)
            raise BadDataError(
                f"the modulated GM maps disagree on {label} (sidecar JSON): most have "
                f"{majority!r}, but {odd}; rerun the participant level for these with the same "
                "ketabids version, template and resolution, or leave them out"
            )
        report[key] = next(iter(groups))
    if report["template"] not in (None, template):
        raise BadDataError(f"maps say Template {report['template']!r} but {template!r} was asked")
    return report


# ------------------------------------------------------------------------------- the maths
def analysis_grid(shape, affine, resolution: float):
    """The analysis grid ``(shape, affine, step)`` for maps on ``(shape, affine)``.

    ``step`` is the integer subsampling factor when the analysis grid is the input grid taken
    every ``step`` voxels (input voxel size divides ``resolution``), else None (resampled).
    Its first voxel centre is the input's first voxel centre either way.

    >>> shape, aff, step = analysis_grid((197, 233, 189), np.diag([1., 1, 1, 1]), 2.0)
    >>> shape, step
    ((99, 117, 95), 2)
    """
    affine = np.asarray(affine, float)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ratio = resolution / zooms
    if np.allclose(ratio, np.round(ratio), atol=1e-4) and np.all(np.round(ratio) >= 1):
        step = int(round(ratio[0])) if np.allclose(ratio, ratio[0], atol=1e-4) else None
    else:
        step = None
    new_shape = tuple(int(math.floor((s - 1) * z / resolution + 1e-6)) + 1
                      for s, z in zip(shape, zooms))
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / zooms * resolution
    return new_shape, new_affine, step


def smooth_resample(data: np.ndarray, affine: np.ndarray, *, fwhm: float, resolution: float
                    ) -> np.ndarray:
    """Smooth ``data`` (FWHM in mm) and bring it onto its analysis grid (float32).

    >>> vol = np.zeros((9, 10, 11), np.float32); vol[4, 5, 5] = 1
    >>> out = smooth_resample(vol, np.eye(4), fwhm=3.0, resolution=2.0)
    >>> out.shape, round(float(out.sum()) * 8, 2)  # mass kept (x voxel volume 8)
    ((5, 5, 6), 1.0)
    """
    from scipy import ndimage

    data = np.asarray(data, dtype=np.float32)
    shape, new_affine, step = analysis_grid(data.shape, affine, resolution)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    sigmas = [fwhm * FWHM_TO_SIGMA / z if fwhm > 0 else 0.0 for z in zooms]
    if step is not None:
        out = data
        for axis in range(3):
            if sigmas[axis] > 0:
                out = ndimage.gaussian_filter1d(out, sigmas[axis], axis=axis, mode="constant",
                                                output=np.float32)
            if step > 1:
                index = [slice(None)] * 3
                index[axis] = slice(None, None, step)
                out = np.ascontiguousarray(out[tuple(index)])
        return out
    smoothed = ndimage.gaussian_filter(data, sigmas, mode="constant", output=np.float32)
    matrix = np.linalg.inv(np.asarray(affine, float)) @ new_affine
    return ndimage.affine_transform(smoothed, matrix[:3, :3], offset=matrix[:3, 3],
                                    output_shape=shape, order=1, mode="constant",
                                    output=np.float32)


def _load(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise BadDataError(f"{path}: cannot read this NIfTI ({exc}); rerun the participant "
                           "level for this subject") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadDataError(f"{path}: a modulated GM map must be 3D, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise BadDataError(f"{path}: contains NaN or infinite values; rerun the participant "
                           "level for this subject")
    return data, img.affine


def template_mask(template: str, shape, affine, threshold: float):
    """The template GM prior on the analysis grid > ``threshold``, or None if grids differ."""
    import nibabel as nib

    from ketabids.templates import get_template

    for resolution in (1, 2):
        try:
            tpl = get_template(template, resolution=resolution)
        except Exception:  # not cached / unknown: caller falls back
            continue
        img = nib.load(str(tpl.gm))
        if tuple(img.shape[:3]) == tuple(shape) and np.allclose(img.affine, affine, atol=1e-3):
            return np.asarray(img.dataobj, dtype=np.float64) > threshold
    return None


def compute_features(maps: dict[str, MapInfo] | dict[str, Path], *, settings: FeatureSettings,
                     mask: np.ndarray | None = None, mask_affine=None, nprocs: int = 1
                     ) -> Features:
    """Load, smooth, resample and mask every map (see the module docstring).

    ``maps`` is ``{subject: MapInfo or path}`` (order kept). At training ``mask`` is None and
    computed from ``settings`` (never from labels); at prediction the model's mask and affine are
    passed and the maps must lie on the same analysis grid, else BadDataError.
    """
    subjects = list(maps)
    paths = [m.path if isinstance(m, MapInfo) else Path(m) for m in maps.values()]
    if not paths:
        raise NoDataError("no maps to compute features from")
    first, ref_affine = _load(paths[0])
    grid_shape, grid_affine, _ = analysis_grid(first.shape, ref_affine,
                                               settings.analysis_resolution)
    ref = {"shape": list(first.shape), "affine": np.round(ref_affine, 6).tolist()}

    if mask is not None:
        mask = np.asarray(mask, bool)
        if tuple(mask.shape) != tuple(grid_shape) or not np.allclose(
                mask_affine, grid_affine, atol=1e-3):
            raise BadDataError(
                f"{paths[0]}: the maps' analysis grid {grid_shape} (affine "
                f"{np.round(grid_affine, 2).tolist()}) differs from the model's "
                f"{mask.shape}; the maps must come from the same template and resolution"
            )
    elif settings.mask_source == "template":
        mask = template_mask(settings.template, grid_shape, grid_affine, settings.mask_threshold)
        if mask is None:
            LOGGER.warning("template %s has no GM prior on the analysis grid %s: the mask is the "
                           "mean GM of all selected participants > %g", settings.template,
                           grid_shape, settings.mask_threshold)
            settings = FeatureSettings(**{**settings.as_dict(), "mask_source": "sample-mean"})

    def one(index):
        data, aff = (first, ref_affine) if index == 0 else _load(paths[index])
        if data.shape != first.shape or not np.allclose(aff, ref_affine, atol=1e-3):
            raise BadDataError(
                f"{paths[index]}: grid {data.shape} differs from {paths[0].name}'s {first.shape} "
                "(or its affine does); all maps must share the template grid"
            )
        out = smooth_resample(data, aff, fwhm=settings.smoothing_fwhm,
                              resolution=settings.analysis_resolution)
        return out[mask] if mask is not None else out.ravel()

    with ThreadPoolExecutor(max_workers=max(1, int(nprocs))) as pool:
        rows = list(pool.map(one, range(len(paths))))
    X = np.vstack(rows).astype(np.float32, copy=False)
    del rows
    if mask is None:  # sample-mean mask: all participants, no labels
        mask = (X.mean(axis=0) > settings.mask_threshold).reshape(grid_shape)
        X = np.ascontiguousarray(X[:, mask.ravel()])
    if not mask.any():
        raise BadDataError(f"the grey-matter mask is empty (threshold {settings.mask_threshold});"
                           " are these modulated GM probability maps?")
    return Features(X=X, subjects=subjects, mask=mask, affine=grid_affine, settings=settings,
                    source_grid=ref, mask_hash=mask_hash(mask, grid_affine))


def default_nprocs(nprocs) -> int:
    """``nprocs`` or the CPUs this process may use."""
    if nprocs:
        return int(nprocs)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
