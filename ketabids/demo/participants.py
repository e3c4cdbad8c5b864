"""Synthetic participants: the ``participants.tsv`` table and the label planted in the images.

Response is the group level's rule (:func:`ketabids.group.labels.is_response`, the rule of
``--response-from madrs_pre madrs_24h``: MADRS drop of at least 50 % from baseline to 24 h), so
the demo plants exactly the label the group level will read.
"""
from __future__ import annotations

import numpy as np

from ketabids.group.labels import is_response

PARTICIPANT_COLUMNS = ["participant_id", "age", "sex", "site", "arm", "madrs_pre", "madrs_24h"]


def make_participants_table(
    n: int,
    *,
    seed: int = 0,
    saline_fraction: float = 0.0,
    site="A",
    ketamine_response_rate: float = 0.45,
    saline_response_rate: float = 0.35,
    label_prefix: str = "",
    start: int = 1,
):
    """A ``participants.tsv``-shaped :class:`pandas.DataFrame` with ``n`` synthetic patients.

    Columns: ``participant_id`` (``sub-<label_prefix><NNN>``), ``age`` (years, 18-70, mean 45),
    ``sex`` (M/F, half each, shuffled), ``site`` (``site`` if a string, else drawn evenly and
    shuffled from the sequence), ``arm`` (``round(n * saline_fraction)`` saline, rest ketamine),
    ``madrs_pre`` (integer, 28-44, mean ~35) and ``madrs_24h`` (integer). Exactly
    ``round(rate * n_arm)`` responders per arm (MADRS drop >= 50 %, drop 55-90 %);
    non-responders drop 0-40 %. Response is decided only by the MADRS columns
    (:func:`~ketabids.group.labels.is_response`), which is also how
    :func:`ketabids.demo.derivatives.write_synthetic_derivatives` recovers it.

    >>> t = make_participants_table(20, seed=1, saline_fraction=0.25)
    >>> list(t.columns) == PARTICIPANT_COLUMNS, int((t.arm == "saline").sum())
    (True, 5)
    """
    import pandas as pd

    if n < 1:
        raise ValueError("n must be >= 1")
    rng = np.random.default_rng(seed)
    n_sal = int(round(n * saline_fraction))
    arms = np.array(["ketamine"] * (n - n_sal) + ["saline"] * n_sal, dtype=object)
    rng.shuffle(arms)
    responders = np.zeros(n, dtype=bool)
    for arm, rate in (("ketamine", ketamine_response_rate), ("saline", saline_response_rate)):
        idx = np.flatnonzero(arms == arm)
        k = int(round(rate * idx.size))
        responders[rng.permutation(idx)[:k]] = True
    ages = np.clip(np.round(rng.normal(45.0, 12.0, n)), 18, 70).astype(int)
    sexes = np.array(["F", "M"] * (n // 2 + 1), dtype=object)[:n]
    rng.shuffle(sexes)
    if isinstance(site, str):
        sites = np.array([site] * n, dtype=object)
    else:
        site = list(site)
        sites = np.array([site[i % len(site)] for i in range(n)], dtype=object)
        rng.shuffle(sites)
    pre = np.clip(np.round(rng.normal(35.0, 3.5, n)), 28, 44).astype(int)
    drop = np.where(responders, rng.uniform(0.55, 0.90, n), rng.uniform(0.0, 0.40, n))
    post = np.round(pre * (1.0 - drop)).astype(int)
    # integer rounding must not flip the rule
    post = np.where(responders, np.minimum(post, pre // 2), np.maximum(post, pre // 2 + 1))
    assert (is_response(pre, post) == responders).all()
    width = max(3, len(str(start + n - 1)))
    ids = [f"sub-{label_prefix}{start + i:0{width}d}" for i in range(n)]
    return pd.DataFrame(
        {
            "participant_id": ids,
            "age": ages,
            "sex": sexes,
            "site": sites,
            "arm": arms,
            "madrs_pre": pre,
            "madrs_24h": post,
        }
    )


def planted_label(row, *, null: bool = False, rng: np.random.Generator | None = None):
    """The hidden label that drives the planted image effect for one participant row.

    ``True``/``False`` (responder / non-responder, from the MADRS rule) in the ketamine arm,
    ``None`` (no effect) in the saline arm. With ``null=True`` the image label is a coin flip
    from ``rng`` for every participant, independent of the MADRS columns.
    """
    if null:
        rng = rng or np.random.default_rng(0)
        return bool(rng.random() < 0.5)
    if str(row.get("arm", "ketamine")).lower() != "ketamine":
        return None
    return bool(is_response(row["madrs_pre"], row["madrs_24h"]))


#: Data dictionary of the demo's ``participants.tsv`` (``participants.json``; the cohort
#: writer fills the site levels).
PARTICIPANTS_JSON = {
    "participant_id": {"Description": "Unique participant identifier"},
    "age": {"Description": "Age at the baseline scan", "Units": "year"},
    "sex": {
        "Description": "Sex",
        "Levels": {"M": "male", "F": "female"},
    },
    "site": {"Description": "Acquisition site (scanner)", "Levels": {}},
    "arm": {
        "Description": "Randomised treatment arm: one intravenous infusion",
        "Levels": {
            "ketamine": "racemic ketamine 0.5 mg/kg over 40 min",
            "saline": "saline placebo",
        },
    },
    "madrs_pre": {
        "Description": "Montgomery-Asberg Depression Rating Scale total score before the "
        "infusion (0-60)",
        "Units": "arbitrary",
    },
    "madrs_24h": {
        "Description": "MADRS total score 24 h after the infusion (0-60); response = drop of "
        "at least 50 % from madrs_pre",
        "Units": "arbitrary",
    },
}
