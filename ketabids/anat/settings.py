"""The processing mode (``default`` or ``fast``): every number that ``--fast`` changes.

:class:`ProcessingSettings` is the one place where a mode's numbers live; the registration,
N4, the template-space output grid and the methods text read them from here.

* ``default``: registration on a 2 mm grid (affine, then SyN with 100x70x50x20 iterations at
  16/8/4/2 mm, antspyx's gradient step 0.2 and update-field variance 3 voxels^2), the head-wide
  N4 fitted on an 8 mm grid, the tissue N4 (inside the brain mask, the segmentation's input) on
  a 4 mm grid, template-space maps at 1 mm.
* ``fast``: for demos/CI, reduced accuracy by design: registration on a 2.5 mm grid (SyN
  40x20x6 at 10/5/2.5 mm, regularised as the default mode in millimetres: see below), the same
  head-wide N4 as the default mode, the tissue N4 on an 8 mm grid (5x quicker, GM/WM Dice
  against FAST -0.001 on a real scan), template-space maps at 2 mm. The measured trade-offs
  are in :mod:`ketabids.anat.registration`.

**The fast mode's SyN is the default mode's in millimetres** (:func:`_fast_from_default`,
2026-12-01). ANTs gives SyN's two regularisation settings in voxels of each level's grid: the
update-field smoothing as a variance (voxels^2) and the gradient step as the largest update
of an iteration (voxels). The fast mode used to keep the default mode's voxel values on its
coarser grid, i.e. 25 % wider smoothing in mm, and a step of 0.4 chosen on AOMIC alone. Now its
variance is ``3 x (2 / 2.5)^2 = 1.92`` voxels^2 (its 10/5/2.5 mm levels smooth exactly as the
default mode's 8/4/2 mm levels: standard deviations 13.9/6.9/3.5 mm) and its step lets its last
level travel as far as the default mode's (``0.2 x 2 mm x 20 = 0.53 x 2.5 mm x 6 = 8 mm``).
Its head-wide N4 is the default mode's (8 mm grid, was 12 mm): the coarser fit made the brain
mask depend on the bias field (seg3d scan, ``extract_brain`` in fast mode, seeds 1-3: 1345-1347
mL after the 8 mm N4, 1331-1332 after the 12 mm one; its rotated, re-biased copy 1340-1349 and
1302-1308 mL), for 0.9 s more per 2 mm phantom (N4 1.5 s instead of 0.6 s, one thread) and
~1 s on a 1 mm scan. Through the CLI (``benchmarks/real_fidelity.py``; default mode unchanged),
fast vs default mode, GM / TIV:

==================  ==========================  ============================  =====================
scan                before (step 0.4, variance  SyN in mm, N4 12 mm           SyN in mm, N4 8 mm
                    3, N4 12 mm)                                              (kept)
==================  ==========================  ============================  =====================
AOMIC sub-0001      -1.8 % / -2.0 %             -1.5 % / -1.1 %               -1.7 % / -1.2 %
seg3d               -2.2 % / -3.5 %             -1.4 % / -2.5 %               -0.8 % / -1.5 %
seg3d rotated copy  -3.9 % / -5.1 %             -3.7 % / -4.1 %               -0.7 % / -1.7 %
stroke (stripped)   +0.9 % / 0.0 %              +1.1 % / 0.0 %                +0.5 % / 0.0 %
==================  ==========================  ============================  =====================

The rotated copies against their originals in fast mode (GM / TIV): AOMIC -1.5 / -0.7 %,
seg3d +0.1 / -0.1 % (was -2.0 / -2.1 %), stroke -0.7 / -1.8 %. AOMIC in fast mode against
fMRIPrep/FAST: GM/WM Dice 0.844 / 0.904 (0.830 / 0.896 before), brain mask 0.967 (0.965), TIV
-1.4 % of its mask. Jacobian roughness (SD of log det J inside the template brain on the 2 mm
grid; ``extract_brain``, seed 1), AOMIC / 2 mm phantom: default mode 0.507 / 0.211; fast,
step 0.4 and variance 3: 0.466 / 0.199; variance 1.92: 0.447 / 0.206; with step 0.53 (kept):
0.480 / 0.226; no folding (smallest determinant 0.11 / 0.22). Time: the registration's is
unchanged (same iterations); a 2 mm demo phantom through the CLI (one thread, medians of three,
side by side, 2026-12-01): 20.2 s against 19.6 s before these changes (1.03; the N4 alone
costs 0.9 s), and
19.4 s against 0.1.0's 16.5 s (1.18) in another run.

Earlier measurements of the same trade-offs (before the changes above):

The fast mode's last SyN level (2.5 mm) sets both its accuracy on real scans and its time.
Without it the brain mask of a real scan stays ~1 mm inside the default mode's (AOMIC sub-0001:
TIV -6.0 %, GM -5.6 % of the default mode's); it is also what the SyN time of a 2 mm demo
phantom is spent on. Measured 2026-11-30 on an idle machine (AOMIC through the CLI, ``--fast``,
against the default mode's 1443 / 655 mL; registration alone, one thread, on three demo
phantoms, median of 9 = 3 phantoms x 3 runs, or of 3 = one run; 40x20x0 on AOMIC: the
previous measurement):

=================  =======================  ===========================
SyN iterations,    AOMIC TIV / GM vs         registration per 2 mm
gradient step      default mode             phantom (s)
=================  =======================  ===========================
40x20x0, 0.2       -6.0 % / -5.6 %          4.9
40x20x3, 0.2       -5.2 % / -4.3 %          5.8 (of 3)
40x20x3, 0.5       -3.6 % / -2.5 %          5.4 (of 3)
40x20x5, 0.2       -4.0 % / -3.1 %          7.6 (of 3)
40x20x5, 0.35      -2.8 % / -2.6 %          7.7
40x20x10, 0.2      -2.2 % / -1.8 %          12.8 (issue 13's first choice)
**40x20x6, 0.4**   **-2.2 % / -2.1 %**      **9.3** (2nd AOMIC run: -2.6 % / -2.5 %)
=================  =======================  ===========================

On the other real scans (second run): seg3d -1.6 % / -0.8 %, stroke 0.0 % / +1.0 %.
Since the registration pads the subject with background (:mod:`ketabids.anat.registration`,
2026-12-01), seg3d's default-mode mask is 3.7 % larger and its fast-mode one 1.6 %: fast vs
default TIV / GM AOMIC -2.0 % / -1.8 %, seg3d -3.5 % / -2.2 % (outside the 3 % aimed at),
stroke 0.0 % / +0.9 %. Tried against it: the default mode's physical update-field smoothing (SyN
``flow_sigma`` 2.4 voxels of 2.5 mm instead of 3, i.e. 6 mm as at 2 mm): brain masks +0.4 %
(seg3d 1331 -> 1336 mL, AOMIC 1406 -> 1410 mL, ``extract_brain`` seed 1), not kept.
Where the seg3d gap lies (2026-12-01, ``extract_brain`` seed 1, both modes on the same N4
output): the fast mask is about one voxel inside the default one all round (the default-only
voxels lie 1-1.4 voxels outside the fast mask, spread over the whole height, 3 % of them within
10 slices of the field of view's cut; intensities 0.41-0.91 x the brain's median: CSF and
cortex), so it is the last level's convergence, not the cut. Measured against it (masks in mL;
default 1373 / 1441):

=============================================  ====================  =========================
fast-mode SyN                                  seg3d / AOMIC          note
=============================================  ====================  =========================
40x20x6, step 0.4 (kept)                       1331-1335 / 1404-1406
more coarse work: 40x40x6, 100x70x6            1330-1333 / 1403-1406  coarse levels do not move it
last level at 2 mm: 40x20x2, 40x20x3 (8/4/2)   1328-1337 / 1397-1398  no better, +1-2 s
step 0.53 (the default's last-level travel,    1339 / 1415            Jacobian roughness as the
0.2 x 2 mm x 20 = 0.53 x 2.5 mm x 6)                                  default's (below)
step 0.6 / 0.8                                 1342 / 1408,           rougher than the default
                                               1349 / 1413
=============================================  ====================  =========================

Jacobian roughness, SD of log det J inside the template brain on the 2 mm grid (AOMIC /
2 mm phantom): default mode 0.507 / 0.211; fast 0.4: 0.475 / 0.201, 0.53: 0.502 / 0.216, 0.8:
0.537 / 0.255 (no folding in any). None of these closes the seg3d gap (0.53 gives -2.5 % of
the default mask, 0.4 -2.8 to -3.1 %, same time), so the step was left at 0.4.
The last column understates the level's cost: re-measured later the same day
(:func:`~ketabids.anat.brain.extract_brain` on demo phantom sub-001, one thread, two runs each,
nothing else running) 4.5-4.6 s with 40x20x0 and 11.9 s with 40x20x6, so ~7.3 s for the 2.5 mm
level (ANTs' verbose timing: 1.7 s to set the level up, then 1.27 s per iteration on the
79x93x76 template grid; the 10 and 5 mm levels took 0.3 and 2.0 s). That is why a demo phantom
takes longer in this fast mode than in 0.1.0's (22.6 s against 18.1 s through the CLI, medians
of three, one thread). On the cropped template grid (:mod:`ketabids.anat.registration`,
71x84x68 voxels at 2.5 mm for a phantom) the level costs ~5.0 s (6 iterations of ~0.8 s) and a
phantom 17.8 s against 0.1.0's 15.7 s (the same loop, 2026-12-01).
The phantoms' brain masks barely move with the last level (1320-1322 mL with any of the
iterated settings, 1339 mL without it, demo phantom sub-001). The larger step is the fast mode's
only: the default mode keeps antspyx's 0.2.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ketabids.errors import UsageError

MODES = ("default", "fast")


@dataclass(frozen=True)
class ProcessingSettings:
    """What one processing mode means.

    ``registration_mm``: grid (mm) the registration runs on (template and, when finer, subject
    resampled to it); ``reg_iterations``: SyN iterations per level (shrink factors
    2^(n-1)..1 of that grid); ``syn_metric``/``syn_sampling``: SyN metric and its bins;
    ``n4_grid_mm``: spacing of the grid the head-wide N4 fits the bias field on;
    ``tissue_n4_grid_mm``: the same for the tissue N4 inside the brain mask; ``template_resolution``:
    grid (mm) of the template-space outputs; ``syn_grad_step``: SyN's gradient step (the largest
    update of an iteration, in voxels of the level's grid); ``syn_update_variance``: variance
    (voxels^2 of the level's grid) of the Gaussian that smooths SyN's update field
    (antsRegistration's ``SyN[step, updateFieldVariance, 0]``).

    >>> ProcessingSettings.for_mode("fast").template_resolution
    2
    >>> ProcessingSettings.for_fast(False).mode
    'default'
    """

    mode: str
    registration_mm: float
    reg_iterations: tuple[int, ...]
    n4_grid_mm: float
    template_resolution: int
    tissue_n4_grid_mm: float = 4.0
    syn_metric: str = "mattes"
    syn_sampling: int = 32
    syn_grad_step: float = 0.2
    syn_update_variance: float = 3.0

    @classmethod
    def for_mode(cls, mode: str) -> ProcessingSettings:
        """The settings of ``mode`` (``default`` or ``fast``)."""
        if mode not in _BY_MODE:
            raise UsageError(f"mode {mode!r}: use one of {', '.join(MODES)}")
        return _BY_MODE[mode]

    @classmethod
    def for_fast(cls, fast: bool) -> ProcessingSettings:
        """The settings of ``--fast`` (True) or the default mode (False)."""
        return cls.for_mode("fast" if fast else "default")

    @property
    def fast(self) -> bool:
        return self.mode == "fast"

    def registration_info(self) -> dict:
        """The registration part, as recorded in every registration's info dict."""
        return {"resolution": self.registration_mm, "reg_iterations": self.reg_iterations,
                "syn_metric": self.syn_metric, "syn_sampling": self.syn_sampling,
                "syn_grad_step": self.syn_grad_step,
                "syn_update_variance": self.syn_update_variance}

    def as_dict(self) -> dict:
        return asdict(self)


def _fast_from_default(default: ProcessingSettings, *, registration_mm: float,
                       reg_iterations: tuple[int, ...], **changes) -> ProcessingSettings:
    """The fast mode: ``default`` on a coarser registration grid with other iterations, its SyN
    regularised alike in millimetres (see the module docstring): the update-field variance
    scaled by the squared ratio of the grids, the gradient step set so that the last level
    travels as far (``step x grid mm x last-level iterations``), rounded to 2 decimals.

    >>> fast = ProcessingSettings.for_mode("fast")
    >>> round(fast.syn_update_variance, 2), fast.syn_grad_step
    (1.92, 0.53)
    """
    ratio = default.registration_mm / registration_mm
    travel = default.syn_grad_step * default.registration_mm * default.reg_iterations[-1]
    return replace(default, registration_mm=registration_mm, reg_iterations=reg_iterations,
                   syn_update_variance=round(default.syn_update_variance * ratio ** 2, 4),
                   syn_grad_step=round(travel / (registration_mm * reg_iterations[-1]), 2),
                   **changes)


_DEFAULT = ProcessingSettings(mode="default", registration_mm=2.0,
                              reg_iterations=(100, 70, 50, 20), n4_grid_mm=8.0,
                              template_resolution=1, tissue_n4_grid_mm=4.0)
_BY_MODE = {
    "default": _DEFAULT,
    "fast": _fast_from_default(_DEFAULT, registration_mm=2.5, reg_iterations=(40, 20, 6),
                               mode="fast", template_resolution=2, tissue_n4_grid_mm=8.0),
}
