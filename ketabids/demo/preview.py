"""Small, realistic outputs of every page type, in about a minute: for the README's screenshots
(``docs/make_screenshots.py``) and the tests of the pages.

:func:`build_preview` writes into ``root``:

* ``bids/`` (``participants.tsv`` only) and ``out/``: synthetic participant-level derivatives
  (:func:`ketabids.demo.derivatives.write_synthetic_derivatives`: template-space GM maps with a
  planted effect, two sites, a ketamine and a saline arm), a QC record per subject (metrics
  drawn around typical values, one scan too thick, one with a low CNR), ``qc.tsv`` and
  ``qc.html`` with the sample-homogeneity check;
* participant reports ``sub-X.html`` for a few subjects, drawn on the embedded template (its T1w,
  brain mask and tissue classes stand in for a processed subject);
* ``out/group/train/`` (a reduced protocol: 2 x 4-fold outer CV, 19 permutations) and
  ``out/group/predict-bids-arm-saline/`` (the saline arm through the frozen model).

The cohort is synthetic and its effect planted: the numbers on these pages demonstrate the pages,
not ketamine.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["build_preview", "screenshot", "console_errors", "PREVIEW_PROTOCOL", "CHROMIUM"]

#: Reduced training protocol of the preview (the real default is 10 x 10-fold).
PREVIEW_PROTOCOL = dict(n_repeats=2, n_outer=4, n_inner=3,
                        c_grid=[2.0 ** -6, 2.0 ** -3, 1.0, 8.0], n_permutations=19)


def _qc_metrics(rng, tiv: float) -> dict:
    gm = tiv * rng.normal(0.45, 0.03)
    return {"tiv_ml": tiv, "gm_ml": gm, "icvs_gm": gm / tiv, "cnr": rng.normal(2.4, 0.35),
            "cjv": rng.normal(0.55, 0.08), "snr_total": rng.normal(11.0, 1.8),
            "efc": rng.normal(0.45, 0.04), "inu_range": rng.normal(0.35, 0.08),
            "fov_coverage": min(1.0, rng.normal(0.995, 0.004)),
            "brain_dice": rng.normal(0.955, 0.012),
            "template_correlation": rng.normal(0.86, 0.03),
            "logjac_range": rng.normal(1.9, 0.25), "slice_thickness_mm": 1.0}


def _participant_pages(out: Path, subjects, qc_records: dict) -> list[Path]:
    import nibabel as nib

    from ketabids.io import atomic_write_text
    from ketabids.reports.participant import (
        SectionFigures,
        assemble_report,
        dseg_labels,
        plot_normalisation,
        plot_segmentation,
        render_section,
    )
    from ketabids.templates import get_template

    tpl = get_template(resolution=1)
    t1w, mask = nib.load(tpl.brain), nib.load(tpl.mask)
    probs = np.stack([np.asanyarray(nib.load(p).dataobj, np.float32)
                      for p in (tpl.gm, tpl.wm, tpl.csf)])
    labels = dseg_labels()
    codes = np.array([labels["GM"], labels["WM"], labels["CSF"]], np.uint8)
    dseg = np.where(np.asanyarray(mask.dataobj) > 0, codes[probs.argmax(0)], 0).astype(np.uint8)
    dseg_img = nib.Nifti1Image(dseg, t1w.affine)
    seg = plot_segmentation(t1w, mask, dseg_img)
    norm = plot_normalisation(t1w, t1w, nib.load(tpl.wm), mask)
    pages = []
    for subject in subjects:
        section = render_section(
            subject=subject, source_file=f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz",
            figures=SectionFigures(segmentation=seg, normalisation=norm), template=tpl.name,
            volumes=[{k: qc_records[subject][k] for k in ("tiv_ml", "gm_ml")}],
            qc=qc_records[subject])
        page = assemble_report(
            subject=subject, sections=[section],
            methods="Preview page: the embedded MNI152NLin2009aSym template stands in for a "
                    "processed subject.",
            settings={"template": tpl.name}, versions={})
        path = out / f"sub-{subject}.html"
        atomic_write_text(path, page)
        pages.append(path)
    return pages


def build_preview(root, *, n: int = 60, seed: int = 21, participant_pages: int = 3,
                  progress: bool = False) -> dict:
    """Write the preview outputs into ``root`` (see the module docstring); returns the paths of
    the pages: ``{"participant": [...], "qc", "train", "predict", "out"}``."""
    from ketabids.demo.derivatives import write_synthetic_derivatives
    from ketabids.demo.participants import make_participants_table
    from ketabids.group.predict import run_group_predict
    from ketabids.group.train import run_group_train
    from ketabids.qc.homogeneity import modulated_gm_maps, sample_homogeneity
    from ketabids.qc.rules import assess
    from ketabids.qc.table import rebuild_qc_table, write_subject_qc
    from ketabids.reports.qc import render_qc_page

    root = Path(root)
    bids, out = root / "bids", root / "out"
    bids.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "ketabids preview (synthetic)", "BIDSVersion": "1.10.0",
         "DatasetType": "raw"}))
    table = make_participants_table(n, seed=seed, saline_fraction=1 / 3, site=["A", "B"],
                                    saline_response_rate=0.4)
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    truth = write_synthetic_derivatives(bids, out, seed=seed, effect_size=0.05,
                                        site_effect=0.02)
    rng = np.random.default_rng(seed)
    records = {}
    for k, row in enumerate(truth.itertuples(index=False)):
        subject = str(row.participant_id).removeprefix("sub-")
        tiv = float(getattr(row, "tiv_ml", 0) or rng.normal(1450, 120))
        metrics = _qc_metrics(rng, tiv)
        if k == 4:
            metrics["slice_thickness_mm"] = 5.0
        if k == 9:
            metrics["cnr"] = 0.8
        write_subject_qc(out, subject, None, metrics)
        verdict, reasons = assess(metrics)
        records[subject] = {**metrics, "verdict": verdict, "reasons": reasons}
    maps, ids = modulated_gm_maps(out)
    homogeneity = sample_homogeneity(maps, ids)
    rebuild_qc_table(out, homogeneity=homogeneity)  # as the participant level does
    subjects = list(records)[:participant_pages]
    pages = _participant_pages(out, subjects, records)
    qc_page = render_qc_page(out, homogeneity=homogeneity)  # now with the report links
    protocol = dict(PREVIEW_PROTOCOL)
    n_perm = protocol.pop("n_permutations")
    train = run_group_train(bids_dir=bids, output_dir=out, response_from=("madrs_pre",
                                                                          "madrs_24h"),
                            include=["arm=ketamine"], covariates=["age", "sex", "tiv"],
                            site_column="site", seed=3, n_permutations=n_perm, nprocs=1,
                            progress=progress, overwrite=True, **protocol)
    predict = run_group_predict(bids_dir=bids, output_dir=out, model=train["model"],
                                include=["arm=saline"], n_permutations=199, seed=1)
    return {"participant": pages, "qc": qc_page, "train": Path(train["report"]),
            "predict": Path(predict["report"]), "out": out}


#: Chromium of Debian's ``chromium`` package; :func:`screenshot` runs it headless and offline.
CHROMIUM = "/usr/bin/chromium"
_CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-background-networking", "--disable-component-update",
                   "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1",
                   "--enable-logging=stderr", "--v=0", "--log-level=0"]


def console_errors(log: str) -> list[str]:
    """The page's console errors (uncaught exceptions, ``console.error``) in Chromium's
    ``--enable-logging=stderr`` output: lines of the ``CONSOLE`` source at ERROR level or
    naming an uncaught error."""
    import re

    out = []
    for line in log.splitlines():
        if "CONSOLE" not in line:
            continue
        if re.search(r":ERROR:CONSOLE|Uncaught|console\.error", line):
            out.append(line.strip())
    return out


def screenshot(page, png, *, width: int = 1280, height: int = 1400, hide: str = "",
               chromium: str = CHROMIUM, colours: int | None = 256,
               timeout: float = 120.0) -> list[str]:
    """Render ``page`` (a local HTML file) with headless Chromium into ``png`` (``width`` x
    ``height`` CSS px, the top of the page; ``hide``: a CSS selector of elements left out of
    the picture, in a temporary copy of the page) and return the page's console errors
    (:func:`console_errors`). No network: the pages are self-contained and Chromium runs with
    background networking off, in a throw-away profile. ``colours``: palette size of the saved
    PNG (smaller files; None keeps the RGB screenshot)."""
    import subprocess
    import tempfile

    page, png = Path(page).resolve(), Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ketabids-chromium-") as profile:
        raw = Path(profile) / "shot.png"
        if hide:
            text = page.read_text(encoding="utf-8")
            copy = Path(profile) / page.name
            copy.write_text(text.replace(
                "</head>", f"<style>{hide}{{display:none !important}}</style></head>", 1),
                encoding="utf-8")
            page = copy
        run = subprocess.run(
            [chromium, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}/profile",
             f"--window-size={width},{height}", f"--screenshot={raw}", page.as_uri()],
            capture_output=True, text=True, timeout=timeout, check=False)
        if not raw.is_file():
            raise RuntimeError(f"{chromium} made no screenshot of {page} (exit "
                               f"{run.returncode}): {run.stderr.strip()[-500:]}")
        data = raw.read_bytes()
    if colours:
        from ketabids.reports.figures import quantize_png

        data = quantize_png(data, colours)
    png.write_bytes(data)
    return console_errors(run.stderr)
