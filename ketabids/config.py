"""Run configurations: every setting of one run, built once and passed down whole.

The command line builds one of these from its options (:func:`ketabids.cli.app.build_config`,
after :func:`ketabids.cli.app.check_cli_options`); Python users build them directly. Each is a
frozen dataclass whose ``__post_init__`` is the one place the Python API checks its values
(:meth:`ParticipantConfig.check`, :meth:`TrainConfig.check`, :meth:`PredictConfig.check`);
the command line's own checks (options given together, options of the other level) are in
:mod:`ketabids.cli.app`.

- :class:`ParticipantConfig` -> :func:`ketabids.runner.run_participant`
- :class:`TrainConfig` -> :func:`ketabids.group.train.run_group_train`
- :class:`PredictConfig` -> :func:`ketabids.group.predict.run_group_predict`

Each carries the run record (``{"argv": [...], "config": {...}}``) that goes to
``OUTPUT_DIR/logs/`` (:func:`ketabids.bids.logs.write_run_logs`); without one,
:meth:`record` is the configuration itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ketabids.anat.settings import ProcessingSettings
from ketabids.errors import UsageError
from ketabids.templates import DEFAULT_TEMPLATE

__all__ = ["ParticipantConfig", "TrainConfig", "PredictConfig", "LabelRule"]


@dataclass(frozen=True)
class LabelRule:
    """How labels are obtained; stored in the model manifest and shown in reports."""

    target: str | None = None
    response_from: tuple[str, str] | None = None
    response_threshold: float = 0.5
    include: tuple[str, ...] = ()

    def describe(self) -> str:
        """One sentence for reports and the methods paragraph."""
        if self.response_from:
            pre, post = self.response_from
            text = (f"response = relative drop ({pre} - {post}) / {pre} >= "
                    f"{self.response_threshold:g}")
        elif self.target:
            text = f"response = binary column '{self.target}'"
        else:
            text = "no labels"
        if self.include:
            text += "; rows kept where " + " and ".join(self.include)
        return text

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "response_from": list(self.response_from) if self.response_from else None,
            "response_threshold": self.response_threshold,
            "include": list(self.include),
        }


class _RunConfig:
    """What the three configurations share: their JSON-able form and their run record."""

    def as_dict(self) -> dict:
        """Every field (``run_record`` aside), JSON-able (paths as strings, tuples as lists)."""
        from ketabids.io import jsonable

        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "run_record"}
        return jsonable({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                         for k, v in values.items()})

    def record(self) -> dict:
        """``{"argv": [...] or None, "config": {...}}`` for ``OUTPUT_DIR/logs/``: the command
        line's record when the command line built this configuration, else this one."""
        record = self.run_record or {}
        return {"argv": record.get("argv"), "config": record.get("config") or self.as_dict()}


def _tuple(values) -> tuple:
    return tuple(values) if values is not None else ()


@dataclass(frozen=True)
class ParticipantConfig(_RunConfig):
    """The settings of one participant-level run (:func:`ketabids.runner.run_participant`).

    Parameters
    ----------
    bids_dir, output_dir : path
        The BIDS dataset (read only) and the derivative dataset written.
    subjects : sequence of str, optional
        Participant labels (with or without ``sub-``); default: every subject of the dataset.
    sessions : sequence of str, optional
        Session labels to process (default: all).
    bids_filters : dict, optional
        ``--bids-filter-file`` content (the ``t1w`` query).
    work_dir : path, optional
        Nipype's work folder (default ``$TMPDIR/ketabids_work``).
    keep_work : bool
        Keep a published subject's work folder (default: removed once published).
    template : str
        Output template (default :data:`ketabids.templates.DEFAULT_TEMPLATE`).
    processing : ProcessingSettings or str
        The processing mode's settings (default mode; ``ProcessingSettings.for_fast(True)``,
        or the mode's name ``"fast"``, for ``--fast``).
    atlas, atlas_labels : path, optional
        Regional GM volumes with this atlas (and its label table).
    nprocs, omp_nthreads : int
        Nipype processes and threads per process.
    mem_gb : float, optional
        Memory limit given to Nipype's MultiProc scheduler.
    seed : int, optional
        Random seed of the registrations.
    plugin_file : path, optional
        ``--nipype-plugin-file`` (a Nipype plugin and its arguments, YAML).
    run_record : dict, optional
        ``{"argv": [...], "config": {...}}`` of the command (default: this configuration).

    Raises
    ------
    ketabids.errors.UsageError
        A value no run can use (e.g. ``nprocs`` < 1).
    """

    bids_dir: Path
    output_dir: Path
    subjects: tuple = ()
    sessions: tuple | None = None
    bids_filters: dict | None = None
    work_dir: Path | None = None
    keep_work: bool = False
    template: str = DEFAULT_TEMPLATE
    processing: ProcessingSettings = field(
        default_factory=lambda: ProcessingSettings.for_fast(False))
    atlas: Path | None = None
    atlas_labels: Path | None = None
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    seed: int | None = None
    plugin_file: Path | None = None
    run_record: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "subjects", _tuple(self.subjects))
        if isinstance(self.processing, str):  # a mode name: "default" or "fast"
            object.__setattr__(self, "processing", ProcessingSettings.for_mode(self.processing))
        if self.sessions is not None:
            object.__setattr__(self, "sessions", _tuple(self.sessions))
        self.check()

    def check(self) -> None:
        """The Python API's checks of a participant run (the command line's parser already
        guarantees them)."""
        for name in ("nprocs", "omp_nthreads"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.mem_gb is not None and float(self.mem_gb) <= 0:
            raise UsageError(f"mem_gb must be > 0 (got {self.mem_gb})")
        if not isinstance(self.processing, ProcessingSettings):
            raise UsageError("processing must be a ProcessingSettings "
                             "(ProcessingSettings.for_fast(fast))")

    @property
    def fast(self) -> bool:
        """``--fast``: the fast processing mode."""
        return self.processing.fast


@dataclass(frozen=True)
class _GroupConfig(_RunConfig):
    """Fields of both group analyses (participants, labels, QC gate, run)."""

    bids_dir: Path
    output_dir: Path
    subjects: tuple | None = None
    sessions: tuple | None = None
    target: str | None = None
    response_from: tuple | None = None
    response_threshold: float = 0.5
    include: tuple = ()
    qc_policy: str = "exclude"
    exclude_file: Path | None = None
    n_permutations: int = 1000
    nprocs: int = 1
    seed: int = 0
    run_record: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        for name in ("subjects", "sessions", "response_from"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _tuple(value))
        object.__setattr__(self, "include", _tuple(self.include))
        self.check()

    def check(self) -> None:
        if int(self.n_permutations) < 0:
            raise UsageError("--n-permutations must be >= 0")


@dataclass(frozen=True)
class TrainConfig(_GroupConfig):
    """The settings of one group training (:func:`ketabids.group.train.run_group_train`).

    Parameters
    ----------
    bids_dir, output_dir : path
        The BIDS dataset (``participants.tsv``) and the participant level's derivatives.
    subjects, sessions : sequence of str, optional
        Participants and sessions to consider (default: all with maps).
    target : str, optional
        ``participants.tsv`` column holding the label (0/1, responder/non-responder...).
    response_from : (str, str), optional
        Columns before/after treatment: responder when the relative drop is at least
        ``response_threshold``.
    response_threshold : float
        Relative drop defining a response (default 0.5).
    include : sequence of str
        ``COLUMN=VALUE`` / ``COLUMN!=VALUE`` filters of the participants.
    qc_policy : str
        ``exclude`` (default), ``keep`` or ``strict``: what the QC verdicts do
        (:mod:`ketabids.qc.gate`); ``exclude_file`` lists further exclusions.
    n_permutations : int
        Label permutations of the permutation test (0: none).
    nprocs, seed : int
        Parallel jobs and random seed.
    covariates : sequence of str
        Covariates regressed out in-fold (e.g. ``age``, ``sex``, ``tiv``).
    site_column : str, optional
        ``participants.tsv`` column of the site; ``combat`` harmonises it (in-fold ComBat).
    standardize : bool
        z-score the voxels in-fold.
    smoothing_fwhm, analysis_resolution : float
        Smoothing (mm FWHM, >= 0) and grid (mm, > 0) of the features.
    template : str
        Template of the maps (default :data:`ketabids.templates.DEFAULT_TEMPLATE`).
    n_repeats, n_outer, n_inner : int
        Repeated nested CV: repeats, outer folds, inner folds.
    c_grid : sequence of float, optional
        C values of the inner CV (default :data:`ketabids.group.estimator.DEFAULT_C_GRID`).
    atlas, atlas_labels : path, optional
        Region table of the weight maps with this atlas (and its label table).
    progress : bool
        Progress lines for the long steps.
    overwrite : bool
        Replace an existing ``group/train``.
    outer_cv : str
        ``stratified`` (the study), ``leave-site-out`` or ``group-kfold``.
    group_column : str, optional
        Groups of ``group-kfold`` / ``leave-site-out`` (default ``site_column``).
    audit : bool
        Site and confound audit (:mod:`ketabids.group.audit`).
    scale_kernel : bool
        Scale each training set's kernel so that the C grid spans the regularisation path
        (False: ``--raw-c-grid``).
    run_record : dict, optional
        ``{"argv": [...], "config": {...}}`` of the command (default: this configuration).

    Raises
    ------
    ketabids.errors.UsageError
        Values no training can use, or options that contradict each other.
    """

    covariates: tuple = ()
    site_column: str | None = None
    combat: bool = False
    standardize: bool = False
    smoothing_fwhm: float = 8.0
    analysis_resolution: float = 2.0
    template: str = DEFAULT_TEMPLATE
    n_repeats: int = 10
    n_outer: int = 10
    n_inner: int = 5
    c_grid: tuple | None = None
    atlas: Path | None = None
    atlas_labels: Path | None = None
    progress: bool = True
    overwrite: bool = False
    outer_cv: str = "stratified"
    group_column: str | None = None
    audit: bool = True
    scale_kernel: bool = True

    def __post_init__(self):
        object.__setattr__(self, "covariates", _tuple(self.covariates))
        if self.c_grid is not None:
            object.__setattr__(self, "c_grid", tuple(float(c) for c in self.c_grid))
        super().__post_init__()

    def check(self) -> None:
        """The Python API's checks of a training (the one place for them)."""
        super().check()
        if self.smoothing_fwhm < 0 or self.analysis_resolution <= 0:
            raise UsageError("--smoothing-fwhm must be >= 0 and --analysis-resolution > 0 (mm)")
        grouped = self.cv_settings().grouped
        if self.group_column and not grouped:
            raise UsageError(f"--group-column {self.group_column} groups the folds of "
                             "--outer-cv leave-site-out or group-kfold; add one of them or "
                             "drop --group-column")
        if grouped and not (self.group_column or self.site_column):
            raise UsageError(f"--outer-cv {self.outer_cv} needs groups: --site-column COLUMN "
                             "(or --group-column COLUMN, e.g. a cohort column)")

    def cv_settings(self):
        """The nested CV protocol (:class:`ketabids.group.nested.NestedCVSettings`)."""
        from ketabids.group.estimator import DEFAULT_C_GRID
        from ketabids.group.nested import NestedCVSettings

        return NestedCVSettings(
            n_repeats=int(self.n_repeats), n_outer=int(self.n_outer),
            n_inner=int(self.n_inner), C_grid=tuple(self.c_grid or DEFAULT_C_GRID),
            standardize=bool(self.standardize), harmonize=bool(self.combat),
            random_state=int(self.seed), scheme=str(self.outer_cv),
            scale_kernel=bool(self.scale_kernel))

    def feature_settings(self):
        """The feature computation (:class:`ketabids.group.features.FeatureSettings`)."""
        from ketabids.group.features import FeatureSettings

        return FeatureSettings(template=self.template,
                               smoothing_fwhm=float(self.smoothing_fwhm),
                               analysis_resolution=float(self.analysis_resolution))


@dataclass(frozen=True)
class PredictConfig(_GroupConfig):
    """The settings of one prediction run (:func:`ketabids.group.predict.run_group_predict`).

    Parameters
    ----------
    model : path
        The frozen model (``ketabids_model.skops`` of a training).
    bids_dir, output_dir, subjects, sessions, target, response_from, response_threshold, \
include, qc_policy, exclude_file, n_permutations, nprocs, seed, run_record
        As in :class:`TrainConfig`; label options left out default to the model's own rule
        when its columns exist (``include`` is never inherited).
    name : str, optional
        Name of the run (``group/<name>``; default from BIDS_DIR and ``include``).
    arm_column : str, optional
        ``participants.tsv`` column of the treatment arm: the treatment specificity analysis.
    treatment_arm : str, optional
        The arm the model predicts response to (default: the training's arm).

    Raises
    ------
    ketabids.errors.UsageError
        Values no prediction can use, or options that contradict each other.
    """

    model: Path | None = None
    name: str | None = None
    arm_column: str | None = None
    treatment_arm: str | None = None

    def check(self) -> None:
        """The Python API's checks of a prediction (the one place for them)."""
        super().check()
        if self.model is None:
            raise UsageError("a prediction needs the model: model=PATH (--model)")
        if self.treatment_arm and not self.arm_column:
            raise UsageError("--treatment-arm names an arm of --arm-column: give --arm-column "
                             "too")
