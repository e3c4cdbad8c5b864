"""The anatomical workflow: THE definition of the participant-level VBM steps and their order.

    conform (RAS+, sub-mm voxels to 1 mm) -> prepare (intensities truncated, a long inferior
    field of view cropped) -> N4 (head) -> brain extraction (affine + SyN to the template, kept
    as the normalisation) -> template priors to T1w space -> N4 again inside the brain mask,
    weighted by the GM + WM priors -> partial-volume mixture segmentation (GM/WM/CSF) ->
    volumes; GM/WM to the template with Jacobian modulation
    [-> regional GM volumes with an atlas]
    -> native results back on the conformed grid (restore_grid: only when the field of view
    was cropped)

Tests and benchmarks run this graph (:func:`ketabids.testing.run_anat_wf`); the maths is in
:mod:`ketabids.anat`, one interface per step in :mod:`ketabids.interfaces.anatomical`.
"""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketabids.anat.atlas import Atlas
from ketabids.anat.brain import HEAD_INTERIOR_MM, TISSUE_N4_ITERATIONS, TISSUE_N4_SPLINE_MM
from ketabids.anat.conform import FINEST_MM, SUBMM_THRESHOLD_MM
from ketabids.anat.prepare import FOV_KEEP_MM, FOV_MIN_CUT_MM, TRUNCATE_PERCENTILES
from ketabids.anat.registration import PAD_MM
from ketabids.anat.settings import ProcessingSettings
from ketabids.interfaces.anatomical import (
    ApplyToTemplate,
    Conform,
    ExtractBrain,
    Modulate,
    N4BiasCorrect,
    PrepareT1w,
    RegionalVolumes,
    RestoreGrid,
    SegmentTissues,
    TissueVolumes,
    WarpPriors,
)
from ketabids.templates import DEFAULT_TEMPLATE
from ketabids.workflows import LiterateWorkflow as Workflow

#: Nipype execution settings of the node that reads the user's T1w (the only user file the
#: graph reads; the rest are its own intermediates and the packaged template): its result is
#: reused only if the file's *content* is unchanged (a file replaced by one of the same size
#: and time stamp still reruns); the intermediates are hashed by time stamp
#: (:func:`ketabids.runner.config.configure_workflow`)
INPUT_HASH = {"execution": {"hash_method": "content"}}
#: Peak memory (GB) of the heavy steps, for Nipype's MultiProc scheduler (measured, 1 mm).
_MEM_GB = {"prepare": 1.0, "n4": 1.0, "brain_extraction": 2.0, "warp_priors": 1.7,
           "segmentation": 1.5, "modulate": 2.5}


def init_anat_wf(*, template=DEFAULT_TEMPLATE, processing: ProcessingSettings | None = None,
                 atlas: Atlas | None = None, omp_nthreads=1, seed=None, name="anat_wf"):
    """Conform, bias-correct, skull-strip, normalise, segment and modulate one T1w.

    The steps and their order are those of the module docstring; the brain extraction's
    registration to the template is also the spatial normalisation. Native outputs are on the
    conformed grid (the input's, or 1 mm for sub-millimetre input), whatever field of view the
    processing used.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from ketabids.workflows.anatomical import init_anat_wf
            wf = init_anat_wf()

    Parameters
    ----------
    template : str
        Template to normalise to (:func:`ketabids.templates.get_template`): its priors drive
        the brain extraction and the segmentation.
    processing : ProcessingSettings or None
        The processing mode's settings (:class:`ketabids.anat.settings.ProcessingSettings`;
        ``ProcessingSettings.for_fast(True)``: coarser registration and tissue N4, 2 mm
        template-space maps, for demos and CI); the default mode when None.
    atlas : Atlas or None
        An atlas in template space: adds regional GM volumes (the ``regional`` output).
    omp_nthreads : int
        ANTs (ITK) threads of each heavy node; also its ``n_procs`` for the scheduler.
    seed : int or None
        Seed of the registration's random sampling (reproducible with ``omp_nthreads=1``).
    name : str
        Name of the workflow.

    Returns
    -------
    LiterateWorkflow
        The workflow, with its methods text in ``__desc__``.

    Inputs
    ------
    t1w
        The input T1w (NIfTI), read by content (:data:`INPUT_HASH`).

    Outputs
    -------
    t1w_preproc
        Conformed (RAS+, float32), N4-corrected T1w.
    t1w_mask
        Brain mask.
    t1w_dseg
        Tissue labels (1 GM, 2 WM, 3 CSF).
    t1w_tpms
        GM, WM and CSF partial-volume fraction maps, in that order.
    t1w_bias
        The head-wide N4 bias field.
    std_t1w
        T1w resampled to the template.
    std_tpms, std_mod
        GM and WM fractions in template space, plain and Jacobian-modulated (VBM maps).
    std_jacobian
        Jacobian determinant of the warp, in template space.
    anat2std_xfm, std2anat_xfm
        ANTs composite transforms (``.h5``) T1w -> template and back.
    volumes
        TSV of TIV, GM, WM and CSF volumes (mL).
    regional
        TSV of GM volume per atlas region (with ``atlas``).
    skull_stripped
        Whether the input was detected as already skull-stripped.
    conform_notes
        Notes of the conform and prepare steps, for the report.
    prepare_info
        JSON of the intensity truncation and field-of-view crop (read by the QC).
    """
    settings = processing or ProcessingSettings.for_fast(False)
    resolution = settings.template_resolution
    workflow = Workflow(name=name)
    workflow.__desc__ = (
        "The T1w image was reoriented to the closest canonical (RAS+) orientation and stored as "
        f"32-bit floats (voxel axes finer than {SUBMM_THRESHOLD_MM:g} mm were resampled to "
        f"{FINEST_MM:g} mm by area averaging); its intensities were truncated at the "
        f"{TRUNCATE_PERCENTILES[1]:g}th percentile of the head (negative outliers at its "
        f"{TRUNCATE_PERCENTILES[0]:g}th percentile), and a field of view reaching more than "
        f"{FOV_MIN_CUT_MM:g} mm of head or neck beyond {FOV_KEEP_MM:g} mm below the top of the "
        "head was cropped there (as FSL robustfov does). It was then corrected for intensity "
        "non-uniformity with N4 (Tustison et al., "
        "2010). The image was then registered to the "
        f"{template} template (Fonov et al., 2009) with an affine followed by a symmetric image "
        "normalisation (SyN, Avants et al., 2008) registration of ANTs on a "
        f"{settings.registration_mm:g} mm template grid (Mattes mutual information"
        f"{', fast reduced-iteration settings' if settings.fast else ''}; the T1w padded with "
        f"{PAD_MM or 0:g} mm of background), the similarity metric being "
        "restricted to the dilated template brain mask; the affine stage was run on the whole "
        f"head and on the head deeper than {HEAD_INTERIOR_MM:g} mm below its surface, and the "
        "solution scaling the template less was kept; the template brain mask was carried "
        "back through the inverse transform to extract the brain (an input that was already "
        "skull-stripped was detected and its own extraction kept). This registration is the "
        "spatial normalisation: "
        "the forward and inverse transforms were kept. The template's grey-matter (GM), "
        "white-matter (WM) and cerebrospinal-fluid (CSF) probability maps were warped into the "
        "T1w space. The T1w was corrected again with N4 inside the brain mask, weighted by the "
        "GM and WM priors (B-spline distance 200 mm, four fitting levels), and segmented by a "
        "Gaussian mixture of GM, WM and CSF with one shared variance, two partial-volume "
        "classes (CSF/GM and GM/WM) and the template priors as spatial "
        "priors, fitted by expectation-maximisation as in FSL FAST (Zhang et al., 2001); the "
        "tissue maps are partial-volume fractions. For voxel-based morphometry (Ashburner & "
        "Friston, 2000) the GM and WM "
        f"fraction maps were resampled to the template at {resolution} mm and multiplied by "
        "the Jacobian determinant of the warp (modulation), so that each map preserves the "
        "native tissue volume. Total intracranial volume (TIV) and GM, WM and CSF volumes were "
        "computed from the native-space fraction maps"
        + (f", and GM volume per region of the {atlas.name} atlas from the modulated GM map."
           if atlas else ".")
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "t1w_preproc", "t1w_mask", "t1w_dseg", "t1w_tpms", "std_t1w", "std_tpms", "std_mod",
        "anat2std_xfm", "std2anat_xfm", "volumes", "regional", "skull_stripped",
        "conform_notes", "t1w_bias", "std_jacobian", "prepare_info"]), name="outputnode")
    tpl = dict(template=template, template_resolution=resolution, omp_nthreads=omp_nthreads)
    xfm_fields = ["forward_transforms", "inverse_transforms"]

    conform = pe.Node(Conform(), name="conform")
    conform.config = {k: dict(v) for k, v in INPUT_HASH.items()}
    prepare = pe.Node(PrepareT1w(), name="prepare", mem_gb=_MEM_GB["prepare"])
    n4 = pe.Node(N4BiasCorrect(grid_mm=settings.n4_grid_mm, omp_nthreads=omp_nthreads), name="n4",
                 n_procs=omp_nthreads, mem_gb=_MEM_GB["n4"])
    # brain extraction registers the head to the template (affine + SyN, metric restricted to
    # the dilated template brain mask): that registration is also the normalisation
    brain_extraction = pe.Node(ExtractBrain(mode=settings.mode, seed=seed, **tpl),
                               name="brain_extraction",
                               n_procs=omp_nthreads, mem_gb=_MEM_GB["brain_extraction"])
    warp_priors = pe.Node(WarpPriors(**tpl), name="warp_priors",
                          n_procs=omp_nthreads, mem_gb=_MEM_GB["warp_priors"])
    # N4 again, inside the brain mask and weighted by the GM + WM priors, with a finer field:
    # the input of the segmentation (see ketabids.anat.brain.n4_bias_correct for what it
    # measured); desc-preproc_T1w stays the head-wide N4 output
    brain_n4 = pe.Node(N4BiasCorrect(grid_mm=settings.tissue_n4_grid_mm,
                                     spline_mm=TISSUE_N4_SPLINE_MM,
                                     iterations=list(TISSUE_N4_ITERATIONS),
                                     omp_nthreads=omp_nthreads),
                       name="brain_n4",
                       n_procs=omp_nthreads, mem_gb=_MEM_GB["n4"])
    segmentation = pe.Node(SegmentTissues(), name="segmentation",
                           mem_gb=_MEM_GB["segmentation"])
    std_t1w = pe.Node(ApplyToTemplate(interpolation="linear", **tpl), name="std_t1w",
                      n_procs=omp_nthreads, mem_gb=_MEM_GB["modulate"])
    modulate = pe.Node(Modulate(**tpl), name="modulate", n_procs=omp_nthreads,
                       mem_gb=_MEM_GB["modulate"])
    volumes = pe.Node(TissueVolumes(), name="volumes")
    # the native results back on the conformed grid (a pass-through unless cropped)
    restore_grid = pe.Node(RestoreGrid(), name="restore_grid", mem_gb=_MEM_GB["prepare"])

    workflow.connect([
        (inputnode, conform, [("t1w", "in_file")]),
        (conform, prepare, [("out_file", "in_file"), ("notes", "notes")]),
        (prepare, n4, [("out_file", "in_file")]),
        (n4, brain_extraction, [("out_file", "in_file")]),
        (brain_extraction, warp_priors, [(f, f) for f in xfm_fields]),
        (prepare, warp_priors, [("out_file", "reference")]),
        (brain_extraction, warp_priors, [("out_mask", "in_mask")]),
        (n4, brain_n4, [("out_file", "in_file")]),
        (brain_extraction, brain_n4, [("out_mask", "in_mask")]),
        (warp_priors, brain_n4, [(("priors", _gm_wm), "in_weights")]),
        (brain_n4, segmentation, [("out_file", "in_file")]),
        (brain_extraction, segmentation, [("out_mask", "in_mask")]),
        (warp_priors, segmentation, [("priors", "priors")]),
        (brain_extraction, std_t1w, [(f, f) for f in xfm_fields]),
        (n4, std_t1w, [("out_file", "in_file")]),
        (brain_extraction, modulate, [(f, f) for f in xfm_fields]),
        (segmentation, modulate, [(("probsegs", _gm_wm), "in_files")]),
        (segmentation, volumes, [("gm", "gm"), ("wm", "wm"), ("csf", "csf")]),
        (prepare, outputnode, [("notes", "conform_notes"), ("out_info", "prepare_info")]),
        (prepare, restore_grid, [("out_reference", "reference")]),
        (n4, restore_grid, [("out_file", "t1w"), ("bias_field", "bias")]),
        (brain_extraction, restore_grid, [("out_mask", "mask")]),
        (segmentation, restore_grid, [("dseg", "dseg"), ("probsegs", "tpms")]),
        (restore_grid, outputnode, [("t1w", "t1w_preproc"), ("bias", "t1w_bias"),
                                    ("mask", "t1w_mask"), ("dseg", "t1w_dseg"),
                                    ("tpms", "t1w_tpms")]),
        (brain_extraction, outputnode, [("skull_stripped", "skull_stripped"),
                                        ("composite_transform", "anat2std_xfm"),
                                        ("inverse_composite_transform", "std2anat_xfm")]),
        (std_t1w, outputnode, [("out_file", "std_t1w")]),
        (modulate, outputnode, [("unmodulated", "std_tpms"), ("modulated", "std_mod"),
                                ("jacobian", "std_jacobian")]),
        (volumes, outputnode, [("out_file", "volumes")]),
    ])
    if atlas:
        regional_volumes = pe.Node(RegionalVolumes(atlas=atlas.image, atlas_labels=atlas.labels),
                                   name="regional_volumes")
        workflow.connect([
            (modulate, regional_volumes, [(("modulated", _first), "in_file")]),
            (regional_volumes, outputnode, [("out_file", "regional")]),
        ])
    return workflow


def _first(values):
    return values[0]


def _gm_wm(probsegs):
    """GM and WM of the (GM, WM, CSF) maps."""
    return list(probsegs[:2])
