"""The registration-shape QC metrics (:func:`ketabids.qc.coverage.registration_shape`): a known
affine written as an ANTs transform is read back through the point mapping; the rule names the
orientation problem."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ketabids.qc.coverage import fitted_shape, linear_shape, registration_shape
from ketabids.qc.rules import assess


def _rotation_x(degrees):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def test_linear_shape_of_rotations_scalings_and_reflections():
    assert linear_shape(np.eye(3)) == pytest.approx((1.0, 0.0), abs=1e-9)
    assert linear_shape(1.3 * _rotation_x(90)) == pytest.approx((1.0, 90.0))
    assert linear_shape(_rotation_x(20) @ np.diag([1.4, 1.0, 0.7])) == pytest.approx((2.0, 20.0))
    # a reflection along the smallest scaling: the closest proper rotation is the identity
    assert linear_shape(np.diag([-1.0, 1.2, 1.4])) == pytest.approx((1.4, 0.0), abs=1e-9)


def test_fitted_shape_recovers_a_planted_affine_under_noise():
    rng = np.random.default_rng(0)
    src = rng.uniform(-70, 70, (3000, 3))
    linear = _rotation_x(35) @ np.diag([1.1, 0.8, 1.2])
    tgt = src @ linear.T + [3.0, -4.0, 12.0] + rng.normal(0, 2.0, src.shape)  # a "warp"
    shape = fitted_shape(src, tgt)
    assert shape["registration_anisotropy"] == pytest.approx(1.5, rel=0.01)
    assert shape["registration_rotation_deg"] == pytest.approx(35.0, abs=0.5)


@pytest.mark.parametrize("degrees, scales", [(0.0, (1.0, 1.0, 1.0)), (90.0, (1.0, 1.4, 0.7))])
def test_registration_shape_through_an_ants_transform(tmp_path, degrees, scales):
    """An affine ANTs transform file (LPS, as antsRegistration writes them) read back."""
    from ketabids.anat.antsutil import import_ants

    ants = import_ants()
    ras = _rotation_x(degrees) @ np.diag(scales)
    lps = np.diag([-1.0, -1.0, 1.0])
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    matrix=lps @ ras @ lps, translation=(5.0, -2.0, 1.0))
    path = str(tmp_path / "affine.mat")
    ants.write_transform(tx, path)
    mask = np.zeros((20, 22, 18), np.uint8)
    mask[4:16, 3:19, 5:14] = 1
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-40.0, -44.0, -36.0]
    shape = registration_shape(path, nib.Nifti1Image(mask, affine))
    expected = max(scales) / min(scales)
    assert shape["registration_anisotropy"] == pytest.approx(expected, rel=1e-3)
    assert shape["registration_rotation_deg"] == pytest.approx(degrees, abs=0.1)


def test_rule_names_the_orientation_problem():
    verdict, reasons = assess({"registration_anisotropy": 1.4})
    assert verdict == "fail" and "orientation" in reasons[0]
    assert assess({"registration_anisotropy": 1.18}) == ("pass", [])
