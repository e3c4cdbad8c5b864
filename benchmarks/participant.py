"""Participant-level benchmark: per-step wall time, peak memory and accuracy on phantoms.

Runs the anatomical Nipype workflow (:func:`ketabids.testing.run_anat_wf`, Linear plugin: the
same graph as the BIDS-App) on synthetic subjects from
:func:`ketabids.demo.head.simulate_subject` (1 mm with skull for ``default``, 2 mm for ``fast``)
and optionally a real scan, ``--repeats`` times each in a fresh process (the ITK thread count
is fixed per process), and prints the median of every figure: wall seconds per node (Nipype's
runtime record of each node), peak memory, accuracy. Not a pass/fail test.

    python benchmarks/participant.py --modes default fast --repeats 3 --threads 2 [--real]

Accuracy: GM/WM Dice (hard labels vs the phantom's argmax truth), brain-mask Dice, relative
error of native GM/TIV and of the total modulated GM vs the true native GM, Pearson r of the
8 mm FWHM smoothed modulated GM map with the true template-space map (inside the template
mask). The phantom shares its template with the priors, so the figures are optimistic.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ketabids.anat.segmentation import LABELS

GM, WM, CSF = ({abbr: value for value, (_, abbr) in LABELS.items()}[t]
              for t in ("GM", "WM", "CSF"))
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-t1w"


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def truth_labels(gm, wm, csf):
    """Hard truth labels in the ``dseg`` convention (1=GM 2=WM 3=CSF,
    :data:`ketabids.anat.segmentation.LABELS`): argmax where the probabilities sum >= 0.5."""
    stack = np.stack([gm, wm, csf])
    lab = np.argmax(stack, 0) + 1
    return np.where(stack.sum(0) >= 0.5, lab, 0)


def smoothed_r(pred, truth, affine, mask, fwhm=8.0) -> float:
    from scipy import ndimage

    vox = np.sqrt((affine[:3, :3] ** 2).sum(0))
    sig = fwhm / 2.3548 / vox
    a = ndimage.gaussian_filter(np.asarray(pred, np.float64), sig)[mask]
    b = ndimage.gaussian_filter(np.asarray(truth, np.float64), sig)[mask]
    return float(np.corrcoef(a, b)[0, 1])


def load_outputs(out: dict) -> dict:
    """The workflow outputs the figures use: images loaded, volumes as a dict."""
    import nibabel as nib
    import pandas as pd

    return {"dseg": nib.load(out["t1w_dseg"]), "mask": nib.load(out["t1w_mask"]),
            "gm_mod": nib.load(out["std_mod"][0]), "skull_stripped": out["skull_stripped"],
            "volumes": pd.read_csv(out["volumes"], sep="\t").iloc[0].to_dict()}


def accuracy(out, subject, template) -> dict:
    """Accuracy figures of one workflow output (:func:`load_outputs`) against a phantom's
    truth."""
    import nibabel as nib

    from ketabids.anat.conform import conform_t1w

    def conf(img):
        return np.asarray(conform_t1w(img)[0].dataobj)

    gm, wm, csf = conf(subject.gm), conf(subject.wm), conf(subject.csf)
    truth = truth_labels(gm, wm, csf)
    dseg = np.asarray(out["dseg"].dataobj)
    vol = out["volumes"]
    tvol = subject.volumes
    gm_mod = out["gm_mod"]
    vox = abs(np.linalg.det(gm_mod.affine[:3, :3])) / 1000
    mod_total = float(np.asarray(gm_mod.dataobj, np.float64).sum() * vox)
    tpl_truth = subject.template_gm
    tmask = np.asarray(nib.load(str(template.mask)).dataobj) > 0
    if tpl_truth.shape != gm_mod.shape:
        from nilearn.image import resample_to_img

        tpl_truth = resample_to_img(tpl_truth, gm_mod, interpolation="linear",
                                    force_resample=True, copy_header=True)
        tmask = np.asarray(resample_to_img(nib.load(str(template.mask)), gm_mod,
                                           interpolation="nearest", force_resample=True,
                                           copy_header=True).dataobj) > 0
    return {
        "dice_gm": dice(dseg == GM, truth == GM),
        "dice_wm": dice(dseg == WM, truth == WM),
        "dice_csf": dice(dseg == CSF, truth == CSF),
        "dice_mask": dice(np.asarray(out["mask"].dataobj) > 0, conf(subject.brain_mask) > 0),
        "gm_err_%": 100 * (vol["gm_ml"] / tvol["gm_ml"] - 1),
        "wm_err_%": 100 * (vol["wm_ml"] / tvol["wm_ml"] - 1),
        "tiv_err_%": 100 * (vol["tiv_ml"] / tvol["tiv_ml"] - 1),
        "modGM_vs_true_%": 100 * (mod_total / tvol["gm_ml"] - 1),
        "modGM_vs_est_%": 100 * (mod_total / vol["gm_ml"] - 1),
        "r_8mm": smoothed_r(gm_mod.dataobj, np.asarray(tpl_truth.dataobj), gm_mod.affine, tmask),
    }


def one_run(kind: str, mode: str, seed: int, threads: int) -> dict:
    """One subject end to end in this process; returns timings, peak memory, accuracy."""
    import resource

    from ketabids.demo import head as phantom
    from ketabids.templates import get_template
    from ketabids.testing import run_anat_wf

    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    fast = mode == "fast"
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "phantom":
            res = 1.0 if mode == "default" else 2.0
            template = get_template(resolution=int(res))
            subject = phantom.simulate_subject(
                template, seed=seed,
                acquisition=phantom.Acquisition(resolution=res, orientation="LIA"),
                pose=phantom.PoseAndWarp(max_rotation=10.0))
            raw = run_anat_wf(subject.t1w, fast=fast, seed=seed, omp_nthreads=threads,
                              base_dir=tmp)
            out = load_outputs(raw)
            acc = accuracy(out, subject, template)
        else:
            source = REAL / kind.removeprefix("rotated:")
            if kind.startswith("rotated:"):
                from ketabids.anat.conform import conform_t1w
                from ketabids.testing import rotated_rebiased

                source = rotated_rebiased(conform_t1w(source)[0])
            raw = run_anat_wf(source, fast=fast, seed=seed, omp_nthreads=threads, base_dir=tmp)
            out = load_outputs(raw)
            v = out["volumes"]
            acc = {"tiv_ml": v["tiv_ml"],
                   "gm_per_tiv": v["gm_ml"] / v["tiv_ml"],
                   "gm_per_gm+wm": v["gm_ml"] / (v["gm_ml"] + v["wm_ml"]),
                   "gm_ml": out["volumes"]["gm_ml"],
                   "stripped": out["skull_stripped"]}
    timings = {name: round(seconds, 2) for name, seconds in raw["runtime_s"].items()}
    timings["total (nodes)"] = round(sum(timings.values()), 2)
    timings["total (wall, with Nipype)"] = round(time.perf_counter() - wall0, 2)
    timings["total_cpu"] = round(time.process_time() - cpu0, 2)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"timings": timings, "peak_gb": round(peak_gb, 2), "accuracy": acc}


def _spawn(kind, mode, seed, threads) -> dict:
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--one", kind, mode, str(seed), str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["default", "fast"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--real", action="store_true", help="also run the real scans")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        kind, mode, seed, threads = args.one
        print(json.dumps(one_run(kind, mode, int(seed), int(threads))))
        return 0
    kinds = ["phantom"]
    if args.real:
        kinds += sorted(p.name for p in REAL.glob("*.nii.gz"))
        kinds += ["rotated:aomic-piop2_sub-0001_T1w.nii.gz"]  # consistency vs the original
    print(f"load average at start: {os.getloadavg()}  threads={args.threads}")
    for mode in args.modes:
        for kind in kinds:
            runs = [_spawn(kind, mode, seed, args.threads) for seed in range(args.repeats)]
            steps = list(runs[0]["timings"])
            print(f"\n## {kind}, mode={mode}, median of {len(runs)} runs "
                  f"(phantom seeds 0..{len(runs) - 1})")
            print("| step | wall s (median) | min | max |\n|---|---|---|---|")
            for s in steps:
                vals = [r["timings"][s] for r in runs]
                print(f"| {s} | {statistics.median(vals):.1f} | {min(vals):.1f} | "
                      f"{max(vals):.1f} |")
            print(f"| peak memory GB | {statistics.median(r['peak_gb'] for r in runs):.2f} | | |")
            print("| accuracy | median | min | max |\n|---|---|---|---|")
            for key in runs[0]["accuracy"]:
                vals = [float(r["accuracy"][key]) for r in runs]
                print(f"| {key} | {statistics.median(vals):.3f} | {min(vals):.3f} | "
                      f"{max(vals):.3f} |")
    print(f"\nload average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
