"""Every write into OUTPUT_DIR happens here, through :class:`DerivativesDataSink` nodes.

One ``init_ds_*_wf`` per group of outputs (sMRIPrep's ``workflows/outputs.py`` layout). Names
follow :func:`ketabids.bids.derivatives.derivative_relpath`; ``Sources`` point inside the
derivative dataset (``bids::`` URIs), ``RawSources`` at the input T1w (``bids:raw:`` URI, ``raw``
being the input dataset).
"""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketabids import __version__
from ketabids.bids.derivatives import (
    REGIONAL_DICTIONARY,
    VOLUMES_DICTIONARY,
    derivative_relpath,
)
from ketabids.interfaces.bids import DerivativesDataSink
from ketabids.workflows import LiterateWorkflow as Workflow

TPM_LABELS = ["GM", "WM", "CSF"]
STD_LABELS = ["GM", "WM"]

def _template_reference(template: str) -> str:
    """A URI describing the template (TemplateFlow's page for it)."""
    return f"https://www.templateflow.org/browse/#tpl-{template}"


def _uri(source_file, **kwargs) -> str:
    return "bids::" + derivative_relpath(source_file, **kwargs)


def _sink(name, *, output_dir, source_file, raw_sources, mapnode_fields=None, **kwargs):
    iface = DerivativesDataSink(base_directory=str(output_dir), source_file=[str(source_file)],
                                raw_sources=list(raw_sources), **kwargs)
    # overwrite=True: sinks always run (cheap: unchanged files are not rewritten), so outputs
    # deleted from OUTPUT_DIR come back on a rerun even when Nipype's cache says "done"
    if mapnode_fields:
        return pe.MapNode(iface, iterfield=mapnode_fields, name=name, run_without_submitting=True,
                          overwrite=True)
    return pe.Node(iface, name=name, run_without_submitting=True, overwrite=True)


def init_ds_anat_wf(*, output_dir, source_file, raw_sources, name="ds_anat_wf"):
    """Native-space outputs: preprocessed T1w, brain mask, dseg and tissue probability maps.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from ketabids.workflows.outputs import init_ds_anat_wf
            wf = init_ds_anat_wf(output_dir=".", source_file="sub-01_T1w.nii.gz",
                                 raw_sources=["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"])

    Parameters
    ----------
    output_dir : str or os.PathLike
        Root of the derivative dataset the sinks write into (the runner passes a staging
        folder, moved into OUTPUT_DIR when the subject is complete).
    source_file : str or os.PathLike
        The input T1w: its entities (``sub``, ``ses``, ``acq``, ...) name the outputs.
    raw_sources : list of str
        ``bids:raw:`` URIs of the input files, written as ``RawSources`` in the sidecars.
    name : str
        Name of the workflow.

    Returns
    -------
    LiterateWorkflow
        The sub-workflow (no ``__desc__``: writing adds nothing to the methods).

    Inputs
    ------
    t1w_preproc
        Conformed, bias-corrected T1w (``desc-preproc_T1w``).
    t1w_mask
        Brain mask (``desc-brain_mask``, uint8).
    t1w_dseg
        Tissue labels 1 GM, 2 WM, 3 CSF (``dseg``, uint8).
    t1w_tpms
        GM, WM and CSF fraction maps, in that order (``label-<L>_probseg``).
    skull_stripped
        Whether the input was already skull-stripped (recorded in the T1w's sidecar).

    Outputs
    -------
    t1w_preproc, t1w_mask, t1w_dseg, t1w_tpms
        Paths of the written files.

    Examples
    --------
    >>> wf = init_ds_anat_wf(output_dir="out", source_file="sub-01_T1w.nii.gz", raw_sources=[])
    >>> sorted(wf.list_node_names())  # doctest: +NORMALIZE_WHITESPACE
    ['ds_t1w_dseg', 'ds_t1w_mask', 'ds_t1w_preproc', 'ds_t1w_tpms', 'inputnode', 'outputnode']
    """
    workflow = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "t1w_preproc", "t1w_mask", "t1w_dseg", "t1w_tpms", "skull_stripped"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["t1w_preproc", "t1w_mask", "t1w_dseg",
                                                       "t1w_tpms"]), name="outputnode")
    common = dict(output_dir=output_dir, source_file=source_file, raw_sources=raw_sources)
    preproc_uri = _uri(source_file, suffix="T1w", extension=".nii.gz", desc="preproc")

    native = {"SpatialReference": preproc_uri}
    ds_t1w_preproc = _sink("ds_t1w_preproc", desc="preproc", suffix="T1w", meta_dict={
        "Description": "T1w conformed to RAS+ float32 and corrected for intensity "
                       "non-uniformity (N4)"}, **common)
    ds_t1w_mask = _sink("ds_t1w_mask", desc="brain", suffix="mask", data_dtype="uint8",
                        sources=[preproc_uri], meta_dict=dict(
                            native, Type="Brain", Description="Brain mask"), **common)
    ds_t1w_dseg = _sink("ds_t1w_dseg", suffix="dseg", data_dtype="uint8", sources=[preproc_uri],
                        meta_dict=dict(native, Description="Tissue labels (argmax of the "
                                       "tissue fractions): 1=GM 2=WM 3=CSF (sMRIPrep "
                                       "order; look-up table: dseg.tsv at the root)"), **common)
    ds_t1w_tpms = _sink("ds_t1w_tpms", suffix="probseg", sources=[preproc_uri],
                        mapnode_fields=["in_file", "label"], meta_dict=dict(
                            native, Description="Tissue fraction map (partial-volume "
                                                "mixture with template priors)"), **common)
    ds_t1w_tpms.inputs.label = TPM_LABELS

    workflow.connect([
        (inputnode, ds_t1w_preproc, [("t1w_preproc", "in_file"),
                                     ("skull_stripped", "skull_stripped")]),
        (inputnode, ds_t1w_mask, [("t1w_mask", "in_file")]),
        (inputnode, ds_t1w_dseg, [("t1w_dseg", "in_file")]),
        (inputnode, ds_t1w_tpms, [("t1w_tpms", "in_file")]),
        (ds_t1w_preproc, outputnode, [("out_file", "t1w_preproc")]),
        (ds_t1w_mask, outputnode, [("out_file", "t1w_mask")]),
        (ds_t1w_dseg, outputnode, [("out_file", "t1w_dseg")]),
        (ds_t1w_tpms, outputnode, [("out_file", "t1w_tpms")]),
    ])
    return workflow


def init_ds_template_wf(*, output_dir, source_file, raw_sources, template, resolution,
                        name="ds_template_wf"):
    """Template-space outputs: T1w, GM/WM maps (plain and modulated) and both transforms.

    The modulated maps' sidecars state ``Modulation: jacobian`` and how to turn a map into a
    volume (sum x voxel volume = native tissue volume).

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from ketabids.workflows.outputs import init_ds_template_wf
            wf = init_ds_template_wf(output_dir=".", source_file="sub-01_T1w.nii.gz",
                                     raw_sources=[], template="MNI152NLin2009aSym",
                                     resolution=1)

    Parameters
    ----------
    output_dir : str or os.PathLike
        Root of the derivative dataset the sinks write into (the runner passes a staging
        folder, moved into OUTPUT_DIR when the subject is complete).
    source_file : str or os.PathLike
        The input T1w: its entities (``sub``, ``ses``, ``acq``, ...) name the outputs.
    raw_sources : list of str
        ``bids:raw:`` URIs of the input files, written as ``RawSources`` in the sidecars.
    template : str
        Template name: the ``space-`` entity and the ``to``/``from`` of the transforms.
    resolution : int
        Grid (mm) of the template-space maps, recorded as ``Resolution`` in the sidecars.
    name : str
        Name of the workflow.

    Returns
    -------
    LiterateWorkflow
        The sub-workflow.

    Inputs
    ------
    std_t1w
        T1w resampled to the template.
    std_tpms
        GM and WM fractions resampled to the template (not modulated).
    std_mod
        GM and WM fractions warped and multiplied by the Jacobian determinant (VBM maps).
    anat2std_xfm, std2anat_xfm
        ANTs composite transforms (``.h5``) T1w -> template and back.
    skull_stripped
        Whether the input was already skull-stripped.

    Outputs
    -------
    std_t1w, std_tpms, std_mod, anat2std_xfm, std2anat_xfm
        Paths of the written files.
    """
    workflow = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "std_t1w", "std_tpms", "std_mod", "anat2std_xfm", "std2anat_xfm", "skull_stripped"]),
        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["std_t1w", "std_tpms", "std_mod",
                                                       "anat2std_xfm", "std2anat_xfm"]),
                         name="outputnode")
    common = dict(output_dir=output_dir, source_file=source_file, raw_sources=raw_sources)
    xfm_uri = _uri(source_file, suffix="xfm", extension=".h5", from_="T1w", to=template,
                   mode="image")
    preproc_uri = _uri(source_file, suffix="T1w", extension=".nii.gz", desc="preproc")
    tpl_meta = {"Template": template, "Resolution": float(resolution),
                "SpatialReference": _template_reference(template)}

    ds_std_t1w = _sink("ds_std_t1w", space=template, desc="preproc", suffix="T1w",
                       sources=[preproc_uri, xfm_uri], meta_dict=dict(
                           tpl_meta, Description="Preprocessed T1w resampled to the template"),
                       **common)
    ds_std_tpms = _sink("ds_std_tpms", space=template, suffix="probseg",
                        mapnode_fields=["in_file", "label", "sources"], meta_dict=dict(
                            tpl_meta, Description="Tissue probability resampled to the "
                                                  "template (not modulated)"), **common)
    ds_std_tpms.inputs.label = STD_LABELS
    ds_std_tpms.inputs.sources = [
        [_uri(source_file, suffix="probseg", extension=".nii.gz", label=lab), xfm_uri]
        for lab in STD_LABELS
    ]
    mod_meta = dict(tpl_meta, Modulation="jacobian", SoftwareVersion=__version__,
                    Description="Tissue probability warped to the template and multiplied by the "
                                "Jacobian determinant of the warp: sum x voxel volume = native "
                                "tissue volume (mL / 1000 per mm3)")
    ds_std_mod = _sink("ds_std_mod", space=template, desc="modulated", suffix="probseg",
                       mapnode_fields=["in_file", "label", "sources"], meta_dict=mod_meta,
                       **common)
    ds_std_mod.inputs.label = STD_LABELS
    ds_std_mod.inputs.sources = ds_std_tpms.inputs.sources
    ds_anat2std_xfm = _sink("ds_anat2std_xfm", from_="T1w", to=template, mode="image",
                            suffix="xfm", sidecar=False, **common)
    ds_std2anat_xfm = _sink("ds_std2anat_xfm", from_=template, to="T1w", mode="image",
                            suffix="xfm", sidecar=False, **common)

    workflow.connect([
        (inputnode, ds_std_t1w, [("std_t1w", "in_file"), ("skull_stripped", "skull_stripped")]),
        (inputnode, ds_std_tpms, [("std_tpms", "in_file")]),
        (inputnode, ds_std_mod, [("std_mod", "in_file")]),
        (inputnode, ds_anat2std_xfm, [("anat2std_xfm", "in_file")]),
        (inputnode, ds_std2anat_xfm, [("std2anat_xfm", "in_file")]),
        (ds_std_t1w, outputnode, [("out_file", "std_t1w")]),
        (ds_std_tpms, outputnode, [("out_file", "std_tpms")]),
        (ds_std_mod, outputnode, [("out_file", "std_mod")]),
        (ds_anat2std_xfm, outputnode, [("out_file", "anat2std_xfm")]),
        (ds_std2anat_xfm, outputnode, [("out_file", "std2anat_xfm")]),
    ])
    return workflow


def init_ds_volumes_wf(*, output_dir, source_file, raw_sources, template, atlas_name=None,
                       name="ds_volumes_wf"):
    """Volume tables: ``desc-volumes_morph.tsv`` and, with an atlas, regional GM volumes.

    Parameters
    ----------
    output_dir : str or os.PathLike
        Root of the derivative dataset the sinks write into (the runner passes a staging
        folder, moved into OUTPUT_DIR when the subject is complete).
    source_file : str or os.PathLike
        The input T1w: its entities (``sub``, ``ses``, ``acq``, ...) name the outputs.
    raw_sources : list of str
        ``bids:raw:`` URIs of the input files, written as ``RawSources`` in the sidecars.
    template : str
        Template name (``space-`` entity of the regional table).
    atlas_name : str or None
        Name of the atlas (``seg-`` entity); ``None``: no regional table and no ``regional``
        field.
    name : str
        Name of the workflow.

    Returns
    -------
    LiterateWorkflow
        The sub-workflow.

    Inputs
    ------
    volumes
        TSV of ``tiv_ml``, ``gm_ml``, ``wm_ml``, ``csf_ml``.
    regional
        TSV of GM volume per atlas region (only with ``atlas_name``).

    Outputs
    -------
    volumes, regional
        Paths of the written tables.

    Examples
    --------
    >>> wf = init_ds_volumes_wf(output_dir="out", source_file="sub-01_T1w.nii.gz",
    ...                         raw_sources=[], template="MNI152NLin2009aSym")
    >>> sorted(wf.list_node_names())
    ['ds_volumes', 'inputnode', 'outputnode']
    >>> wf = init_ds_volumes_wf(output_dir="out", source_file="sub-01_T1w.nii.gz",
    ...                         raw_sources=[], template="MNI152NLin2009aSym", atlas_name="HO")
    >>> sorted(wf.list_node_names())
    ['ds_regional', 'ds_volumes', 'inputnode', 'outputnode']
    """
    workflow = Workflow(name=name)
    fields = ["volumes"] + (["regional"] if atlas_name else [])
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=fields), name="outputnode")
    common = dict(output_dir=output_dir, source_file=source_file, raw_sources=raw_sources)
    sources = [_uri(source_file, suffix="probseg", extension=".nii.gz", label=lab)
               for lab in TPM_LABELS]
    sources.append(_uri(source_file, suffix="mask", extension=".nii.gz", desc="brain"))
    ds_volumes = _sink("ds_volumes", desc="volumes", suffix="morph", extension=".tsv",
                       sources=sources, meta_dict=VOLUMES_DICTIONARY, **common)
    workflow.connect([
        (inputnode, ds_volumes, [("volumes", "in_file")]),
        (ds_volumes, outputnode, [("out_file", "volumes")]),
    ])
    if atlas_name:
        mod_uri = _uri(source_file, suffix="probseg", extension=".nii.gz", space=template,
                       label="GM", desc="modulated")
        ds_regional = _sink("ds_regional", space=template, seg=atlas_name, desc="regional",
                            suffix="morph", extension=".tsv", sources=[mod_uri],
                            meta_dict=REGIONAL_DICTIONARY, **common)
        workflow.connect([
            (inputnode, ds_regional, [("regional", "in_file")]),
            (ds_regional, outputnode, [("out_file", "regional")]),
        ])
    return workflow


def init_ds_report_wf(*, output_dir, subject, name="ds_report_wf"):
    """The subject's HTML report, ``sub-<label>.html`` at the dataset root.

    Parameters
    ----------
    output_dir : str or os.PathLike
        Root of the derivative dataset.
    subject : str
        Participant label, without ``sub-``.
    name : str
        Name of the workflow.

    Returns
    -------
    LiterateWorkflow
        The sub-workflow.

    Inputs
    ------
    report
        The assembled HTML report (all sessions of the subject).

    Outputs
    -------
    report
        Path of the written ``sub-<label>.html``.
    """
    workflow = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["report"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["report"]), name="outputnode")
    ds_report = pe.Node(
        DerivativesDataSink(base_directory=str(output_dir), source_file=[f"sub-{subject}_T1w"],
                            suffix="report", root_name=f"sub-{subject}.html"),
        name="ds_report", run_without_submitting=True, overwrite=True)
    workflow.connect([
        (inputnode, ds_report, [("report", "in_file")]),
        (ds_report, outputnode, [("out_file", "report")]),
    ])
    return workflow


def init_ds_qc_wf(*, output_dir, source_file, raw_sources, name="ds_qc_wf"):
    """The subject's QC record, ``sub-X[_ses-Y]_desc-qc_metrics.json``.

    No sidecar: the JSON is its own description; ``qc.json`` at the root is the data
    dictionary, and :data:`ketabids.qc.table.QC_BIDSIGNORE` keeps the validator quiet about the
    name.

    Parameters
    ----------
    output_dir : str or os.PathLike
        Root of the derivative dataset the sinks write into (the runner passes a staging
        folder, moved into OUTPUT_DIR when the subject is complete).
    source_file : str or os.PathLike
        The input T1w: its entities (``sub``, ``ses``, ``acq``, ...) name the outputs.
    raw_sources : list of str
        ``bids:raw:`` URIs of the input files, written as ``RawSources`` in the sidecars.
    name : str
        Name of the workflow.

    Returns
    -------
    LiterateWorkflow
        The sub-workflow.

    Inputs
    ------
    qc_metrics
        The QC record (JSON: verdict, reasons, every metric) from
        :class:`ketabids.interfaces.qc.SubjectQC`.

    Outputs
    -------
    qc_metrics
        Path of the written record.
    """
    workflow = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["qc_metrics"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["qc_metrics"]), name="outputnode")
    ds_qc_metrics = _sink("ds_qc_metrics", desc="qc", suffix="metrics", extension=".json",
                          sidecar=False, output_dir=output_dir, source_file=source_file,
                          raw_sources=raw_sources)
    workflow.connect([
        (inputnode, ds_qc_metrics, [("qc_metrics", "in_file")]),
        (ds_qc_metrics, outputnode, [("out_file", "qc_metrics")]),
    ])
    return workflow
