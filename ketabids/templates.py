"""Template lookup, in one place: the embedded default and cached TemplateFlow templates.

The default, ``MNI152NLin2009aSym``, is the MNI ICBM 2009a symmetric template that nilearn ships
inside its wheel (brain-extracted T1w plus GM and WM probability maps), so ketabids runs with no
download. The files nilearn does not ship (brain mask, CSF prior, 2 mm versions) are derived from
those deterministically and cached as NIfTI files:

* brain mask = voxels where the (already brain-extracted) T1w is non-zero, holes filled;
* CSF prior = ``clip(mask - GM - WM, 0, 1)``: what is inside the brain mask and is neither GM
  nor WM;
* ``resolution=2``: every map resampled onto a 2 mm grid with the same origin (linear
  interpolation for probabilities and the T1w, nearest neighbour for the mask).

Any other name is looked up in TemplateFlow's cache (``$TEMPLATEFLOW_HOME``); nothing is fetched.
A template that is not cached fails with :class:`~ketabids.errors.MissingInputError` giving the
exact command that fetches it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ketabids.errors import MissingInputError, UsageError
from ketabids.io import save_nifti

DEFAULT_TEMPLATE = "MNI152NLin2009aSym"
_NILEARN_FILES = {
    "t1w": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class Template:
    """Paths to one template at one resolution.

    ``brain`` is always a brain-extracted T1w (registration target); ``t1w`` is the template's
    own T1w, which for TemplateFlow templates still has the skull (``skull_stripped`` says which).
    Probability maps are floats in [0, 1].
    """

    name: str
    resolution: int
    t1w: Path
    brain: Path
    mask: Path
    gm: Path
    wm: Path
    csf: Path
    skull_stripped: bool
    source: str  # "embedded (nilearn <version>)" or "TemplateFlow"

    @property
    def space(self) -> str:
        """The BIDS ``space-`` entity value."""
        return self.name


def _cache_candidates() -> list[Path]:
    """``$KETABIDS_CACHE``, ``~/.cache/ketabids``, the system temporary folder, in this order."""
    candidates = []
    if os.environ.get("KETABIDS_CACHE"):
        candidates.append(Path(os.environ["KETABIDS_CACHE"]))
    candidates.append(Path.home() / ".cache" / "ketabids")
    candidates.append(Path(tempfile.gettempdir()) / f"ketabids-cache-{os.getuid()}")
    return candidates


def _cached(relative: list[str]) -> Path | None:
    """The first cache folder that already holds every file in ``relative``, writable or not
    (a container image ships them pre-generated in a read-only ``$KETABIDS_CACHE``)."""
    for folder in _cache_candidates():
        if all((folder / rel).is_file() for rel in relative):
            return folder
    return None


def cache_dir() -> Path:
    """A writable folder for derived files: ``$KETABIDS_CACHE``, else ``~/.cache/ketabids``,
    else the system temporary folder (read-only HOME in containers)."""
    for folder in _cache_candidates():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
            return folder
        except OSError:
            continue
    raise MissingInputError(  # pragma: no cover - no writable folder at all
        "no writable cache folder for derived template files; set KETABIDS_CACHE to one"
    )


def derived_file(source: str | os.PathLike, tag: str) -> Path | None:
    """Where a file derived from the template file ``source`` (e.g. resampled onto a
    registration grid) is cached: ``<cache>/templates/derived/<stem>_<tag>_<key>.nii.gz``, the
    key hashing ``source``'s absolute path, size and modification time (a changed template file
    gets a new entry). The first cache folder already holding it (a container's read-only one
    included), else the writable one; ``None`` when there is none (callers then compute it).

    >>> import tempfile, pathlib
    >>> src = pathlib.Path(tempfile.mkdtemp()) / "tpl_T1w.nii.gz"
    >>> _ = src.write_bytes(b"x")
    >>> derived_file(src, "grid-2mm").name.startswith("tpl_T1w_grid-2mm_")
    True
    """
    source = Path(source).resolve()
    stat = source.stat()
    stamp = f"{source}|{stat.st_size}|{stat.st_mtime_ns}|{tag}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    stem = source.name.removesuffix(".gz").removesuffix(".nii")
    rel = f"templates/derived/{stem}_{tag}_{key}.nii.gz"
    root = _cached([rel])  # pre-generated (a container's read-only cache) or written before
    if root is None:
        try:
            root = cache_dir()
        except MissingInputError:  # pragma: no cover - no writable folder at all
            return None
    return root / rel


def _embedded(resolution: int) -> Template:
    import nibabel as nib
    import nilearn
    from scipy import ndimage

    data_dir = Path(nilearn.__file__).parent / "datasets" / "data"
    src = {k: data_dir / v for k, v in _NILEARN_FILES.items()}
    for path in src.values():
        if not path.is_file():  # pragma: no cover - broken nilearn install
            raise MissingInputError(
                f"{path}: the embedded MNI ICBM 2009a template is missing from nilearn; "
                "reinstall nilearn (pip install --force-reinstall nilearn)"
            )
    tag = hashlib.sha256(f"{nilearn.__version__}-{resolution}".encode()).hexdigest()[:8]
    prefix = f"tpl-{DEFAULT_TEMPLATE}_res-{resolution}"
    names = {
        "t1w": f"{prefix}_desc-brain_T1w.nii.gz",
        "mask": f"{prefix}_desc-brain_mask.nii.gz",
        "gm": f"{prefix}_label-GM_probseg.nii.gz",
        "wm": f"{prefix}_label-WM_probseg.nii.gz",
        "csf": f"{prefix}_label-CSF_probseg.nii.gz",
    }
    sub = f"templates/tpl-{DEFAULT_TEMPLATE}_{tag}"
    root = _cached([f"{sub}/{name}" for name in names.values()])
    out = (root or cache_dir()) / sub
    paths = {key: out / name for key, name in names.items()}
    if root is None:
        out.mkdir(parents=True, exist_ok=True)
        t1 = nib.load(src["t1w"])
        affine = t1.affine
        t1w = np.asarray(t1.dataobj, dtype=np.float32)
        gm = np.asarray(nib.load(src["gm"]).dataobj, dtype=np.float32) / 255.0
        wm = np.asarray(nib.load(src["wm"]).dataobj, dtype=np.float32) / 255.0
        mask = ndimage.binary_fill_holes(t1w > 0)
        csf = np.clip(mask.astype(np.float32) - gm - wm, 0.0, 1.0) * mask
        maps = {"t1w": t1w, "mask": mask.astype(np.uint8), "gm": gm, "wm": wm, "csf": csf}
        if resolution != 1:
            maps, affine = _downsample(maps, affine, resolution)
        for key, arr in maps.items():
            img = nib.Nifti1Image(arr, affine)
            img.header.set_xyzt_units("mm")
            img.header.set_qform(affine, code=4)
            img.header.set_sform(affine, code=4)
            save_nifti(img, paths[key])
    return Template(
        name=DEFAULT_TEMPLATE,
        resolution=resolution,
        t1w=paths["t1w"],
        brain=paths["t1w"],
        mask=paths["mask"],
        gm=paths["gm"],
        wm=paths["wm"],
        csf=paths["csf"],
        skull_stripped=True,
        source=f"embedded (nilearn {nilearn.__version__})",
    )


def _downsample(maps, affine, resolution):
    """Resample every map onto a grid of ``resolution`` mm with the same corner voxel centre."""
    from scipy import ndimage

    shape = maps["t1w"].shape
    new_shape = tuple(int(np.floor((s - 1) / resolution)) + 1 for s in shape)
    coords = np.indices(new_shape, dtype=np.float32) * resolution
    out = {}
    for key, arr in maps.items():
        order = 0 if key == "mask" else 1
        out[key] = ndimage.map_coordinates(arr, coords, order=order, mode="nearest").astype(
            arr.dtype
        )
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * resolution
    return out, new_affine


def _fetch_command(name: str, resolution: int) -> str:
    return (
        "python -c \"from templateflow.api import get; "
        f"get('{name}', resolution={resolution}, desc=None, suffix='T1w'); "
        f"get('{name}', resolution={resolution}, desc='brain', suffix='mask'); "
        f"get('{name}', resolution={resolution}, suffix='probseg')\""
    )


def _templateflow(name: str, resolution: int) -> Template:
    try:
        from templateflow import api as tf
    except Exception as exc:  # pragma: no cover - broken install
        raise MissingInputError(f"templateflow cannot be imported ({exc}); "
                                "pip install templateflow")

    if name not in tf.templates():
        import difflib

        known = sorted(tf.templates())
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        raise UsageError(
            f"--template {name}: unknown template; use {DEFAULT_TEMPLATE} (embedded) or a "
            f"TemplateFlow template"
            + (f" such as {', '.join(close)}" if close else "")
            + f" ({len(known)} known: python -c 'import templateflow.api as t; "
            "print(t.templates())')"
        )

    def cached(**query):
        found = [
            Path(p)
            for p in tf.ls(name, resolution=resolution, **query)
            if Path(p).is_file() and Path(p).stat().st_size > 0  # 0 bytes = not fetched
        ]
        return found[0] if found else None

    files = {
        "t1w": cached(desc=None, suffix="T1w"),
        "mask": cached(desc="brain", suffix="mask"),
        "gm": cached(label="GM", suffix="probseg"),
        "wm": cached(label="WM", suffix="probseg"),
        "csf": cached(label="CSF", suffix="probseg"),
    }
    missing = [k for k, v in files.items() if v is None]
    if missing:
        home = os.environ.get("TEMPLATEFLOW_HOME", str(Path.home() / ".cache" / "templateflow"))
        raise MissingInputError(
            f"template {name} at {resolution} mm is not in the TemplateFlow cache {home} "
            f"(missing: {', '.join(missing)}); fetch it with: {_fetch_command(name, resolution)}"
        )
    brain = cached(desc="brain", suffix="T1w") or _masked_t1w(name, resolution, files)
    return Template(
        name=name,
        resolution=resolution,
        t1w=files["t1w"],
        brain=brain,
        mask=files["mask"],
        gm=files["gm"],
        wm=files["wm"],
        csf=files["csf"],
        skull_stripped=False,
        source="TemplateFlow",
    )


def _masked_t1w(name: str, resolution: int, files: dict) -> Path:
    """Brain-extracted T1w = T1w x brain mask, cached, for templates that do not ship one."""
    import nibabel as nib

    rel = f"templates/tpl-{name}_res-{resolution}_desc-brain_T1w.nii.gz"
    root = _cached([rel])
    out = (root or cache_dir()) / rel
    if root is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        t1 = nib.load(files["t1w"])
        mask = np.asarray(nib.load(files["mask"]).dataobj) > 0
        data = np.asarray(t1.dataobj, dtype=np.float32) * mask
        save_nifti(nib.Nifti1Image(data, t1.affine, t1.header), out)
    return out


def get_template(name: str = DEFAULT_TEMPLATE, resolution: int = 1) -> Template:
    """The template ``name`` at ``resolution`` mm, without downloading anything.

    The default is embedded (derived files made on first use and cached, module docstring);
    any other name must already be in TemplateFlow's cache.

    Parameters
    ----------
    name : str
        Template name (``--template``): :data:`DEFAULT_TEMPLATE` or a TemplateFlow template.
    resolution : int
        Grid in mm, 1 or 2.

    Returns
    -------
    Template
        Paths to the T1w, brain-extracted T1w, brain mask and GM/WM/CSF probability maps.

    Raises
    ------
    UsageError
        A resolution other than 1 or 2, or a name TemplateFlow does not know (the message
        suggests close names).
    MissingInputError
        A TemplateFlow template (or one of its files) that is not cached; the message gives
        the command that fetches it.

    Examples
    --------
    >>> tpl = get_template()
    >>> tpl.name, tpl.resolution, tpl.skull_stripped
    ('MNI152NLin2009aSym', 1, True)
    """
    if resolution not in (1, 2):
        raise UsageError(f"template resolution {resolution}: use 1 or 2 (mm)")
    if name == DEFAULT_TEMPLATE:
        return _embedded(resolution)
    return _templateflow(name, resolution)
