"""The synthetic study ``ketabids demo`` runs.

* :mod:`~ketabids.demo.phantom`: the subject model on the template grid (GM maths, planted
  effect, volumes);
* :mod:`~ketabids.demo.head`: native-space T1w phantoms (head model, contrast, pose, header
  orientation, field of view);
* :mod:`~ketabids.demo.participants`: the ``participants.tsv`` table and the planted labels;
* :mod:`~ketabids.demo.scanners`: the sites' scanner profiles;
* :mod:`~ketabids.demo.cohort`: the BIDS cohort writer
  (:func:`~ketabids.demo.cohort.generate_demo`);
* :mod:`~ketabids.demo.derivatives`: synthetic (perfect) participant-level derivatives for tests;
* :mod:`~ketabids.demo.published`: the study's published figures.
"""
