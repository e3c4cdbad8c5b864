"""The second phantom generator (template tissue maps as partial-volume intensities): its
truth is exact and self-consistent, at low resolution so the tests stay quick."""
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ketabids.demo.tpm_phantom import CONTRASTS, WM_LEVEL, tpm_phantom


def _arr(img):
    return np.asarray(img.dataobj, np.float64)


@pytest.fixture(scope="module")
def clean():
    """No noise and no bias: the image is exactly the partial-volume sum of the truth."""
    return tpm_phantom(seed=3, resolution=4.0, noise=0.0, bias=0.0, contrast="mprage15t")


def test_fractions_are_a_partition_of_the_head(clean):
    gm, wm, csf = (_arr(clean.gm), _arr(clean.wm), _arr(clean.csf))
    total = gm + wm + csf
    assert gm.min() >= 0 and wm.min() >= 0 and csf.min() >= 0 and total.max() <= 1 + 1e-6
    mask = _arr(clean.brain_mask) > 0
    np.testing.assert_array_equal(mask, total >= 0.5)
    # inside the head (the mask away from its one-voxel edge, where the background shares
    # voxels) the three tissues fill every voxel
    interior = ndimage.binary_erosion(mask, iterations=1)
    assert interior.sum() > 0.7 * mask.sum()
    np.testing.assert_allclose(total[interior], 1.0, atol=1e-5)


def test_volumes_are_the_sums_of_the_truth(clean):
    vox = 4.0 ** 3 / 1000
    v = clean.volumes
    assert v["gm_ml"] == pytest.approx(_arr(clean.gm).sum() * vox, rel=1e-6)
    assert v["wm_ml"] == pytest.approx(_arr(clean.wm).sum() * vox, rel=1e-6)
    assert v["tiv_ml"] == pytest.approx(v["gm_ml"] + v["wm_ml"] + v["csf_ml"], rel=1e-9)
    # the template's volumes (GM 1008 / WM 670 mL) times the head scale cubed (the warp and
    # the 4 mm sampling move them by a few per cent)
    s3 = clean.params["head_scale"] ** 3
    assert v["gm_ml"] / s3 == pytest.approx(1008, rel=0.05)
    assert v["wm_ml"] / s3 == pytest.approx(670, rel=0.05)
    labels = clean.truth_labels()
    assert (labels == 1).sum() * vox == pytest.approx(v["hard_gm_ml"], rel=1e-9)


def test_intensity_is_the_partial_volume_sum(clean):
    means = CONTRASTS["mprage15t"]
    expected = WM_LEVEL * (means["gm"] * _arr(clean.gm) + means["wm"] * _arr(clean.wm)
                           + means["csf"] * _arr(clean.csf))
    mask = _arr(clean.brain_mask) > 0
    np.testing.assert_allclose(_arr(clean.t1w)[mask], expected[mask], rtol=1e-4)
    assert np.all(_arr(clean.t1w)[~mask] == 0)  # skull-stripped


def test_storage_orientation_changes_the_layout_not_the_anatomy():
    ras = tpm_phantom(seed=5, resolution=4.0, orientation="RAS")
    lia = tpm_phantom(seed=5, resolution=4.0, orientation="LIA")
    assert nib.aff2axcodes(lia.t1w.affine) == ("L", "I", "A")
    assert nib.aff2axcodes(ras.t1w.affine) == ("R", "A", "S")
    assert lia.volumes == ras.volumes
    canon = nib.as_closest_canonical(lia.t1w)
    np.testing.assert_allclose(canon.affine, ras.t1w.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(canon.dataobj), np.asarray(ras.t1w.dataobj))


def test_bias_warp_and_seed_change_the_image_deterministically():
    a = tpm_phantom(seed=7, resolution=4.0)
    b = tpm_phantom(seed=7, resolution=4.0)
    c = tpm_phantom(seed=8, resolution=4.0)
    np.testing.assert_array_equal(np.asarray(a.t1w.dataobj), np.asarray(b.t1w.dataobj))
    assert a.volumes != c.volumes
    # the priors carried by the pose only differ from the (warped) truth by the warp
    mask = _arr(a.brain_mask) > 0
    diff = np.abs(_arr(a.priors_affine["GM"]) - _arr(a.gm))[mask]
    assert 0.01 < diff.mean() < 0.2
    # the bias multiplies WM: its spread inside pure WM exceeds the noise alone
    wm = _arr(a.wm) > 0.99
    flat = tpm_phantom(seed=7, resolution=4.0, bias=0.0)
    assert _arr(a.t1w)[wm].std() > 1.5 * _arr(flat.t1w)[wm].std()
