"""GM/WM/CSF segmentation with template priors: ANTs Atropos (Avants 2011).

Atropos fits a 3-class Gaussian mixture to the intensities inside the brain mask, with
spatial priors (the template's tissue probability maps carried to the subject) weighted
``prior_weight`` and a Markov random field of strength ``mrf`` (radius 1 voxel), initialised
from the priors. The work is done on the mask's bounding box (+2 voxels) only, then padded
back to the full grid. Atropos works in the class order CSF, GM, WM (:data:`CLASSES`); the
hard labels are then renumbered to sMRIPrep's/fMRIPrep's ``dseg`` convention :data:`LABELS`
(1=GM 2=WM 3=CSF, 0 outside the mask; look-up table ``dseg.tsv`` at the output root).
"""
from __future__ import annotations

import nibabel as nib
import numpy as np

from ketabids.anat.antsutil import ants_env, make_image, to_ants

CLASSES = ("CSF", "GM", "WM")  # Atropos class order (priors in, probability maps out)
#: Hard-label values of the ``dseg`` image (sMRIPrep order): label -> (name, abbreviation).
LABELS = {1: ("Gray Matter", "GM"), 2: ("White Matter", "WM"), 3: ("Cerebrospinal Fluid", "CSF")}
#: Atropos class index (0-based, :data:`CLASSES` order) -> dseg label value.
_CLASS_TO_LABEL = np.array([{abbr: v for v, (_, abbr) in LABELS.items()}[c] for c in CLASSES],
                           np.uint8)


def _bbox(mask: np.ndarray, margin: int = 2):
    idx = np.nonzero(mask)
    return tuple(slice(max(0, int(i.min()) - margin), min(s, int(i.max()) + margin + 1))
                 for i, s in zip(idx, mask.shape))


def segment_tissues(img: nib.Nifti1Image, mask: nib.Nifti1Image, priors: dict, *,
                    prior_weight: float = 0.25, mrf: float = 0.1, iterations: int = 5,
                    seed: int | None = None, omp_nthreads: int = 1):
    """Segment ``img`` (bias-corrected T1w) inside ``mask`` into CSF/GM/WM.

    ``priors``: {"GM","WM","CSF"} -> nibabel images on ``img``'s grid (probabilities).
    Returns ``(probs, dseg)``: ``probs`` = {"GM","WM","CSF"} float32 images summing to 1
    inside the mask and 0 outside; ``dseg`` uint8 labels 1=GM 2=WM 3=CSF (:data:`LABELS`).
    """
    import ants

    m = np.asarray(mask.dataobj) > 0
    if not m.any():
        raise ValueError("segment_tissues: empty brain mask")
    box = _bbox(m)
    sub_aff = img.slicer[box].affine

    data = np.asarray(img.dataobj, dtype=np.float32)[box]
    mb = m[box]
    a_img = to_ants(make_image(np.where(mb, data, 0).astype(np.float32), sub_aff))
    a_mask = to_ants(make_image(mb.astype(np.float32), sub_aff))
    pri = []
    for name in CLASSES:
        p = np.clip(np.asarray(priors[name].dataobj, dtype=np.float32)[box], 0, 1)
        pri.append(p)
    total = np.sum(pri, axis=0)
    # voxels of the mask with no prior at all get a flat prior (otherwise Atropos drops them)
    flat = mb & (total < 1e-3)
    pri = [to_ants(make_image(np.where(flat, 1 / 3, p).astype(np.float32), sub_aff)) for p in pri]
    # Atropos seeds its sampler from the clock unless told "--use-random-seed 0" (then from
    # ANTS_RANDOM_SEED / a constant); measured: seeded 1-thread runs differed without it
    seeding = {"r": 0} if seed is not None else {}
    with ants_env(seed, omp_nthreads):
        seg = ants.atropos(a=a_img, x=a_mask, i=pri, m=f"[{mrf},1x1x1]",
                           c=f"[{int(iterations)},0]", priorweight=prior_weight, **seeding)
    probs_box = np.stack([p.numpy() for p in seg["probabilityimages"]], 0).astype(np.float32)
    probs_box *= mb
    s = probs_box.sum(0)
    probs_box = np.where(s > 0, probs_box / np.where(s > 0, s, 1), 0)
    # voxels Atropos left empty inside the mask: fall back to the priors' argmax
    empty = mb & (s <= 0)
    classes_box = np.argmax(probs_box, 0)
    if empty.any():
        fallback = np.argmax(np.stack([p.numpy() for p in pri], 0), 0)
        for k in range(3):
            probs_box[k][empty] = (fallback[empty] == k).astype(np.float32)
        classes_box[empty] = fallback[empty]
    labels_box = np.where(mb, _CLASS_TO_LABEL[classes_box], 0).astype(np.uint8)
    probs, full = {}, m.shape
    for k, name in enumerate(CLASSES):
        arr = np.zeros(full, np.float32)
        arr[box] = probs_box[k]
        probs[name] = make_image(arr, img.affine)
    dseg = np.zeros(full, np.uint8)
    dseg[box] = labels_box
    return probs, make_image(dseg, img.affine)
