"""Small glue between nibabel and antspyx: image conversion, threads and seeding.

nibabel affines are RAS+ (world = A @ [i, j, k, 1]); ITK/ANTs images carry an LPS origin,
spacing and a direction matrix. For an affine ``A`` the ANTs geometry is
``L = diag(-1, -1, 1) @ A[:3, :3]``: ``spacing = |columns of L|``, ``direction = L / spacing``
and ``origin = diag(-1, -1, 1) @ A[:3, 3]``. The conversion is exact (no resampling, no
temporary files) and round-trips.

:func:`ants_env` sets the ITK thread count and the ANTs random seed for the duration of a
``with`` block and restores the previous values afterwards (no leaked ``os.environ`` changes).
ANTs ignores ``random_seed=`` in :func:`ants.registration`; what counts is
``ants.config._random_seed`` (passed as ``--random-seed``) and ``ANTS_RANDOM_SEED`` (read by
the ITK samplers). Bit-identical output needs 1 thread.

:func:`import_ants` imports antspyx without its plotting, learning, deep-learning and contrib
subpackages and its statsmodels-based ``ants.math.quantile`` (helpers ketabids never calls):
they load on first use instead. Every ``ants`` import in ketabids goes through it.
"""
from __future__ import annotations

import contextlib
import os
import sys
import types

import nibabel as nib
import numpy as np

_LPS = np.diag([-1.0, -1.0, 1.0])


#: antspyx subpackages whose import :func:`import_ants` defers to their first use
LAZY_ANTS_SUBPACKAGES = ("plotting", "learn", "deeplearn", "contrib")
#: antspyx module (statsmodels, pandas formulas) whose functions :func:`import_ants` replaces
#: by stand-ins that import it on their first call
LAZY_ANTS_MODULES = ("math.quantile",)


class _DeferredModule(types.ModuleType):
    """Stand-in for an antspyx module while ``ants`` loads: each name imported from it is a
    function that imports the real module on its first call and calls the real function."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        full = self.__name__

        def deferred(*args, **kwargs):
            return getattr(_load_deferred(full), name)(*args, **kwargs)

        deferred.__name__ = deferred.__qualname__ = name
        deferred.__doc__ = f"``ants`` function ``{name}``, imported from ``{full}`` on first call."
        return deferred


def _load_deferred(full: str):
    """Import the real antspyx module ``full``, keeping its parent's attribute as it was (a
    package whose ``__init__`` rebinds the module's name to a function keeps the function)."""
    import importlib

    if full in sys.modules:
        return sys.modules[full]
    parent_name, _, child = full.rpartition(".")
    parent = sys.modules[parent_name]
    missing = object()
    before = parent.__dict__.get(child, missing)
    module = importlib.import_module(full)
    if before is not missing:
        parent.__dict__[child] = before
    return module


def _ants_getattr(name):
    """``ants.<name>`` not found: import the deferred subpackages for real, then look again."""
    import importlib

    ants = sys.modules["ants"]
    for sub in LAZY_ANTS_SUBPACKAGES:
        module = importlib.import_module(f"ants.{sub}")
        public = getattr(module, "__all__", None) or [
            k for k in vars(module) if not k.startswith("_")]
        for key in public:
            ants.__dict__.setdefault(key, getattr(module, key))
    ants.__dict__.pop("__getattr__", None)
    if name in ants.__dict__:
        return ants.__dict__[name]
    raise AttributeError(f"module 'ants' has no attribute {name!r}")


def import_ants():
    """The ``ants`` module (antspyx), imported without :data:`LAZY_ANTS_SUBPACKAGES` and
    :data:`LAZY_ANTS_MODULES`.

    ``import ants`` loads every subpackage, among them plotting (matplotlib), learn
    (scikit-learn), deeplearn and ``ants.math.quantile`` (statsmodels): ~2 CPU s per process
    (more on a loaded machine), for functions ketabids never calls. Here the subpackages are
    empty placeholders while ``ants`` loads and their names (``ants.plot``, ``ants.learn``, ...)
    import them on first access; the functions of ``ants.math.quantile`` (``ants.quantile``,
    ``ants.compcor``, ...) import it on their first call (``ANTsImage.quantile`` exists from
    then on). When ``ants`` is already imported it is returned as it is.
    """
    if "ants" in sys.modules:
        return sys.modules["ants"]
    placeholders = {}
    for sub in LAZY_ANTS_SUBPACKAGES + LAZY_ANTS_MODULES:
        full = f"ants.{sub}"
        if full not in sys.modules:
            module = (types.ModuleType(full) if sub in LAZY_ANTS_SUBPACKAGES
                      else _DeferredModule(full))
            module.__all__ = []
            placeholders[full] = sys.modules[full] = module
    try:
        import ants
    finally:
        for full, module in placeholders.items():
            if sys.modules.get(full) is module:
                del sys.modules[full]
    for sub in LAZY_ANTS_SUBPACKAGES:
        if ants.__dict__.get(sub) is placeholders.get(f"ants.{sub}"):
            ants.__dict__.pop(sub, None)
    if any(f"ants.{sub}" in placeholders for sub in LAZY_ANTS_SUBPACKAGES):
        ants.__getattr__ = _ants_getattr
    return ants


def to_ants(img: nib.Nifti1Image, dtype=np.float32):
    """nibabel 3D image -> ANTsImage with the same voxels and world geometry."""
    ants = import_ants()

    data = np.asarray(img.dataobj, dtype=dtype)
    if data.ndim != 3:
        raise ValueError(f"to_ants needs a 3D image, got shape {data.shape}")
    lin = _LPS @ img.affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing
    origin = _LPS @ img.affine[:3, 3]
    # Fortran order: ants.from_numpy copies ``data.T`` into C order, a plain memcpy for a
    # Fortran-ordered array (as nibabel returns NIfTI data) and a strided transpose for a C-ordered
    # one (256^3 float32: 0.03 s instead of 0.3-0.8 s)
    return ants.from_numpy(
        np.asfortranarray(data),
        origin=[float(x) for x in origin],
        spacing=[float(x) for x in spacing],
        direction=direction,
    )


def affine_of(ants_img) -> np.ndarray:
    """The RAS+ voxel-to-world affine of an ANTsImage."""
    direction = np.asarray(ants_img.direction, dtype=float)
    spacing = np.asarray(ants_img.spacing, dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ (direction * spacing)
    affine[:3, 3] = _LPS @ np.asarray(ants_img.origin, dtype=float)
    return affine


def to_nib(ants_img, dtype=np.float32, like: nib.Nifti1Image | None = None) -> nib.Nifti1Image:
    """ANTsImage -> nibabel image (float32 by default; qform = sform = the affine, mm units).

    ``like``: if given and on the same grid, its exact affine is reused (avoids float drift).
    """
    data = ants_img.numpy().astype(dtype, copy=False)
    affine = affine_of(ants_img)
    if like is not None and like.shape[:3] == data.shape and np.allclose(
        like.affine, affine, atol=1e-4
    ):
        affine = like.affine
    return make_image(data, affine)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask``'s non-zero voxels grown by ``margin`` voxels
    (clipped to the grid); the whole grid for an empty mask."""
    slices = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not hit.size:
            return tuple(slice(0, n) for n in mask.shape)
        slices.append(slice(max(0, int(hit[0]) - margin),
                            min(mask.shape[axis], int(hit[-1]) + margin + 1)))
    return tuple(slices)


def box_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The affine of the sub-grid ``box`` (slices with steps of 1, as from
    :func:`bounding_box`) of a grid with ``affine``: what ``img.slicer[box].affine`` gives,
    without reading the voxels (nibabel's slicer reads them)."""
    start = np.array([b.start or 0 for b in box], float)
    out = np.array(affine, float, copy=True)
    out[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return out


def make_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A clean NIfTI-1 image: given data and affine, qform = sform (code 1, scanner), mm."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def ants_seed(seed: int) -> int:
    """The seed handed to ANTs for a user ``seed``: ANTs treats a random seed of 0 as "no
    seed" (time-seeded; measured: seed=0 runs differ, seed=7 runs are bit-identical), so 0 is
    mapped to a fixed non-zero value; every other seed is passed unchanged."""
    seed = int(seed)
    return seed if seed != 0 else 19650218


@contextlib.contextmanager
def ants_env(seed: int | None = None, omp_nthreads: int = 1):
    """Run ANTs with ``omp_nthreads`` ITK threads and (if ``seed`` is not None) a fixed seed.

    Sets ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, ``ANTS_RANDOM_SEED`` and
    ``ants.config._random_seed`` inside the block only and restores the old values on exit,
    even on error.

    ITK reads the thread count ONCE per process, at its first call (``ants.from_numpy`` in
    :func:`to_ants` counts): put every ANTs call of a step, conversions included, inside the
    block, or set ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` before the process starts.
    """
    ants = import_ants()

    keys = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "ANTS_RANDOM_SEED")
    saved = {k: os.environ.get(k) for k in keys}
    saved_seed = ants.config._random_seed
    try:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, int(omp_nthreads)))
        if seed is not None:
            os.environ["ANTS_RANDOM_SEED"] = str(ants_seed(seed))
            ants.config._random_seed = ants_seed(seed)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        ants.config._random_seed = saved_seed
