"""The study's published figures (Transl Psychiatry 2026, doi:10.1038/s41398-026-04085-4): the
one place they are written down; the demo table and the group reports show them next to ours.

Per analysis: ``n`` participants, ``bac`` (balanced accuracy) and ``auc`` as fractions, ``p`` the
permutation p-value of the BAC (None: not reported). The discovery cohort also reports the pooled
confusion counts: ``sensitivity`` = responders predicted as responders / responders and
``specificity`` = non-responders predicted as such / non-responders, as (hits, total).
"""
from __future__ import annotations

PUBLISHED = {
    "discovery (nested CV)": {"n": 99, "bac": 0.722, "auc": 0.72, "p": None,
                              "sensitivity": (34, 47), "specificity": (38, 52)},
    "external ketamine": {"n": 51, "bac": 0.600, "auc": 0.65, "p": 0.01},
    "saline arm": {"n": 49, "bac": 0.411, "auc": 0.45, "p": None},
}
