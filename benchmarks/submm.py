"""Sub-millimetre input: a 0.5 mm copy of a real 1 mm scan against the scan itself, through the
CLI (one subject per call, alternating), with the 1 mm runs compared to the shared fMRIPrep
reference (AOMIC sub-0001: GM/WM Dice against FAST, brain-mask Dice).

The 0.5 mm copy is the conformed 1 mm scan resampled (trilinear) onto a 0.5 mm grid covering the
same field of view (512^3 for AOMIC), stored as int16 like a scanner's. ketabids conforms it back
to 1 mm (:func:`ketabids.anat.conform.resample_coarser`), so time and memory should stay close to
the 1 mm scan's. Reported: wall seconds, peak RSS (GB, GNU time's maximum resident set of the
CLI process tree's largest process), CPU seconds (user + system of the CLI's process tree),
the 1-minute load average (mean of its values at the start and end of each run: the machine may
be shared), TIV and GM, medians over ``--repeats``, and the ratios 0.5 mm / 1 mm. Not a
pass/fail test.

    python benchmarks/submm.py --repeats 2 [--data ../shared/data] [--fast]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_fidelity import DATA, REFERENCES, SCANS, compare_to_reference, run_cli  # noqa: E402


def half_mm_copy(img):
    """``img`` (conformed first) resampled trilinearly to 0.5 mm over the same field of view,
    as int16 with qform = sform."""
    import nibabel as nib
    from scipy import ndimage

    from ketabids.anat.conform import conform_t1w

    conformed, _ = conform_t1w(img)
    data = np.asarray(conformed.dataobj, np.float32)
    shape = tuple(2 * s for s in data.shape)
    # new voxel i's centre in old voxel coordinates: -0.25 + 0.5 i
    out = ndimage.affine_transform(data, [0.5, 0.5, 0.5], offset=[-0.25] * 3,
                                   output_shape=shape, order=1, mode="nearest")
    scale = np.diag([0.5, 0.5, 0.5, 1.0])
    scale[:3, 3] = -0.25
    affine = conformed.affine @ scale
    result = nib.Nifti1Image(np.clip(np.round(out), -32768, 32767).astype(np.int16), affine)
    result.set_qform(affine, code=1)
    result.set_sform(affine, code=1)
    result.header.set_xyzt_units("mm", "sec")
    return result


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None):
    import nibabel as nib

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--omp-nthreads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    src = args.data / "real-t1w" / SCANS["aomic"]
    if not src.exists():
        sys.exit(f"{src} not found: give --data")
    one = nib.load(src)
    half = half_mm_copy(one)
    refs = [nib.load(args.data / "reference-fmriprep" / f) for f in REFERENCES["aomic"]]
    rows = {"1mm": [], "0.5mm": []}
    with tempfile.TemporaryDirectory(prefix="ketabids-submm-") as tmp:
        tmp = Path(tmp)
        for rep in range(args.repeats):
            for label, img in (("1mm", one), ("0.5mm", half)):
                load0 = os.getloadavg()[0]
                cpu0 = _children_cpu_s()
                res = run_cli(img, label.replace(".", "p"), tmp / f"r{rep}", fast=args.fast,
                              omp_nthreads=args.omp_nthreads)
                row = {"cpu_s": _children_cpu_s() - cpu0, "wall_s": res["wall_s"],
                       "peak_gb": res["peak_gb"],
                       "load": (load0 + os.getloadavg()[0]) / 2.0,
                       "tiv_ml": res["volumes"]["tiv_ml"], "gm_ml": res["volumes"]["gm_ml"],
                       "mask_shape": list(res["mask"].shape)}
                if label == "1mm":
                    cmp = compare_to_reference(res["dseg"], res["mask"], *refs,
                                               volumes=res["volumes"])
                    row.update({k: v for k, v in cmp.items() if k.startswith("dice")})
                rows[label].append(row)
                print(label, json.dumps(row, default=float), file=sys.stderr, flush=True)
    med = {label: {k: statistics.median(r[k] for r in runs)
                   for k in runs[0] if isinstance(runs[0][k], (int, float))}
           for label, runs in rows.items()}
    print("| input | CPU s | wall s | peak GB | TIV mL | GM mL | load (1 min) "
          "| CPU s of each run |")
    print("|---|---|---|---|---|---|---|---|")
    for label, m in med.items():
        cpus = ", ".join(f"{r['cpu_s']:.0f}" for r in rows[label])
        print(f"| {label} | {m['cpu_s']:.0f} | {m['wall_s']:.0f} | {m['peak_gb']:.2f} | "
              f"{m['tiv_ml']:.0f} | {m['gm_ml']:.0f} | {m['load']:.1f} | {cpus} |")
    ratio = {k: med["0.5mm"][k] / med["1mm"][k]
             for k in ("cpu_s", "wall_s", "peak_gb", "tiv_ml", "gm_ml")}
    print("ratios 0.5 mm / 1 mm:", {k: round(v, 3) for k, v in ratio.items()})
    if "dice_gm" in med["1mm"]:
        print("1 mm vs fMRIPrep:", {k: round(v, 3) for k, v in med["1mm"].items()
                                   if k.startswith("dice")})
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "medians": med, "ratios": ratio},
                                        indent=2, default=float))


if __name__ == "__main__":
    main()
