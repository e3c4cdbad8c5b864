"""The processing mode (``default`` or ``fast``): every number that ``--fast`` changes.

:class:`ProcessingSettings` is the one place where a mode's numbers live; the registration,
N4, the template-space output grid and the methods text read them from here.

* ``default``: registration on a 2 mm grid (affine, then SyN with up to 100x70x50x20 iterations
  at 16/8/4/2 mm, each level stopped once converged (``1e-6`` over 10 iterations, as ANTs'
  scripts and fMRIPrep), antspyx's gradient step 0.2 and update-field variance 3 voxels^2),
  the head-wide N4 fitted on an 8 mm grid, the tissue N4 (inside the brain mask, the
  segmentation's input) on a 4 mm grid, template-space maps at 1 mm.
* ``fast``: for demos/CI, reduced accuracy by design: registration on a 2.5 mm grid (SyN
  40x20x6 at 10/5/2.5 mm, regularised as the default mode in millimetres: see below), the same
  head-wide N4 as the default mode, the tissue N4 on an 8 mm grid (5x quicker, GM/WM Dice
  against FAST -0.001 on a real scan), template-space maps at 2 mm. The measured trade-offs
  are in :mod:`ketabids.anat.registration`.

The fast mode's SyN is the default mode's in millimetres (:func:`_fast_from_default`). ANTs
takes SyN's two regularisation settings in voxels of each level's grid: the update-field
smoothing as a variance (voxels^2) and the gradient step as the largest update of an iteration
(voxels). The fast mode's variance is ``3 x (2 / 2.5)^2 = 1.92`` voxels^2, so its 10/5/2.5 mm
levels smooth exactly as the default mode's 8/4/2 mm levels (standard deviations 13.9/6.9/3.5
mm), and its step lets its last level travel as far as the default mode's
(``0.2 x 2 mm x 20 = 0.53 x 2.5 mm x 6 = 8 mm``). Its head-wide N4 is the default mode's (8 mm
grid): a coarser fit makes the brain mask depend on the bias field. The 2.5 mm SyN level is
what keeps the fast mode's brain masks of real scans within ~2 % of the default mode's. The
measurements behind each of these numbers are in ``docs/benchmarks.md`` ("Processing modes").
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
    ``tissue_n4_grid_mm``: the same for the tissue N4 inside the brain mask;
    ``template_resolution``: grid (mm) of the template-space outputs; ``syn_grad_step``: SyN's
    gradient step (the largest update of an iteration, in voxels of the level's grid);
    ``syn_update_variance``: variance
    (voxels^2 of the level's grid) of the Gaussian that smooths SyN's update field
    (antsRegistration's ``SyN[step, updateFieldVariance, 0]``); ``syn_convergence``: SyN's
    convergence test (threshold, window): a level stops once the slope of its metric over the
    last ``window`` iterations is below ``threshold`` (ANTs' and fMRIPrep's ``1e-6, 10``;
    antspyx fixes ``1e-7, 8``, which practically never stops a level early).

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
    syn_convergence: tuple[float, int] = (1e-6, 10)

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
                "syn_update_variance": self.syn_update_variance,
                "syn_convergence": self.syn_convergence}

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
    # the fast mode keeps antspyx's convergence test: its 6-iteration finest level cannot stop
    # within a 10-iteration window (little to save), and its outputs stay the ones measured
    "fast": _fast_from_default(_DEFAULT, registration_mm=2.5, reg_iterations=(40, 20, 6),
                               mode="fast", template_resolution=2, tissue_n4_grid_mm=8.0,
                               syn_convergence=(1e-7, 8)),
}
