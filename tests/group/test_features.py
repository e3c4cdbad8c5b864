"""Features: smoothing/resampling equivalences, map discovery through pybids, consistency
checks."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ketabids.errors import BadDataError, NoDataError
from ketabids.group import features as feat

TPL = "MNI152NLin2009aSym"


def write_derivatives(root, subjects, *, shape=(7, 8, 9), zooms=1.0, sessions=None,
                      meta=None, seed=0):
    """A tiny derivative dataset: one modulated GM map (+ sidecar, volumes TSV) per subject."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "t", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "ketabids"}]}))
    affine = np.diag([zooms, zooms, zooms, 1.0])
    for subject in subjects:
        for session in sessions or [None]:
            folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            data = rng.uniform(0.2, 0.8, size=shape).astype(np.float32)
            nib.save(nib.Nifti1Image(data, affine),
                     folder / f"{prefix}_space-{TPL}_label-GM_desc-modulated_probseg.nii.gz")
            side = {"Template": TPL, "Resolution": zooms, "Modulation": "jacobian",
                    "SoftwareVersion": "0.1.0"}
            side.update((meta or {}).get(subject, {}))
            (folder / f"{prefix}_space-{TPL}_label-GM_desc-modulated_probseg.json").write_text(
                json.dumps(side))
            (folder / f"{prefix}_desc-volumes_morph.tsv").write_text(
                "tiv_ml\tgm_ml\twm_ml\tcsf_ml\n1400\t700\t500\t200\n")
    return root


def test_separable_fast_path_equals_full_smoothing(rng):
    data = rng.random((21, 24, 27)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-10, -12, -13]
    out = feat.smooth_resample(data, affine, fwhm=6.0, resolution=2.0)
    sigma = 6.0 * feat.FWHM_TO_SIGMA
    reference = ndimage.gaussian_filter(data, sigma, mode="constant")[::2, ::2, ::2]
    assert out.shape == (11, 12, 14) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)
    shape, grid, step = feat.analysis_grid(data.shape, affine, 2.0)
    assert step == 2 and np.allclose(grid[:3, 3], affine[:3, 3])  # same first voxel centre


def test_general_path_matches_nilearn(rng):
    """Non-integer ratio (1 mm -> 1.5 mm): smoothing + trilinear = nilearn's smooth + resample."""
    from nilearn.image import resample_img, smooth_img

    data = np.zeros((30, 32, 34), np.float32)
    data[8:22, 8:24, 8:26] = rng.random((14, 16, 18))  # zero border: boundary modes agree
    img = nib.Nifti1Image(data, np.eye(4))
    out = feat.smooth_resample(data, np.eye(4), fwhm=4.0, resolution=1.5)
    shape, target, step = feat.analysis_grid(data.shape, np.eye(4), 1.5)
    assert step is None
    ref = resample_img(smooth_img(img, 4.0), target_affine=target, target_shape=shape,
                       interpolation="linear", force_resample=True, copy_header=True)
    np.testing.assert_allclose(out, ref.get_fdata(), atol=1e-4)


def test_no_smoothing_identity_grid(rng):
    data = rng.random((7, 8, 9)).astype(np.float32)
    out = feat.smooth_resample(data, np.diag([2.0, 2, 2, 1]), fwhm=0.0, resolution=2.0)
    np.testing.assert_array_equal(out, data)


def test_find_maps_sessions_and_missing(tmp_path):
    root = write_derivatives(tmp_path / "out", ["01", "02"], sessions=["a", "b"])
    with pytest.raises(BadDataError, match="several modulated GM maps for sub-01.*--session"):
        feat.find_maps(root, template=TPL)
    maps, excluded = feat.find_maps(root, template=TPL, sessions=["ses-a"],
                                    subjects=["01", "02", "03"])
    assert sorted(maps) == ["01", "02"] and maps["01"].session == "a"
    assert maps["01"].volumes.name == "sub-01_ses-a_desc-volumes_morph.tsv"
    assert maps["01"].template == TPL and maps["01"].resolution == 1.0
    assert [e.participant_id for e in excluded] == ["sub-03"]


def test_find_maps_ignores_group_outputs(tmp_path):
    root = write_derivatives(tmp_path / "out", ["01"])
    write_derivatives(root / "group" / "train", ["99"])  # never a participant map
    maps, _ = feat.find_maps(root, template=TPL)
    assert list(maps) == ["01"]


@pytest.mark.parametrize("key,value,label", [
    ("Template", "MNI152NLin6Asym", "Template"),
    ("Resolution", 2.0, "Resolution"),
    ("SoftwareVersion", "0.0.9", "SoftwareVersion"),
])
def test_mixed_maps_refused_listing_odd_ones(tmp_path, key, value, label):
    root = write_derivatives(tmp_path / "out", ["01", "02", "03"], meta={"02": {key: value}})
    maps, _ = feat.find_maps(root, template=TPL)
    with pytest.raises(BadDataError, match=rf"disagree on {label}.*{value}.*sub-02"):
        feat.check_consistency(maps, template=TPL)


def test_sample_mean_mask_and_predict_grid_check(tmp_path):
    """A grid the template does not cover: mask = mean GM of all maps > threshold (no labels)."""
    root = write_derivatives(tmp_path / "out", ["01", "02", "03"], shape=(9, 10, 11))
    maps, _ = feat.find_maps(root, template=TPL)
    settings = feat.FeatureSettings(smoothing_fwhm=0.0, analysis_resolution=1.0,
                                    mask_threshold=0.5)
    f = feat.compute_features(maps, settings=settings)
    assert f.settings.mask_source == "sample-mean"
    stack = np.stack([nib.load(m.path).get_fdata() for m in maps.values()])
    np.testing.assert_array_equal(f.mask, stack.mean(axis=0) > 0.5)
    np.testing.assert_allclose(f.X, stack[:, f.mask], atol=1e-6)
    # prediction: the stored mask is reused; a different grid is refused
    again = feat.compute_features(maps, settings=settings, mask=f.mask, mask_affine=f.affine)
    np.testing.assert_array_equal(again.X, f.X)
    with pytest.raises(BadDataError, match="differs from the model"):
        feat.compute_features(maps, settings=settings, mask=f.mask[:-1],
                              mask_affine=f.affine)


def test_template_mask_on_phantom_maps(tmp_path):
    """Template-grid maps: mask = template GM prior > 0.2 on the 2 mm grid."""
    from ketabids.demo.derivatives import write_synthetic_derivatives
    from ketabids.demo.participants import make_participants_table
    from ketabids.templates import get_template

    table = make_participants_table(3, seed=3)
    write_synthetic_derivatives(None, tmp_path / "out", participants=table, seed=3)
    maps, _ = feat.find_maps(tmp_path / "out", template=TPL)
    f = feat.compute_features(maps, settings=feat.FeatureSettings(), nprocs=2)
    prior = nib.load(get_template(resolution=2).gm).get_fdata() > 0.2
    assert f.settings.mask_source == "template"
    np.testing.assert_array_equal(f.mask, prior)
    assert f.X.shape == (3, int(prior.sum())) and f.X.dtype == np.float32
    assert f.mask_hash == feat.mask_hash(prior, f.affine)


def test_unreadable_and_nonfinite_maps(tmp_path):
    root = write_derivatives(tmp_path / "out", ["01", "02"])
    maps, _ = feat.find_maps(root, template=TPL)
    bad = nib.load(maps["02"].path).get_fdata().astype(np.float32)
    bad[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), maps["02"].path)
    with pytest.raises(BadDataError, match="sub-02.*NaN"):
        feat.compute_features(maps, settings=feat.FeatureSettings(analysis_resolution=1.0))
    with pytest.raises(NoDataError):
        feat.compute_features({}, settings=feat.FeatureSettings())


def test_find_maps_with_raw_layout(tmp_path):
    """The CLI hands over BIDS_DIR's layout (no derivatives): OUTPUT_DIR is indexed instead."""
    from ketabids.bids.layout import load_layout
    from ketabids.testing import make_bids_tree

    bids = make_bids_tree(tmp_path / "bids", {"01": {"anat": ["T1w"]}, "02": {"anat": ["T1w"]}})
    root = write_derivatives(tmp_path / "out", ["01", "02"])
    maps, excluded = feat.find_maps(root, template=TPL, layout=load_layout(bids),
                                    subjects=["01", "02"])
    assert sorted(maps) == ["01", "02"] and not excluded
    with_deriv = load_layout(bids, derivatives=[root])
    maps, _ = feat.find_maps(root, template=TPL, layout=with_deriv)
    assert sorted(maps) == ["01", "02"]
