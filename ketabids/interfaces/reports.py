"""Interfaces building the participant HTML report (:mod:`ketabids.reports.participant`)."""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _ReportSectionInputSpec(BaseInterfaceInputSpec):
    subject = traits.Str(mandatory=True)
    session = traits.Str("", usedefault=True)
    source_file = traits.Str(mandatory=True, desc="input T1w")
    notes = traits.List(traits.Str, desc="notes decided when building the workflow")
    conform_notes = traits.List(traits.Str, desc="what conforming changed")
    template = traits.Str(mandatory=True)
    template_resolution = traits.Int(1, usedefault=True)
    t1w_preproc = File(exists=True, mandatory=True)
    t1w_mask = File(exists=True, mandatory=True)
    t1w_dseg = File(exists=True)
    std_t1w = File(exists=True)
    skull_stripped = traits.Bool(False, usedefault=True)
    volumes = File(exists=True, desc="desc-volumes_morph.tsv")
    regional = File(exists=True, desc="regional volumes TSV")
    qc_metrics = File(exists=True, desc="QC record (desc-qc_metrics.json)")


class _OutFileSpec(TraitedSpec):
    out_file = File(exists=True)


class ReportSection(SimpleInterface):
    """One T1w's section of the report (figures embedded), as an HTML fragment."""

    input_spec = _ReportSectionInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import pandas as pd

        from ketabids.reports.participant import (
            SectionFigures,
            plot_normalisation,
            plot_segmentation,
            render_section,
        )
        from ketabids.templates import get_template

        inputs = self.inputs

        def opt(name):
            value = getattr(inputs, name)
            return value if isdefined(value) else None

        seg_png = plot_segmentation(nib.load(inputs.t1w_preproc), nib.load(inputs.t1w_mask),
                                    nib.load(inputs.t1w_dseg) if opt("t1w_dseg") else None)
        norm_png = None
        if opt("std_t1w"):
            tpl = get_template(inputs.template, inputs.template_resolution)
            norm_png = plot_normalisation(nib.load(inputs.std_t1w), nib.load(tpl.brain),
                                          nib.load(tpl.wm), nib.load(tpl.mask))
        volumes = None
        if opt("volumes"):
            volumes = pd.read_csv(inputs.volumes, sep="\t").to_dict("records")
        regional = None
        if opt("regional"):
            regional = pd.read_csv(inputs.regional, sep="\t").to_dict("records")
        notes = list(opt("notes") or []) + list(opt("conform_notes") or [])
        qc = None
        if opt("qc_metrics"):
            import json

            qc = json.loads(Path(inputs.qc_metrics).read_text())
        text = render_section(subject=inputs.subject, session=inputs.session or None,
                              source_file=inputs.source_file, notes=notes,
                              skull_stripped=inputs.skull_stripped,
                              figures=SectionFigures(segmentation=seg_png,
                                                     normalisation=norm_png),
                              volumes=volumes, regional=regional,
                              template=inputs.template, qc=qc)
        out = Path(runtime.cwd) / "report_section.html"
        out.write_text(text, encoding="utf-8")
        self._results["out_file"] = str(out)
        return runtime


class _AssembleReportInputSpec(BaseInterfaceInputSpec):
    subject = traits.Str(mandatory=True)
    sections = InputMultiObject(File(exists=True), mandatory=True)
    methods = traits.Str("", usedefault=True)
    settings = traits.Dict(desc="run settings shown in the report")
    versions = traits.Dict(desc="software versions")


class AssembleReport(SimpleInterface):
    """The subject's complete, self-contained HTML report."""

    input_spec = _AssembleReportInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        from ketabids.reports.participant import assemble_report

        inputs = self.inputs
        sections = [Path(p).read_text(encoding="utf-8") for p in inputs.sections]
        text = assemble_report(subject=inputs.subject, sections=sections, methods=inputs.methods,
                               settings=inputs.settings if isdefined(inputs.settings) else {},
                               versions=inputs.versions if isdefined(inputs.versions) else {})
        out = Path(runtime.cwd) / f"sub-{inputs.subject}.html"
        out.write_text(text, encoding="utf-8")
        self._results["out_file"] = str(out)
        return runtime
