"""CAT12-style sample homogeneity: planted outliers among 30 normal maps are flagged."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ketabids.qc.homogeneity import mean_correlations, robust_z, sample_homogeneity

ZOOM = 2.0


@pytest.fixture(scope="module")
def cohort():
    """30 modulated-GM-like maps: a shared cortex-like pattern x smooth individual variation
    x head size (volume +-25 %)."""
    rng = np.random.default_rng(0)
    shape = (40, 48, 40)
    base = ndimage.gaussian_filter(rng.random(shape), 1.5)
    base = np.clip((base - base.mean()) / base.std(), 0, None).astype(np.float32)
    maps = []
    for _ in range(30):
        field = ndimage.gaussian_filter(rng.normal(size=shape), 6)
        field /= field.std()
        maps.append((base * (1 + 0.05 * field) * rng.uniform(0.8, 1.25)).astype(np.float32))
    return maps


def _run(maps):
    imgs = [nib.Nifti1Image(m, np.diag([ZOOM, ZOOM, ZOOM, 1])) for m in maps]
    return sample_homogeneity(imgs, [f"s{i:02d}" for i in range(len(maps))])


def test_mean_correlations_and_robust_z():
    x = np.array([[1.0, 2, 3, 4], [2, 4, 6, 8], [4, 3, 2, 1]])
    assert mean_correlations(x) == pytest.approx([0.0, 0.0, -1.0])
    assert robust_z([1, 2, 3, 4, 100])[2] == 0.0 and robust_z([1, 2, 3, 4, 100])[4] > 30


def test_normal_cohort_not_flagged(cohort):
    assert not _run(cohort)["flagged"].any()


@pytest.mark.parametrize("shift_vox", [2, 3])  # 4 and 6 mm
def test_shifted_map_of_another_subject_flagged(cohort, shift_vox):
    maps = list(cohort)
    maps[7] = np.roll(cohort[3], shift_vox, axis=1)
    frame = _run(maps)
    assert frame.loc[frame.flagged, "id"].tolist() == ["s07"], frame[frame.flagged]
    assert "low mean correlation" in frame.loc[7, "reason"]


@pytest.mark.parametrize("factor", [0.8, 1.3])
def test_rescaled_map_of_another_subject_flagged(cohort, factor):
    maps = list(cohort)
    maps[7] = cohort[3] * factor
    frame = _run(maps)
    assert set(frame.loc[frame.flagged, "id"]) == {"s03", "s07"}
    assert frame.loc[7, "reason"].startswith("same map as s03")


def test_spatially_rescaled_map_flagged(cohort):
    maps = list(cohort)
    centre = (np.array(cohort[3].shape) - 1) / 2
    maps[7] = ndimage.affine_transform(cohort[3], np.eye(3) / 1.1, offset=centre * (1 - 1 / 1.1),
                                       order=1)
    frame = _run(maps)
    assert frame.loc[frame.flagged, "id"].tolist() == ["s07"]


def test_grid_mismatch_is_an_error(cohort):
    with pytest.raises(ValueError, match="different grids"):
        sample_homogeneity([nib.Nifti1Image(cohort[0], np.eye(4)),
                            nib.Nifti1Image(cohort[1][:-2], np.eye(4))], ["a", "b"])
