"""Shared fixtures: seeded rng, real scans (skip when absent), generated BIDS trees."""
from __future__ import annotations

import ast
import functools
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


def _is_module_fixture(node) -> bool:
    return any(isinstance(d, ast.Call) and any(
        k.arg == "scope" and isinstance(k.value, ast.Constant) and k.value.value == "module"
        for k in d.keywords) for d in node.decorator_list)


@functools.lru_cache(maxsize=None)
def _shared_fixture_groups(path: Path) -> dict[str, str]:
    """Test function name -> the module-scoped fixtures it shares with other tests of the file
    (read from the file's source: parameters, through the file's own fixtures; tests that share
    any such fixture, directly or through a third test, get the same group name)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return {}
    params, module_fixtures = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params[node.name] = {a.arg for a in node.args.args + node.args.kwonlyargs}
            if _is_module_fixture(node):
                module_fixtures.add(node.name)
    if not module_fixtures:
        return {}

    def used(name, seen):
        for arg in params.get(name, ()):
            if arg not in seen and arg in params:
                seen.add(arg)
                used(arg, seen)
        return seen & module_fixtures

    parent = {f: f for f in module_fixtures}

    def root(f):
        while parent[f] != f:
            f = parent[f]
        return f

    tests = {name: used(name, set()) for name in params if name.startswith("test")}
    for fixtures in tests.values():
        first, *rest = sorted(fixtures) or [None]
        for other in rest:
            parent[root(other)] = root(first)
    return {name: root(min(fixtures)) for name, fixtures in tests.items() if fixtures}


@pytest.hookimpl(optionalhook=True)  # without pytest-xdist: unused
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's ``--dist load`` (the default here), except that tests sharing a
    module-scoped fixture (one participant run, one group run, one preview serving several
    tests) go to one worker as one unit: plain load balancing had every worker build its own
    copy of such a fixture. Largest units first (xdist's loadscope order)."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, rest = nodeid.partition("::")
            name = rest.rsplit("::", 1)[-1].split("[", 1)[0]
            group = _shared_fixture_groups(config.rootpath / path).get(name)
            return nodeid if group is None else f"{path}::{group}"

    return SharedFixtureScheduling(config, log)
