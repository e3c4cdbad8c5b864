"""A small BIDS-Derivatives data sink (niworkflows' ``DerivativesDataSink``, reduced).

The output name (:func:`ketabids.bids.derivatives.derivative_relpath`) is built from the BIDS
*source file* (its ``sub-`` and ``ses-`` entities) plus the entities given as inputs, in the order
of the BIDS schema::

    sub-<label>[_ses-<label>][_from-<x>_to-<y>_mode-<m>][_space-<tpl>][_seg-<atlas>]
        [_label-<tissue>][_desc-<desc>]_<suffix><extension>

Guarantees (what makes a participant run resumable and parallel-safe):

* every file is written under a temporary name in its destination folder, then renamed
  (:func:`ketabids.io.atomic_write_bytes`): a reader never sees half a file;
* a file whose new content is byte-identical to what is already there is not touched (mtime
  kept), so re-running a finished subject rewrites nothing;
* NIfTI files are re-encoded deterministically (gzip with no timestamp or name in the header,
  spatial units set to mm), so the same image always gives the same bytes;
* NIfTI files get a JSON sidecar with ``Sources``/``RawSources`` (and ``SkullStripped`` when
  given) merged with ``meta_dict``.

Transforms (``.h5``) are compared byte for byte. A rerun with the same work directory reuses
the cached registration, so its ``.h5`` bytes are identical and nothing is rewritten. A rerun
from a fresh work directory registers again and ITK's HDF5 writer stores object timestamps
(~128 bytes differ for the same parameters), so the transforms are rewritten with equivalent
content. A semantic comparison would need h5py (not a dependency), and
``ants.read_transform`` on an ANTs composite ``.h5`` did not return within 20 s (measured,
antspyx 0.6.3).
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ketabids.bids.derivatives import derivative_relpath
from ketabids.io import atomic_write_bytes


def _split_ext(path: str) -> tuple[str, str]:
    name = Path(path).name
    for ext in (".nii.gz", ".tsv.gz"):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext) if dot else (name, "")


def nifti_bytes(in_file: str | os.PathLike, data_dtype: str | None = None) -> bytes:
    """A NIfTI file re-encoded deterministically as ``.nii.gz`` bytes.

    Spatial units are set to mm when unset (the BIDS validator warns otherwise); gzip carries no
    timestamp and no file name, so equal images give equal bytes.
    """
    import nibabel as nib
    import numpy as np

    img = nib.load(str(in_file))
    if not isinstance(img, nib.Nifti1Image):  # Nifti2 or Analyze: convert
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, header=None)
    header = img.header
    if header.get_xyzt_units()[0] in (None, "unknown"):
        header.set_xyzt_units("mm", header.get_xyzt_units()[1] or "sec")
    if data_dtype:
        data = np.asanyarray(img.dataobj)
        img = nib.Nifti1Image(data.astype(data_dtype), img.affine, header)
        img.set_data_dtype(data_dtype)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="root of the derivative dataset")
    source_file = InputMultiObject(
        File(exists=False), mandatory=True, desc="BIDS input file(s) this output derives from"
    )
    in_file = File(exists=True, mandatory=True, desc="the file to store")
    suffix = traits.Str(mandatory=True, desc="BIDS suffix (T1w, mask, probseg, xfm, morph...)")
    datatype = traits.Str("anat", usedefault=True, desc="BIDS datatype folder")
    space = traits.Str(desc="space- entity")
    seg = traits.Str(desc="seg- entity (atlas)")
    label = traits.Str(desc="label- entity")
    desc = traits.Str(desc="desc- entity")
    from_ = traits.Str(desc="from- entity (transforms)")
    to = traits.Str(desc="to- entity (transforms)")
    mode = traits.Str(desc="mode- entity (transforms)")
    extension = traits.Str(desc="output extension; default: that of in_file (.nii -> .nii.gz)")
    data_dtype = traits.Str(desc="cast NIfTI data to this dtype (e.g. uint8 for masks)")
    raw_sources = traits.List(traits.Str, desc="RawSources sidecar entry (input files)")
    sources = traits.List(traits.Str, desc="Sources sidecar entry (BIDS URIs)")
    skull_stripped = traits.Either(None, traits.Bool, default=None, usedefault=True,
                                   desc="SkullStripped sidecar entry (T1w images)")
    meta_dict = traits.Dict(desc="further sidecar entries")
    sidecar = traits.Either(None, traits.Bool, default=None, usedefault=True,
                            desc="write a JSON sidecar (default: for NIfTI and TSV files)")
    root_name = traits.Str(desc="store as this name at the dataset root instead (e.g. reports); "
                                "no BIDS name, no sidecar")


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(desc="the stored file")
    out_meta = File(desc="its JSON sidecar")
    written = traits.Bool(desc="False when the file already held identical content")


class DerivativesDataSink(SimpleInterface):
    """Store one file under its BIDS-Derivatives name, atomically and only if it changed.

    >>> import tempfile, pathlib, nibabel as nib, numpy as np
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> nib.save(nib.Nifti1Image(np.ones((7, 8, 9), "float32"), np.eye(4)), tmp / "gm.nii")
    >>> sink = DerivativesDataSink(base_directory=str(tmp / "out"), in_file=str(tmp / "gm.nii"),
    ...     source_file="/bids/sub-01/anat/sub-01_T1w.nii.gz", suffix="probseg", label="GM")
    >>> res = sink.run(cwd=str(tmp))  # doctest: +ELLIPSIS
    >>> pathlib.Path(res.outputs.out_file).relative_to(tmp / "out").as_posix()
    'sub-01/anat/sub-01_label-GM_probseg.nii.gz'
    >>> sink.run(cwd=str(tmp)).outputs.written  # same content: not rewritten
    False
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        base = Path(inputs.base_directory)
        in_file = inputs.in_file
        _, in_ext = _split_ext(in_file)
        extension = inputs.extension if isdefined(inputs.extension) else in_ext
        is_nifti = in_ext in (".nii", ".nii.gz")
        if is_nifti and extension == ".nii":
            extension = ".nii.gz"

        if isdefined(inputs.root_name):
            out_path = base / inputs.root_name
            write_sidecar = False
        else:
            ents = {k: getattr(inputs, k) for k in ("space", "seg", "label", "desc", "from_",
                                                    "to", "mode")}
            ents = {k: v for k, v in ents.items() if isdefined(v) and v}
            rel = derivative_relpath(inputs.source_file[0], suffix=inputs.suffix,
                                     extension=extension, datatype=inputs.datatype, **ents)
            out_path = base / rel
            write_sidecar = inputs.sidecar
            if write_sidecar is None:
                write_sidecar = extension in (".nii.gz", ".tsv")

        if is_nifti:
            dtype = inputs.data_dtype if isdefined(inputs.data_dtype) else None
            data = nifti_bytes(in_file, dtype)
        else:
            data = Path(in_file).read_bytes()
            if extension.endswith(".gz") and not in_ext.endswith(".gz"):
                data = _gzip_bytes(data)
        written = atomic_write_bytes(out_path, data)
        self._results["out_file"] = str(out_path)

        if write_sidecar:
            meta = {}
            if inputs.skull_stripped is not None:
                meta["SkullStripped"] = bool(inputs.skull_stripped)
            if isdefined(inputs.sources) and inputs.sources:
                meta["Sources"] = list(inputs.sources)
            if isdefined(inputs.raw_sources) and inputs.raw_sources:
                meta["RawSources"] = list(inputs.raw_sources)
            if isdefined(inputs.meta_dict):
                meta.update(inputs.meta_dict)
            stem, _ = _split_ext(out_path.name)
            meta_path = out_path.with_name(stem + ".json")
            text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
            written |= atomic_write_bytes(meta_path, text.encode("utf-8"))
            self._results["out_meta"] = str(meta_path)
        self._results["written"] = bool(written)
        return runtime
