"""Image-quality metrics (IQMs) of a T1w: a subset of MRIQC's anatomical IQMs, same definitions.

Source: MRIQC (Esteban et al. 2017, PLoS ONE 12(9):e0184661), ``mriqc/qc/anatomical.py`` (the
formulas) and ``mriqc/interfaces/anatomical.py`` (``StructuralQC``: which statistics feed them).
Our code is written from those definitions; differences from MRIQC are stated:

* tissue masks: tissue probability > 0.85, eroded once (3x3x3 cross+edges structuring element,
  connectivity 2) when every voxel size is < 1.9 mm, exactly as MRIQC's ``summary_stats``; the
  probabilities are ketabids' partial-volume fractions (FAST-like, not FAST's own);
* air ("background") mask: MRIQC uses the "hat" above the nasion-cerebellum plane minus
  Mortamet's artefact mask; here it is every voxel farther than ``AIR_MARGIN_VOX`` voxels from
  the head mask and not part of the zero-filled frame (a rotation/resampling "frame" of exact
  zeros, MRIQC's ``rotmask``). A skull-stripped input has no air signal: then sigma_air = 0 and
  FBER = -1 (MRIQC's convention);
* the image is the INU-corrected T1w (MRIQC computes these on its N4 output too), negative
  values set to 0 as MRIQC does.

Metrics (keys of :func:`anatomical_iqms`): ``cjv``, ``cnr``, ``snr_csf``, ``snr_gm``,
``snr_wm``, ``snr_total``, ``efc``, ``fber``, ``wm2max``, ``inu_med``, ``inu_range``, and the
tissue medians ``summary_{csf,gm,wm}_median``.
"""
from __future__ import annotations

from math import sqrt

import nibabel as nib
import numpy as np
from scipy import ndimage

from ketabids.anat.antsutil import bounding_box

#: MRIQC's tissue-probability threshold for the summary statistics
TISSUE_THRESHOLD = 0.85
#: air = voxels farther than this many voxels from the head mask (ours; see module docstring)
AIR_MARGIN_VOX = 3
#: grid (mm) of the head mask (see :func:`head_mask_of`)
COARSE_MM = 4.0
#: background statistics use every n-th voxel per axis on images above this many voxels
#: (medians and standard deviations of millions of air voxels; 1/8 of them give the same value)
SUBSAMPLE_ABOVE = 4_000_000
#: MAD to sigma for a normal distribution: 1 / Phi^-1(3/4)
_MAD_TO_SIGMA = 1.482602218505602


def as_array(img) -> np.ndarray:
    """float32 voxels of a nibabel image, a NIfTI path or an array (the one loader of qc/)."""
    if isinstance(img, nib.spatialimages.SpatialImage):
        return np.asarray(img.dataobj, dtype=np.float32)
    if isinstance(img, (str, bytes)) or hasattr(img, "__fspath__"):
        return np.asarray(nib.load(str(img)).dataobj, dtype=np.float32)
    return np.asarray(img, dtype=np.float32)


def zooms(img) -> tuple[float, ...]:
    """Voxel sizes (mm) from the affine of a nibabel image; (1, 1, 1) for a bare array."""
    if isinstance(img, nib.spatialimages.SpatialImage):
        return tuple(float(z) for z in np.sqrt((img.affine[:3, :3] ** 2).sum(0)))
    return (1.0, 1.0, 1.0)


def mad(values: np.ndarray) -> float:
    """Normalised median absolute deviation: ``1.4826 * median(|x - median(x)|)`` (a sigma
    estimate for normal data; statsmodels' ``mad``, used by MRIQC)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 0.0
    return float(_MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def tissue_stats(values: np.ndarray) -> dict:
    """Summary of one region (MRIQC ``summary_stats``): mean, stdv, median, mad, p05, p95, n."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"mean": 0.0, "stdv": 0.0, "median": 0.0, "mad": 0.0, "p05": 0.0, "p95": 0.0,
                "n": 0.0}
    return {
        "mean": float(values.mean()), "stdv": float(values.std()),
        "median": float(np.median(values)), "mad": mad(values),
        "p05": float(np.percentile(values, 5)), "p95": float(np.percentile(values, 95)),
        "n": float(values.size),
    }


def tissue_mask(prob: np.ndarray, *, erode: bool) -> np.ndarray:
    """``prob > 0.85``, eroded once with connectivity 2 when ``erode`` (MRIQC)."""
    mask = np.asarray(prob) > TISSUE_THRESHOLD
    if erode:
        mask = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 2))
    return mask


def frame_mask(data: np.ndarray, head: np.ndarray | None = None) -> np.ndarray:
    """Voxels of the empty frame around the data (MRIQC's ``rotmask``): with a head mask, the
    voxels ``<= 0`` outside the head (no labelling needed); without one, the connected
    components of ``data <= 0`` that touch the volume border."""
    zero = np.asarray(data) <= 0
    if not zero.any():
        return zero
    if head is not None:
        zero[_as_bool(head)] = False  # in place: no full-size temporaries
        return zero
    labels, n = ndimage.label(zero)
    border = np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(),
                             labels[:, -1].ravel(), labels[:, :, 0].ravel(),
                             labels[:, :, -1].ravel()])
    lut = np.zeros(n + 1, bool)
    lut[np.unique(border)] = True
    lut[0] = False
    return lut[labels]


def air_mask(head: np.ndarray, frame: np.ndarray | None = None,
             margin: int = AIR_MARGIN_VOX) -> np.ndarray:
    """Air: outside ``head`` dilated by a (2 margin + 1)-voxel cube (computed on every second
    voxel, i.e. a 2 margin voxel reach, for large images), and not in ``frame``."""
    head = _as_bool(head)
    if margin <= 0:
        air = ~head
    else:
        if head.size > SUBSAMPLE_ABOVE:
            small = head[::2, ::2, ::2].view(np.uint8)
            small = ndimage.maximum_filter(small, size=2 * max(1, margin // 2) + 1) > 0
            near = _upsample(small, (2, 2, 2), head.shape)
            near |= head
        else:
            near = ndimage.maximum_filter(head.view(np.uint8), size=2 * margin + 1) > 0
        air = np.logical_not(near, out=near)
    if frame is not None:
        air[_as_bool(frame)] = False
    return air


def _as_bool(mask) -> np.ndarray:
    """``mask > 0``, or ``mask`` itself when it is already boolean (no copy)."""
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask > 0


def _coarse_step(img, mm: float = COARSE_MM) -> list[int]:
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    return [max(1, int(mm // z)) for z in zooms]


def _upsample(small: np.ndarray, step, shape) -> np.ndarray:
    """Each voxel of ``small`` repeated ``step`` times per axis, cut to ``shape`` (one new
    array: a broadcast view reshaped, instead of three successive ``repeat`` copies)."""
    (a, b, c), (s0, s1, s2) = small.shape, step
    full = np.broadcast_to(small[:, None, :, None, :, None],
                           (a, s0, b, s1, c, s2)).reshape(a * s0, b * s1, c * s2)
    return full[: shape[0], : shape[1], : shape[2]]


def head_mask_of(img: nib.Nifti1Image) -> np.ndarray:
    """Head foreground (:func:`ketabids.anat.brain.head_foreground`) computed on a grid
    subsampled to >= ``COARSE_MM`` mm and repeated back (64x fewer voxels on a 1 mm scan; the
    mask only separates head from air, whose statistics do not depend on its exact edge)."""
    from ketabids.anat.brain import head_foreground

    step = _coarse_step(img)
    if step == [1, 1, 1]:
        return head_foreground(img)
    data = np.asarray(img.dataobj, dtype=np.float32)
    sub = data[:: step[0], :: step[1], :: step[2]]
    small = head_foreground(nib.Nifti1Image(sub, img.affine @ np.diag([*step, 1])))
    return _upsample(small, step, data.shape)


# --------------------------------------------------------------------------------------------
# the MRIQC formulas
# --------------------------------------------------------------------------------------------
def snr(mu_fg: float, sigma_fg: float, n: float) -> float:
    """SNR of one tissue (MRIQC ``snr``): ``mu_F / (sigma_F * sqrt(n / (n - 1)))`` with
    ``mu_F`` the tissue median (as MRIQC passes it) and ``sigma_F`` its standard deviation."""
    if n < 2 or sigma_fg <= 0:
        return float("nan")
    return float(mu_fg / (sigma_fg * sqrt(n / (n - 1))))


def cnr(mu_wm: float, mu_gm: float, sigma_air: float, sigma_wm: float, sigma_gm: float) -> float:
    """Contrast-to-noise ratio (Magnotta & Friedman 2006; MRIQC ``cnr``):
    ``|mu_GM - mu_WM| / sqrt(sigma_air^2 + sigma_WM^2 + sigma_GM^2)``; mu = tissue medians,
    sigma = standard deviations (MRIQC). Higher is better."""
    denom = sqrt(sigma_air ** 2 + sigma_gm ** 2 + sigma_wm ** 2)
    return float(abs(mu_wm - mu_gm) / denom) if denom > 0 else float("nan")


def cjv(mu_wm: float, mu_gm: float, sigma_wm: float, sigma_gm: float) -> float:
    """Coefficient of joint variation (Ganzetti et al. 2016; MRIQC ``cjv``):
    ``(sigma_WM + sigma_GM) / |mu_WM - mu_GM|``; MRIQC passes medians and MADs. Lower is
    better (head motion, strong INU)."""
    diff = abs(mu_wm - mu_gm)
    return float((sigma_wm + sigma_gm) / diff) if diff > 0 else float("inf")


def efc(data: np.ndarray, frame: np.ndarray | None = None) -> float:
    """Entropy focus criterion (Atkinson et al. 1997; MRIQC ``efc``), over the voxels not in
    ``frame``: with ``B = sqrt(sum x_j^2)``,
    ``E = -sum (x_j / B) ln(x_j / B)`` normalised by its maximum for N voxels,
    ``EFC = E / E_max``, ``E_max = sqrt(N) ln(sqrt(N))`` (all voxels equal). 0 = all energy in one
    voxel, 1 = uniform; lower is better (ghosting, blurring)."""
    x = np.asarray(data, dtype=np.float32)
    if frame is not None:
        x = x[~frame]
    x = x.ravel()
    n = x.size
    x64 = x.astype(np.float64)
    b = sqrt(float(np.dot(x64, x64)))
    del x64
    if n < 2 or b <= 0:
        return float("nan")
    efc_max = n * (1.0 / sqrt(n)) * np.log(1.0 / sqrt(n))
    # x = 0 contributes 0 (x ln(x + 1e-16) -> 0): sum over the non-zero voxels only
    t = x[x > 0] / np.float32(b)
    return float((1.0 / efc_max) * np.sum(t * np.log(t + np.float32(1e-16 / b)),
                                          dtype=np.float64))


def fber(data: np.ndarray, head: np.ndarray, frame: np.ndarray | None = None) -> float:
    """Foreground-background energy ratio (Shehzad et al. 2015; MRIQC ``fber``):
    ``median(|x|^2 in head) / median(|x|^2 outside head and frame)``; -1 when the background
    energy is < 1e-3 (no signal outside the head: skull-stripped input). Higher is better."""
    data = np.asarray(data, dtype=np.float32)
    head = _as_bool(head)
    # median(|x|^2) = median(|x|)^2 (a monotone map keeps the median; NumPy averages the two
    # middle values of an even count, a negligible difference on >= 10^5 voxels)
    fg = float(np.median(np.abs(data[head]))) ** 2 if head.any() else 0.0
    if data.size > SUBSAMPLE_ABOVE:  # the background mask is built on the subsampled grid
        data, head = data[::2, ::2, ::2], head[::2, ::2, ::2]
        frame = frame[::2, ::2, ::2] if frame is not None else None
    bg_mask = ~head
    if frame is not None:
        bg_mask[_as_bool(frame)] = False
    if not bg_mask.any():
        return -1.0
    bg = float(np.median(np.abs(data[bg_mask]))) ** 2
    if bg < 1.0e-3:
        return -1.0
    return float(fg / bg)


def wm2max(data: np.ndarray, mu_wm: float) -> float:
    """White-matter-to-max ratio (MRIQC ``wm2max``): ``median(WM) / P99.95(image)``; around
    0.6-0.8 is expected, low values mean long bright tails (vessels, fat)."""
    # ravel in memory order: no copy of a Fortran-ordered NIfTI array (a percentile does not
    # depend on the order of the values)
    top = float(np.percentile(np.asarray(data).ravel(order="K"), 99.95))
    return float(mu_wm / top) if top > 0 else float("nan")


def inu_stats(bias: np.ndarray, mask: np.ndarray) -> dict:
    """Summary of the N4 bias field inside ``mask`` (MRIQC ``StructuralQC``, ``inu``):
    ``inu_med = median(b)``, ``inu_range = |P95(b) - P5(b)|``. MRIQC takes the mask of its
    segmentation (``segdata > 0``, i.e. the brain); values near 1 / small ranges are better."""
    b = np.asarray(bias)[np.asarray(mask) > 0].astype(np.float64)  # cast the brain only
    if b.size == 0:
        return {"inu_med": float("nan"), "inu_range": float("nan")}
    return {"inu_med": float(np.median(b)),
            "inu_range": float(abs(np.percentile(b, 95) - np.percentile(b, 5)))}


# --------------------------------------------------------------------------------------------
# all IQMs of one T1w
# --------------------------------------------------------------------------------------------
def _nonnegative(data: np.ndarray) -> np.ndarray:
    """A float32 copy of ``data`` with negative and non-finite values set to 0 (MRIQC sets
    negatives to 0); the non-finite pass only runs when a float64 sum says there is one."""
    out = np.where(data < 0, np.float32(0), np.asarray(data, dtype=np.float32))
    if not np.isfinite(np.sum(out, dtype=np.float64)):  # NaN or +inf somewhere
        out[~np.isfinite(out)] = 0
    return out


def anatomical_iqms(t1w, *, brain_mask, tpms: dict, head_mask=None, bias=None) -> dict:
    """MRIQC-style IQMs of one T1w (``StructuralQC`` recipe).

    ``t1w``: the INU-corrected T1w (nibabel image or array; negative values -> 0);
    ``brain_mask``: brain mask; ``tpms``: ``{"GM", "WM", "CSF"}`` probability maps on the same
    grid; ``head_mask``: head mask (default: :func:`head_mask_of` ``t1w``); ``bias``: the N4 bias
    field (optional: without it ``inu_*`` are NaN).

    SNR per tissue uses the tissue median and standard deviation (MRIQC), ``snr_total`` is the
    mean of the three; CNR uses medians and standard deviations with sigma_air the standard
    deviation of the air; CJV uses medians and MADs; WM2MAX the WM median.
    """
    data = _nonnegative(as_array(t1w))
    brain = as_array(brain_mask) > 0
    if head_mask is None:
        img = t1w if isinstance(t1w, nib.spatialimages.SpatialImage) else nib.Nifti1Image(
            data, np.eye(4))
        head = head_mask_of(img)  # a new array: OR-ed in place
        head |= brain
    else:
        head = as_array(head_mask) > 0
        head |= brain
    erode = bool(np.all(np.asarray(zooms(t1w)) < 1.9))
    frame = frame_mask(data, head)
    air = air_mask(head, frame)

    stats = {}
    box = bounding_box(brain, 2)  # tissue statistics on the brain's bounding box only (speed)
    for name in ("CSF", "GM", "WM"):
        prob = as_array(tpms[name])[box] * brain[box]
        mask = tissue_mask(prob, erode=erode)
        if mask.sum() < 10:  # tiny eroded mask (coarse or broken image): skip the erosion
            mask = tissue_mask(prob, erode=False)
        stats[name.lower()] = tissue_stats(data[box][mask])
    if data.size > SUBSAMPLE_ABOVE:  # see SUBSAMPLE_ABOVE
        stats["bg"] = tissue_stats(data[::2, ::2, ::2][air[::2, ::2, ::2]])
    else:
        stats["bg"] = tissue_stats(data[air])

    out = {}
    snrs = []
    for k in ("csf", "gm", "wm"):
        out[f"snr_{k}"] = snr(stats[k]["median"], stats[k]["stdv"], stats[k]["n"])
        snrs.append(out[f"snr_{k}"])
    out["snr_total"] = float(np.mean(snrs))
    out["cnr"] = cnr(stats["wm"]["median"], stats["gm"]["median"], stats["bg"]["stdv"],
                     stats["wm"]["stdv"], stats["gm"]["stdv"])
    out["cjv"] = cjv(stats["wm"]["median"], stats["gm"]["median"], stats["wm"]["mad"],
                     stats["gm"]["mad"])
    out["efc"] = efc(data, frame)
    out["fber"] = fber(data, head, frame)
    out["wm2max"] = wm2max(data, stats["wm"]["median"])
    if bias is not None:
        # on the brain's bounding box: the same voxels in the same order, fewer to scan
        out.update(inu_stats(as_array(bias)[box], brain[box]))
    else:
        out.update({"inu_med": float("nan"), "inu_range": float("nan")})
    for k in ("csf", "gm", "wm"):
        out[f"summary_{k}_median"] = stats[k]["median"]
    out["summary_bg_stdv"] = stats["bg"]["stdv"]
    return out
