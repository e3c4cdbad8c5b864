"""GM on template-tissue-map phantoms under each bias-correction stage (segmentation alone).

For each phantom of :func:`ketabids.demo.tpm_phantom.tpm_phantom` (seed, contrast, storage in
turn) and each bias-field SD, the segmentation (:func:`ketabids.anat.segmentation
.segment_tissues`, the phantom's true mask, the template priors carried by the pose only) runs
on these inputs (``--inputs``):

* ``none``: the phantom image itself;
* ``head``: after the head-wide N4 (:func:`ketabids.anat.brain.n4_bias_correct`, the default
  mode's 8 mm grid, one span per axis);
* ``pipeline``: after the head-wide N4 and the tissue N4 inside the mask (200 mm x 4 levels,
  weighted by the GM + WM priors; ``--tissue-grid-mm`` 4 = default mode, 8 = fast), as the
  participant workflow feeds the segmentation;
* ``mixture_n4``, ``pure_n4``, ``prior_n4``: candidate tissue N4s that see the composition
  (:func:`class_informed_n4`): the same N4 on the head-N4 image divided by the intensity
  predicted from the partial-volume mixture's fractions, from a three-class posterior (no
  mixture classes), or from the template priors, its field dividing the head-N4 image.

Prints one JSON row per phantom and input: GM / WM volume error of the fractions against the
truth (%), GM / WM Dice of the hard labels against the truth's argmax, the SD of the log
ratio of the input to the noise-free, bias-free image (noise and any bias the input still
carries, or a field a correction added), and the CPU seconds of the input's correction::

    python benchmarks/tpm_n4.py --seeds 1 2 3 --bias 0 0.15 [--mm 2] [--inputs head pipeline]

``--aomic-work DIR`` runs the same inputs (from ``head`` on) on a real scan instead: ``DIR`` is
a kept participant work folder (``ketabids ... --keep-work -w DIR``) of AOMIC-PIOP2 sub-0001,
the head N4 image, brain mask and warped priors are read from it, and the segmentation is
compared with fMRIPrep's FAST labels (``/work/shared/data/reference-fmriprep``).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ketabids.anat.antsutil import make_image
from ketabids.anat.brain import (
    TISSUE_N4_ITERATIONS,
    TISSUE_N4_SPLINE_MM,
    n4_bias_correct,
)
from ketabids.anat.segmentation import (
    CLASSES,
    MIXTURE_PRIOR_WEIGHT,
    fit_tissue_mixture,
    segment_tissues,
)
from ketabids.demo.tpm_phantom import tpm_phantom

INPUTS = ("none", "head", "pipeline", "mixture_n4", "pure_n4", "prior_n4")
#: the candidate tissue N4s -> the ``prediction`` of :func:`class_informed_n4`
PREDICTIONS = {"mixture_n4": "mixture", "pure_n4": "pure", "prior_n4": "priors"}


def _arr(img):
    return np.asarray(img.dataobj, np.float64)


def _dice(a, b) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _priors_gm_wm(priors, affine):
    return make_image((_arr(priors["GM"]) + _arr(priors["WM"])).astype(np.float32), affine)


def class_informed_n4(head, mask, priors, *, prediction: str, grid_mm: float):
    """The tissue N4 fitted on ``head / predicted intensity`` (module docstring), weighted by
    the predicted GM + WM; ``prediction``: ``mixture``, ``pure`` or ``priors``. Returns the
    corrected image (``head`` divided by the field, the field's median in the mask 1)."""
    m = _arr(mask) > 0
    y = _arr(head)[m]
    pri = np.stack([np.clip(_arr(priors[k])[m], 0, 1) for k in CLASSES])
    pri[0] += np.clip(1.0 - pri.sum(0), 0.0, 1.0)  # as segment_tissues
    weight = 0.0 if prediction == "pure" else MIXTURE_PRIOR_WEIGHT
    fractions, info = fit_tissue_mixture(y, pri, mixture_weight=weight)
    if prediction == "priors":
        fractions = pri / np.maximum(pri.sum(0), 1e-12)
    mu = np.asarray(info["mu"])
    floor = 1e-3 * float(np.max(np.abs(mu)))
    ratio, w = np.zeros(m.shape, np.float32), np.zeros(m.shape, np.float32)
    ratio[m] = 1000.0 * np.maximum(y, floor) / np.maximum(np.tensordot(mu, fractions, 1), floor)
    w[m] = fractions[1] + fractions[2]
    _, field = n4_bias_correct(make_image(ratio, head.affine), mask,
                               weight=make_image(w, head.affine), grid_mm=grid_mm,
                               spline_mm=TISSUE_N4_SPLINE_MM, iterations=TISSUE_N4_ITERATIONS)
    b = _arr(field)
    b = np.where(m, b / np.median(b[m]), 1.0)
    return make_image(np.where(m & (b > 0), _arr(head) / np.where(b > 0, b, 1.0), _arr(head))
                      .astype(np.float32), head.affine)


def corrections(head, mask, priors, tissue_grid_mm: float, names) -> dict:
    """The corrected inputs ``names`` (from ``head`` on) with the CPU seconds of each."""
    out = {}
    for name in names:
        t0 = time.process_time()
        if name == "head":
            img = head
        elif name == "pipeline":
            img, _ = n4_bias_correct(head, mask, weight=_priors_gm_wm(priors, head.affine),
                                     grid_mm=tissue_grid_mm, spline_mm=TISSUE_N4_SPLINE_MM,
                                     iterations=TISSUE_N4_ITERATIONS)
        else:
            img = class_informed_n4(head, mask, priors, prediction=PREDICTIONS[name],
                                    grid_mm=tissue_grid_mm)
        out[name] = (img, time.process_time() - t0)
    return out


def inputs(ph, tissue_grid_mm: float, names=INPUTS) -> dict:
    """The segmentation's candidate inputs ``names`` (module docstring) with CPU seconds."""
    t0 = time.process_time()
    head, _ = n4_bias_correct(ph.t1w, grid_mm=8.0)
    head_cpu = time.process_time() - t0
    out = {"none": (ph.t1w, 0.0)} | corrections(
        head, ph.brain_mask, ph.priors_affine, tissue_grid_mm,
        [n for n in names if n != "none"])
    if "head" in out:
        out["head"] = (head, head_cpu)
    return {k: v for k, v in out.items() if k in names}


def aomic(work: str, tissue_grid_mm: float, names) -> list[dict]:
    """The inputs from ``head`` on, on AOMIC sub-0001's pipeline intermediates in ``work``,
    against fMRIPrep's FAST (module docstring)."""
    import sys
    from pathlib import Path

    import nibabel as nib

    sys.path.insert(0, str(Path(__file__).parent))
    from real_fidelity import compare_to_reference

    anat = next(Path(work).glob("**/anat_wf"))
    head = nib.load(next(anat.glob("n4/*_n4.nii*")))
    mask = nib.load(next(anat.glob("brain_extraction/*mask.nii*")))
    priors = {k: nib.load(next(anat.glob(f"warp_priors/*prior{k}.nii*"))) for k in CLASSES}
    ref_dir = Path("/work/shared/data/reference-fmriprep")
    ref = [nib.load(ref_dir / f"aomic-piop2_sub-0001_{s}.nii.gz")
           for s in ("dseg", "desc-brain_mask")]
    vox = float(abs(np.linalg.det(head.affine[:3, :3]))) / 1000
    rows = []
    for name, (img, cpu) in corrections(head, mask, priors, tissue_grid_mm,
                                        [n for n in names if n != "none"]).items():
        probs, dseg, _ = segment_tissues(img, mask, priors)
        c = compare_to_reference(dseg, mask, *ref)
        row = {"input": name, "dice_gm": c["dice_gm"], "dice_wm": c["dice_wm"],
               "dice_csf": c["dice_csf"], "dice_brain": c["dice_brain"],
               **{f"{k}_hard_pct": 100 * c["rel"][k] for k in ("gm", "wm", "csf")},
               **{f"{k.lower()}_ml": float(_arr(probs[k]).sum() * vox) for k in CLASSES},
               "correction_cpu_s": cpu}
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                          for k, v in row.items()}), flush=True)
    return rows


def accuracy(ph, img) -> dict:
    """Segment ``img`` and compare with the phantom's truth."""
    probs, dseg, _ = segment_tissues(img, ph.brain_mask, ph.priors_affine)
    mask = _arr(ph.brain_mask) > 0
    truth_frac = np.stack([_arr(ph.gm), _arr(ph.wm), _arr(ph.csf)])
    truth = np.where(mask, np.argmax(truth_frac, 0) + 1, 0)
    labels = np.asarray(dseg.dataobj)
    means = ph.params["contrast"]
    clean = (means["gm"] * truth_frac[0] + means["wm"] * truth_frac[1]
             + means["csf"] * truth_frac[2]) * 1000.0 / means["wm"]
    sel = mask & (clean > 400)  # tissue, away from the dark CSF where the noise floor rules
    log_ratio = np.log(np.maximum(_arr(img)[sel], 1.0) / clean[sel])
    return {
        "gm_pct": 100 * (_arr(probs["GM"]).sum() / _arr(ph.gm).sum() - 1),
        "wm_pct": 100 * (_arr(probs["WM"]).sum() / _arr(ph.wm).sum() - 1),
        "dice_gm": _dice(labels == 1, truth == 1), "dice_wm": _dice(labels == 2, truth == 2),
        "log_ratio_sd": float(np.std(log_ratio)),
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--bias", type=float, nargs="+", default=[0.0, 0.15],
                    help="SD of the phantoms' log bias field")
    ap.add_argument("--mm", type=float, default=2.0, help="phantom voxel size")
    ap.add_argument("--tissue-grid-mm", type=float, default=4.0,
                    help="fitting grid of the tissue N4 (default mode 4, fast mode 8)")
    ap.add_argument("--inputs", nargs="+", default=["none", "head", "pipeline"],
                    choices=INPUTS, help="which inputs to segment (module docstring)")
    ap.add_argument("--aomic-work", metavar="DIR",
                    help="a kept work folder of AOMIC sub-0001: run there (module docstring)")
    args = ap.parse_args(argv)
    if args.aomic_work:
        return aomic(args.aomic_work, args.tissue_grid_mm, args.inputs)
    contrasts = ("mprage3t", "flat", "mprage15t")  # the three CONTRASTS, in turn
    rows = []
    for seed in args.seeds:
        contrast = contrasts[(seed - 1) % len(contrasts)]
        orientation = ("RAS", "LIA")[seed % 2 == 0]
        for bias in args.bias:
            ph = tpm_phantom(seed=seed, resolution=args.mm, contrast=contrast, bias=bias,
                             orientation=orientation)
            for name, (img, cpu) in inputs(ph, args.tissue_grid_mm, args.inputs).items():
                row = {"seed": seed, "contrast": contrast, "orientation": orientation,
                       "bias": bias, "input": name, **accuracy(ph, img),
                       "correction_cpu_s": cpu}
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                  for k, v in row.items()}), flush=True)
    return rows


if __name__ == "__main__":
    main()
