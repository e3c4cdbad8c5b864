"""Frozen models on disk: a skops file, a JSON manifest and the mask, never pickle.

A trained model is three files side by side (``group/train/``)::

    ketabids_model.skops    the fitted estimator + mask + grid (skops format: a zip of JSON + .npy)
    ketabids_model.json     the manifest: what the model needs and how it was made, with the
                            SHA-256 of the .skops file
    space-<TPL>_res-<R>_desc-analysis_mask.nii.gz
                            the analysis mask (also inside the .skops file), for viewing
                            (:func:`mask_file_name`; models of ketabids 0.1.0 have
                            ``ketabids_mask.nii.gz``, still read)

:func:`load_model` accepts any of the three paths or their folder. Before anything is loaded:

1. the manifest must say ``"format": "ketabids-model"`` with a known ``format_version``;
2. the .skops file's SHA-256 must equal the manifest's (a file altered after saving is refused);
3. the .skops file must be a zip with a ``schema.json``; every object the schema declares
   (``__module__.__class__``, including functions and types) must be on :func:`trusted_types`,
   an explicit allowlist of the builtins, numpy and scikit-learn types a ketabids model holds
   plus the engine's estimator classes. Anything else (``os.system``, a user class, a pickle
   stream) is refused before skops builds a single object.

Only then is ``skops.io.load`` called, with ``trusted=`` that same list; the loaded payload is
checked again (estimator class, mask hash). Refusals are :class:`~ketabids.errors.BadDataError`
naming the file; a missing file is :class:`~ketabids.errors.MissingInputError`.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ketabids.bids.derivatives import MANIFEST_NAME, MODEL_NAME
from ketabids.errors import BadDataError, MissingInputError
from ketabids.io import atomic_path, save_nifti, sha256_file, write_json

FORMAT = "ketabids-model"
FORMAT_VERSION = 1
#: The mask's name in models of ketabids 0.1.0 (not a valid BIDS name); still accepted.
MASK_NAME = "ketabids_mask.nii.gz"


def mask_file_name(template: str, resolution: float) -> str:
    """The analysis mask's BIDS-valid name (decimal point written ``p``).

    >>> mask_file_name("MNI152NLin2009aSym", 2.0)
    'space-MNI152NLin2009aSym_res-2_desc-analysis_mask.nii.gz'
    >>> mask_file_name("MNI152NLin2009aSym", 1.5)
    'space-MNI152NLin2009aSym_res-1p5_desc-analysis_mask.nii.gz'
    """
    res = f"{float(resolution):g}".replace(".", "p")
    return f"space-{template}_res-{res}_desc-analysis_mask.nii.gz"


def _is_mask_name(name: str) -> bool:
    return name == MASK_NAME or name.endswith("_desc-analysis_mask.nii.gz")

_BUILTINS = [f"builtins.{t}" for t in
             ("dict", "list", "tuple", "str", "int", "float", "bool", "NoneType", "bytes")]
_NUMPY = ["numpy.ndarray", "numpy.dtype"] + [
    f"numpy.{t}" for t in ("float64", "float32", "int64", "int32", "int8", "uint8", "bool_",
                           "bool", "intc", "str_")
] + [f"numpy.dtypes.{t}" for t in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                   "UInt8DType", "BoolDType", "Int8DType")]
_SKLEARN = ["sklearn.svm._classes.SVC"]
#: The engine's classes a model holds (the estimator and its inner splitter), imported lazily
#: from ``ketabids.group``.
_ENGINE_CLASSES = ("KetaSVC", "StratifiedFolds", "GroupFolds", "LeaveGroupOut")


def trusted_types() -> tuple[str, ...]:
    """Every type a ketabids model file may contain (``module.Class``); anything else is refused.

    Builtins containers and scalars, numpy arrays / dtypes / scalars, scikit-learn's SVC and the
    engine's classes (``ketabids.group.KetaSVC`` and its splitters ``StratifiedFolds``,
    ``GroupFolds``, ``LeaveGroupOut``).
    """
    names = _BUILTINS + _NUMPY + _SKLEARN
    try:
        import ketabids.group as engine

        names += [_qualname(getattr(engine, c)) for c in _ENGINE_CLASSES if hasattr(engine, c)]
    except ImportError:  # pragma: no cover - engine not importable
        pass
    return tuple(dict.fromkeys(names))


@dataclass
class LoadedModel:
    """A verified model: the estimator, the mask on its grid and the manifest."""

    estimator: object
    mask: np.ndarray
    affine: np.ndarray
    manifest: dict
    path: Path  # the .skops file


def _qualname(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ------------------------------------------------------------------------------------ save
def save_model(out_dir, estimator, *, mask: np.ndarray, affine: np.ndarray, manifest: dict,
               mask_name: str = MASK_NAME) -> dict:
    """Write the .skops file, the mask NIfTI (``mask_name``, see :func:`mask_file_name`) and the
    manifest (atomically) into ``out_dir``.

    ``manifest`` is completed with the format, file names and the .skops SHA-256, and returned.
    The estimator's class must be on the allowlist, so that a saved model can always be loaded.
    """
    import nibabel as nib
    import skops.io as sio

    from ketabids.group.features import mask_hash

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if _qualname(type(estimator)) not in trusted_types():
        raise TypeError(f"{_qualname(type(estimator))} is not on the model allowlist "
                        "(ketabids.group.model_io.trusted_types)")
    mask = np.asarray(mask, bool)
    affine = np.asarray(affine, float)
    digest = mask_hash(mask, affine)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "estimator": estimator,
        "mask": mask.astype(np.uint8),
        "affine": affine,
        "mask_sha256": digest,
    }
    with atomic_path(out_dir / MODEL_NAME, suffix=".skops") as tmp:
        sio.dump(payload, tmp, compression=zipfile.ZIP_DEFLATED)
        _canonical_zip(tmp)
        model_sha = sha256_file(tmp)
    img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=4)
    img.header.set_sform(affine, code=4)
    save_nifti(img, out_dir / mask_name)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_file": MODEL_NAME,
        "model_sha256": model_sha,
        "mask_file": mask_name,
        "mask_sha256": digest,
        "estimator_class": _qualname(type(estimator)),
        **{k: v for k, v in manifest.items() if k not in ("format", "format_version")},
    }
    write_json(out_dir / MANIFEST_NAME, full)
    return full


#: Time stamp of every member of a saved .skops zip (the ZIP format's epoch).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _canonical_zip(path: Path) -> None:
    """Rewrite a .skops zip so that the same model gives the same bytes in every run.

    skops names each array member after the array's ``id()``, records ``id()`` as each
    object's ``__id__`` in the schema and stamps every member with the time of writing, so two
    runs of the same training wrote different .skops files (and model SHA-256s). Members are
    renamed in the order skops wrote them (``0.npy``, ``1.npy``, ..., suffix kept) and the
    schema's ``"file"`` references follow; each distinct ``__id__`` becomes 1, 2, ... in the
    order of first appearance (what skops uses them for, finding shared objects, is kept);
    every member gets :data:`ZIP_EPOCH`; contents and compression are unchanged.
    """
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        data = {info.filename: zf.read(info) for info in infos}
    names = {}
    for info in infos:
        if info.filename != "schema.json":
            names[info.filename] = f"{len(names)}{Path(info.filename).suffix}"

    ids = {}

    def rename(node):
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == "file" and isinstance(v, str):
                    out[k] = names.get(v, v)
                elif k == "__id__" and isinstance(v, int):
                    out[k] = ids.setdefault(v, len(ids) + 1)
                else:
                    out[k] = rename(v)
            return out
        if isinstance(node, list):
            return [rename(v) for v in node]
        return node

    schema = rename(json.loads(data["schema.json"]))
    data["schema.json"] = json.dumps(schema, indent=2).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for info in infos:
            member = zipfile.ZipInfo(names.get(info.filename, info.filename), ZIP_EPOCH)
            member.compress_type = info.compress_type
            member.external_attr = info.external_attr
            zf.writestr(member, data[info.filename])


# ------------------------------------------------------------------------------------ load
def resolve_model_paths(path) -> tuple[Path, Path]:
    """``(skops file, manifest)`` for a path to either, to the mask or to their folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingInputError(f"{path}: --model does not exist; give the {MODEL_NAME} (or "
                                f"its folder) written by a training run, e.g. "
                                f"OUTPUT_DIR/group/train/{MODEL_NAME}")
    if path.is_dir():
        folder = path
    else:
        folder = path.parent
        if path.name not in (MODEL_NAME, MANIFEST_NAME) and not _is_mask_name(path.name):
            # a renamed model: its manifest is the same stem + .json
            manifest = path.with_suffix(".json")
            if path.suffix == ".json":
                return path.with_suffix(".skops"), path
            if manifest.is_file():
                return path, manifest
            raise BadDataError(f"{path}: not a ketabids model (no manifest {manifest.name} next "
                               f"to it); give the {MODEL_NAME} written by a training run")
    model, manifest = folder / MODEL_NAME, folder / MANIFEST_NAME
    if not manifest.is_file():
        raise BadDataError(f"{path}: not a ketabids model ({MANIFEST_NAME} missing); give the "
                           "folder or .skops file written by 'ketabids ... group' training")
    return model, manifest


def read_manifest(path) -> dict:
    """The manifest of a model (checked to be a ketabids model manifest), without loading it."""
    _, manifest_path = resolve_model_paths(path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadDataError(f"{manifest_path}: not a ketabids model manifest (unreadable JSON: "
                           f"{exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadDataError(f"{manifest_path}: not a ketabids model manifest (no "
                           f"\"format\": \"{FORMAT}\")")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BadDataError(f"{manifest_path}: model format version "
                           f"{manifest.get('format_version')!r}; this ketabids reads version "
                           f"{FORMAT_VERSION}: retrain with this version")
    return manifest


def schema_types(model_path) -> set[str]:
    """Every ``module.Class`` (objects, functions, types) declared in a skops file's schema.

    Reads ``schema.json`` from the zip as plain JSON: nothing is imported or built.
    """
    model_path = Path(model_path)
    try:
        with zipfile.ZipFile(model_path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError,
            json.JSONDecodeError) as exc:
        raise BadDataError(f"{model_path}: not a skops model file ({exc}); ketabids never "
                           "loads pickle files") from exc
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if "__loader__" in node or "__class__" in node or "__module__" in node:
                found.add(f"{node.get('__module__')}.{node.get('__class__')}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def load_model(path, *, expected_class: type | None = None) -> LoadedModel:
    """Load a frozen model safely (see the module docstring); refuse anything unexpected."""
    import skops.io as sio

    from ketabids.group.features import mask_hash

    model_path, _ = resolve_model_paths(path)
    manifest = read_manifest(path)
    if manifest.get("model_file") and Path(manifest["model_file"]).name != model_path.name:
        model_path = model_path.with_name(Path(manifest["model_file"]).name)
    if not model_path.is_file():
        raise MissingInputError(f"{model_path}: the model file named by the manifest is missing")
    actual = sha256_file(model_path)
    if actual != manifest.get("model_sha256"):
        raise BadDataError(
            f"{model_path}: SHA-256 {actual[:12]}... differs from the manifest's "
            f"{str(manifest.get('model_sha256'))[:12]}...: the model was altered or replaced "
            "after training; use the files exactly as training wrote them"
        )
    trusted = trusted_types()
    declared = schema_types(model_path)
    unexpected = sorted(declared - set(trusted))
    if unexpected:
        raise BadDataError(f"{model_path}: refused, it contains types a ketabids model never "
                           f"holds: {', '.join(unexpected[:8])}; nothing was loaded")
    try:
        payload = sio.load(model_path, trusted=list(trusted))
    except Exception as exc:  # skops raises UntrustedTypesFoundException, ValueError...
        raise BadDataError(f"{model_path}: refused by the safe loader ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadDataError(f"{model_path}: not a ketabids model (unexpected content)")
    estimator = payload.get("estimator")
    if _qualname(type(estimator)) != manifest.get("estimator_class") or (
            expected_class is not None and not isinstance(estimator, expected_class)):
        raise BadDataError(f"{model_path}: holds a {_qualname(type(estimator))}, expected "
                           f"{manifest.get('estimator_class')}")
    mask = np.asarray(payload.get("mask")).astype(bool)
    affine = np.asarray(payload.get("affine"), float)
    if mask.ndim != 3 or affine.shape != (4, 4) or \
            mask_hash(mask, affine) != manifest.get("mask_sha256"):
        raise BadDataError(f"{model_path}: its mask does not match the manifest's mask hash")
    return LoadedModel(estimator=estimator, mask=mask, affine=affine, manifest=manifest,
                       path=model_path)


def software_versions() -> dict:
    """Versions recorded in manifests and reports."""
    from ketabids.versions import software_versions as _versions

    return _versions("scikit-learn", "skops", "pandas")
