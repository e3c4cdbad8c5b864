"""The participant QC report: figures are real PNGs embedded in one self-contained HTML file."""
from __future__ import annotations

import base64
import re

import nibabel as nib
import numpy as np

from ketabids.reports.participant import (
    assemble_report,
    plot_normalisation,
    plot_segmentation,
    render_section,
)


def _png_size(uri: str) -> tuple[int, int]:
    assert uri.startswith("data:image/png;base64,")
    raw = base64.b64decode(uri.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def _sphere(shape=(20, 24, 22), radius=7.0, zooms=(1.0, 1.2, 1.0)):
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    affine = np.diag(list(zooms) + [1.0])
    return dist, affine


def test_segmentation_and_normalisation_figures():
    dist, affine = _sphere()
    t1w = nib.Nifti1Image((1000 - 40 * dist).clip(0).astype("float32"), affine)
    mask = nib.Nifti1Image((dist < 8).astype("uint8"), affine)
    dseg = nib.Nifti1Image(np.select([dist < 4, dist < 6, dist < 8], [2, 1, 3], 0).astype("uint8"),
                           affine)
    width, height = _png_size(plot_segmentation(t1w, mask, dseg))
    assert width > 200 and height > 200
    wm = nib.Nifti1Image((6 - dist).clip(0, 1).astype("float32"), affine)
    assert _png_size(plot_normalisation(t1w, wm, mask))[0] > 200
    # template on another grid: resampled onto the image, no error
    coarse = nib.Nifti1Image((dist[::2, ::2, ::2] < 8).astype("uint8"),
                             affine @ np.diag([2, 2, 2, 1]))
    coarse_wm = nib.Nifti1Image((6 - dist[::2, ::2, ::2]).clip(0, 1).astype("float32"),
                                coarse.affine)
    assert _png_size(plot_normalisation(t1w, coarse_wm, coarse))[0] > 200


def test_report_is_self_contained_and_escaped():
    section = render_section(subject="01", session="2", source_file="sub-01_ses-2_T1w.nii.gz",
                             notes=["<script>alert(1)</script>"], skull_stripped=True,
                             segmentation_png="data:image/png;base64,AAAA",
                             volumes=[{"tiv_ml": 1500.123, "gm_ml": 700.0}],
                             regional=[{"index": 1, "name": "frontal", "gm_ml": 10.5}])
    html = assemble_report(subject="01", sections=[section], methods="Methods & more.",
                           settings={"template": "MNI152NLin2009aSym", "seed": None},
                           versions={"ketabids": "0.1.0", "antspyx": "0.6.3"})
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "The input was already skull-stripped" in html
    assert "1500.12" in html and "frontal" in html and "Methods &amp; more." in html
    assert "antspyx" in html and "0.6.3" in html
    # nothing is loaded from elsewhere: every src is an embedded data URI
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]+)"', html))
    assert "<link" not in html
