"""Shared fixtures: seeded rng, real scans (skip when absent), generated BIDS trees."""
from __future__ import annotations

import functools
import os
import re
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


@functools.lru_cache(maxsize=None)
def _has_module_fixture(path: Path) -> bool:
    """Whether a test file defines a module-scoped fixture (read from its source)."""
    try:
        return _MODULE_FIXTURE.search(path.read_text(encoding="utf-8")) is not None
    except OSError:
        return False


_MODULE_FIXTURE = re.compile(r"@pytest\.fixture\(\s*scope\s*=\s*[\"']module[\"']")


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's ``--dist load`` (the default here), except that the tests of a file with a
    module-scoped fixture (one participant run, one group run, one preview serving several
    tests) go to one worker as one unit: plain load balancing had every worker build its own
    copy of such a fixture. Largest units first (xdist's loadscope order)."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if _has_module_fixture(config.rootpath / path) else nodeid

    return SharedFixtureScheduling(config, log)
