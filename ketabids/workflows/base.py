"""The participant level: one VBM workflow per subject (and session), run with Nipype.

Graph (node names equal variable names; see the work directory)::

    ketabids_participant_wf
      single_subject_<sub>[_ses-<ses>]_wf        one per T1w that is processed
        anat_wf                                 conform -> N4 -> brain extraction by
                                                affine+SyN registration (= normalisation)
                                                -> warped priors -> segmentation ->
                                                modulation -> volumes
        subject_qc                              QC metrics, verdict and reasons (ketabids.qc)
        ds_anat_wf, ds_template_wf, ds_volumes_wf, ds_qc_wf
                                                DerivativesDataSink nodes (outputs.py)
        report_section                          this T1w's part of the HTML report
      report_<sub> -> ds_report_<sub>_wf        sub-<sub>.html at the output root
      done_<sub>                                runs when every sink of the subject has run:
                                                the runner publishes the subject then

The sinks write under ``output_dir``; the runner passes a staging folder there and moves a
subject into OUTPUT_DIR when its ``done_<sub>`` node ends (all-or-nothing publishing).

The runner never spells these names: :func:`init_participant_wf` exposes a
:class:`ParticipantManifest` (``workflow.manifest``): per subject its top-level elements, its
done node and its QC nodes, and the methods text.

Graph factories only: running them is :mod:`ketabids.runner`; the anatomical steps are
:mod:`ketabids.workflows.anatomical`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketabids import __version__
from ketabids.anat.atlas import Atlas
from ketabids.bids.derivatives import raw_uri
from ketabids.bids.layout import T1wInput
from ketabids.config import ParticipantConfig
from ketabids.interfaces.bids import DerivativesDataSink
from ketabids.interfaces.qc import SubjectQC
from ketabids.interfaces.reports import AssembleReport, ReportSection
from ketabids.versions import software_versions
from ketabids.workflows import LiterateWorkflow as Workflow
from ketabids.workflows.anatomical import init_anat_wf
from ketabids.workflows.outputs import (
    init_ds_anat_wf,
    init_ds_qc_wf,
    init_ds_report_wf,
    init_ds_template_wf,
    init_ds_volumes_wf,
)

#: Packages whose versions the report and methods text record (besides ketabids.versions.CORE).
IMAGING_STACK = ("nipype", "antspyx", "pybids", "templateflow")
#: Name of the QC node in each single-subject workflow.
QC_NODE = "subject_qc"


@dataclass(frozen=True)
class SubjectGraph:
    """One subject's part of the participant graph, as the runner needs it.

    ``elements``: names of its top-level elements (its crash files go to its log folder; its
    work folders are these); ``done``: the node that ends when every output of the subject is
    written; ``qc``: dotted name of each QC node (relative to the participant workflow) ->
    its session label (``""`` without sessions); ``sessions``: name of each element that
    processes one T1w -> its session label (``""`` without sessions).
    """

    subject: str
    elements: tuple[str, ...]
    done: str
    qc: dict
    sessions: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ParticipantManifest:
    """What the runner needs to know about a participant graph, so that it never spells a
    node name: the subjects' parts (:class:`SubjectGraph`) and the methods text (every
    subject's workflow has the same)."""

    subjects: tuple[SubjectGraph, ...]
    methods: str

    def subject_of(self, element: str) -> str | None:
        """The subject a top-level element (e.g. ``single_subject_01_sesA_wf``) belongs to."""
        return self.element_subjects().get(element)

    def element_subjects(self) -> dict[str, str]:
        """Each subject's top-level element -> the subject."""
        return {element: graph.subject for graph in self.subjects
                for element in graph.elements}

    def session_elements(self) -> dict[str, tuple[str, str]]:
        """Each element that processes one T1w -> ``(subject, session)`` (session ``""``
        without sessions)."""
        return {element: (graph.subject, session) for graph in self.subjects
                for element, session in graph.sessions.items()}

    def done_nodes(self) -> dict[str, str]:
        """Name of each subject's done node -> the subject."""
        return {graph.done: graph.subject for graph in self.subjects}

    def elements(self) -> dict[str, list[str]]:
        """Subject -> its top-level elements."""
        return {graph.subject: list(graph.elements) for graph in self.subjects}

    def qc_session(self, node_name: str) -> tuple[str, str] | None:
        """``(subject, session)`` when ``node_name`` (dotted, relative to the participant
        workflow) is a QC node, else None."""
        for graph in self.subjects:
            if node_name in graph.qc:
                return graph.subject, graph.qc[node_name]
        return None


def init_participant_wf(*, inputs: list[T1wInput], config: ParticipantConfig, output_dir=None,
                        atlas: Atlas | None = None, settings: dict | None = None, qc=True,
                        notes: dict[str, list[str]] | None = None,
                        name="ketabids_participant_wf"):
    """All subjects: one ``single_subject_<key>_wf`` per T1w, one report per subject.

    Each subject ends in a done node that runs when every one of its outputs is written: the
    runner publishes the subject then. The returned workflow's ``manifest`` attribute (a
    :class:`ParticipantManifest`) names each subject's done, QC and crash-folder nodes and
    carries the methods text, so the runner never spells a node name.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from ketabids.bids.layout import T1wInput
            from ketabids.config import ParticipantConfig
            from ketabids.workflows.base import init_participant_wf
            wf = init_participant_wf(
                inputs=[T1wInput(subject="01", session=None,
                                 t1w="bids/sub-01/anat/sub-01_T1w.nii.gz")],
                config=ParticipantConfig(bids_dir="bids", output_dir="out"))

    Parameters
    ----------
    inputs : list of T1wInput
        The T1w images to process (one per subject and session), as selected and checked by
        the runner.
    config : ParticipantConfig
        The run's configuration: its ``bids_dir`` (for the ``bids:raw:`` URIs of the
        sidecars), ``template``, ``processing``, ``omp_nthreads`` and ``seed`` (as
        :func:`ketabids.workflows.anatomical.init_anat_wf`).
    output_dir : str or os.PathLike, optional
        Root the sinks write into (the runner's staging folder; default
        ``config.output_dir``).
    atlas : Atlas or None
        As :func:`ketabids.workflows.anatomical.init_anat_wf`.
    settings : dict or None
        The run's options, shown in each report.
    qc : bool
        ``False`` leaves out the QC node and its output (benchmarks compare the two).
    notes : dict or None
        Subject label -> lines for its report (e.g. a session left out by the input checks),
        shown in its first section.
    name : str
        Name of the workflow.

    Returns
    -------
    LiterateWorkflow
        The participant graph (no inputnode: every input is set at build time), with its
        ``manifest``.
    """
    output_dir = config.output_dir if output_dir is None else output_dir
    workflow = Workflow(name=name)
    subjects: dict[str, list[T1wInput]] = {}
    for item in inputs:
        subjects.setdefault(item.subject, []).append(item)
    graphs, run_methods = [], ""
    for subject, items in subjects.items():
        sections = []
        methods = ""
        qc_nodes = {}
        for index, item in enumerate(items):
            single_subject_wf = init_single_subject_wf(
                subject=item.subject, session=item.session, t1w=item.t1w, skipped=item.skipped,
                config=config, output_dir=output_dir, atlas=atlas, qc=qc,
                notes=(notes or {}).get(subject, ()) if index == 0 else (),
                name=f"single_subject_{item.key.replace('-', '')}_wf")
            methods = methods or single_subject_wf.visit_desc()
            sections.append(single_subject_wf)
            if qc:
                qc_nodes[f"{single_subject_wf.name}.{QC_NODE}"] = item.session or ""
        merge = pe.Node(niu.Merge(len(sections)), name=f"merge_{subject}",
                        run_without_submitting=True)
        report = pe.Node(AssembleReport(subject=subject, methods=methods,
                                        settings=settings or {},
                                        versions=software_versions(*IMAGING_STACK)),
                         name=f"report_{subject}")
        ds_report_wf = init_ds_report_wf(output_dir=output_dir, subject=subject,
                                         name=f"ds_report_{subject}_wf")
        for index, single_subject_wf in enumerate(sections, start=1):
            workflow.connect(single_subject_wf, "outputnode.report_section", merge, f"in{index}")
        workflow.connect([
            (merge, report, [("out", "sections")]),
            (report, ds_report_wf, [("out_file", "inputnode.report")]),
        ])
        # every output of the subject, whatever sinks the single-subject workflows hold
        sinks = [(wf, f"{path}.out_file") for wf in sections for path in sink_nodes(wf)]
        sinks.append((ds_report_wf, "outputnode.report"))
        done = pe.Node(niu.Merge(len(sinks)), name=done_node_name(subject),
                       run_without_submitting=True)
        for index, (source, port) in enumerate(sinks, start=1):
            workflow.connect(source, port, done, f"in{index}")
        graphs.append(SubjectGraph(
            subject=subject, done=done.name, qc=qc_nodes,
            sessions={wf.name: item.session or "" for wf, item in zip(sections, items)},
            elements=(*(wf.name for wf in sections), merge.name, report.name,
                      ds_report_wf.name, done.name)))
        run_methods = run_methods or methods  # every subject's text is the same
    workflow.manifest = ParticipantManifest(subjects=tuple(graphs),
                                            methods=run_methods or workflow.visit_desc())
    return workflow


def done_node_name(subject: str) -> str:
    """Name of the node that ends when every output of ``subject`` is written."""
    return f"done_{subject}"


def sink_nodes(workflow) -> list[str]:
    """Dotted names (relative to ``workflow``) of its :class:`DerivativesDataSink` nodes."""
    return [name for name in workflow.list_node_names()
            if isinstance(workflow.get_node(name).interface, DerivativesDataSink)]


def init_single_subject_wf(*, subject, session, t1w, config: ParticipantConfig,
                           output_dir=None, atlas: Atlas | None = None, skipped=(), qc=True,
                           notes=(), name=None):
    """One T1w of one subject (one session): processing, QC, outputs and its report section.

    Parameters
    ----------
    subject : str
        Participant label, without ``sub-``.
    session : str or None
        Session label, without ``ses-``.
    t1w : str or os.PathLike
        The T1w to process.
    config, output_dir, atlas
        As :func:`init_participant_wf`.
    skipped : sequence of str
        Further T1w images of this subject and session that were not used (named in the
        report and the methods text).
    qc : bool
        ``False`` leaves out the QC node and the QC record.
    notes : sequence of str
        Further lines for this T1w's report section.
    name : str or None
        Name of the workflow (default ``single_subject_<sub>[_ses<ses>]_wf``).

    Returns
    -------
    LiterateWorkflow
        The workflow, its methods text in ``__desc__``.

    Outputs
    -------
    report_section
        This T1w's HTML section of the subject's report.
    """
    name = name or f"single_subject_{subject}{'_ses' + session if session else ''}_wf"
    output_dir = config.output_dir if output_dir is None else output_dir
    bids_dir, template, processing = config.bids_dir, config.template, config.processing
    omp_nthreads, seed = config.omp_nthreads, config.seed
    resolution = processing.template_resolution
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

    anat_wf = init_anat_wf(template=template, processing=processing, atlas=atlas,
                           omp_nthreads=omp_nthreads, seed=seed)
    raw = [raw_uri(t1w, bids_dir)]
    common = dict(output_dir=output_dir, source_file=t1w, raw_sources=raw)
    ds_anat_wf = init_ds_anat_wf(**common)
    ds_template_wf = init_ds_template_wf(template=template, resolution=resolution, **common)
    ds_volumes_wf = init_ds_volumes_wf(template=template,
                                       atlas_name=atlas.name if atlas else None, **common)
    notes = list(notes)
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
    if qc:
        subject_qc = pe.Node(SubjectQC(subject=subject, session=session or "",
                                       template=template, template_resolution=resolution,
                                       omp_nthreads=omp_nthreads),
                             name=QC_NODE, n_procs=omp_nthreads, mem_gb=1.0)
        ds_qc_wf = init_ds_qc_wf(**common)
        workflow.connect([
            (bidssrc, subject_qc, [("t1w", "raw_t1w")]),
            (anat_wf, subject_qc, [("outputnode.t1w_preproc", "t1w"),
                                   ("outputnode.t1w_bias", "bias"),
                                   ("outputnode.t1w_mask", "brain_mask"),
                                   ("outputnode.t1w_tpms", "tpms"),
                                   ("outputnode.anat2std_xfm", "anat2std_xfm"),
                                   ("outputnode.std_jacobian", "jacobian"),
                                   ("outputnode.std_t1w", "std_t1w"),
                                   ("outputnode.prepare_info", "prepare_info")]),
            (subject_qc, ds_qc_wf, [("out_file", "inputnode.qc_metrics")]),
            (subject_qc, report_section, [("out_file", "qc_metrics")]),
        ])
    return workflow
