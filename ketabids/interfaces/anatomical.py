"""Thin Nipype interfaces over the participant-level pure functions.

Each interface calls one function of :mod:`ketabids.anat.conform`, :mod:`ketabids.anat.prepare`,
:mod:`ketabids.anat.brain`,
:mod:`ketabids.anat.segmentation`, :mod:`ketabids.anat.registration` or :mod:`ketabids.anat.vbm`
and writes its results into the node's working folder (``fname_presuffix(...,
newpath=runtime.cwd)``). No maths here: see the modules named above. Templates travel between nodes
as (name, resolution) and are
resolved with :func:`ketabids.templates.get_template` (cached files, no download).
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from ketabids.anat.settings import MODES, ProcessingSettings
from ketabids.io import write_json, write_tsv
from ketabids.templates import DEFAULT_TEMPLATE

TISSUES = ("GM", "WM", "CSF")


def _save(img, like: str, suffix: str, cwd: str, dtype=None, compress: bool = True) -> str:
    """Save ``img`` as ``<like stem><suffix>.nii.gz`` (``.nii`` if not ``compress``) in ``cwd``
    (mm units, optional cast).

    Uncompressed ``.nii`` is for the large intermediates of the heavy steps: the derivative
    sinks re-encode every NIfTI as ``.nii.gz``
    (:class:`ketabids.interfaces.bids.DerivativesDataSink`), so only the working directory sees it.
    Measured on a 256^3 float32 image: 0.71 s to write gzipped (level 1), 0.25 s uncompressed; each
    later read is ~0.2 s quicker too. Cost: ~64 MB
    of working directory per 256^3 image instead of ~15-25 MB."""
    out = fname_presuffix(like, suffix=suffix, newpath=cwd, use_ext=False)
    out = out.removesuffix(".nii").removesuffix(".nii.gz") + (".nii.gz" if compress else ".nii")
    if dtype is not None:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj).astype(dtype), img.affine, img.header)
        img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    nib.save(img, out)
    return out


def _load_float(path: str) -> nib.Nifti1Image:
    """``path`` as a float32 image held in memory: the pure functions read ``img.dataobj``
    several times (e.g. the head foreground and the correction in N4), and each read of a
    file-backed ``.nii.gz`` decompresses it again (~0.3 s per 256^3 image)."""
    img = nib.load(path)
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine, img.header)


def _write_json(obj, cwd: str, name: str) -> str:
    return str(write_json(Path(cwd) / name, obj, sort_keys=True))


def _template(name, resolution):
    from ketabids.templates import get_template

    return get_template(name, int(resolution))


class _TemplateInputSpec(BaseInterfaceInputSpec):
    template = traits.Str(DEFAULT_TEMPLATE, usedefault=True, desc="template name")
    template_resolution = traits.Enum(1, 2, usedefault=True, desc="template grid (mm)")
    omp_nthreads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads")


# --------------------------------------------------------------------------- conform
class _ConformInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="raw T1w image")


class _ConformOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="conformed T1w (float32, RAS+)")
    out_info = File(exists=True, desc="JSON: original orientation, zooms, notes")
    notes = traits.List(traits.Str, desc="what conforming changed")


class Conform(SimpleInterface):
    """Conform a T1w image (:func:`ketabids.anat.conform.conform_t1w`)."""

    input_spec = _ConformInputSpec
    output_spec = _ConformOutputSpec

    def _run_interface(self, runtime):
        from ketabids.anat.conform import conform_t1w

        img, info = conform_t1w(self.inputs.in_file)
        self._results["out_file"] = _save(img, self.inputs.in_file, "_conformed", runtime.cwd,
                                          dtype="float32")
        self._results["out_info"] = _write_json(info, runtime.cwd, "conform_info.json")
        self._results["notes"] = [str(n) for n in info.get("notes", [])]
        return runtime


# --------------------------------------------------------------------------- prepare
class _PrepareInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="conformed T1w")
    notes = traits.List(traits.Str, desc="notes so far (conform's)")


class _PrepareOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="truncated T1w, long inferior field of view cropped: "
                    "what every later step processes")
    out_reference = File(exists=True, desc="truncated T1w on the conformed grid (the grid of "
                         "the native outputs)")
    out_info = File(exists=True, desc="JSON: truncation thresholds and share, field-of-view crop")
    notes = traits.List(traits.Str, desc="the notes given, then what this step changed")


class PrepareT1w(SimpleInterface):
    """Intensity truncation and field-of-view crop (:func:`ketabids.anat.prepare.prepare_t1w`)."""

    input_spec = _PrepareInputSpec
    output_spec = _PrepareOutputSpec

    def _run_interface(self, runtime):
        from ketabids.anat.prepare import prepare_t1w

        cropped, truncated, info, notes = prepare_t1w(_load_float(self.inputs.in_file))
        out = _save(truncated, self.inputs.in_file, "_trunc", runtime.cwd, dtype="float32",
                    compress=False)
        self._results["out_reference"] = out
        if info["fov"]["cropped_mm"] > 0:
            out = _save(cropped, self.inputs.in_file, "_fov", runtime.cwd, dtype="float32",
                        compress=False)
        self._results["out_file"] = out
        self._results["out_info"] = _write_json(info, runtime.cwd, "prepare_info.json")
        given = list(self.inputs.notes) if isdefined(self.inputs.notes) else []
        self._results["notes"] = given + [str(n) for n in notes]
        return runtime


class _RestoreGridInputSpec(BaseInterfaceInputSpec):
    reference = File(exists=True, mandatory=True,
                     desc="image on the output grid; its values fill ``t1w`` outside the crop")
    t1w = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    bias = File(exists=True, mandatory=True, desc="bias field (1 outside the crop)")
    mask = File(exists=True, mandatory=True, desc="brain mask (0 outside)")
    dseg = File(exists=True, mandatory=True, desc="labels (0 outside)")
    tpms = InputMultiObject(File(exists=True), mandatory=True, desc="GM, WM, CSF (0 outside)")


class _RestoreGridOutputSpec(TraitedSpec):
    t1w = File(exists=True)
    bias = File(exists=True)
    mask = File(exists=True)
    dseg = File(exists=True)
    tpms = OutputMultiObject(File(exists=True))


class RestoreGrid(SimpleInterface):
    """Native results computed on a cropped field of view, put back on the conformed grid
    (:func:`ketabids.anat.prepare.restore_grid`); files on that grid already pass unchanged."""

    input_spec = _RestoreGridInputSpec
    output_spec = _RestoreGridOutputSpec

    def _run_interface(self, runtime):
        from ketabids.anat.prepare import restore_grid

        ref = nib.load(self.inputs.reference)

        def put(path, fill, dtype):
            img = nib.load(path)
            if img.shape[:3] == ref.shape[:3] and np.allclose(img.affine, ref.affine, atol=1e-4):
                return path
            fill_img = _load_float(self.inputs.reference) if fill == "reference" else fill
            out = restore_grid(img, ref, fill=fill_img, dtype=dtype)
            return _save(out, path, "_grid", runtime.cwd, dtype=dtype,
                         compress=dtype == "uint8")

        self._results["t1w"] = put(self.inputs.t1w, "reference", "float32")
        self._results["bias"] = put(self.inputs.bias, 1.0, "float32")
        self._results["mask"] = put(self.inputs.mask, 0, "uint8")
        self._results["dseg"] = put(self.inputs.dseg, 0, "uint8")
        self._results["tpms"] = [put(f, 0.0, "float32") for f in self.inputs.tpms]
        return runtime


# --------------------------------------------------------------------------- N4
class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="T1w image")
    in_mask = File(exists=True, desc="optional mask")
    shrink = traits.Either(None, traits.Int, default=None, usedefault=True,
                           desc="shrink factor (default: automatic, from grid_mm)")
    grid_mm = traits.Float(ProcessingSettings.for_mode("default").n4_grid_mm, usedefault=True,
                           desc="spacing of the fitting grid (mm)")
    in_weights = InputMultiObject(File(exists=True),
                                  desc="images summed into N4's weight (e.g. GM and WM priors)")
    spline_mm = traits.Either(None, traits.Float, default=None, usedefault=True,
                              desc="B-spline distance of the first level (None: one span)")
    iterations = traits.List(traits.Int, [50, 50, 30], usedefault=True,
                             desc="iterations per fitting level")
    omp_nthreads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads")


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="bias-corrected image")
    bias_field = File(exists=True, desc="estimated bias field")


class N4BiasCorrect(SimpleInterface):
    """N4 bias-field correction (:func:`ketabids.anat.brain.n4_bias_correct`)."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        from ketabids.anat.brain import n4_bias_correct

        img = _load_float(self.inputs.in_file)
        mask = nib.load(self.inputs.in_mask) if isdefined(self.inputs.in_mask) else None
        weight = None
        if isdefined(self.inputs.in_weights) and self.inputs.in_weights:
            total = sum(np.asarray(nib.load(f).dataobj, np.float32)
                        for f in self.inputs.in_weights)
            weight = nib.Nifti1Image(total, img.affine)
        corrected, bias = n4_bias_correct(img, mask, weight=weight, shrink=self.inputs.shrink,
                                          grid_mm=self.inputs.grid_mm,
                                          spline_mm=self.inputs.spline_mm,
                                          iterations=tuple(self.inputs.iterations),
                                          omp_nthreads=self.inputs.omp_nthreads)
        self._results["out_file"] = _save(corrected, self.inputs.in_file, "_n4", runtime.cwd,
                                          dtype="float32", compress=False)
        self._results["bias_field"] = _save(bias, self.inputs.in_file, "_bias", runtime.cwd,
                                            dtype="float32", compress=False)
        return runtime


# --------------------------------------------------------------------------- brain extraction
class _ExtractBrainInputSpec(_TemplateInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    mode = traits.Enum(*MODES, usedefault=True,
                       desc="processing mode (ketabids.anat.settings.ProcessingSettings)")
    seed = traits.Either(None, traits.Int, default=None, usedefault=True, desc="random seed")


class _RegistrationOutputSpec(TraitedSpec):
    forward_transforms = OutputMultiObject(File(exists=True), desc="T1w -> template, ANTs order")
    inverse_transforms = OutputMultiObject(File(exists=True), desc="template -> T1w, ANTs order")
    composite_transform = File(exists=True, desc="T1w -> template composite (.h5)")
    inverse_composite_transform = File(exists=True, desc="template -> T1w composite (.h5)")


class _ExtractBrainOutputSpec(_RegistrationOutputSpec):
    out_mask = File(exists=True, desc="brain mask (uint8)")
    skull_stripped = traits.Bool(desc="the input was already skull-stripped")
    out_info = File(exists=True, desc="JSON info")


def _registration_outputs(results, reg):
    fwd = [str(p) for p in reg.forward_transforms]
    inv = [str(p) for p in reg.inverse_transforms]
    results["forward_transforms"] = fwd
    results["inverse_transforms"] = inv
    # the first transform of each list is the ANTs composite (.h5) holding them all
    results["composite_transform"] = fwd[0]
    results["inverse_composite_transform"] = inv[0]


class ExtractBrain(SimpleInterface):
    """Brain extraction by affine + SyN registration to the template
    (:func:`ketabids.anat.brain.extract_brain`); the registration is kept as the normalisation."""

    input_spec = _ExtractBrainInputSpec
    output_spec = _ExtractBrainOutputSpec

    def _run_interface(self, runtime):
        from ketabids.anat.brain import extract_brain

        img = _load_float(self.inputs.in_file)
        tpl = _template(self.inputs.template, self.inputs.template_resolution)
        mask, info, reg = extract_brain(img, tpl,
                                        processing=ProcessingSettings.for_mode(self.inputs.mode),
                                        seed=self.inputs.seed,
                                        omp_nthreads=self.inputs.omp_nthreads,
                                        out_dir=runtime.cwd)
        self._results["out_mask"] = _save(mask, self.inputs.in_file, "_mask", runtime.cwd,
                                          dtype="uint8")
        self._results["skull_stripped"] = bool(info.get("skull_stripped_input", False))
        self._results["out_info"] = _write_json(info, runtime.cwd, "brain_info.json")
        _registration_outputs(self._results, reg)
        return runtime


# --------------------------------------------------------------------------- transforms
def _registration_result(forward, inverse):
    """Rebuild a :class:`ketabids.anat.registration.RegistrationResult` from stored paths (the
    transforms are all that the warps need)."""
    from ketabids.anat.registration import RegistrationResult

    return RegistrationResult([Path(p) for p in forward], [Path(p) for p in inverse], None, {})


class _TransformInputSpec(_TemplateInputSpec):
    forward_transforms = InputMultiObject(File(exists=True), mandatory=True)
    inverse_transforms = InputMultiObject(File(exists=True), mandatory=True)


def _result_from_inputs(inputs):
    return _registration_result(inputs.forward_transforms, inputs.inverse_transforms)


# --------------------------------------------------------------------------- warps
class _ApplyToTemplateInputSpec(_TransformInputSpec):
    in_file = File(exists=True, mandatory=True, desc="native-space image")
    interpolation = traits.Str("linear", usedefault=True)


class _ApplyOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ApplyToTemplate(SimpleInterface):
    """Resample a native image onto the template grid
    (:func:`ketabids.anat.registration.apply_to_template`)."""

    input_spec = _ApplyToTemplateInputSpec
    output_spec = _ApplyOutputSpec

    def _run_interface(self, runtime):
        from ketabids.anat.registration import apply_to_template

        tpl = _template(self.inputs.template, self.inputs.template_resolution)
        img = nib.load(self.inputs.in_file)
        out = apply_to_template(img, _result_from_inputs(self.inputs), tpl.brain,
                                interpolation=self.inputs.interpolation,
                                omp_nthreads=self.inputs.omp_nthreads)
        self._results["out_file"] = _save(out, self.inputs.in_file, "_std", runtime.cwd,
                                          dtype="float32", compress=False)
        return runtime


class _WarpPriorsInputSpec(_TransformInputSpec):
    reference = File(exists=True, mandatory=True, desc="native T1w (target grid)")
    in_mask = File(exists=True, desc="brain mask: priors computed on its bounding box (+4 "
                   "voxels) only, 0 elsewhere (the segmentation uses the box + 2)")


class _WarpPriorsOutputSpec(TraitedSpec):
    gm = File(exists=True)
    wm = File(exists=True)
    csf = File(exists=True)
    priors = OutputMultiObject(File(exists=True), desc="GM, WM, CSF (SegmentTissues order)")


class WarpPriors(SimpleInterface):
    """Template GM/WM/CSF priors into T1w space
    (:func:`ketabids.anat.registration.apply_to_native`)."""

    input_spec = _WarpPriorsInputSpec
    output_spec = _WarpPriorsOutputSpec

    def _run_interface(self, runtime):
        from ketabids.anat.registration import apply_to_native

        tpl = _template(self.inputs.template, self.inputs.template_resolution)
        ref = nib.load(self.inputs.reference)
        result = _result_from_inputs(self.inputs)
        within = None
        if isdefined(self.inputs.in_mask):
            within = np.asarray(nib.load(self.inputs.in_mask).dataobj) > 0
        # the segmentation clips the priors to [0, 1] itself
        for tissue in TISSUES:
            out = apply_to_native(getattr(tpl, tissue.lower()), result, ref,
                                  omp_nthreads=self.inputs.omp_nthreads, within=within)
            self._results[tissue.lower()] = _save(out, self.inputs.reference, f"_prior{tissue}",
                                                  runtime.cwd, dtype="float32", compress=False)
        self._results["priors"] = [self._results[t.lower()] for t in TISSUES]
        return runtime


# --------------------------------------------------------------------------- segmentation
class _SegmentInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    in_mask = File(exists=True, mandatory=True, desc="brain mask")
    priors = InputMultiObject(File(exists=True), mandatory=True, desc="GM, WM, CSF priors")


class _SegmentOutputSpec(TraitedSpec):
    gm = File(exists=True)
    wm = File(exists=True)
    csf = File(exists=True)
    probsegs = OutputMultiObject(File(exists=True), desc="GM, WM, CSF")
    dseg = File(exists=True, desc="labels 1=GM 2=WM 3=CSF (sMRIPrep order)")
    out_info = File(exists=True, desc="JSON: fitted tissue means, shared SD, EM iterations")


class SegmentTissues(SimpleInterface):
    """Prior-guided partial-volume tissue segmentation
    (:func:`ketabids.anat.segmentation.segment_tissues`)."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        from ketabids.anat.segmentation import segment_tissues

        img = nib.load(self.inputs.in_file)
        mask = nib.load(self.inputs.in_mask)
        priors = {t: nib.load(p) for t, p in zip(TISSUES, self.inputs.priors)}
        probs, dseg, info = segment_tissues(img, mask, priors)
        self._results["out_info"] = str(Path(runtime.cwd) / "segmentation_info.json")
        write_json(self._results["out_info"], info)
        outs = []
        for tissue in TISSUES:
            out = _save(probs[tissue], self.inputs.in_file, f"_{tissue}", runtime.cwd,
                        dtype="float32", compress=False)
            self._results[tissue.lower()] = out
            outs.append(out)
        self._results["probsegs"] = outs
        self._results["dseg"] = _save(dseg, self.inputs.in_file, "_dseg", runtime.cwd,
                                      dtype="uint8")
        return runtime


# --------------------------------------------------------------------------- VBM
class _ModulateInputSpec(_TransformInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="native probability maps (e.g. GM, WM)")


class _ModulateOutputSpec(TraitedSpec):
    unmodulated = OutputMultiObject(File(exists=True), desc="warped maps, same order")
    modulated = OutputMultiObject(File(exists=True), desc="Jacobian-modulated maps")
    jacobian = File(exists=True, desc="Jacobian determinant on the output grid")


class Modulate(SimpleInterface):
    """Warp tissue maps to the template with Jacobian modulation
    (:func:`ketabids.anat.vbm.modulate`; the Jacobian determinant is computed once for all
    maps)."""

    input_spec = _ModulateInputSpec
    output_spec = _ModulateOutputSpec

    def _run_interface(self, runtime):
        from ketabids.anat.registration import jacobian_determinant
        from ketabids.anat.vbm import modulate

        tpl = _template(self.inputs.template, self.inputs.template_resolution)
        result = _result_from_inputs(self.inputs)
        grid = nib.load(tpl.gm)
        jac = jacobian_determinant(result, grid, omp_nthreads=self.inputs.omp_nthreads)
        self._results["jacobian"] = _save(jac, self.inputs.in_files[0], "_jacobian",
                                          runtime.cwd, dtype="float32", compress=False)
        unmods, mods = [], []
        for in_file in self.inputs.in_files:
            unmod, mod = modulate(nib.load(in_file), result, grid, jacobian=jac,
                                  omp_nthreads=self.inputs.omp_nthreads)
            unmods.append(_save(unmod, in_file, "_std", runtime.cwd, dtype="float32",
                                compress=False))
            mods.append(_save(mod, in_file, "_stdmod", runtime.cwd, dtype="float32",
                              compress=False))
        self._results["unmodulated"] = unmods
        self._results["modulated"] = mods
        return runtime


class _VolumesInputSpec(BaseInterfaceInputSpec):
    gm = File(exists=True, mandatory=True)
    wm = File(exists=True, mandatory=True)
    csf = File(exists=True, mandatory=True)


class _TableOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="TSV table")


class TissueVolumes(SimpleInterface):
    """Total intracranial, GM, WM and CSF volumes in mL
    (:func:`ketabids.anat.vbm.tissue_volumes`)."""

    input_spec = _VolumesInputSpec
    output_spec = _TableOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from ketabids.anat.vbm import tissue_volumes

        probs = {t: nib.load(getattr(self.inputs, t.lower())) for t in TISSUES}
        vols = tissue_volumes(probs)
        row = {k: round(float(vols[k]), 3) for k in ("tiv_ml", "gm_ml", "wm_ml", "csf_ml")}
        out = write_tsv(pd.DataFrame([row]), Path(runtime.cwd) / "volumes.tsv")
        self._results["out_file"] = str(out)
        return runtime


class _RegionalInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="modulated GM map (template space)")
    atlas = File(exists=True, mandatory=True, desc="atlas labels image (template space)")
    atlas_labels = File(exists=True, mandatory=True, desc="TSV with index and name columns")


class RegionalVolumes(SimpleInterface):
    """GM volume per atlas region in mL (:func:`ketabids.anat.vbm.regional_volumes`)."""

    input_spec = _RegionalInputSpec
    output_spec = _TableOutputSpec

    def _run_interface(self, runtime):
        from ketabids.anat.atlas import read_atlas_labels
        from ketabids.anat.vbm import regional_volumes

        labels = read_atlas_labels(self.inputs.atlas_labels)
        table = regional_volumes(nib.load(self.inputs.in_file), nib.load(self.inputs.atlas),
                                 labels)
        out = write_tsv(table, Path(runtime.cwd) / "regional_volumes.tsv", float_format="%.4f")
        self._results["out_file"] = str(out)
        return runtime
