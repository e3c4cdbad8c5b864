"""The participant level: one VBM workflow per subject (and session), run with Nipype.

Graph (node names equal variable names; see the work directory)::

    ketabids_participant_wf
      single_subject_<sub>[_ses-<ses>]_wf        one per T1w that is processed
        anat_wf                                 conform -> N4 -> brain extraction by
                                                affine+SyN registration (= normalisation)
                                                -> warped priors -> segmentation ->
                                                modulation -> volumes
        ds_anat_wf, ds_template_wf, ds_volumes_wf   DerivativesDataSink nodes (outputs.py)
        report_section                          this T1w's part of the HTML report
      report_<sub> -> ds_report_<sub>_wf        sub-<sub>.html at the output root

:func:`run_participant` is what the command line calls: it resolves inputs, builds the graph,
runs it and returns a summary in which failed subjects are listed (a failing subject does not stop
the others).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketabids import __version__
from ketabids.bids.derivatives import write_bidsignore, write_derivative_description
from ketabids.anat.brain import N4_GRID_MM
from ketabids.errors import (
    BadDataError,
    MissingInputError,
    NoDataError,
    OutputError,
    UsageError,
)
from ketabids.interfaces.anatomical import (
    ApplyToTemplate,
    Conform,
    ExtractBrain,
    Modulate,
    N4BiasCorrect,
    RegionalVolumes,
    SegmentTissues,
    TissueVolumes,
    WarpPriors,
)
from ketabids.interfaces.reports import AssembleReport, ReportSection
from ketabids.anat.registration import SETTINGS
from ketabids.workflows import LiterateWorkflow as Workflow
from ketabids.workflows.outputs import (
    init_ds_anat_wf,
    init_ds_report_wf,
    init_ds_template_wf,
    init_ds_volumes_wf,
    raw_uri,
)

LOGGER = logging.getLogger("ketabids")

#: Seconds between two polls of Nipype's scheduler (its default, 2 s, idles short nodes).
POLL_SLEEP_S = 0.02

#: Peak memory (GB) of the heavy steps, for Nipype's MultiProc scheduler (measured, 1 mm).
_MEM_GB = {"n4": 1.0, "brain_extraction": 2.0, "warp_priors": 1.7,
           "segmentation": 2.2, "modulate": 2.5}


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class T1wInput:
    """One T1w to process: subject, session (or None), the chosen file and the ones skipped."""

    subject: str
    session: str | None
    t1w: str
    skipped: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``<sub>`` or ``<sub>_ses-<ses>``: used in node names."""
        return self.subject + (f"_ses-{self.session}" if self.session else "")


@dataclass(frozen=True)
class Atlas:
    """An atlas in template space: labels image, label table and the ``seg-`` name."""

    name: str
    image: str
    labels: str
    source: str = field(default="user")


def collect_t1w(layout, subjects, *, sessions=None, bids_filters=None) -> list[T1wInput]:
    """The T1w to process for each subject and session, in BIDS order.

    With several T1w runs for one subject/session the first (sorted by file name, i.e. BIDS
    order) is used and a warning names the others; ``bids_filters`` (``{"t1w": {...}}``, the
    ``--bids-filter-file`` format; a flat entity dict is accepted too) selects another.
    """
    from ketabids.bids.layout import t1w_query

    filters = bids_filters or {}
    if filters and "t1w" not in filters:
        filters = {"t1w": filters}
    query = t1w_query(filters)
    wanted = {s.removeprefix("ses-") for s in sessions} if sessions else None
    found: list[T1wInput] = []
    for subject in subjects:
        subject = str(subject).removeprefix("sub-")
        files = sorted(layout.get(subject=subject, return_type="file", **query))
        by_session: dict[str | None, list[str]] = {}
        for path in files:
            session = layout.parse_file_entities(path).get("session")
            if wanted is not None and session not in wanted:
                continue
            by_session.setdefault(session, []).append(path)
        for session in sorted(by_session, key=lambda s: (s is not None, s or "")):
            paths = by_session[session]
            if len(paths) > 1:
                LOGGER.warning(
                    "sub-%s%s: %d T1w images match; using %s (first in BIDS order) and skipping "
                    "%s. Select another with --bids-filter-file, e.g. "
                    '{"t1w": {"run": 2}}', subject, f" ses-{session}" if session else "",
                    len(paths), Path(paths[0]).name,
                    ", ".join(Path(p).name for p in paths[1:]))
            found.append(T1wInput(subject, session, paths[0], tuple(paths[1:])))
    return found


def resolve_atlas(atlas, atlas_labels, *, template, resolution) -> Atlas | None:
    """Resolve ``--atlas``: a NIfTI file in template space (+ ``--atlas-labels`` TSV, or a TSV
    next to it with the same stem) or a TemplateFlow atlas name already in the cache."""
    if not atlas:
        return None
    path = Path(atlas)
    if path.suffix in (".nii", ".gz") or path.exists():
        if not path.is_file():
            raise MissingInputError(f"{path}: --atlas file does not exist")
        stem = path.name.split(".")[0]
        labels = Path(atlas_labels) if atlas_labels else path.with_name(stem + ".tsv")
        if not labels.is_file():
            raise MissingInputError(
                f"{labels}: atlas label table not found; give --atlas-labels TSV with columns "
                "index and name")
        name = next((p.split("-", 1)[1] for p in stem.split("_") if p.startswith("atlas-")),
                    None) or "".join(ch for ch in stem if ch.isalnum()) or "atlas"
        return Atlas(name=name, image=str(path.resolve()), labels=str(labels.resolve()))
    # a TemplateFlow atlas name: only what is cached, never a download
    name = str(atlas)
    try:
        from templateflow import api as tf

        images = [Path(p) for p in tf.ls(template, atlas=name, suffix="dseg",
                                         extension=[".nii.gz"])
                  if Path(p).is_file() and Path(p).stat().st_size > 0]
    except Exception:  # unknown template in TemplateFlow, etc.
        images = []
    if not images:
        raise MissingInputError(
            f"--atlas {name}: not a file and not a cached TemplateFlow atlas for {template}; give "
            "a NIfTI atlas in template space with --atlas-labels, or fetch it with: python -c "
            f"\"from templateflow.api import get; get('{template}', atlas='{name}', "
            "suffix='dseg')\"")
    preferred = [p for p in images if f"res-{resolution:02d}" in p.name
                 or f"res-{resolution}_" in p.name] or images
    if len({p.name for p in preferred}) > 1 and len(preferred) > 1:
        preferred = sorted(preferred, key=lambda p: p.name)
        LOGGER.warning("--atlas %s: %d images match; using %s", name, len(preferred),
                       preferred[0].name)
    image = preferred[0]
    labels = Path(atlas_labels) if atlas_labels else image.with_name(
        image.name.split("_res-")[0].replace(".nii.gz", "") + "_dseg.tsv")
    if not labels.is_file():
        candidates = sorted(image.parent.glob(f"*atlas-{name}*_dseg.tsv"))
        if not candidates:
            raise MissingInputError(f"--atlas {name}: no label table (dseg.tsv) in "
                                    f"{image.parent}; give --atlas-labels")
        labels = candidates[0]
    return Atlas(name=name, image=str(image), labels=str(labels), source="TemplateFlow")


# --------------------------------------------------------------------------------------------
# workflows
# --------------------------------------------------------------------------------------------
def template_resolution(fast: bool) -> int:
    """Grid (mm) of the template-space outputs: 2 mm in fast mode, 1 mm otherwise."""
    return 2 if fast else 1


def init_participant_wf(*, inputs: list[T1wInput], output_dir, bids_dir,
                        template="MNI152NLin2009aSym", fast=False, atlas: Atlas | None = None,
                        omp_nthreads=1, seed=None, settings: dict | None = None,
                        name="ketabids_participant_wf"):
    """All subjects: one ``single_subject_<key>_wf`` per T1w, one report per subject."""
    workflow = Workflow(name=name)
    subjects: dict[str, list[T1wInput]] = {}
    for item in inputs:
        subjects.setdefault(item.subject, []).append(item)
    for subject, items in subjects.items():
        sections = []
        methods = ""
        for item in items:
            single_subject_wf = init_single_subject_wf(
                subject=item.subject, session=item.session, t1w=item.t1w, skipped=item.skipped,
                output_dir=output_dir, bids_dir=bids_dir, template=template, fast=fast,
                atlas=atlas, omp_nthreads=omp_nthreads, seed=seed,
                name=f"single_subject_{item.key.replace('-', '')}_wf")
            methods = methods or single_subject_wf.visit_desc()
            sections.append(single_subject_wf)
        merge = pe.Node(niu.Merge(len(sections)), name=f"merge_{subject}",
                        run_without_submitting=True)
        report = pe.Node(AssembleReport(subject=subject, methods=methods,
                                        settings=settings or {}, versions=software_versions()),
                         name=f"report_{subject}")
        ds_report_wf = init_ds_report_wf(output_dir=output_dir, subject=subject,
                                         name=f"ds_report_{subject}_wf")
        for index, single_subject_wf in enumerate(sections, start=1):
            workflow.connect(single_subject_wf, "outputnode.report_section", merge, f"in{index}")
        workflow.connect([
            (merge, report, [("out", "sections")]),
            (report, ds_report_wf, [("out_file", "inputnode.report")]),
        ])
    return workflow


def init_single_subject_wf(*, subject, session, t1w, output_dir, bids_dir,
                           template="MNI152NLin2009aSym", fast=False, atlas: Atlas | None = None,
                           omp_nthreads=1, seed=None, skipped=(), name=None):
    """One T1w of one subject (one session): processing, outputs and its report section."""
    name = name or f"single_subject_{subject}{'_ses' + session if session else ''}_wf"
    resolution = template_resolution(fast)
    workflow = Workflow(name=name)
    workflow.__desc__ = (
        f"Results included in this report come from preprocessing performed with ketabids "
        f"{__version__}, which is based on Nipype and ANTs (antspyx). One T1-weighted (T1w) "
        f"image was found in the input dataset for this subject"
        f"{' and session' if session else ''} and used as the anatomical reference"
        + (f" ({len(skipped)} further T1w image(s) were not used)." if skipped else ".")
    )
    bidssrc = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="bidssrc")
    bidssrc.inputs.t1w = str(t1w)
    outputnode = pe.Node(niu.IdentityInterface(fields=["report_section"]), name="outputnode")

    anat_wf = init_anat_wf(template=template, fast=fast, atlas=atlas,
                           omp_nthreads=omp_nthreads, seed=seed)
    raw = [raw_uri(t1w, bids_dir)]
    common = dict(output_dir=output_dir, source_file=t1w, raw_sources=raw)
    ds_anat_wf = init_ds_anat_wf(**common)
    ds_template_wf = init_ds_template_wf(template=template, resolution=resolution, **common)
    ds_volumes_wf = init_ds_volumes_wf(template=template,
                                       atlas_name=atlas.name if atlas else None, **common)
    notes = []
    if skipped:
        notes.append(f"{len(skipped) + 1} T1w images matched; used {Path(t1w).name} (first in "
                     f"BIDS order), skipped {', '.join(Path(p).name for p in skipped)}.")
    report_section = pe.Node(ReportSection(
        subject=subject, session=session or "", source_file=raw[0].removeprefix("bids:raw:"),
        notes=notes,
        template=template, template_resolution=resolution), name="report_section")

    workflow.connect([
        (bidssrc, anat_wf, [("t1w", "inputnode.t1w")]),
        (anat_wf, ds_anat_wf, [("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
                               ("outputnode.t1w_mask", "inputnode.t1w_mask"),
                               ("outputnode.t1w_dseg", "inputnode.t1w_dseg"),
                               ("outputnode.t1w_tpms", "inputnode.t1w_tpms"),
                               ("outputnode.skull_stripped", "inputnode.skull_stripped")]),
        (anat_wf, ds_template_wf, [("outputnode.std_t1w", "inputnode.std_t1w"),
                                   ("outputnode.std_tpms", "inputnode.std_tpms"),
                                   ("outputnode.std_mod", "inputnode.std_mod"),
                                   ("outputnode.anat2std_xfm", "inputnode.anat2std_xfm"),
                                   ("outputnode.std2anat_xfm", "inputnode.std2anat_xfm"),
                                   ("outputnode.skull_stripped", "inputnode.skull_stripped")]),
        (anat_wf, ds_volumes_wf, [("outputnode.volumes", "inputnode.volumes")]),
        (anat_wf, report_section, [("outputnode.t1w_preproc", "t1w_preproc"),
                                   ("outputnode.t1w_mask", "t1w_mask"),
                                   ("outputnode.t1w_dseg", "t1w_dseg"),
                                   ("outputnode.std_t1w", "std_t1w"),
                                   ("outputnode.skull_stripped", "skull_stripped"),
                                   ("outputnode.conform_notes", "conform_notes")]),
        (ds_volumes_wf, report_section, [("outputnode.volumes", "volumes")]),
        (report_section, outputnode, [("out_file", "report_section")]),
    ])
    if atlas:
        workflow.connect([
            (anat_wf, ds_volumes_wf, [("outputnode.regional", "inputnode.regional")]),
            (ds_volumes_wf, report_section, [("outputnode.regional", "regional")]),
        ])
    return workflow


def init_anat_wf(*, template="MNI152NLin2009aSym", fast=False, atlas: Atlas | None = None,
                 omp_nthreads=1, seed=None, name="anat_wf"):
    """Conform, bias-correct, skull-strip, normalise, segment and modulate one T1w.

    Inputs: ``t1w``. Outputs: native ``t1w_preproc``, ``t1w_mask``, ``t1w_dseg``,
    ``t1w_tpms`` (GM, WM, CSF); template-space ``std_t1w``, ``std_tpms`` and ``std_mod``
    (GM, WM); ``anat2std_xfm``/``std2anat_xfm`` (.h5); ``volumes`` (TSV); ``regional`` (TSV,
    with an atlas); ``skull_stripped``; ``conform_notes``.
    """
    mode = "fast" if fast else "default"
    resolution = template_resolution(fast)
    workflow = Workflow(name=name)
    workflow.__desc__ = (
        "The T1w image was reoriented to the closest canonical (RAS+) orientation and stored as "
        "32-bit floats, then corrected for intensity non-uniformity with N4 (Tustison et al., "
        "2010). The image was then registered to the "
        f"{template} template (Fonov et al., 2009) with an affine followed by a symmetric image "
        "normalisation (SyN, Avants et al., 2008) registration of ANTs on a "
        f"{SETTINGS[mode]['resolution']:g} mm template grid (Mattes mutual information"
        f"{', fast reduced-iteration settings' if fast else ''}), the similarity metric being "
        "restricted to the dilated template brain mask; the template brain mask was carried "
        "back through the inverse transform to extract the brain (an input that was already "
        "skull-stripped was detected and its own extraction kept). This registration is the "
        "spatial normalisation: "
        "the forward and inverse transforms were kept. The template's grey-matter (GM), "
        "white-matter (WM) and cerebrospinal-fluid (CSF) probability maps were warped into the "
        "T1w space and used as priors for a three-class Atropos segmentation (Avants et al., "
        "2011) of the T1w corrected again with N4 inside the brain mask. For voxel-based morphometry (Ashburner & Friston, 2000) the GM and WM "
        f"probability maps were resampled to the template at {resolution} mm and multiplied by "
        "the Jacobian determinant of the warp (modulation), so that each map preserves the "
        "native tissue volume. Total intracranial volume (TIV) and GM, WM and CSF volumes were "
        "computed from the native-space probability maps"
        + (f", and GM volume per region of the {atlas.name} atlas from the modulated GM map."
           if atlas else ".")
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "t1w_preproc", "t1w_mask", "t1w_dseg", "t1w_tpms", "std_t1w", "std_tpms", "std_mod",
        "anat2std_xfm", "std2anat_xfm", "volumes", "regional", "skull_stripped",
        "conform_notes"]), name="outputnode")
    tpl = dict(template=template, template_resolution=resolution, seed=seed,
               omp_nthreads=omp_nthreads, mode=mode)
    xfm_fields = ["forward_transforms", "inverse_transforms"]

    conform = pe.Node(Conform(), name="conform")
    # the order of every step is that of ketabids.anat.vbm.run_t1w (the reference pipeline)
    n4 = pe.Node(N4BiasCorrect(grid_mm=N4_GRID_MM[mode], omp_nthreads=omp_nthreads), name="n4",
                 n_procs=omp_nthreads, mem_gb=_MEM_GB["n4"])
    # brain extraction registers the head to the template (affine + SyN, metric restricted to
    # the dilated template brain mask): that registration is also the normalisation
    brain_extraction = pe.Node(ExtractBrain(**tpl), name="brain_extraction",
                               n_procs=omp_nthreads, mem_gb=_MEM_GB["brain_extraction"])
    warp_priors = pe.Node(WarpPriors(**tpl), name="warp_priors",
                          n_procs=omp_nthreads, mem_gb=_MEM_GB["warp_priors"])
    # N4 again, inside the brain mask only: the input of Atropos (GM/WM Dice .893/.894 ->
    # .914/.930 on the 1 mm phantom); desc-preproc_T1w stays the head-wide N4 output
    brain_n4 = pe.Node(N4BiasCorrect(grid_mm=N4_GRID_MM[mode], omp_nthreads=omp_nthreads),
                       name="brain_n4",
                       n_procs=omp_nthreads, mem_gb=_MEM_GB["n4"])
    segmentation = pe.Node(SegmentTissues(seed=seed, omp_nthreads=omp_nthreads),
                           name="segmentation", n_procs=omp_nthreads,
                           mem_gb=_MEM_GB["segmentation"])
    std_t1w = pe.Node(ApplyToTemplate(interpolation="linear", **tpl), name="std_t1w",
                      n_procs=omp_nthreads, mem_gb=_MEM_GB["modulate"])
    modulate = pe.Node(Modulate(**tpl), name="modulate", n_procs=omp_nthreads,
                       mem_gb=_MEM_GB["modulate"])
    volumes = pe.Node(TissueVolumes(), name="volumes")

    workflow.connect([
        (inputnode, conform, [("t1w", "in_file")]),
        (conform, n4, [("out_file", "in_file")]),
        (n4, brain_extraction, [("out_file", "in_file")]),
        (brain_extraction, warp_priors, [(f, f) for f in xfm_fields]),
        (conform, warp_priors, [("out_file", "reference")]),
        (n4, brain_n4, [("out_file", "in_file")]),
        (brain_extraction, brain_n4, [("out_mask", "in_mask")]),
        (brain_n4, segmentation, [("out_file", "in_file")]),
        (brain_extraction, segmentation, [("out_mask", "in_mask")]),
        (warp_priors, segmentation, [("priors", "priors")]),
        (brain_extraction, std_t1w, [(f, f) for f in xfm_fields]),
        (n4, std_t1w, [("out_file", "in_file")]),
        (brain_extraction, modulate, [(f, f) for f in xfm_fields]),
        (segmentation, modulate, [(("probsegs", _gm_wm), "in_files")]),
        (segmentation, volumes, [("gm", "gm"), ("wm", "wm"), ("csf", "csf")]),
        (conform, outputnode, [("notes", "conform_notes")]),
        (n4, outputnode, [("out_file", "t1w_preproc")]),
        (brain_extraction, outputnode, [("out_mask", "t1w_mask"),
                                        ("skull_stripped", "skull_stripped"),
                                        ("composite_transform", "anat2std_xfm"),
                                        ("inverse_composite_transform", "std2anat_xfm")]),
        (segmentation, outputnode, [("dseg", "t1w_dseg"), ("probsegs", "t1w_tpms")]),
        (std_t1w, outputnode, [("out_file", "std_t1w")]),
        (modulate, outputnode, [("unmodulated", "std_tpms"), ("modulated", "std_mod")]),
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
    """GM and WM of the (GM, WM, CSF) probability maps."""
    return list(probsegs[:2])


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
def software_versions() -> dict:
    """Versions of the imaging stack, for the report and the methods text."""
    from ketabids.versions import software_versions as _versions

    return _versions("nipype", "antspyx", "pybids", "templateflow")


def plugin_settings(*, nprocs=1, mem_gb=None, plugin_file=None) -> tuple[str, dict]:
    """Nipype plugin name and arguments.

    A ``--nipype-plugin-file`` YAML (``plugin: <Name>`` and ``plugin_args: {...}``, the fMRIPrep
    format) wins; otherwise MultiProc with ``nprocs`` processes (and ``mem_gb``), or Linear for
    one process.

    >>> plugin_settings(nprocs=1)
    ('Linear', {})
    >>> plugin_settings(nprocs=4, mem_gb=8)[1]["n_procs"]
    4
    """
    if plugin_file:
        import yaml

        path = Path(plugin_file)
        if not path.is_file():
            raise MissingInputError(f"{path}: --nipype-plugin-file does not exist")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise BadDataError(f"{path}: not valid YAML ({exc}); write e.g. 'plugin: MultiProc' "
                               "and 'plugin_args: {n_procs: 4}'") from exc
        if not isinstance(content, dict) or not isinstance(content.get("plugin"), str):
            raise BadDataError(f"{path}: needs a 'plugin:' entry (e.g. MultiProc, Linear, "
                               "SLURM) and optionally 'plugin_args:'")
        import nipype.pipeline.plugins as plugins

        name = content["plugin"]
        if not hasattr(plugins, f"{name}Plugin"):
            known = sorted(n[: -len("Plugin")] for n in dir(plugins) if n.endswith("Plugin")
                           and n != "Plugin")
            raise UsageError(f"{path}: unknown Nipype plugin {name!r}; use one of "
                             f"{', '.join(known)}")
        args = content.get("plugin_args") or {}
        if not isinstance(args, dict):
            raise BadDataError(f"{path}: 'plugin_args' must be a mapping")
        return name, dict(args)
    if nprocs and int(nprocs) > 1:
        args = {"n_procs": int(nprocs), "raise_insufficient": False}
        if mem_gb:
            args["memory_gb"] = float(mem_gb)
        return "MultiProc", args
    return "Linear", {}


def configure_workflow(workflow, *, crashdump_dirs: dict[str, Path], default_crashdump: Path,
                       hash_method="content"):
    """Set Nipype's execution settings on this workflow's nodes only (no global config change).

    ``crashdump_dirs`` maps the name of a top-level element (e.g. ``single_subject_01_wf``) to
    the folder its nodes' crash files go to, so failures can be attributed to subjects.
    """
    settings = {
        "hash_method": hash_method,
        "remove_unnecessary_outputs": False,
        "stop_on_first_crash": False,
        "crashfile_format": "txt",
        "create_report": False,
        "parameterize_dirs": False,
        "use_relative_paths": False,
        "check_version": False,
        # Nipype's scheduler sleeps this long between polls (default 2 s): most fast-mode
        # nodes take 1-3 s, so the default left the MultiProc workers idle ~45 % of the time
        # (measured on the demo: 2 workers at 55 % CPU each)
        "poll_sleep_duration": POLL_SLEEP_S,
    }
    workflow.config["execution"].update(settings)
    workflow.config["execution"]["crashdump_dir"] = str(default_crashdump)
    workflow.config.setdefault("monitoring", {})["enabled"] = False
    # Nipype resets its loggers from the workflow config when it runs: keep the levels the
    # caller chose (the CLI shows Nipype's INFO messages only with -vv)
    workflow.config.setdefault("logging", {}).update({
        f"{kind}_level": logging.getLevelName(
            max(logging.INFO, logging.getLogger(f"nipype.{kind}").getEffectiveLevel()))
        for kind in ("workflow", "interface", "utils")
    })
    for node_path in workflow.list_node_names():
        node = workflow.get_node(node_path)
        node.config = node.config or {}
        execution = node.config.setdefault("execution", {})
        execution.update(settings)
        crashdir = crashdump_dirs.get(node_path.split(".")[0], default_crashdump)
        execution["crashdump_dir"] = str(crashdir)
    return workflow


def run_participant(*, bids_dir, output_dir, work_dir, subjects: list[str],
                    sessions: list[str] | None, bids_filters: dict | None,
                    template: str = "MNI152NLin2009aSym", fast: bool = False,
                    atlas: str | None = None, atlas_labels: str | None = None, nprocs: int = 1,
                    omp_nthreads: int = 1, mem_gb: float | None = None, seed: int | None = None,
                    plugin_file: str | None = None, layout=None) -> dict:
    """Run the participant level for ``subjects`` and return a summary.

    Summary keys: ``ok`` and ``failed`` (subject labels), ``crash_files`` (subject -> crash
    files of this run), ``errors`` (subject -> first line of the error), ``reports``
    (subject -> HTML path), ``inputs`` (subject -> T1w files used), ``elapsed_s``,
    ``work_dir``, ``plugin``. User errors raise :mod:`ketabids.errors` exceptions; a subject
    whose processing crashes is listed in ``failed`` (exit code 1 for the CLI) and does not stop
    the others.
    """
    started = time.time()
    bids_dir = Path(bids_dir).expanduser().resolve()
    output_dir = Path(output_dir).expanduser().resolve()
    work_dir = Path(work_dir).expanduser().resolve()
    if not bids_dir.is_dir():
        raise MissingInputError(f"{bids_dir}: BIDS_DIR does not exist")
    for folder, what in ((output_dir, "OUTPUT_DIR"), (work_dir, "--work-dir")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create {what} ({exc.strerror}); choose a "
                              "writable folder") from exc
    if omp_nthreads < 1 or nprocs < 1:
        raise UsageError(f"--nprocs {nprocs} / --omp-nthreads {omp_nthreads}: use 1 or more")
    # ITK reads its thread count once per process, at its first call: set it before anything
    # here touches ANTs (template preparation included) and before the MultiProc workers start
    with _itk_threads(omp_nthreads):
        return _run(started=started, bids_dir=bids_dir, output_dir=output_dir,
                    work_dir=work_dir, subjects=subjects, sessions=sessions,
                    bids_filters=bids_filters, template=template, fast=fast, atlas=atlas,
                    atlas_labels=atlas_labels, nprocs=nprocs, omp_nthreads=omp_nthreads,
                    mem_gb=mem_gb, seed=seed, plugin_file=plugin_file, layout=layout)


def _run(*, started, bids_dir, output_dir, work_dir, subjects, sessions, bids_filters, template,
         fast, atlas, atlas_labels, nprocs, omp_nthreads, mem_gb, seed, plugin_file, layout):
    from ketabids.templates import get_template

    resolution = template_resolution(fast)
    get_template(template, resolution)  # fails early (MissingInputError) if not available
    atlas_spec = resolve_atlas(atlas, atlas_labels, template=template, resolution=resolution)
    plugin, plugin_args = plugin_settings(nprocs=nprocs, mem_gb=mem_gb, plugin_file=plugin_file)

    if layout is None:
        from ketabids.bids.layout import load_layout

        layout = load_layout(bids_dir)
    subjects = [str(s).removeprefix("sub-") for s in (subjects or layout.get_subjects())]
    inputs = collect_t1w(layout, subjects, sessions=sessions, bids_filters=bids_filters)
    if not inputs:
        raise NoDataError(f"{bids_dir}: no T1w image selected for sub-{', sub-'.join(subjects)} "
                          "(check --participant-label, --session-label, --bids-filter-file)")
    missing = sorted(set(subjects) - {i.subject for i in inputs})

    write_derivative_description(output_dir, bids_dir)
    write_bidsignore(output_dir)

    settings = {
        "template": template, "template resolution (mm)": resolution,
        "mode": "fast" if fast else "default", "atlas": atlas_spec.name if atlas_spec else None,
        "seed": seed, "nprocs": nprocs, "omp_nthreads": omp_nthreads, "mem_gb": mem_gb,
        "plugin": plugin, "bids_filters": bids_filters or {}, "sessions": sessions,
    }
    workflow = init_participant_wf(inputs=inputs, output_dir=output_dir, bids_dir=bids_dir,
                                   template=template, fast=fast, atlas=atlas_spec,
                                   omp_nthreads=omp_nthreads, seed=seed, settings=settings)
    workflow.base_dir = str(work_dir)
    logs = output_dir / "logs"
    crashdirs = {}
    for item in inputs:
        folder = logs / f"sub-{item.subject}"
        crashdirs[f"single_subject_{item.key.replace('-', '')}_wf"] = folder
        for name in (f"merge_{item.subject}", f"report_{item.subject}",
                     f"ds_report_{item.subject}_wf"):
            crashdirs[name] = folder
    configure_workflow(workflow, crashdump_dirs=crashdirs, default_crashdump=logs)

    LOGGER.info("participant level: %d T1w image(s) of %d subject(s), plugin %s %s",
                len(inputs), len({i.subject for i in inputs}), plugin, plugin_args)
    error = None
    try:
        if plugin == "MultiProc":  # the same scheduler, minus its O(n^2) garbage collections
            from ketabids.workflows.multiproc import MultiProcPlugin

            workflow.run(plugin=MultiProcPlugin(plugin_args=plugin_args))
        else:
            workflow.run(plugin=plugin, plugin_args=plugin_args)
    except Exception as exc:  # node failures: attributed to subjects below
        error = exc
        LOGGER.error("some nodes failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
    summary = _summary(inputs, missing, output_dir, work_dir, started, plugin, error)
    _log_summary(summary, output_dir)
    return summary


def _log_summary(summary: dict, output_dir: Path) -> None:
    """One line per failed subject (error and crash file), then one line for the run."""
    for subject in summary["failed"]:
        crash = summary["crash_files"].get(subject)
        LOGGER.error("sub-%s failed: %s%s", subject, summary["errors"][subject],
                     f" (details: {crash[0]})" if crash else "")
    n_ok, n_all = len(summary["ok"]), len(summary["ok"]) + len(summary["failed"])
    LOGGER.info("participant level: %d of %d subject(s) done in %.0f s; reports: %s",
                n_ok, n_all, summary["elapsed_s"], output_dir / "sub-<label>.html")


@contextlib.contextmanager
def _itk_threads(omp_nthreads: int):
    """``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` for the duration of the run, then restored.

    ITK reads it when it first creates its thread pool, so this is what makes ``--omp-nthreads 1``
    (and with it ``--seed``) effective in a fresh process and in Nipype's worker processes.
    """
    key = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
    saved = os.environ.get(key)
    os.environ[key] = str(int(omp_nthreads))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _summary(inputs, missing, output_dir, work_dir, started, plugin, error) -> dict:
    """Who succeeded: a subject failed when this run left crash files in its log folder, or
    when the run had errors and its report does not exist."""
    logs = output_dir / "logs"
    subjects = sorted({i.subject for i in inputs})
    crash_files, errors, reports = {}, {}, {}
    for subject in subjects:
        folder = logs / f"sub-{subject}"
        new = sorted(str(p) for p in folder.glob("crash-*")
                     if p.stat().st_mtime >= started - 1) if folder.is_dir() else []
        report = output_dir / f"sub-{subject}.html"
        if new:
            crash_files[subject] = new
            errors[subject] = _first_error(new[0])
        elif error is not None and not report.is_file():
            errors[subject] = f"not completed: {str(error).splitlines()[0][:200]}"
        elif report.is_file():
            reports[subject] = str(report)
    for subject in missing:
        errors[subject] = "no T1w image matched the filters"
    unattributed = sorted(str(p) for p in logs.glob("crash-*")
                          if p.stat().st_mtime >= started - 1) if logs.is_dir() else []
    if unattributed:
        crash_files[""] = unattributed
    failed = sorted(errors)
    return {
        "ok": [s for s in subjects if s not in errors],
        "failed": failed,
        "crash_files": crash_files,
        "errors": errors,
        "reports": reports,
        "inputs": {s: [i.t1w for i in inputs if i.subject == s] for s in subjects},
        "elapsed_s": round(time.time() - started, 1),
        "work_dir": str(work_dir),
        "plugin": plugin,
    }


def _first_error(crash_file: str) -> str:
    """The last line of the traceback in a text crash file (the exception message)."""
    try:
        lines = [ln.strip() for ln in Path(crash_file).read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return "crashed"
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:300]
    return lines[-1][:300] if lines else "crashed"
