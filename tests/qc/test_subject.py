"""QC of one processed T1w from its files (the whole-pipeline cases, a good phantom passing and
every fault failing, run through the participant level in
tests/integration/test_qc_participant_faults.py)."""
from __future__ import annotations

import nibabel as nib
import numpy as np

from ketabids.qc.rules import assess
from ketabids.qc.subject import compute_subject_qc, sample_on_grid
from tests.qc.test_metrics import synthetic_head


def test_compute_subject_qc_without_registration(tmp_path):
    img, maps, mask = synthetic_head(shape=(84, 100, 80), zoom=2.0)
    raw = tmp_path / "raw.nii.gz"
    nib.save(img, raw)
    out = compute_subject_qc(raw_t1w=raw, t1w=img, brain_mask=mask, tpms=maps)
    assert assess(out)[0] == "pass"
    assert "fov_coverage" not in out and out["qc_seconds"] > 0
    assert out["t1_contrast_order"] and out["tiv_ml"] > 1000


def test_compute_subject_qc_same_values_with_reading_threads(tmp_path):
    """Reading the images in background threads changes no value; a missing file still
    raises in the caller."""
    import pytest

    img, maps, mask = synthetic_head(shape=(84, 100, 80), zoom=2.0)
    paths = {}
    for name, image in {"raw": img, "mask": mask, **maps}.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(image, paths[name])
    runs = [compute_subject_qc(raw_t1w=paths["raw"], t1w=paths["raw"], brain_mask=paths["mask"],
                               tpms={k: paths[k] for k in maps}, omp_nthreads=n)
            for n in (1, 2)]
    for run in runs:
        del run["qc_seconds"], run["qc_cpu_seconds"]
    assert repr(runs[0]) == repr(runs[1]) and runs[0]["tiv_ml"] > 1000  # NaN-safe equality
    with pytest.raises(FileNotFoundError):
        compute_subject_qc(raw_t1w=paths["raw"], t1w=paths["raw"], brain_mask=paths["mask"],
                           tpms={**{k: paths[k] for k in maps}, "CSF": tmp_path / "no.nii.gz"},
                           omp_nthreads=2)


def test_sample_on_grid_same_origin_subsampling():
    fine = nib.Nifti1Image(np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8), np.eye(4))
    coarse = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([2.0, 2, 2, 1]))
    assert np.array_equal(sample_on_grid(fine, coarse), fine.get_fdata()[::2, ::2, ::2])


def test_sample_on_grid_slicing_equals_map_coordinates():
    """The slicing fast path gives the values of nearest-neighbour ``map_coordinates`` for
    integer-aligned grids, including offsets that put part of the reference outside."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(200):
        data = rng.random(tuple(rng.integers(3, 12, 3))).astype(np.float32)
        fine = np.eye(4)
        fine[:3, 3] = rng.integers(-5, 5, 3)
        coarse = np.diag([*rng.integers(1, 4, 3), 1]).astype(float)
        coarse[:3, 3] = fine[:3, 3] + rng.integers(-8, 8, 3)
        reference = nib.Nifti1Image(np.zeros(tuple(rng.integers(1, 10, 3)), np.float32), coarse)
        ijk = np.indices(reference.shape, dtype=np.float32).reshape(3, -1)
        vox = np.linalg.inv(fine) @ coarse
        expected = ndimage.map_coordinates(data, vox[:3, :3] @ ijk + vox[:3, 3:4], order=0,
                                           mode="constant", cval=0.0).reshape(reference.shape)
        assert np.array_equal(sample_on_grid(nib.Nifti1Image(data, fine), reference), expected)
