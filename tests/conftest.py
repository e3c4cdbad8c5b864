"""Shared fixtures: seeded rng, real scans (skip when absent), generated BIDS trees."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")  # before any nipype import: no network check
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
REAL_T1W_DIR = REPO.parent / "shared" / "data" / "real-t1w"


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


@pytest.fixture(scope="session")
def real_t1w_dir():
    """The folder of real human T1w scans shipped beside the repo (../shared/data/real-t1w)."""
    if not REAL_T1W_DIR.is_dir():
        pytest.skip(f"real scans not available: {REAL_T1W_DIR} is absent")
    return REAL_T1W_DIR


@pytest.fixture
def bids_tree(tmp_path):
    """Factory: ``bids_tree({"01": {"anat": ["T1w"]}}, participants={...})`` -> Path."""
    from ketabids.testing import make_bids_tree

    def _make(spec, **kwargs):
        return make_bids_tree(tmp_path / "bids", spec, **kwargs)

    return _make
