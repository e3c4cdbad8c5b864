"""Small generated inputs for the robustness suite (phantom T1w, BIDS trees, group cohorts)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ketabids.testing import write_raw_dataset  # noqa: F401 - re-exported for the suite

TEMPLATE = "MNI152NLin2009aSym"
SIDECAR = {"RepetitionTime": 2.3, "EchoTime": 0.003, "FlipAngle": 8, "MagneticFieldStrength": 3}


def phantom_t1w(seed: int = 0, zoom: float = 3.0):
    """The embedded template brain on a ``zoom`` mm grid, shifted a little, with noise."""
    import nibabel as nib
    from nilearn.image import resample_img

    from ketabids.templates import get_template

    src = nib.load(get_template(resolution=2).brain)
    target = np.diag([zoom, zoom, zoom, 1.0])
    target[:3, 3] = np.asarray(src.affine[:3, 3]) + np.array([2.0, -3.0, 1.0])
    shape = tuple(int(np.ceil(s * 2.0 / zoom)) for s in src.shape)
    img = resample_img(src, target_affine=target, target_shape=shape, interpolation="linear",
                       force_resample=True, copy_header=True)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    data = data * 1000.0 / max(float(data.max()), 1e-6)
    data += np.random.default_rng(seed).normal(0, 5, data.shape).astype(np.float32)
    out = nib.Nifti1Image(np.clip(data, 0, None).astype(np.float32), target)
    out.header.set_xyzt_units("mm", "sec")
    out.set_qform(target, code=1)
    out.set_sform(target, code=1)
    return out


def t1w_path(root, subject) -> Path:
    return Path(root) / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"


def add_t1w(root, subject, *, kind: str = "good", seed: int = 0) -> Path:
    """Write the T1w of ``subject``: ``kind`` is good, 4d, nan, truncated (gzip cut in half),
    dangling (a symlink to a missing annex object), empty (0 bytes), or text (not a NIfTI)."""
    import nibabel as nib

    path = t1w_path(root, subject)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(SIDECAR))
    if kind == "dangling":
        target = Path(root) / ".git" / "annex" / "objects" / "XX" / f"SHA256E-s1--{subject}.nii.gz"
        path.symlink_to(target)
        return path
    if kind == "empty":
        path.write_bytes(b"")
        return path
    if kind == "text":
        path.write_text("this is not a NIfTI file\n")
        return path
    img = phantom_t1w(seed=seed)
    if kind == "4d":
        data = np.stack([np.asanyarray(img.dataobj)] * 2, axis=-1)
        img = nib.Nifti1Image(data, img.affine)
        img.header.set_xyzt_units("mm", "sec")
    elif kind == "nan":
        data = np.asanyarray(img.dataobj).copy()
        data[data.shape[0] // 2:] = np.nan
        img = nib.Nifti1Image(data, img.affine, img.header)
    nib.save(img, path)
    if kind == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    return path


def phantom_bids(root, kinds: dict[str, str]) -> Path:
    """A raw dataset with one T1w per subject: ``kinds`` maps subject label -> kind."""
    root = write_raw_dataset(root, list(kinds),
                             participants={"age": [40] * len(kinds), "sex": ["F"] * len(kinds)})
    for i, (subject, kind) in enumerate(kinds.items()):
        add_t1w(root, subject, kind=kind, seed=i)
    return root


def group_study(root, n: int = 16, *, seed: int = 5, site: str = "A", prefix: str = ""):
    """A raw dataset (participants.tsv only) and synthetic participant-level derivatives."""
    import nibabel as nib

    from ketabids.demo.derivatives import write_synthetic_derivatives
    from ketabids.demo.participants import make_participants_table
    from ketabids.testing import tiny_t1w

    root = Path(root)
    bids = root / "bids"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "synthetic", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    table = make_participants_table(n, seed=seed, site=site, label_prefix=prefix)
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    for i, pid in enumerate(table["participant_id"]):  # tiny T1w files: pybids selects on them
        anat = bids / pid / "anat"
        anat.mkdir(parents=True)
        nib.save(tiny_t1w(seed=i), anat / f"{pid}_T1w.nii.gz")
        (anat / f"{pid}_T1w.json").write_text(json.dumps(SIDECAR))
    out = root / "out"
    write_synthetic_derivatives(bids, out, seed=seed, effect_size=0.08)
    return bids, out
