"""The per-subject QC node: :func:`ketabids.qc.subject.compute_subject_qc` + the rules.

:class:`SubjectQC` writes the subject's QC record (ids, verdict, reasons, every metric; see
:func:`ketabids.qc.table.subject_record`) as ``qc_metrics.json`` in the node's folder; the
participant workflow stores it as ``sub-X[_ses-Y]_desc-qc_metrics.json``. When the metrics
themselves cannot be computed, the record holds the header metrics of the raw input and the
error (verdict fail): the subject's derivatives are still written, and the gate says why it
cannot vouch for them.
"""
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

from ketabids.templates import DEFAULT_TEMPLATE


class _SubjectQCInputSpec(BaseInterfaceInputSpec):
    subject = traits.Str(mandatory=True, desc="participant label (without sub-)")
    session = traits.Str("", usedefault=True, desc="session label (without ses-)")
    raw_t1w = File(exists=True, mandatory=True, desc="input T1w (header metrics)")
    t1w = File(exists=True, mandatory=True, desc="conformed, bias-corrected T1w")
    bias = File(exists=True, desc="N4 bias field")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask")
    tpms = InputMultiObject(File(exists=True), mandatory=True,
                            desc="native GM, WM, CSF probability maps, in this order")
    anat2std_xfm = File(exists=True, desc="T1w -> template transform (.h5)")
    template = traits.Str(DEFAULT_TEMPLATE, usedefault=True, desc="template name")
    template_resolution = traits.Enum(1, 2, usedefault=True, desc="template grid (mm)")
    jacobian = File(exists=True, desc="Jacobian determinant on the template grid")
    std_t1w = File(exists=True, desc="normalised T1w on the template grid")
    omp_nthreads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads")
    prepare_info = File(exists=True, desc="JSON of the prepare step (truncation, field of "
                        "view): its metrics join the record")


class _SubjectQCOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="QC record (JSON)")
    verdict = traits.Enum("pass", "warn", "fail", desc="QC verdict")
    reasons = traits.List(traits.Str, desc="reasons of a warn/fail verdict")


class SubjectQC(SimpleInterface):
    """QC metrics, verdict and reasons of one processed T1w."""

    input_spec = _SubjectQCInputSpec
    output_spec = _SubjectQCOutputSpec

    def _run_interface(self, runtime):
        from ketabids.io import write_json
        from ketabids.qc.header import header_metrics
        from ketabids.qc.subject import compute_subject_qc
        from ketabids.qc.table import subject_record
        from ketabids.templates import get_template

        inputs = self.inputs

        def opt(name):
            value = getattr(inputs, name)
            return value if isdefined(value) else None

        if len(inputs.tpms) != 3:
            raise ValueError(f"SubjectQC: tpms needs GM, WM, CSF maps, got {len(inputs.tpms)}")
        try:
            metrics = compute_subject_qc(
                raw_t1w=inputs.raw_t1w, t1w=inputs.t1w, brain_mask=inputs.brain_mask,
                tpms=dict(zip(("GM", "WM", "CSF"), inputs.tpms)), bias=opt("bias"),
                anat2std_xfm=opt("anat2std_xfm"),
                template=get_template(inputs.template, int(inputs.template_resolution)),
                jacobian=opt("jacobian"), std_t1w=opt("std_t1w"),
                omp_nthreads=inputs.omp_nthreads)
        except Exception as exc:  # noqa: BLE001 - any failure of the metrics is a QC fail
            metrics = dict(header_metrics(inputs.raw_t1w))
            message = str(exc).splitlines()[0] if str(exc) else ""
            metrics["error"] = f"QC metrics failed: {type(exc).__name__}: {message}"[:300]
        if opt("prepare_info"):
            from ketabids.qc.subject import prepare_metrics

            metrics.update(prepare_metrics(inputs.prepare_info))
        record = subject_record(inputs.subject, inputs.session or None, metrics)
        out = write_json(Path(runtime.cwd) / "qc_metrics.json", record)
        self._results["out_file"] = str(out)
        self._results["verdict"] = record["verdict"]
        self._results["reasons"] = [str(r) for r in record["reasons"]]
        return runtime
