"""Segmentation fidelity on real scans, against a reference no one on this project wrote.

Runs the participant level as users do (the ``ketabids`` CLI, one subject per call,
``--nprocs 1 --omp-nthreads 2``, Nipype and report included) on

* the shared real scans (``../shared/data/real-t1w``; AOMIC-PIOP2 sub-0001 has fMRIPrep's
  FSL FAST segmentation and brain mask in ``../shared/data/reference-fmriprep``),
* optionally their rotated/re-biased copies (:func:`ketabids.testing.rotated_rebiased`),
* simulated phantoms with ground truth, from two independent generators (``--generators``):
  the demo's head model (:func:`ketabids.demo.head.simulate_subject`) and the template's
  tissue maps as partial-volume intensities (:func:`ketabids.demo.tpm_phantom.tpm_phantom`,
  contrasts and RAS/LIA storage in turn), so that a method cannot fit one generator,

and prints one table: Dice GM/WM/CSF/brain against the reference, GM/WM/CSF volumes and their
relative differences (from ketabids' fractions and from its hard labels), the total modulated
GM against the native GM, TIV against the reference brain-mask volume, phantom Dice and
modulated-GM error, wall time and peak memory (max RSS of the CLI process tree) per run. Not a
pass/fail test.

    python benchmarks/real_fidelity.py --modes default fast [--scans aomic seg3d stroke]
        [--rotated] [--phantoms 1] [--generators head tpm] [--phantom-mm 1]
        [--omp-nthreads 2] [--repeats 1]
        [--baseline TREE] [--json out.json]

The demo's setting for phantoms (2 mm, fast mode, one ITK thread), against 0.1.0::

    python benchmarks/real_fidelity.py --modes fast --scans --phantoms 1 --phantom-mm 2 \
        --omp-nthreads 1 --repeats 3 --baseline TREE_OF_0.1.0

``--baseline TREE``: a source tree of another version (e.g. a ``git worktree`` of 0.1.0) run on
the same inputs, alternating with this version run by run (its ``ketabids`` imported from
``TREE`` through ``PYTHONPATH``); a second table gives both versions' wall times, their medians
and the ratio (timings are noisy: compare the side-by-side ratio, not single runs).

:func:`compare_to_reference` is the reusable comparison (also used by the tests): the reference
labels are resampled onto ketabids' grid by the affines (nearest neighbour); reference order
1 GM 2 WM 3 CSF, the same as ketabids' dseg (:data:`ketabids.anat.segmentation.LABELS`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ketabids.anat.segmentation import LABELS

#: the shared data folder (``../shared/data`` next to the project; ``$KETABIDS_SHARED_DATA``
#: overrides it, e.g. for a git worktree elsewhere)
DATA = Path(os.environ.get("KETABIDS_SHARED_DATA")
            or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SCANS = {
    "aomic": "aomic-piop2_sub-0001_T1w.nii.gz",
    "seg3d": "seg3d_T1w.nii.gz",
    "stroke": "cstar-stroke_desc-brain_T1w.nii.gz",
}
REFERENCES = {
    "aomic": ("aomic-piop2_sub-0001_dseg.nii.gz", "aomic-piop2_sub-0001_desc-brain_mask.nii.gz"),
}

#: label values of the tissues in each convention
KETABIDS_LABELS = {abbr: value for value, (_, abbr) in LABELS.items()}  # the dseg order
REFERENCE_LABELS = {"GM": 1, "WM": 2, "CSF": 3}  # sMRIPrep/fMRIPrep (FSL FAST) order


def labels_on_grid(img, shape, affine) -> np.ndarray:
    """Integer image ``img`` resampled onto the grid (``shape``, ``affine``) by the affines
    (world coordinates shared), nearest neighbour; 0 outside ``img``'s field of view."""
    from scipy import ndimage

    src = np.asarray(img.dataobj)
    vox2vox = np.linalg.inv(img.affine) @ affine
    return ndimage.affine_transform(src, vox2vox[:3, :3], vox2vox[:3, 3],
                                    output_shape=tuple(shape), order=0, mode="constant",
                                    cval=0).astype(src.dtype)


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def compare_to_reference(dseg, mask, ref_dseg, ref_mask, *, volumes: dict | None = None,
                         labels=KETABIDS_LABELS, ref_labels=REFERENCE_LABELS) -> dict:
    """Dice and volumes of a segmentation against a reference segmentation of the same scan.

    ``dseg``/``mask``: ketabids' hard labels (``labels`` order) and brain mask, nibabel images on
    one grid. ``ref_dseg``/``ref_mask``: the reference's, on any grid sharing world coordinates;
    they are resampled onto ``dseg``'s grid by the affines (nearest neighbour). ``volumes``:
    ketabids' volumes (``gm_ml``... ``tiv_ml``, from probabilities); hard-label volumes are used
    when absent. Returns Dice GM/WM/CSF/brain, ketabids and reference volumes (mL, reference
    volumes counted on its own grid) and relative differences ``(ours - ref) / ref``.
    """
    ours = np.asarray(dseg.dataobj)
    ours_mask = np.asarray(mask.dataobj) > 0
    ref = labels_on_grid(ref_dseg, ours.shape, dseg.affine)
    ref_m = labels_on_grid(ref_mask, ours.shape, dseg.affine) > 0
    out = {}
    for t in ("GM", "WM", "CSF"):
        out[f"dice_{t.lower()}"] = dice(ours == labels[t], ref == ref_labels[t])
    out["dice_brain"] = dice(ours_mask, ref_m)
    vox = abs(np.linalg.det(dseg.affine[:3, :3])) / 1000
    rvox = abs(np.linalg.det(ref_dseg.affine[:3, :3])) / 1000
    rdata = np.asarray(ref_dseg.dataobj)
    ref_vol = {f"{t.lower()}_ml": float((rdata == ref_labels[t]).sum() * rvox) for t in ref_labels}
    ref_vol["mask_ml"] = float((np.asarray(ref_mask.dataobj) > 0).sum()
                               * abs(np.linalg.det(ref_mask.affine[:3, :3])) / 1000)
    if volumes is None:
        volumes = {f"{t.lower()}_ml": float((ours == labels[t]).sum() * vox) for t in labels}
        volumes["tiv_ml"] = float(ours_mask.sum() * vox)
    out["ours"] = {k: float(volumes[k]) for k in ("gm_ml", "wm_ml", "csf_ml", "tiv_ml")}
    out["ours"]["mask_ml"] = float(ours_mask.sum() * vox)
    # the same tissues counted as the reference counts them (hard labels)
    out["ours_hard"] = {f"{t.lower()}_ml": float((ours == labels[t]).sum() * vox)
                        for t in ("GM", "WM", "CSF")}
    out["reference"] = ref_vol
    out["rel"] = {
        "gm": out["ours"]["gm_ml"] / ref_vol["gm_ml"] - 1,
        "wm": out["ours"]["wm_ml"] / ref_vol["wm_ml"] - 1,
        "csf": out["ours"]["csf_ml"] / ref_vol["csf_ml"] - 1,
        "tiv_vs_mask": out["ours"]["tiv_ml"] / ref_vol["mask_ml"] - 1,
        "mask": out["ours"]["mask_ml"] / ref_vol["mask_ml"] - 1,
    }
    for t in ("gm", "wm", "csf"):
        out["rel"][f"{t}_hard"] = out["ours_hard"][f"{t}_ml"] / ref_vol[f"{t}_ml"] - 1
    # where the disagreement sits: reference WM called GM, reference tissue outside our mask
    out["confusion_ml"] = {
        "refWM_as_GM": float(((ref == ref_labels["WM"]) & (ours == labels["GM"])).sum() * vox),
        "refGM_as_WM": float(((ref == ref_labels["GM"]) & (ours == labels["WM"])).sum() * vox),
        "refGM_outside_mask": float(((ref == ref_labels["GM"]) & ~ours_mask).sum() * vox),
        "refCSF_outside_mask": float(((ref == ref_labels["CSF"]) & ~ours_mask).sum() * vox),
        "ours_outside_refmask": float((ours_mask & ~ref_m).sum() * vox),
    }
    return out


def modulated_total(modulated_gm) -> float:
    """The total (mL) of a Jacobian-modulated GM map (a path or an image): the native GM
    volume it preserves up to the warp's discretisation and interpolation."""
    import nibabel as nib

    mod = nib.load(modulated_gm) if not hasattr(modulated_gm, "dataobj") else modulated_gm
    vox = abs(np.linalg.det(mod.affine[:3, :3])) / 1000
    return float(np.asarray(mod.dataobj, np.float64).sum() * vox)


def phantom_accuracy(dseg, mask, volumes: dict, modulated_gm, subject) -> dict:
    """Dice GM/WM/brain of a phantom's outputs against its truth (argmax of the true
    probabilities where they sum >= 0.5, on the output grid by the affines), relative errors
    of the GM, WM, CSF and TIV volumes (fractions), of the hard-label GM against the truth's
    argmax GM, and of the total modulated GM vs the true native GM.

    ``subject``: a :class:`ketabids.demo.head.SimulatedSubject` or a
    :class:`ketabids.demo.tpm_phantom.TPMPhantom` (both carry ``gm``/``wm``/``csf``,
    ``brain_mask`` and ``volumes``)."""
    from nilearn.image import resample_to_img

    def on_grid(img, interp):
        return np.asarray(resample_to_img(img, dseg, interpolation=interp, force_resample=True,
                                          copy_header=True).dataobj)

    stack = np.stack([on_grid(subject.gm, "linear"), on_grid(subject.wm, "linear"),
                      on_grid(subject.csf, "linear")])
    # truth in the dseg order (1 GM, 2 WM, 3 CSF: KETABIDS_LABELS)
    truth = np.where(stack.sum(0) >= 0.5, np.argmax(stack, 0) + 1, 0)
    ours = np.asarray(dseg.dataobj)
    true_mask = on_grid(subject.brain_mask, "nearest") > 0
    mod_total = modulated_total(modulated_gm)
    tv = subject.volumes
    vox_native = abs(np.linalg.det(dseg.affine[:3, :3])) / 1000
    hard_truth = {t: float((truth == v).sum() * vox_native) for t, v in (("gm", 1), ("wm", 2))}
    return {
        "rel_wm": volumes["wm_ml"] / tv["wm_ml"] - 1,
        "rel_csf": volumes["csf_ml"] / tv["csf_ml"] - 1,
        "rel_gm_hard": float((ours == KETABIDS_LABELS["GM"]).sum() * vox_native)
        / hard_truth["gm"] - 1,
        "dice_gm": dice(ours == KETABIDS_LABELS["GM"], truth == 1),
        "dice_wm": dice(ours == KETABIDS_LABELS["WM"], truth == 2),
        "dice_brain": dice(np.asarray(mask.dataobj) > 0, true_mask),
        "rel_gm": volumes["gm_ml"] / tv["gm_ml"] - 1,
        "rel_tiv": volumes["tiv_ml"] / tv["tiv_ml"] - 1,
        "rel_mod_gm": mod_total / tv["gm_ml"] - 1,
    }


def run_cli(t1w_img, label: str, workdir: Path, *, fast: bool, nprocs: int = 1,
            omp_nthreads: int = 2, seed: int = 1, tree: Path | None = None) -> dict:
    """One subject through the CLI in a fresh process. Returns the output images, the volumes
    row, wall seconds and the peak RSS (GB) of the process tree (GNU time, else getrusage).
    ``tree``: run the ``ketabids`` of that source tree instead (``PYTHONPATH``)."""
    import nibabel as nib
    import pandas as pd

    from ketabids.testing import make_bids_tree

    bids = workdir / f"bids-{label}"
    if not bids.exists():
        make_bids_tree(bids, {label: {"anat": ["T1w"]}}, image_factory=lambda seed=0: t1w_img)
    out = workdir / f"out-{label}-{'fast' if fast else 'default'}"
    exe = Path(sys.executable).with_name("ketabids")  # the console script, as users run it
    work = workdir / f"work-{label}-{fast}"
    cmd = [str(exe) if exe.exists() else "ketabids", str(bids), str(out), "participant",
           "--participant-label", label, "--nprocs", str(nprocs), "--omp-nthreads",
           str(omp_nthreads), "--seed", str(seed), "-w", str(work),
           "--skip-bids-validation"] + (["--fast"] if fast else [])
    timer = Path("/usr/bin/time")
    stats = workdir / "time.txt"
    if timer.exists():
        cmd = [str(timer), "-f", "%e %M", "-o", str(stats)] + cmd
    t0 = time.perf_counter()
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ketabids failed on {label}:\n{proc.stderr[-3000:]}")
    # Nipype's working folder (~0.9 GB for a 1 mm scan) is never reused: each run has its own
    shutil.rmtree(work, ignore_errors=True)
    if timer.exists():
        wall_s, kb = stats.read_text().split()[-2:]
        wall, peak = float(wall_s), float(kb) / 1e6
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    anat = out / f"sub-{label}" / "anat"
    vols = pd.read_csv(anat / f"sub-{label}_desc-volumes_morph.tsv", sep="\t").iloc[0].to_dict()
    return {
        "dseg": nib.load(anat / f"sub-{label}_dseg.nii.gz"),
        "mask": nib.load(anat / f"sub-{label}_desc-brain_mask.nii.gz"),
        "modulated_gm": next(anat.glob(
            f"sub-{label}_space-*_label-GM_desc-modulated_probseg.nii.gz")),
        "volumes": {k: float(v) for k, v in vols.items()},
        "wall_s": wall, "peak_gb": peak,
    }


def _walls(walls: list[float]) -> str:
    """``"71.5, 79.8 (median 75.6)"``."""
    return ", ".join(f"{w:.1f}" for w in walls) + f" (median {statistics.median(walls):.1f})"


def _median_rows(rows: list[dict]) -> dict:
    keys = [k for k, v in rows[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {k: statistics.median(r[k] for r in rows) for k in keys}
    out.update({k: v for k, v in rows[0].items() if k not in out})
    return out


def main(argv=None) -> list[dict]:
    import nibabel as nib

    from ketabids.testing import rotated_rebiased

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", nargs="+", default=["default", "fast"], choices=["default", "fast"])
    ap.add_argument("--scans", nargs="*", default=["aomic"], choices=sorted(SCANS),
                    help="real scans (none: phantoms only)")
    ap.add_argument("--rotated", action="store_true", help="also the rotated/re-biased copies")
    ap.add_argument("--phantoms", type=int, default=1, help="number of phantoms (seeds 1..)")
    ap.add_argument("--generators", nargs="+", default=["head"], choices=["head", "tpm"],
                    help="phantom generators: the demo's head model (ketabids.demo.head) and/or "
                    "the template tissue maps as partial-volume intensities "
                    "(ketabids.demo.tpm_phantom: contrasts and RAS/LIA storage in turn)")
    ap.add_argument("--tpm-bias", type=float, default=0.15,
                    help="SD of the log bias field of the tpm phantoms")
    ap.add_argument("--phantom-mm", type=float, default=1.0,
                    help="phantom voxel size (mm); the demo's are 2 mm")
    ap.add_argument("--omp-nthreads", type=int, default=2,
                    help="ITK threads per run (the demo runs 1 per subject)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--baseline", type=Path, metavar="TREE",
                    help="source tree of another version, timed alternately on the same inputs")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    rows, speed = [], []
    with tempfile.TemporaryDirectory(prefix="ketabids-fidelity-") as tmp:
        tmp = Path(tmp)
        subjects = []
        for key in args.scans:
            path = DATA / "real-t1w" / SCANS[key]
            if not path.exists():
                print(f"skip {key}: {path} not found", file=sys.stderr)
                continue
            img = nib.load(path)
            subjects.append((key, img, None))
            if args.rotated:
                subjects.append((f"{key}rot", rotated_rebiased(img), None))
        if args.phantoms and "head" in args.generators:
            from ketabids.demo.head import Acquisition, simulate_subject
            from ketabids.templates import get_template

            tpl = get_template(resolution=1)
            for seed in range(1, args.phantoms + 1):
                sub = simulate_subject(tpl, seed=seed,
                                       acquisition=Acquisition(resolution=args.phantom_mm))
                subjects.append((f"phantom{seed}", sub.t1w, sub))
        if args.phantoms and "tpm" in args.generators:
            from ketabids.demo.tpm_phantom import CONTRASTS, tpm_phantom

            contrasts = sorted(CONTRASTS)
            for seed in range(1, args.phantoms + 1):  # contrasts and RAS/LIA storage in turn
                sub = tpm_phantom(seed=seed, resolution=args.phantom_mm,
                                  contrast=contrasts[(seed - 1) % len(contrasts)],
                                  bias=args.tpm_bias, orientation=("RAS", "LIA")[seed % 2 == 0])
                subjects.append((f"tpm{seed}", sub.t1w, sub))
        for mode in args.modes:
            for label, img, truth in subjects:
                runs, base_walls = [], []
                for rep in range(args.repeats):
                    if args.baseline is not None:  # alternate: baseline, then this version
                        base = run_cli(img, label, tmp / f"b{rep}", fast=mode == "fast",
                                       omp_nthreads=args.omp_nthreads, tree=args.baseline)
                        base_walls.append(base["wall_s"])
                    res = run_cli(img, label, tmp / f"r{rep}", fast=mode == "fast",
                                  omp_nthreads=args.omp_nthreads)
                    row = {"subject": label, "mode": mode, "wall_s": res["wall_s"],
                           "peak_gb": res["peak_gb"], **res["volumes"],
                           "mod_vs_native": modulated_total(res["modulated_gm"])
                           / res["volumes"]["gm_ml"] - 1}
                    if truth is not None:
                        row.update(phantom_accuracy(res["dseg"], res["mask"], res["volumes"],
                                                    res["modulated_gm"], truth))
                    elif label in REFERENCES:  # (a rotated copy no longer matches its reference)
                        ref = [nib.load(DATA / "reference-fmriprep" / f)
                               for f in REFERENCES[label]]
                        cmp = compare_to_reference(res["dseg"], res["mask"], *ref,
                                                   volumes=res["volumes"])
                        row.update({k: v for k, v in cmp.items() if k.startswith("dice")})
                        row.update({f"rel_{k}": v for k, v in cmp["rel"].items()})
                    runs.append(row)
                if base_walls:
                    walls = [r["wall_s"] for r in runs]
                    speed.append({"subject": label, "mode": mode, "walls": walls,
                                  "baseline_walls": base_walls,
                                  "ratio": (statistics.median(walls)
                                            / statistics.median(base_walls))})
                rows.append(_median_rows(runs))
                print(json.dumps(rows[-1], default=float), file=sys.stderr, flush=True)
    # consistency of the rotated copies with their originals (same mode)
    by = {(r["subject"], r["mode"]): r for r in rows}
    for r in rows:
        base = by.get((r["subject"].removesuffix("rot"), r["mode"]))
        if r["subject"].endswith("rot") and base:
            r["rot_gm"] = r["gm_ml"] / base["gm_ml"] - 1
            r["rot_tiv"] = r["tiv_ml"] / base["tiv_ml"] - 1
    # fast vs default on the same subject
    for r in rows:
        d = by.get((r["subject"], "default"))
        if r["mode"] == "fast" and d:
            r["fast_gm"] = r["gm_ml"] / d["gm_ml"] - 1
            r["fast_tiv"] = r["tiv_ml"] / d["tiv_ml"] - 1
    print_table(rows)
    if speed:
        print(f"\n| subject | mode | this version: wall s | baseline ({args.baseline}): wall s | "
              "ratio of medians |\n|---|---|---|---|---|")
        for r in speed:
            print(f"| {r['subject']} | {r['mode']} | {_walls(r['walls'])} | "
                  f"{_walls(r['baseline_walls'])} | {r['ratio']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "speed": speed}, indent=1, default=float))
    return rows


COLUMNS = [("subject", "{}"), ("mode", "{}"), ("wall_s", "{:.0f}"), ("peak_gb", "{:.2f}"),
           ("gm_ml", "{:.0f}"), ("wm_ml", "{:.0f}"), ("csf_ml", "{:.0f}"), ("tiv_ml", "{:.0f}"),
           ("dice_gm", "{:.3f}"), ("dice_wm", "{:.3f}"), ("dice_brain", "{:.3f}"),
           ("rel_gm", "{:+.1%}"), ("rel_wm", "{:+.1%}"), ("rel_csf", "{:+.1%}"),
           ("rel_gm_hard", "{:+.1%}"), ("rel_wm_hard", "{:+.1%}"), ("rel_csf_hard", "{:+.1%}"),
           ("rel_tiv_vs_mask", "{:+.1%}"), ("rel_tiv", "{:+.1%}"), ("rel_mod_gm", "{:+.1%}"),
           ("mod_vs_native", "{:+.1%}"), ("rot_gm", "{:+.1%}"),
           ("rot_tiv", "{:+.1%}"), ("fast_gm", "{:+.1%}"), ("fast_tiv", "{:+.1%}")]


def print_table(rows: list[dict]) -> None:
    """Markdown table; empty cells where a figure does not apply (e.g. no reference)."""
    cols = [(k, f) for k, f in COLUMNS if any(k in r for r in rows)]
    print("| " + " | ".join(k for k, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f.format(r[k]) if k in r else "" for k, f in cols) + " |")
    print("\nreference (fMRIPrep/FAST, AOMIC sub-0001): GM 690.0 / WM 501.2 / CSF 253.2 mL, "
          "brain mask 1444.5 mL; rel_* = (ketabids - reference) / reference, ketabids' "
          "volumes from its fractions (rel_*_hard: from its hard labels, as the reference); "
          "phantoms: rel_* vs truth (rel_gm_hard: hard labels vs the truth's argmax); "
          "mod_vs_native: total modulated GM vs native GM; rot_*: rotated/re-biased copy vs "
          "original; fast_*: fast vs default mode")


if __name__ == "__main__":
    main()
