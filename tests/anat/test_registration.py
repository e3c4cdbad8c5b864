"""register_to_template / apply_* / Jacobian on a small synthetic template (2 mm grid)."""
import json
import os
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest

from ketabids.anat.antsutil import ants_env, make_image
from ketabids.anat.registration import (
    apply_to_native,
    apply_to_template,
    jacobian_determinant,
    register_to_template,
)
from ketabids.anat.settings import ProcessingSettings
from ketabids.templates import Template

DEFAULT, FAST = ProcessingSettings.for_mode("default"), ProcessingSettings.for_mode("fast")

SHAPE = (34, 40, 36)  # 2 mm grid: 6.8 x 8 x 7.2 cm


def _phantom(affine, shape=SHAPE):
    """A 'brain': ellipsoid with a bright core, a darker shell and an off-centre blob."""
    ijk = np.indices(shape).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)
    r = np.sqrt((xyz[0] / 26) ** 2 + (xyz[1] / 31) ** 2 + (xyz[2] / 27) ** 2)
    blob = np.sqrt(((xyz[0] - 8) / 7) ** 2 + ((xyz[1] + 10) / 6) ** 2 + ((xyz[2] - 5) / 6) ** 2)
    img = (np.where(r < 1, 600.0, 0.0) + np.where(r < 0.6, 250.0, 0.0)
           - np.where(blob < 1, 300.0, 0.0))
    from scipy import ndimage

    return ndimage.gaussian_filter(np.clip(img, 0, None), 0.7).astype(np.float32), r < 1


def _affine(spacing, origin):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def _toy_template(folder, affine, shape=SHAPE):
    """The phantom written as a brain-only 2 mm template (its mask stands for every prior)."""
    brain, mask = _phantom(affine, shape)
    paths = {}
    for key, arr in {"brain": brain, "mask": mask.astype(np.uint8)}.items():
        paths[key] = folder / f"{key}.nii.gz"
        nib.save(make_image(arr, affine), paths[key])
    return Template(name="Toy", resolution=2, t1w=paths["brain"], brain=paths["brain"],
                    mask=paths["mask"], gm=paths["mask"], wm=paths["mask"], csf=paths["mask"],
                    skull_stripped=True, source="test")


@pytest.fixture(scope="module")
def small_template(tmp_path_factory):
    return _toy_template(tmp_path_factory.mktemp("tpl"), _affine((2, 2, 2), (-33, -39, -35)))


def _subject(scale=1.08, shift=(3.0, -2.0, 1.5)):
    """The template anatomy scaled by ``scale`` and shifted, on a 1.5 mm (32, 37, 35) grid."""
    aff = _affine((1.5, 1.5, 1.5), (-25, -28, -26))
    shape = (38, 44, 40)
    inv = np.eye(4)
    inv[:3, :3] /= scale
    inv[:3, 3] = -np.asarray(shift) / scale
    # sample the analytic phantom at template-space points of each subject voxel
    img, _ = _phantom(inv @ aff, shape)
    return make_image(img, aff)


@pytest.mark.slow
def test_registration_recovers_scaling_and_maps_both_ways(small_template, tmp_path):
    subject = _subject()
    result = register_to_template(subject, small_template, processing=DEFAULT, seed=1,
                                  out_dir=tmp_path)
    assert [p.name for p in result.forward_transforms] == ["from-T1w_to-template_xfm.h5"]
    assert all(p.is_file() for p in result.forward_transforms + result.inverse_transforms)
    tpl = nib.load(small_template.brain)
    tmask = np.asarray(nib.load(small_template.mask).dataobj) > 0
    warped = apply_to_template(subject, result, tpl)
    from nilearn.image import resample_to_img

    unregistered = resample_to_img(subject, tpl, force_resample=True, copy_header=True)
    b = np.asarray(tpl.dataobj)[tmask]
    r_reg = np.corrcoef(np.asarray(warped.dataobj)[tmask], b)[0, 1]
    r_identity = np.corrcoef(np.asarray(unregistered.dataobj)[tmask], b)[0, 1]
    assert r_reg > 0.8 and r_reg > r_identity + 0.05, (r_reg, r_identity)
    # Jacobian inside the brain ~ the planted volume scaling
    jac = np.asarray(jacobian_determinant(result, tpl).dataobj)
    assert np.median(jac[tmask]) == pytest.approx(1.08**3, rel=0.05)
    # template mask carried back to the subject covers the subject's scaled ellipsoid
    back = np.asarray(apply_to_native(small_template.mask, result, subject).dataobj) >= 0.5
    subj_vol = back.sum() * 1.5**3
    assert subj_vol == pytest.approx(tmask.sum() * 8 * 1.08**3, rel=0.05)


_DETERMINISM = textwrap.dedent(
    """
    import hashlib, json, sys
    import nibabel as nib
    sys.path.insert(0, sys.argv[1])
    from test_registration import _subject
    from ketabids.templates import Template
    from ketabids.anat.registration import register_to_template
    from ketabids.anat.settings import ProcessingSettings
    tpl = Template(**json.loads(sys.argv[2]))
    res = register_to_template(_subject(), tpl, processing=ProcessingSettings.for_mode("fast"),
                               seed=7, out_dir=sys.argv[3])
    print(hashlib.sha256(res.warped.get_fdata().tobytes()).hexdigest())
    """
)


@pytest.mark.slow
def test_seeded_single_thread_runs_are_bit_identical(small_template, tmp_path):
    """Threads are fixed per process, so each run is a fresh process with 1 ITK thread."""
    fields = {k: str(v) if hasattr(v, "is_file") else v
              for k, v in small_template.__dict__.items()}
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
    here = os.path.dirname(__file__)
    hashes = []
    for run in range(2):
        out = subprocess.run(
            [sys.executable, "-c", _DETERMINISM, here, json.dumps(fields),
             str(tmp_path / str(run))],
            env=env, capture_output=True, text=True, check=True,
        )
        hashes.append(out.stdout.strip().splitlines()[-1])
    assert hashes[0] == hashes[1]


def test_ants_env_restores_environment():
    import ants

    before = {k: os.environ.get(k)
              for k in ("ANTS_RANDOM_SEED", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")}
    seed_before = ants.config._random_seed
    with pytest.raises(RuntimeError):
        with ants_env(seed=5, omp_nthreads=3):
            assert os.environ["ANTS_RANDOM_SEED"] == "5"
            assert os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "3"
            assert ants.config._random_seed == 5
            raise RuntimeError("boom")
    assert {k: os.environ.get(k) for k in before} == before
    assert ants.config._random_seed == seed_before


def test_unknown_mode_is_a_usage_error():
    from ketabids.errors import UsageError

    with pytest.raises(UsageError, match="mode 'slow'"):
        ProcessingSettings.for_mode("slow")


def test_the_fast_mode_regularises_syn_as_the_default_mode_in_mm():
    """ANTs takes SyN's update-field smoothing as a variance in voxels^2 and its gradient step
    in voxels of each level's grid: the fast mode's coarser grid gets the default mode's
    smoothing in mm (standard deviation) and last-level travel; the head-wide N4 is the same."""
    from ketabids.anat.settings import ProcessingSettings

    d, f = ProcessingSettings.for_mode("default"), ProcessingSettings.for_mode("fast")
    assert f.registration_mm > d.registration_mm
    assert np.sqrt(f.syn_update_variance) * f.registration_mm == pytest.approx(
        np.sqrt(d.syn_update_variance) * d.registration_mm)
    travel = [s.syn_grad_step * s.registration_mm * s.reg_iterations[-1] for s in (d, f)]
    assert travel[1] == pytest.approx(travel[0], rel=0.01)
    assert f.n4_grid_mm == d.n4_grid_mm


@pytest.mark.parametrize("mode", ["default", "fast"])
def test_syn_runs_with_the_modes_step_variance_and_convergence(small_template, tmp_path,
                                                               monkeypatch, mode):
    from ketabids.anat import registration

    seen = []
    real = registration.syn_arguments

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(registration, "syn_arguments", spy)
    settings = ProcessingSettings.for_mode(mode)
    result = register_to_template(_subject(), small_template, processing=settings, seed=1,
                                  out_dir=tmp_path)
    (args,) = seen
    syn = args[len(args) - 1 - args[::-1].index("--transform"):]  # the last stage's arguments
    assert syn[1] == (f"SyN[{settings.syn_grad_step:f},{settings.syn_update_variance:f},"
                      "0.000000]")
    threshold, window = settings.syn_convergence
    its = "x".join(str(i) for i in settings.reg_iterations)
    assert syn[syn.index("--convergence") + 1] == f"[{its},{threshold:g},{window}]"
    assert result.info["settings"]["syn_update_variance"] == settings.syn_update_variance
    assert result.info["settings"]["syn_convergence"] == settings.syn_convergence


def test_syn_with_antspyx_convergence_is_antspyx_registration(small_template, tmp_path):
    """With antspyx's own convergence test (1e-7, 8), the direct antsRegistration call gives
    the transforms of ``ants.registration(type_of_transform="SyN")`` with the same settings
    and seed (one ITK thread): the command line differs from antspyx's only where it says."""
    from dataclasses import replace

    import ants

    from ketabids.anat.antsutil import to_ants
    from ketabids.anat.registration import run_syn, template_on_grid

    settings = replace(ProcessingSettings.for_mode("fast"), syn_convergence=(1e-7, 8))
    with ants_env(seed=3, omp_nthreads=1):
        fixed = template_on_grid(small_template.brain, settings.registration_mm)
        moving = to_ants(_subject())
        ours = run_syn(fixed, moving, settings, initial_transform=None,
                       outprefix=str(tmp_path / "ours_"))
        theirs = ants.registration(
            fixed, moving, type_of_transform="SyN", outprefix=str(tmp_path / "theirs_"),
            reg_iterations=settings.reg_iterations, grad_step=settings.syn_grad_step,
            flow_sigma=settings.syn_update_variance, write_composite_transform=True)
        warped = [ants.apply_transforms(fixed, moving, [out["fwdtransforms"]]).numpy()
                  for out in (ours, theirs)]
    assert np.ptp(warped[0]) > 0
    np.testing.assert_array_equal(warped[0], warped[1])
    np.testing.assert_array_equal(ours["warpedmovout"].numpy(), theirs["warpedmovout"].numpy())


def test_seed_zero_reaches_ants_as_a_real_seed():
    """ANTs treats --random-seed 0 / ANTS_RANDOM_SEED=0 as "unseeded" (clock): 0 is remapped."""
    import ants

    from ketabids.anat.antsutil import ants_env, ants_seed

    assert ants_seed(0) != 0 and ants_seed(7) == 7
    with ants_env(seed=0):
        assert os.environ["ANTS_RANDOM_SEED"] != "0" and ants.config._random_seed != 0




def test_template_on_grid_is_cached_exactly_and_reused(small_template, tmp_path, monkeypatch):
    """The resampled template is written to the derived-file cache once, read back identical to
    a direct resampling (voxels and geometry), reused without resampling, recomputed when the
    entry is unreadable, and keyed on the source file (a changed template gets a new entry)."""
    import ants

    from ketabids.anat.antsutil import to_ants
    from ketabids.anat.registration import cache_template_grids, template_on_grid
    from ketabids.templates import derived_file

    monkeypatch.setenv("KETABIDS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "tpl_T1w.nii.gz"
    src.write_bytes(small_template.brain.read_bytes())
    with ants_env(None, 1):
        direct = ants.resample_image(to_ants(nib.load(src)), (3.0,) * 3, use_voxels=False,
                                     interp_type=0)
        first = template_on_grid(src, 3.0)
    entry = derived_file(src, "grid-3mm_interp-linear")
    assert entry.is_file() and entry.is_relative_to(tmp_path / "cache")

    def same(a, b):
        return (np.array_equal(a.numpy(), b.numpy()) and a.origin == b.origin
                and a.spacing == b.spacing and np.array_equal(a.direction, b.direction))

    real_resample = ants.resample_image

    def no_resampling(*args, **kwargs):
        raise AssertionError("resampled although cached")

    monkeypatch.setattr(ants, "resample_image", no_resampling)
    with ants_env(None, 1):
        again = template_on_grid(src, 3.0)
    assert same(first, direct) and same(again, direct)

    entry.write_bytes(b"not a nifti")  # unreadable entry: computed again and rewritten
    monkeypatch.setattr(ants, "resample_image", real_resample)
    with ants_env(None, 1):
        assert same(template_on_grid(src, 3.0), direct)
    assert nib.load(entry).shape == tuple(direct.shape)

    os.utime(src, ns=(1, 1))  # the template file changed: another entry
    assert derived_file(src, "grid-3mm_interp-linear") != entry
    # the container's build step: both maps on every mode's registration grid; this template is
    # at 2 mm, the default mode's grid, so only the fast mode's 2.5 mm maps need files
    cached = cache_template_grids(small_template)
    assert sorted(p.name.split("_")[1] for p in cached) == ["grid-2.5mm", "grid-2.5mm"]


def test_to_ants_same_voxels_whatever_the_memory_order():
    """to_ants hands ANTs Fortran-ordered data (no transposing copy); C-ordered, Fortran-ordered
    and strided inputs give the same ANTs image, and to_nib gives the voxels back."""
    from ketabids.anat.antsutil import to_ants, to_nib

    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 9, 11)).astype(np.float32)
    aff = _affine((1.0, 1.5, 2.0), (-3, 4, 5))
    with ants_env(None, 1):
        images = [to_ants(make_image(arr, aff)) for arr in
                  (np.ascontiguousarray(data), np.asfortranarray(data),
                   np.ascontiguousarray(data[:, :, ::-1])[:, :, ::-1], data.astype(np.float64))]
    for img in images:
        assert img.shape == data.shape and img.spacing == (1.0, 1.5, 2.0)
        assert np.array_equal(img.numpy(), data)
        back = to_nib(img)
        assert np.array_equal(np.asarray(back.dataobj), data) and np.allclose(back.affine, aff)


def test_affine_determinant_reads_the_linear_part(tmp_path):
    """Known answer: a written ANTs affine with a planted matrix (shear and translation
    included) reads back with that matrix's determinant."""
    import ants

    from ketabids.anat.registration import affine_determinant

    matrix = np.array([[1.10, 0.05, 0.00], [0.02, 0.90, 0.10], [0.00, -0.03, 1.20]])
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    matrix=matrix, translation=(4.0, -2.0, 7.0))
    path = tmp_path / "affine.mat"
    ants.write_transform(tx, str(path))
    assert affine_determinant(path) == pytest.approx(np.linalg.det(matrix), rel=1e-6)


def _replace_affine_candidate(monkeypatch, planted: str, scale: float) -> None:
    """Make the ``planted`` affine candidate ("whole" or "masked") of
    :func:`register_to_template` a pure ``scale`` x scaling (its stage still runs)."""
    import ants

    real = ants.registration

    def spy(fixed, moving, type_of_transform="SyN", outprefix="", **kwargs):
        out = real(fixed, moving, type_of_transform=type_of_transform, outprefix=outprefix,
                   **kwargs)
        if type_of_transform == "Affine" and f"affine-{planted}_" in outprefix:
            scaled = ants.create_ants_transform(transform_type="AffineTransform",
                                                dimension=3, matrix=np.eye(3) * scale)
            ants.write_transform(scaled, out["fwdtransforms"][-1])
        return out

    monkeypatch.setattr(ants, "registration", spy)


@pytest.mark.parametrize("planted", ["whole", "masked"])
def test_affine_candidates_keep_the_smaller_scaling(small_template, tmp_path, monkeypatch,
                                                    planted):
    """With ``affine_moving_mask`` the affine stage runs on the whole subject and on the
    masked one; the candidate that scales the template less is the one SyN starts from.
    One candidate's result is replaced by a 1.5x scaling (a template brain stretched over the
    head): the other is kept, whichever it is, and the registration still recovers the planted
    1.08 scaling."""

    from ketabids.anat import registration
    from ketabids.anat.registration import affine_determinant

    seen = {}
    _replace_affine_candidate(monkeypatch, planted, 1.5)
    real_syn = registration.run_syn

    def syn_spy(*args, **kwargs):
        seen["start"] = affine_determinant(kwargs["initial_transform"][-1])
        return real_syn(*args, **kwargs)

    monkeypatch.setattr(registration, "run_syn", syn_spy)
    subject = _subject()
    inside = make_image(np.ones(subject.shape, np.uint8), subject.affine)
    result = register_to_template(subject, small_template, processing=DEFAULT, seed=1,
                                  affine_moving_mask=inside, out_dir=tmp_path)
    candidates = result.info["affine_candidates"]
    assert candidates["kept"] == {"whole": "masked", "masked": "whole"}[planted]
    assert candidates["determinants"][planted] == pytest.approx(1.5 ** 3, rel=1e-4)
    assert seen["start"] == pytest.approx(1.08 ** 3, rel=0.1)
    # the affine files are folded into the composites and removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from-T1w_to-template_xfm.h5",
                                                          "from-template_to-T1w_xfm.h5"]
    tpl = nib.load(small_template.brain)
    tmask = np.asarray(nib.load(small_template.mask).dataobj) > 0
    jac = np.asarray(jacobian_determinant(result, tpl).dataobj)
    assert np.median(jac[tmask]) == pytest.approx(1.08 ** 3, rel=0.05)


@pytest.mark.parametrize("planted", ["whole", "masked"])
def test_affine_candidate_that_does_not_fit_is_not_kept(small_template, tmp_path, monkeypatch,
                                                       planted):
    """One candidate's result is replaced by a 0.6x scaling (a shrunken template brain, the
    smaller determinant): its fit with the template brain is far below the other's, so the
    other is kept and the registration still recovers the planted 1.08 scaling."""
    from ketabids.anat.registration import AFFINE_FIT_MARGIN

    _replace_affine_candidate(monkeypatch, planted, 0.6)
    subject = _subject()
    inside = make_image(np.ones(subject.shape, np.uint8), subject.affine)
    result = register_to_template(subject, small_template, processing=DEFAULT, seed=1,
                                  affine_moving_mask=inside, out_dir=tmp_path)
    candidates = result.info["affine_candidates"]
    other = {"whole": "masked", "masked": "whole"}[planted]
    assert candidates["determinants"][planted] == pytest.approx(0.6 ** 3, rel=1e-4)
    assert candidates["determinants"][planted] < candidates["determinants"][other]
    assert candidates["correlations"][planted] < (candidates["correlations"][other]
                                                  - AFFINE_FIT_MARGIN)
    assert candidates["kept"] == other
    tpl = nib.load(small_template.brain)
    tmask = np.asarray(nib.load(small_template.mask).dataobj) > 0
    jac = np.asarray(jacobian_determinant(result, tpl).dataobj)
    assert np.median(jac[tmask]) == pytest.approx(1.08 ** 3, rel=0.05)


@pytest.mark.parametrize(("dets", "fits", "kept"), [
    ((0.65, 0.64), (0.85, 0.84), 1),     # both fit: the smaller scaling
    ((0.64, 0.65), (0.84, 0.85), 0),
    ((0.65, 0.59), (0.84, -0.08), 0),    # the smaller one does not fit
    ((0.59, 0.65), (-0.08, 0.84), 1),
    ((0.65, 0.59), (0.84, 0.76), 1),     # within the margin: the smaller scaling
    ((0.65, 0.59), (0.84, float("nan")), 0),
])
def test_pick_affine_candidate(dets, fits, kept):
    from ketabids.anat.registration import pick_affine_candidate

    assert pick_affine_candidate(dets, fits) == kept


@pytest.mark.slow
def test_masked_registration_runs_on_the_cropped_template_and_covers_the_full_grid(tmp_path):
    """With a metric mask the template is cropped to the mask's box (+ margin); the warp fades
    to zero inside the margin, so on the full template grid the Jacobian outside the box is the
    affine part alone (constant) and inside the brain it recovers the planted scaling."""
    import ants

    from ketabids.anat.antsutil import bounding_box
    from ketabids.anat.registration import CROP_MARGIN_VOX

    shape = (56, 62, 58)  # the toy brain padded by ~1 cm of empty template on each side
    folder = tmp_path / "tpl"
    folder.mkdir()
    tpl = _toy_template(folder, _affine((2, 2, 2), (-55, -61, -57)), shape)
    brain = nib.load(tpl.brain)
    mask = np.asarray(nib.load(tpl.mask).dataobj) > 0
    with ants_env(None, 1):
        dilated = ants.iMath(ants.image_read(str(tpl.mask)), "MD", 2)
    result = register_to_template(_subject(), tpl, processing=FAST, mask=dilated, seed=3,
                                  out_dir=tmp_path / "reg")
    box = bounding_box(dilated.numpy() > 0, CROP_MARGIN_VOX)
    # the fast mode's 2.5 mm grid: the cropped grid is smaller than the template's
    assert result.info["masked_metric"]
    assert np.prod(result.info["fixed_shape"]) < 0.6 * np.prod([s * 2 / 2.5 for s in shape])
    jac = np.asarray(jacobian_determinant(result, brain).dataobj)
    outside = np.zeros(shape, bool)
    outside[2:-2, 2:-2, 2:-2] = True  # ITK's finite differences at the grid border
    outside[tuple(slice(max(0, b.start - 3), b.stop + 3) for b in box)] = False
    assert outside.sum() > 0.2 * outside.size
    affine_part = np.median(jac[outside])
    assert affine_part == pytest.approx(1.08**3, rel=0.05)
    np.testing.assert_allclose(jac[outside], affine_part, rtol=1e-3)
    assert np.median(jac[mask]) == pytest.approx(1.08**3, rel=0.05)


def test_pad_background_keeps_world_coordinates():
    """The padded image holds the original voxels at the same world points (oblique axes,
    anisotropic voxels) and the image minimum around them, at least ``mm`` wide."""
    import ants

    from ketabids.anat.registration import pad_background

    rng = np.random.default_rng(0)
    data = rng.uniform(-3.0, 5.0, (6, 7, 8)).astype(np.float32)
    direction = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    with ants_env(None, 1):
        img = ants.from_numpy(data, origin=(4.0, -2.0, 7.0), spacing=(1.0, 2.0, 3.0),
                              direction=direction)
        out = pad_background(img, 5.0)
        width = (5, 3, 2)  # ceil(5 mm / spacing)
        assert out.shape == tuple(n + 2 * w for n, w in zip(data.shape, width))
        inner = tuple(slice(w, w + n) for w, n in zip(width, data.shape))
        np.testing.assert_array_equal(out.numpy()[inner], data)
        frame = np.ones(out.shape, bool)
        frame[inner] = False
        assert np.all(out.numpy()[frame] == data.min())
        np.testing.assert_allclose(ants.transform_index_to_physical_point(out, width),
                                   ants.transform_index_to_physical_point(img, (0, 0, 0)))


@pytest.mark.slow
def test_a_cut_field_of_view_registers_alike_whether_the_grid_stops_or_is_zero_filled(
        small_template, tmp_path, monkeypatch):
    """The same subject cut below its lowest 6 slices, once on a grid that stops at the cut and
    once zero-filled below it (what resampling a cut scan to another grid gives): the template
    mask carried back covers the same volume. Without the background pad (``PAD_MM=None``) ITK
    drops the template points mapped beyond the first grid but scores them as dark on the
    second: 33449 vs 30481 voxels (-9 %) measured; with it 30275 vs 30340."""
    from ketabids.anat import registration

    subject = _subject()
    data = np.asarray(subject.dataobj, np.float32).copy()
    k = 6
    data[:, :, :k] = 0.0
    filled = make_image(data, subject.affine)
    aff = subject.affine.copy()
    aff[:3, 3] += aff[:3, :3] @ np.array([0, 0, k])
    cut = make_image(data[:, :, k:], aff)

    def carried_back_mask(pad):
        monkeypatch.setattr(registration, "PAD_MM", pad)
        out = []
        for name, img in (("cut", cut), ("filled", filled)):
            result = register_to_template(img, small_template, processing=DEFAULT, seed=1,
                                          out_dir=tmp_path / f"{name}-{pad}")
            m = apply_to_native(small_template.mask, result, filled)
            out.append(int((np.asarray(m.dataobj) >= 0.5).sum()))
        return out

    cut_vox, filled_vox = carried_back_mask(registration.PAD_MM)
    assert filled_vox == pytest.approx(cut_vox, rel=0.01)
    cut_vox, filled_vox = carried_back_mask(None)  # the failure the pad prevents
    assert abs(filled_vox / cut_vox - 1) > 0.04


def test_affine_moving_mask_needs_the_affine_stage(small_template, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mask = make_image(np.ones((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="affine_moving_mask"):
        register_to_template(_subject(), small_template, type_of_transform="SyNOnly",
                             affine_moving_mask=mask)
    assert not any(tmp_path.iterdir())  # refused before any folder was made


def test_import_ants_defers_the_helpers_ketabids_never_calls():
    """``import_ants`` (a fresh process: ``ants`` not yet imported) loads neither statsmodels
    nor scikit-learn, and the deferred names still work: ``ants.quantile`` (statsmodels, then
    ``ANTsImage.quantile`` too), ``ants.plot``, ``ants.learn``, ``ants.math.quantile``."""
    code = textwrap.dedent("""
        import json, sys
        import numpy as np
        from ketabids.anat.antsutil import import_ants
        ants = import_ants()
        before = {m: m in sys.modules for m in ("statsmodels", "sklearn", "ants.plotting")}
        img = ants.from_numpy(np.arange(1000, dtype="float32").reshape(10, 10, 10))
        q = float(ants.quantile(img, 0.5))
        print(json.dumps({"before": before, "q": q, "method": float(img.quantile(0.5)),
                          "math": callable(ants.math.quantile), "plot": callable(ants.plot),
                          "learn": ants.learn.__name__, "same": import_ants() is ants}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ))
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == {"statsmodels": False, "sklearn": False, "ants.plotting": False}
    assert got["q"] == pytest.approx(499.5, abs=0.6) and got["method"] == got["q"]
    assert got["math"] and got["plot"] and got["learn"] == "ants.learn" and got["same"]
