"""Intensity truncation, field-of-view crop, grid restoration (ketabids.anat.prepare), the
sub-millimetre resampling of conform, and the generators of long fields of view and spikes."""
import nibabel as nib
import numpy as np
import pytest

from ketabids.anat.antsutil import make_image
from ketabids.anat.conform import FINEST_MM, conform_t1w, resample_coarser
from ketabids.anat.prepare import (
    FOV_KEEP_MM,
    crop_field_of_view,
    prepare_t1w,
    restore_grid,
    truncate_intensities,
)
from ketabids.demo.faults import add_spikes, extend_neck


def _head(shape=(80, 90, 120), zooms=(2.0, 2.0, 2.0), seed=0):
    """An ellipsoid 'head' (a shell brighter than the inside, 180 mm tall) on a noisy
    background, RAS+, its top 5 mm below the grid's upper edge; a neck cylinder runs from the
    head to the bottom of the grid. Returns ``(image, world z of the top of the head)``."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*zooms, 1.0])
    affine[:2, 3] = -(np.asarray(shape[:2]) - 1) / 2 * np.asarray(zooms[:2])
    i, j, k = np.indices(shape)
    x, y, z = (affine[:3, :3] @ np.stack([i, j, k]).reshape(3, -1)).reshape(3, *shape) + \
        affine[:3, 3].reshape(3, 1, 1, 1)
    top = (shape[2] - 1) * zooms[2] - 5.0
    cz = top - 90.0
    r = np.sqrt((x / 70) ** 2 + (y / 85) ** 2 + ((z - cz) / 90) ** 2)
    neck = (np.sqrt((x / 50) ** 2 + ((y + 10) / 55) ** 2) <= 1) & (z < cz)
    data = np.where(r <= 1, 300.0, 0.0) + np.where(r <= 0.9, -100.0, 0.0)
    data = np.where(neck & (r > 1), 180.0, data)
    data = np.abs(data + rng.normal(0, 8, shape)).astype(np.float32)
    return make_image(data, affine), top


def test_truncation_clips_spikes_and_keeps_the_rest():
    img, _ = _head()
    spiked = add_spikes(img, n=20, value=1e6, seed=1)
    out, info = truncate_intensities(spiked)
    ref, ref_info = truncate_intensities(img)
    data = np.asarray(out.dataobj)
    # 20 spikes among ~100k head voxels move neither threshold
    assert info["high"] == pytest.approx(ref_info["high"], rel=1e-3)
    assert data.max() == pytest.approx(info["high"])
    assert info["max_ratio"] > 1e3 > ref_info["max_ratio"]
    # ~0.1 % of the head by construction (ties aside)
    assert 0.0005 < info["truncated_fraction"] < 0.002
    # a zero/positive background is not raised to the head's low percentile
    raw = np.asarray(spiked.dataobj)
    assert np.array_equal(data[raw < info["high"]], raw[raw < info["high"]])


def test_truncation_clips_negative_outliers_only():
    img, _ = _head()
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = -5e5
    out, info = truncate_intensities(make_image(data, img.affine))
    assert info["low"] <= 0.0
    assert float(np.asarray(out.dataobj).min()) >= info["low"] >= -1e3


def test_long_field_of_view_is_cropped_below_the_top_of_the_head():
    img, top = _head(shape=(80, 90, 150))  # 300 mm along S-I, the head top 5 mm below the edge
    out, info = crop_field_of_view(img)
    assert info["cropped_mm"] == pytest.approx(300 - 2 - 5 - FOV_KEEP_MM, abs=4)
    # world coordinates unchanged: the kept voxels are the same points in space
    first = info["slices"][0]
    assert np.allclose(out.affine @ [0, 0, 0, 1], img.affine @ [0, 0, first, 1])
    assert np.array_equal(np.asarray(out.dataobj), np.asarray(img.dataobj)[:, :, first:])
    lowest = (out.affine @ [0, 0, 0, 1])[2]
    assert top - FOV_KEEP_MM - 2.5 <= lowest <= top - FOV_KEEP_MM + 2.5
    # and back on the input grid: identical inside, the fill outside
    back = restore_grid(out, img, fill=-1.0)
    back_data = np.asarray(back.dataobj)
    assert back.shape == img.shape and np.allclose(back.affine, img.affine)
    assert np.array_equal(back_data[:, :, first:], np.asarray(img.dataobj)[:, :, first:])
    assert np.all(back_data[:, :, :first] == -1.0)
    filled = restore_grid(out, img, fill=img)
    assert np.array_equal(np.asarray(filled.dataobj), np.asarray(img.dataobj))


def test_ordinary_field_of_view_is_not_cropped():
    img, _ = _head(shape=(80, 90, 110))  # 220 mm: 33 mm of neck below the 180 mm
    out, info = crop_field_of_view(img)
    assert out is img and info["cropped_mm"] == 0.0
    assert restore_grid(out, img) is out


def test_crop_follows_world_superior_axis_whatever_the_storage_order():
    img, _ = _head(shape=(80, 90, 150))
    ref, ref_info = crop_field_of_view(img)
    # stored as PIL (S-I on the second voxel axis, top first), then conformed
    ornt = nib.orientations.axcodes2ornt("PIL")
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine), ornt)
    data = nib.orientations.apply_orientation(np.asarray(img.dataobj), transform)
    affine = img.affine @ nib.orientations.inv_ornt_aff(transform, img.shape)
    stored = nib.Nifti1Image(data, affine)
    assert nib.aff2axcodes(stored.affine) == ("P", "I", "L")
    conformed, _ = conform_t1w(stored)
    out, info = crop_field_of_view(conformed)
    assert info["cropped_mm"] == ref_info["cropped_mm"]
    assert np.allclose(out.affine, ref.affine)


def test_restore_grid_refuses_a_grid_that_is_not_a_sub_grid():
    img, _ = _head(shape=(20, 20, 20))
    moved = make_image(np.asarray(img.dataobj), img.affine @ np.diag([1.5, 1, 1, 1]))
    with pytest.raises(ValueError, match="not a sub-grid"):
        restore_grid(moved, img)


def test_prepare_reports_crop_and_outliers_in_notes():
    img, _ = _head(shape=(80, 90, 150))
    cropped, truncated, info, notes = prepare_t1w(add_spikes(img))
    assert truncated.shape == img.shape and cropped.shape[2] < img.shape[2]
    assert info["fov"]["cropped_mm"] > 0 and any("field of view" in n for n in notes)
    assert any("outliers" in n for n in notes)


def test_resample_coarser_averages_blocks_and_keeps_the_field_of_view():
    rng = np.random.default_rng(0)
    coarse = rng.normal(100, 10, (12, 14, 16)).astype(np.float32)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = [-5.0, 3.0, 7.0]
    fine = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)
    fine_aff = aff @ np.diag([0.5, 0.5, 0.5, 1.0])
    fine_aff[:3, 3] -= 0.25  # the 0.5 mm voxels tile the 1 mm ones
    out = resample_coarser(make_image(fine, fine_aff), (1.0, 1.0, 1.0))
    assert out.shape == coarse.shape
    assert np.allclose(out.affine, aff)
    assert np.allclose(np.asarray(out.dataobj), coarse, atol=1e-3)


def test_resample_coarser_non_integer_scale_keeps_a_linear_ramp():
    aff = np.diag([0.7, 0.7, 0.7, 1.0])
    i, j, k = np.indices((40, 40, 40)).astype(np.float64)
    z = 0.7 * k
    out = resample_coarser(make_image(z.astype(np.float32), aff), (1.0, 1.0, 1.0))
    assert out.shape == (28, 28, 28)
    kk = np.arange(28)
    expected = (out.affine @ np.stack([np.zeros(28), np.zeros(28), kk, np.ones(28)]))[2]
    # area averaging of point samples: within 0.1 voxel of the new centres
    assert np.abs(np.asarray(out.dataobj)[5, 5] - expected).max() < 0.1


def test_conform_resamples_sub_millimetre_voxels_only():
    rng = np.random.default_rng(1)
    data = rng.normal(100, 5, (60, 50, 40)).astype(np.float32)
    fine = nib.Nifti1Image(data, np.diag([0.5, 0.5, 1.2, 1.0]))
    out, info = conform_t1w(fine)
    zooms = np.sqrt((out.affine[:3, :3] ** 2).sum(0))
    assert np.allclose(zooms, [FINEST_MM, FINEST_MM, 1.2])
    assert out.shape == (30, 25, 40)
    assert info["resampled_zooms"] == (1.0, 1.0, 1.2)
    assert any("sub-millimetre" in n for n in info["notes"])
    kept, info = conform_t1w(nib.Nifti1Image(data, np.diag([0.9, 0.9, 1.0, 1.0])))
    assert kept.shape == data.shape and info["resampled_zooms"] is None
    same, info = conform_t1w(fine, resample=False)
    assert same.shape == data.shape


def test_extend_neck_adds_a_connected_neck_below_the_same_head():
    from ketabids.anat.brain import head_foreground

    img, _ = _head(shape=(80, 90, 100))
    out = extend_neck(img, extension_mm=110.0)
    assert out.shape[2] == img.shape[2] + 55
    # the original voxels keep their world position and values
    assert np.allclose(out.affine @ [0, 0, 55, 1], img.affine @ [0, 0, 0, 1])
    assert np.allclose(np.asarray(out.dataobj)[:, :, 55:], np.asarray(img.dataobj))
    fg = head_foreground(out)
    # one component reaching the new bottom: the neck joins the head
    assert fg[:, :, :5].any() and fg[:, :, -10:].any()
    _, info = crop_field_of_view(out)
    assert info["cropped_mm"] > 100


def test_prepare_metrics_join_the_qc_record_and_a_large_truncated_share_warns():
    from ketabids.qc.rules import assess
    from ketabids.qc.subject import prepare_metrics

    img, _ = _head(shape=(80, 90, 150))
    _, _, info, _ = prepare_t1w(add_spikes(img))
    metrics = prepare_metrics(info)
    assert metrics["fov_cropped_mm"] > 0 and metrics["intensity_max_ratio"] > 1e3
    # a long field of view and spikes are handled, not faults
    assert assess(metrics) == ("pass", [])
    # bright voxels outside the head: many more voxels truncated than the head's 0.1 %
    data = np.asarray(img.dataobj).copy()
    data[:2, :20] = 5000.0  # a bright band in the background (an artefact), ~2 % of the head
    _, _, info, _ = prepare_t1w(make_image(data, img.affine))
    verdict, reasons = assess(prepare_metrics(info))
    assert verdict == "warn" and "beyond the head's intensity range" in reasons[0]
