"""Group level: features, labels, the nested-CV linear SVC engine, metrics, interpretation.

Engine API (pure numpy/scikit-learn, no file I/O): see /work/coord/group-api.md.
"""
from ketabids.group.interpretation import WeightMaps, haufe_pattern, region_table, weight_maps
from ketabids.group.metrics import classification_metrics
from ketabids.group.nested import (KetaSVC, NestedCVResult, NestedCVSettings, fit_final_model,
                                   nested_cv)
from ketabids.group.permutation import (PermutationResult, external_permutation_test,
                                        permutation_test)

__all__ = ["NestedCVSettings", "NestedCVResult", "nested_cv", "KetaSVC", "fit_final_model",
           "classification_metrics", "PermutationResult", "permutation_test",
           "external_permutation_test", "WeightMaps", "weight_maps", "haufe_pattern",
           "region_table"]
