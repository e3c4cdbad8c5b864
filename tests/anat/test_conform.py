"""conform_t1w: the orientation/header zoo and every refusal."""
import nibabel as nib
import numpy as np
import pytest

from ketabids.anat.conform import conform_t1w
from ketabids.errors import BadDataError

SHAPE = (7, 8, 9)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.uniform(10, 100, SHAPE).astype(np.float32)


def _save(tmp_path, img, name="sub-01_T1w.nii.gz"):
    path = tmp_path / name
    nib.save(img, path)
    return path


def _img(data, affine, qcode=1, scode=1, dtype=None):
    img = nib.Nifti1Image(data if dtype is None else data.astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    return img


def _world_value(img, ijk):
    """World coordinate of voxel ijk and its value (to check reorientation keeps the mapping)."""
    return img.affine @ np.r_[ijk, 1.0], np.asarray(img.dataobj)[tuple(ijk)]


def _value_at_world(img, xyz):
    ijk = np.rint(np.linalg.solve(img.affine, np.r_[xyz[:3], 1.0])[:3]).astype(int)
    return np.asarray(img.dataobj)[tuple(ijk)]


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LIA", "PIL"])
def test_any_orientation_becomes_ras_without_changing_world_mapping(tmp_path, data, codes):
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    base = np.diag([1.0, 1.2, 1.5, 1.0])
    base[:3, 3] = [-3, -4, -5]
    arr = nib.orientations.apply_orientation(data, ornt)
    aff = base @ nib.orientations.inv_ornt_aff(ornt, SHAPE)
    src = _img(arr, aff)
    out, info = conform_t1w(_save(tmp_path, src))
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    assert info["orientation"] == codes
    assert out.get_data_dtype() == np.float32
    assert out.shape == SHAPE
    for ijk in [(0, 0, 0), (2, 5, 3), tuple(n - 1 for n in src.shape)]:
        xyz, val = _world_value(src, ijk)
        assert _value_at_world(out, xyz) == pytest.approx(val)
    assert sorted(info["zooms"]) == pytest.approx(sorted([1.0, 1.2, 1.5]))
    if codes != "RAS":
        assert any("reoriented" in n for n in info["notes"])


def test_oblique_affine_is_kept(tmp_path, data):
    theta = np.deg2rad(12)
    rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)],
                    [0, np.sin(theta), np.cos(theta)]])
    aff = np.eye(4)
    aff[:3, :3] = rot
    out, info = conform_t1w(_save(tmp_path, _img(data, aff)))
    assert info["oblique"]
    assert np.allclose(out.affine[:3, :3], rot, atol=1e-5)
    np.testing.assert_allclose(out.get_fdata(), data, rtol=1e-6)


def test_qform_sform_disagreement_uses_qform(tmp_path, data):
    q = np.diag([1.0, 1.0, 1.0, 1.0])
    s = np.diag([-2.0, 1.0, 1.0, 1.0])
    img = nib.Nifti1Image(data, q)
    img.set_qform(q, code=1)
    img.set_sform(s, code=2)
    out, info = conform_t1w(_save(tmp_path, img))
    assert info["affine_source"] == "qform"
    assert any("disagree" in n for n in info["notes"])
    np.testing.assert_allclose(out.affine, q, atol=1e-6)


def test_sform_only_and_no_orientation(tmp_path, data):
    s = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image(data, s)
    img.set_qform(None, code=0)
    img.set_sform(s, code=2)
    out, info = conform_t1w(_save(tmp_path, img, "a.nii.gz"))
    assert info["affine_source"] == "sform"
    assert out.header.get_zooms()[:3] == pytest.approx((2, 2, 2))
    img.set_sform(None, code=0)
    out, info = conform_t1w(_save(tmp_path, img, "b.nii.gz"))
    assert info["affine_source"] == "none"
    assert any("assumed RAS" in n for n in info["notes"])


def test_scl_slope_is_applied(tmp_path, data):
    ints = np.rint(data).astype(np.int16)
    img = _img(ints, np.eye(4))
    img.header.set_slope_inter(0.5, 3.0)
    out, info = conform_t1w(_save(tmp_path, img))
    assert info["scaled"]
    np.testing.assert_allclose(out.get_fdata(), ints * 0.5 + 3.0, rtol=1e-6)
    assert out.header.get_slope_inter() in ((None, None), (1.0, 0.0))


def test_anisotropic_voxels_are_kept(tmp_path, data):
    out, info = conform_t1w(_save(tmp_path, _img(data, np.diag([1.0, 0.9, 3.0, 1.0]))))
    assert out.header.get_zooms()[:3] == pytest.approx((1.0, 0.9, 3.0))
    assert any("anisotropic" in n for n in info["notes"])


def test_single_volume_4d_is_squeezed(tmp_path, data):
    out, info = conform_t1w(_save(tmp_path, _img(data[..., None], np.eye(4))))
    assert out.shape == SHAPE
    assert any("squeezed" in n for n in info["notes"])


def test_in_memory_image_is_accepted(data):
    out, _ = conform_t1w(_img(data, np.eye(4)))
    assert out.shape == SHAPE


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: np.stack([d, d], -1), "several volumes"),
        (lambda d: d[:, :, :1], "not a 3D volume"),
        (lambda d: np.zeros_like(d), "empty"),
        (lambda d: np.where(d > 50, np.nan, d).astype(np.float32), "non-finite"),
        (lambda d: np.where(d > 50, np.inf, d).astype(np.float32), "non-finite"),
    ],
    ids=["4D", "2D", "empty", "NaN", "Inf"],
)
def test_refusals_name_the_file_and_the_problem(tmp_path, data, make, words):
    path = _save(tmp_path, _img(make(data), np.eye(4)), "sub-02_T1w.nii.gz")
    with pytest.raises(BadDataError) as err:
        conform_t1w(path)
    msg = str(err.value)
    assert str(path) in msg and words in msg and ";" in msg  # "<file>: <problem>; <fix>"
    assert "\n" not in msg
    assert err.value.exit_code == 65


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "broken_T1w.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(BadDataError, match="broken_T1w.nii.gz: cannot be read"):
        conform_t1w(bad)
    with pytest.raises(BadDataError, match="file not found"):
        conform_t1w(tmp_path / "missing.nii.gz")
