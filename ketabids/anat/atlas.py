"""Atlases in template space: ``--atlas`` resolution (:func:`resolve_atlas`), the one reader of
label tables and label images, and the one resampler of labels onto another grid (used by
regional volumes and the group region table)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from ketabids.errors import BadDataError, MissingInputError


@dataclass(frozen=True)
class Atlas:
    """An atlas in template space: labels image, label table and the ``seg-`` name."""

    name: str
    image: str
    labels: str


def resolve_atlas(atlas, atlas_labels=None) -> Atlas | None:
    """``--atlas`` (a NIfTI label image in template space) and its label table: ``--atlas-labels``
    or the TSV next to the image with the same stem. The ``seg-`` name is the ``atlas-`` entity
    of the file name, else its stem's letters and digits.

    >>> resolve_atlas(None) is None
    True
    """
    if not atlas:
        return None
    path = Path(atlas)
    stem = path.name.split(".")[0]
    labels = Path(atlas_labels) if atlas_labels else path.with_name(stem + ".tsv")
    if not labels.is_file():
        raise MissingInputError(
            f"{labels}: atlas label table not found; give --atlas-labels TSV with columns "
            "index and name")
    name = next((p.split("-", 1)[1] for p in stem.split("_") if p.startswith("atlas-")),
                None) or "".join(ch for ch in stem if ch.isalnum()) or "atlas"
    return Atlas(name=name, image=str(path.resolve()), labels=str(labels.resolve()))


def read_atlas_labels(path) -> pd.DataFrame:
    """Read an atlas label table (BIDS ``dseg.tsv``: columns ``index`` and ``name``)."""
    try:
        table = pd.read_csv(path, sep="\t")
    except Exception as exc:
        raise BadDataError(f"{path}: cannot read the atlas label table ({exc}); "
                           "give a TSV with columns index and name") from exc
    missing = {"index", "name"} - set(table.columns)
    if missing:
        raise BadDataError(f"{path}: atlas label table lacks column(s) {sorted(missing)}; "
                           "give a TSV with columns index and name (BIDS dseg.tsv)")
    return table


def load_atlas(path) -> nib.Nifti1Image:
    """A 3D integer label image (a trailing singleton 4th axis is dropped)."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise BadDataError(f"{path}: cannot read the atlas image ({exc}); give a 3D NIfTI "
                           "label image in template space") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadDataError(f"{path}: the atlas must be a 3D label image (it is {data.ndim}D)")
    return nib.Nifti1Image(np.rint(data).astype(np.int32), img.affine)


def labels_on_grid(atlas: nib.Nifti1Image, shape, affine) -> np.ndarray:
    """Integer labels of ``atlas`` at the voxel centres of the grid (``shape``, ``affine``):
    nearest neighbour, 0 outside the atlas's field of view.

    ``label(i) = atlas[round(A_atlas^-1 A_grid i)]`` with ``A`` the voxel-to-world affines.
    """
    data = np.asarray(atlas.dataobj)
    if tuple(data.shape[:3]) == tuple(shape) and np.allclose(atlas.affine, affine, atol=1e-3):
        return np.rint(data).astype(np.int64)
    matrix = np.linalg.inv(atlas.affine) @ np.asarray(affine)
    on_grid = ndimage.affine_transform(data.astype(np.float32), matrix[:3, :3],
                                       offset=matrix[:3, 3], output_shape=tuple(shape),
                                       order=0, mode="constant")
    return np.rint(on_grid).astype(np.int64)
