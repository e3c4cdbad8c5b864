"""Synthetic (perfect) participant-level derivatives for testing the group level fast.

:func:`write_synthetic_derivatives` writes, for every row of a ``participants.tsv``, the
template-space Jacobian-modulated GM map of :func:`ketabids.demo.phantom.simulate_template_gm`
(what the participant level would output if it were perfect) and its volumes, in the layout the
group level reads, so the group level can be tested on 100-150 subjects in seconds. The
dataset description, ``.bidsignore`` and volumes data dictionary are those of the real
derivatives (:mod:`ketabids.bids.derivatives`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ketabids.bids.derivatives import VOLUMES_DICTIONARY, derivative_description, write_bidsignore
from ketabids.demo.participants import planted_label
from ketabids.demo.phantom import (
    DEFAULT_EFFECT_SIZE,
    DEFAULT_VARIATION,
    REFERENCE_AGE,
    draw_head_scale,
    nifti_image,
    simulate_template_gm,
    subject_rng,
    template_maps,
    template_volumes,
)
from ketabids.group.labels import is_response
from ketabids.io import save_nifti, write_json, write_tsv


def synthetic_description(bids_dir=None) -> dict:
    """The derivative ``dataset_description.json`` content
    (:func:`ketabids.bids.derivatives.derivative_description`) with a GeneratedBy note saying
    that no imaging was run; without ``bids_dir`` there is no source dataset to cite."""
    source = Path(bids_dir if bids_dir is not None else ".").resolve()
    description = derivative_description(source)
    if bids_dir is None:
        del description["SourceDatasets"]
    description["GeneratedBy"][0]["Description"] = (
        "ketabids.demo.derivatives.write_synthetic_derivatives: synthetic template-space VBM "
        "maps with a planted effect (no imaging was run)")
    return description


def write_synthetic_derivatives(
    bids_dir,
    out_dir,
    *,
    template_resolution: int = 2,
    seed: int = 0,
    effect_size: float = DEFAULT_EFFECT_SIZE,
    variation: float = DEFAULT_VARIATION,
    site_effect: float = 0.0,
    null: bool = False,
    participants=None,
    truth_tsv=None,
):
    """Write the participant-level derivatives the group level reads, without any imaging.

    For every row of ``bids_dir/participants.tsv`` (or of the DataFrame ``participants``;
    columns ``participant_id, age, sex, site, arm, madrs_pre, madrs_24h``) this writes into
    ``out_dir`` (the derivative dataset root)::

        dataset_description.json  (DatasetType derivative)   .bidsignore (*_morph.*)
        sub-X/anat/sub-X_space-MNI152NLin2009aSym_label-GM_desc-modulated_probseg.nii.gz (+ .json)
        sub-X/anat/sub-X_desc-volumes_morph.tsv (+ .json data dictionary)

    The image label comes from the MADRS columns (:func:`planted_label`): responders
    (drop >= 50 %) in the ketamine arm get ``+effect_size/2`` frontal / ``-effect_size/2``
    cerebellar GM, non-responders the opposite, saline participants no effect; ``null=True``
    plants the effect by an independent coin flip instead. Per-subject randomness (anatomy,
    head size) is seeded by ``(seed, participant_id)``, so a subject's map does not depend on
    who else is in the table. ``site_effect`` adds a per-site multiplicative scanner pattern.
    ``truth_tsv`` (optional path, keep it outside ``out_dir``) receives the hidden truth
    (participant_id, planted label, head_scale, volumes). Returns the truth DataFrame.
    """
    import pandas as pd

    from ketabids import __version__
    from ketabids.templates import get_template

    template = get_template(resolution=template_resolution)
    maps, affine = template_maps(template)
    if participants is None:
        tsv = Path(bids_dir) / "participants.tsv"
        if not tsv.is_file():
            from ketabids.errors import MissingInputError

            raise MissingInputError(f"{tsv}: not found; write a participants.tsv first")
        participants = pd.read_csv(tsv, sep="\t", dtype={"participant_id": str})
    missing = [c for c in ("participant_id", "madrs_pre", "madrs_24h") if c not in participants]
    if missing:
        from ketabids.errors import BadDataError

        raise BadDataError(f"participants table lacks column(s) {missing}; add them")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "dataset_description.json", synthetic_description(bids_dir))
    write_bidsignore(out_dir)
    null_rng = np.random.default_rng([int(seed), 7919])
    rows = []
    for _, row in participants.iterrows():
        pid = str(row["participant_id"])
        sub = pid if pid.startswith("sub-") else f"sub-{pid}"
        rng = subject_rng(seed, sub)
        label = planted_label(row, null=null, rng=null_rng)
        age = float(row.get("age", REFERENCE_AGE))
        scale = draw_head_scale(row.get("sex", "F"), rng, template)
        gm = simulate_template_gm(
            template,
            seed=rng,
            responder=label,
            effect_size=effect_size,
            age=age,
            head_scale=scale,
            variation=variation,
            site=str(row.get("site", "A")),
            site_effect=site_effect,
        )
        anat = out_dir / sub / "anat"
        stem = f"{sub}_space-{template.space}_label-GM_desc-modulated_probseg"
        save_nifti(nifti_image(gm, affine, code=4), anat / f"{stem}.nii.gz")
        write_json(
            anat / f"{stem}.json",
            {
                "Template": template.space,
                "Resolution": float(template.resolution),
                "Modulation": "jacobian",
                "SoftwareVersion": __version__,
                "Sources": [f"bids:raw:{sub}/anat/{sub}_T1w.nii.gz"],
                "Description": "Synthetic Jacobian-modulated GM map (ketabids.demo.phantom)",
            },
        )
        vols = template_volumes(gm, template, head_scale=scale, age=age)
        table = pd.DataFrame([{k: round(vols[k], 3) for k in VOLUMES_DICTIONARY}])
        write_tsv(table, anat / f"{sub}_desc-volumes_morph.tsv")
        write_json(anat / f"{sub}_desc-volumes_morph.json", VOLUMES_DICTIONARY)
        rows.append(
            {
                "participant_id": sub,
                "arm": row.get("arm", "ketamine"),
                "responder": bool(is_response(row["madrs_pre"], row["madrs_24h"])),
                "planted": "none" if label is None else ("responder" if label else "nonresponder"),
                "head_scale": round(scale, 5),
                **{k: round(v, 3) for k, v in vols.items()},
            }
        )
    truth = pd.DataFrame(rows)
    if truth_tsv is not None:
        write_tsv(truth, truth_tsv)
    return truth

