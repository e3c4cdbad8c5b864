"""Per-subject quality control: pure functions, images in, plain dicts out.

* :mod:`~ketabids.qc.header`: orientation codes, qform/sform agreement, voxel geometry and
  field of view, from the raw input header.
* :mod:`~ketabids.qc.iqms`: a subset of MRIQC's anatomical image-quality metrics (CJV, CNR, SNR,
  EFC, FBER, WM2MAX, INU), with MRIQC's definitions.
* :mod:`~ketabids.qc.coverage`: registration to the template: field-of-view coverage of the
  template brain, brain-mask overlap, Jacobian statistics, similarity to the template.
* :mod:`~ketabids.qc.segmentation`: TIV, tissue fractions, T1-like contrast order.
* :mod:`~ketabids.qc.rules`: the documented pass/warn/fail rule of every metric and
  :func:`~ketabids.qc.rules.assess`.
* :mod:`~ketabids.qc.subject`: everything above for one processed T1w, from its files.
* :mod:`~ketabids.qc.table`: per-subject JSON, cohort ``qc.tsv`` + ``qc.json``.
* :mod:`~ketabids.qc.homogeneity`: CAT12-style sample homogeneity of modulated GM maps.
"""
