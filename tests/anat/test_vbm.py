"""VBM maths: modulation conserves volume (known affine answer), volumes, regional volumes."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketabids.anat.antsutil import make_image
from ketabids.anat.registration import RegistrationResult, jacobian_determinant
from ketabids.anat.vbm import modulate, regional_volumes, tissue_volumes

SCALE = np.diag([1.2, 1.1, 0.9])  # template point -> subject point (ANTs forward direction)


def _affine_result(tmp_path, matrix=SCALE, translation=(1.0, -2.0, 0.5)):
    """RegistrationResult holding a pure affine transform (forward) and its inverse."""
    import ants

    fwd = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                     matrix=matrix, translation=translation)
    inv = fwd.invert()
    paths = tmp_path / "fwd.mat", tmp_path / "inv.mat"
    ants.write_transform(fwd, str(paths[0]))
    ants.write_transform(inv, str(paths[1]))
    return RegistrationResult([paths[0]], [paths[1]], warped=None)


def _blob(shape, affine, centre, radii):
    ijk = np.indices(shape).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).T.reshape(*shape, 3)
    r = np.sqrt((((xyz - centre) / radii) ** 2).sum(-1))
    return np.clip(1.5 - r * 1.2, 0, 1).astype(np.float32)  # soft-edged ellipsoid in [0, 1]


@pytest.fixture
def grids():
    # subject: 1 mm, (30, 32, 34); template: 1.5 mm, (27, 29, 31); same world centre region
    s_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    s_aff[:3, 3] = [-15, -16, -17]
    t_aff = np.diag([1.5, 1.5, 1.5, 1.0])
    t_aff[:3, 3] = [-20, -21, -22]
    native = make_image(_blob((30, 32, 34), s_aff, np.array([1.0, -1.0, 0.0]),
                              np.array([9, 8, 7])), s_aff)
    template = make_image(np.zeros((27, 29, 31), np.float32), t_aff)
    return native, template


def test_jacobian_of_an_affine_is_its_determinant(tmp_path, grids):
    _, template = grids
    jac = jacobian_determinant(_affine_result(tmp_path), template)
    inner = np.asarray(jac.dataobj)[2:-2, 2:-2, 2:-2]  # ITK's finite differences at the border
    np.testing.assert_allclose(inner, np.linalg.det(SCALE), rtol=1e-3)
    assert jac.shape == template.shape


def test_modulation_conserves_native_volume(tmp_path, grids):
    native, template = grids
    result = _affine_result(tmp_path)
    unmod, mod = modulate(native, result, template)
    vox_t = 1.5**3
    native_ml = native.get_fdata().sum() * 1.0
    # without modulation the volume shrinks by det(SCALE); with it, it is conserved
    assert unmod.get_fdata().sum() * vox_t == pytest.approx(native_ml / np.linalg.det(SCALE),
                                                            rel=0.02)
    assert mod.get_fdata().sum() * vox_t == pytest.approx(native_ml, rel=0.02)
    assert unmod.get_fdata().max() <= 1.0 and mod.get_fdata().min() >= 0.0


def test_modulate_reuses_a_given_jacobian(tmp_path, grids):
    native, template = grids
    result = _affine_result(tmp_path)
    jac = make_image(np.full(template.shape, 2.0, np.float32), template.affine)
    unmod, mod = modulate(native, result, template, jacobian=jac)
    np.testing.assert_allclose(mod.get_fdata(), 2 * unmod.get_fdata(), rtol=1e-6)


def test_modulate_on_the_maps_box_equals_the_whole_grid(tmp_path, grids):
    """modulate hands ANTs only the map's non-zero box: the warped map is the one the whole
    native grid gives (reference: apply_to_template on the full map, both thresholds)."""
    from ketabids.anat.registration import apply_to_template

    native, template = grids
    data = np.asarray(native.dataobj).copy()
    data[:6] = 0
    data[:, -5:] = 0  # a box well inside the grid
    native = make_image(data, native.affine)
    result = _affine_result(tmp_path, translation=(3.0, -2.0, 4.0))
    unmod, _ = modulate(native, result, template)
    ref = np.clip(apply_to_template(native, result, template).get_fdata(), 0, 1)
    assert ref.sum() > 100
    np.testing.assert_allclose(unmod.get_fdata(), ref, atol=1e-6)


def test_tissue_volumes_known_answer():
    aff = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 mm3 voxels
    shape = (7, 8, 9)
    gm = np.zeros(shape, np.float32)
    gm[:5] = 0.5  # 5*8*9 voxels * 0.5 * 8 mm3 = 1440 mm3
    wm = np.zeros(shape, np.float32)
    wm[5:] = 1.0  # 2*8*9*8 = 1152 mm3
    csf = np.full(shape, 0.25, np.float32)  # 504 * 0.25 * 8 = 1008 mm3
    probs = {"GM": make_image(gm, aff), "WM": make_image(wm, aff), "CSF": make_image(csf, aff)}
    vols = tissue_volumes(probs)
    assert vols == {"tiv_ml": pytest.approx(3.6), "gm_ml": pytest.approx(1.44),
                    "wm_ml": pytest.approx(1.152), "csf_ml": pytest.approx(1.008)}
    mask = np.zeros(shape, np.uint8)
    mask[:5] = 1
    assert tissue_volumes(probs, make_image(mask, aff))["wm_ml"] == 0


def test_regional_volumes_sum_per_label_and_resample_atlas():
    aff = np.eye(4)
    shape = (7, 8, 9)
    gm = np.full(shape, 0.5, np.float32)
    atlas = np.zeros(shape, np.int16)
    atlas[:3] = 1
    atlas[3:5] = 2
    labels = pd.DataFrame({"index": [1, 2, 7], "name": ["left", "right", "absent"]})
    out = regional_volumes(make_image(gm, aff), make_image(atlas, aff), labels)
    assert list(out.columns) == ["index", "name", "gm_ml"]
    np.testing.assert_allclose(out["gm_ml"], [3 * 72 * 0.5 / 1000, 2 * 72 * 0.5 / 1000, 0])
    # an atlas on a 2x coarser grid covering the same space gives ~ the same answer
    coarse = nib.Nifti1Image(atlas[::2, ::2, ::2], np.diag([2.0, 2, 2, 1]))
    out2 = regional_volumes(make_image(gm, aff), coarse, labels)
    assert out2["gm_ml"].sum() == pytest.approx(out["gm_ml"].sum(), rel=0.35)
    with pytest.raises(ValueError, match="index"):
        regional_volumes(make_image(gm, aff), make_image(atlas, aff),
                         labels.rename(columns={"index": "id"}))


def test_apply_to_native_within_a_box_equals_the_full_grid_resampling(tmp_path, grids):
    """Resampling only the bounding box of a mask (+ margin) gives the full-grid values there
    (each voxel is sampled at its own world position) and 0 elsewhere, on the full grid."""
    from ketabids.anat.antsutil import bounding_box
    from ketabids.anat.registration import apply_to_native

    native, template = grids
    result = _affine_result(tmp_path)
    tpl_map = make_image(_blob(template.shape, template.affine, np.array([0.0, 0.0, 0.0]),
                               np.array([12, 11, 10])), template.affine)
    within = np.zeros(native.shape, bool)
    within[8:20, 10:21, 12:25] = True
    full = np.asarray(apply_to_native(tpl_map, result, native).dataobj)
    boxed = apply_to_native(tpl_map, result, native, within=within, margin=2)
    box = bounding_box(within, 2)
    assert box == (slice(6, 22), slice(8, 23), slice(10, 27))
    assert boxed.shape == native.shape
    np.testing.assert_allclose(boxed.affine, native.affine)
    out = np.asarray(boxed.dataobj)
    np.testing.assert_array_equal(out[box], full[box])
    outside = np.ones(native.shape, bool)
    outside[box] = False
    assert not out[outside].any() and full[outside].any()
    # the box is taken on a nibabel image's grid: another kind of reference is refused
    nib.save(native, tmp_path / "native.nii")
    with pytest.raises(TypeError, match="nibabel"):
        apply_to_native(tpl_map, result, str(tmp_path / "native.nii"), within=within)


def test_bounding_box_clips_to_the_grid_and_keeps_empty_masks_whole():
    from ketabids.anat.antsutil import bounding_box

    m = np.zeros((7, 8, 9), bool)
    assert bounding_box(m, 3) == (slice(0, 7), slice(0, 8), slice(0, 9))
    m[0, 4, 8] = True
    assert bounding_box(m, 2) == (slice(0, 3), slice(2, 7), slice(6, 9))


def test_box_affine_is_nibabels_slicer_affine():
    from ketabids.anat.antsutil import box_affine

    rot = np.array([[0.0, -1.1, 0.1], [0.9, 0.0, 0.0], [0.05, 0.0, 1.3]])
    aff = np.eye(4)
    aff[:3, :3] = rot
    aff[:3, 3] = [10.0, -20.0, 5.0]
    img = make_image(np.zeros((9, 10, 11), np.float32), aff)
    for box in [(slice(2, 7), slice(0, 10), slice(3, 4)), (slice(None),) * 3]:
        np.testing.assert_allclose(box_affine(aff, box), img.slicer[box].affine, atol=1e-12)
