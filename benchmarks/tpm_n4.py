"""GM on template-tissue-map phantoms under each bias-correction stage (segmentation alone).

For each phantom of :func:`ketabids.demo.tpm_phantom.tpm_phantom` (seed, contrast, storage in
turn) and each bias-field SD, the segmentation (:func:`ketabids.anat.segmentation
.segment_tissues`, the phantom's true mask, the template priors carried by the pose only) runs
on three inputs:

* ``none``: the phantom image itself;
* ``head``: after the head-wide N4 (:func:`ketabids.anat.brain.n4_bias_correct`, the default
  mode's 8 mm grid, one span per axis);
* ``pipeline``: after the head-wide N4 and the tissue N4 inside the mask (200 mm x 4 levels,
  weighted by the GM + WM priors; ``--tissue-grid-mm`` 4 = default mode, 8 = fast), as the
  participant workflow feeds the segmentation.

Prints one JSON row per phantom and input: GM / WM volume error of the fractions against the
truth (%), GM / WM Dice of the hard labels against the truth's argmax, and the SD of the log
ratio of the input to the noise-free, bias-free image (noise and any bias the input still
carries, or a field a correction added)::

    python benchmarks/tpm_n4.py --seeds 1 2 3 --bias 0 0.15 [--mm 2]
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
from ketabids.anat.segmentation import segment_tissues
from ketabids.demo.tpm_phantom import tpm_phantom


def _arr(img):
    return np.asarray(img.dataobj, np.float64)


def _dice(a, b) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def inputs(ph, tissue_grid_mm: float) -> dict:
    """The segmentation's three candidate inputs (module docstring)."""
    head, _ = n4_bias_correct(ph.t1w, grid_mm=8.0)
    weight = make_image((_arr(ph.priors_affine["GM"]) + _arr(ph.priors_affine["WM"]))
                        .astype(np.float32), ph.t1w.affine)
    tissue, _ = n4_bias_correct(head, ph.brain_mask, weight=weight, grid_mm=tissue_grid_mm,
                                spline_mm=TISSUE_N4_SPLINE_MM, iterations=TISSUE_N4_ITERATIONS)
    return {"none": ph.t1w, "head": head, "pipeline": tissue}


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
    args = ap.parse_args(argv)
    contrasts = ("mprage3t", "flat", "mprage15t")  # the three CONTRASTS, in turn
    rows = []
    for seed in args.seeds:
        contrast = contrasts[(seed - 1) % len(contrasts)]
        orientation = ("RAS", "LIA")[seed % 2 == 0]
        for bias in args.bias:
            ph = tpm_phantom(seed=seed, resolution=args.mm, contrast=contrast, bias=bias,
                             orientation=orientation)
            t0 = time.perf_counter()
            for name, img in inputs(ph, args.tissue_grid_mm).items():
                row = {"seed": seed, "contrast": contrast, "orientation": orientation,
                       "bias": bias, "input": name, **accuracy(ph, img)}
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                  for k, v in row.items()}), flush=True)
            print(f"# {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


if __name__ == "__main__":
    main()
