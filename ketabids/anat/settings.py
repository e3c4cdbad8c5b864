"""The processing mode (``default`` or ``fast``): every number that ``--fast`` changes.

:class:`ProcessingSettings` is the one place where a mode's numbers live; the registration,
N4, the template-space output grid and the methods text read them from here.

* ``default``: registration on a 2 mm grid (affine, then SyN with 100x70x50x20 iterations at
  16/8/4/2 mm), the head-wide N4 fitted on an 8 mm grid, the tissue N4 (inside the brain
  mask, the segmentation's input) on a 4 mm grid, template-space maps at 1 mm.
* ``fast``: for demos/CI, reduced accuracy by design: registration on a 2.5 mm grid (SyN
  40x20x6 at 10/5/2.5 mm with a gradient step of 0.4; see below), N4 on a 12 mm grid (2.6x
  quicker on a 2 mm head, GM volume ~1 % lower on the phantoms), the tissue N4 on an 8 mm grid
  (5x quicker, GM/WM Dice against FAST -0.001 on a real scan), template-space maps at 2 mm. The
  measured trade-offs are in :mod:`ketabids.anat.registration`.

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

from dataclasses import asdict, dataclass

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
    grid (mm) of the template-space outputs; ``syn_grad_step``: SyN's gradient step.

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
                "syn_grad_step": self.syn_grad_step}

    def as_dict(self) -> dict:
        return asdict(self)


_BY_MODE = {
    "default": ProcessingSettings(mode="default", registration_mm=2.0,
                                  reg_iterations=(100, 70, 50, 20), n4_grid_mm=8.0,
                                  template_resolution=1, tissue_n4_grid_mm=4.0),
    "fast": ProcessingSettings(mode="fast", registration_mm=2.5, reg_iterations=(40, 20, 6),
                               n4_grid_mm=12.0, template_resolution=2, tissue_n4_grid_mm=8.0,
                               syn_grad_step=0.4),
}
