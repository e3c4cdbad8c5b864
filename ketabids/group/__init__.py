"""Group level: cohort -> features -> nested-CV linear SVC -> permutation test -> final model,
maps and report (train), or a frozen model applied to a new cohort (predict).

Modules by job: :mod:`~ketabids.group.cohort` (who is analysed), :mod:`~ketabids.group.labels`,
:mod:`~ketabids.group.features` (maps -> matrix), :mod:`~ketabids.group.preprocessing`
(in-fold ComBat, covariates, scaling), :mod:`~ketabids.group.cv` (splitters),
:mod:`~ketabids.group.kernels` (exact dual solver), :mod:`~ketabids.group.estimator`
(:class:`KetaSVC`), :mod:`~ketabids.group.nested` (the nested-CV engine),
:mod:`~ketabids.group.permutation`, :mod:`~ketabids.group.metrics`,
:mod:`~ketabids.group.interpretation`, :mod:`~ketabids.group.model_io`, and the two runs
:mod:`~ketabids.group.train` / :mod:`~ketabids.group.predict` (written through
:mod:`~ketabids.group.publish`). The engine names below are pure numpy/scikit-learn (no files).
"""
from ketabids.group.cv import GroupFolds, LeaveGroupOut, StratifiedFolds
from ketabids.group.estimator import DEFAULT_C_GRID, KetaSVC
from ketabids.group.interpretation import WeightMaps, haufe_pattern, region_table, weight_maps
from ketabids.group.metrics import balanced_accuracy, calibration_table, classification_metrics
from ketabids.group.nested import (
    CVData,
    NestedCVResult,
    NestedCVSettings,
    fit_final_model,
    nested_cv,
)
from ketabids.group.permutation import (
    PermutationResult,
    external_permutation_test,
    permutation_test,
)

__all__ = ["DEFAULT_C_GRID", "CVData", "NestedCVSettings", "NestedCVResult", "nested_cv",
           "KetaSVC",
           "StratifiedFolds", "GroupFolds", "LeaveGroupOut", "fit_final_model",
           "classification_metrics", "balanced_accuracy",
           "calibration_table", "PermutationResult", "permutation_test",
           "external_permutation_test", "WeightMaps", "weight_maps", "haufe_pattern",
           "region_table"]
