"""Fixtures of the robustness suite: black-box runs of the command line.

Every test drives ``ketabids`` the way a user does: ``ketabids.cli.main(argv)`` in this process
(:func:`cli`), or ``python -m ketabids`` in a subprocess (:func:`run_process`) where a process
boundary matters (kill -9, SIGTERM, what reaches the terminal). ``$TMPDIR`` points at a
per-test folder so stray temporary files are seen. Helpers here assert the common contract:
one ``ketabids: error:`` line naming the file/option, no traceback, nothing partial or stray.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from . import data  # noqa: E402

#: a fast group protocol (seconds on 16 subjects)
FAST_GROUP = ["--n-repeats", "1", "--n-outer", "2", "--n-inner", "2", "--n-permutations", "0",
              "--c-grid", "0.01", "1", "--skip-bids-validation"]
LABEL = ["--response-from", "madrs_pre", "madrs_24h"]
#: staging/temporary leftovers: hidden *.tmp files, .stage / .tmp- / .old- folders, Atropos files
STRAY = re.compile(r"(^\..*(\.tmp|\.stage|\.tmp-|\.old-|\.lock).*$)|(^antsr.*prob.*)")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("ketabids: error:")]


# ------------------------------------------------------------------------- running the CLI
@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch) -> Path:
    """``$TMPDIR`` (and :mod:`tempfile`'s cached default) pointed at an empty per-test folder."""
    folder = tmp_path / "TMPDIR"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return folder


@pytest.fixture
def cli(capsys, tmpdir_env):
    """``cli(*argv)`` -> :class:`Result`: ``ketabids.cli.main`` in this process."""
    from ketabids.cli import main

    def _run(*argv) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return _run


def process_env(tmpdir: Path | None = None, **extra) -> dict:
    env = dict(os.environ, NIPYPE_NO_ET="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_process(*argv, tmpdir: Path | None = None, timeout: float = 600, **kwargs) -> Result:
    """``python -m ketabids ARGV`` in a subprocess (``TMPDIR`` = ``tmpdir``)."""
    proc = subprocess.run([sys.executable, "-m", "ketabids", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout,
                          env=process_env(tmpdir), **kwargs)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def start_process(*argv, tmpdir: Path | None = None, log: Path | None = None):
    """Start ``python -m ketabids ARGV`` in its own process group; stderr goes to ``log``."""
    stream = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed by caller
    return subprocess.Popen([sys.executable, "-m", "ketabids", *map(str, argv)],
                            stdout=stream, stderr=subprocess.STDOUT, env=process_env(tmpdir),
                            start_new_session=True)


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


def kill_group(proc, sig=signal.SIGKILL) -> None:
    """Send ``sig`` to the process group of ``proc`` (it and its workers) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)


# ------------------------------------------------------------------------- assertions
def assert_one_line_error(result: Result, *needles: str, code: int | None = None) -> str:
    """Exactly one ``ketabids: error:`` line containing every needle, no traceback, the code."""
    assert "Traceback" not in result.err, result.err[-3000:]
    if code is not None:
        assert result.code == code, (result.code, result.err[-3000:])
    lines = result.error_lines
    assert len(lines) == 1, result.err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


def stray_files(root: Path) -> list[str]:
    """Hidden staging/temporary leftovers and Atropos files under ``root``."""
    if not Path(root).exists():
        return []
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if STRAY.match(p.name))


def files_under(root: Path) -> list[str]:
    if not Path(root).exists():
        return []
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def subject_folders(output_dir: Path) -> list[str]:
    return sorted(p.name for p in Path(output_dir).glob("sub-*") if p.is_dir())


def complete_subjects(output_dir: Path) -> list[str]:
    """Subjects whose derivatives are complete: the modulated GM map and the report exist."""
    out = []
    for folder in Path(output_dir).glob("sub-*"):
        if folder.is_dir() and (Path(output_dir) / f"{folder.name}.html").is_file() and \
                list(folder.rglob("*label-GM_desc-modulated_probseg.nii.gz")):
            out.append(folder.name)
    return sorted(out)


# ------------------------------------------------------------------------- small file systems
@contextlib.contextmanager
def tmpfs(path: Path, size: str = "20m", *, readonly: bool = False):
    """Mount a tmpfs of ``size`` at ``path`` (yields True), or yield False where mounting is
    not permitted (not root, no CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    if proc.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave_bytes: int) -> None:
    """Fill the file system of ``folder`` until about ``leave_bytes`` are free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    if free > leave_bytes:
        with open(folder / "filler.bin", "wb") as fh:
            fh.write(b"\0" * (free - leave_bytes))


# ------------------------------------------------------------------------- shared data
@pytest.fixture(scope="session")
def group_study(tmp_path_factory):
    """16 synthetic participants (derivatives without imaging) and one fast training."""
    root = tmp_path_factory.mktemp("group-study")
    bids, out = data.group_study(root, 16)
    return {"root": root, "bids": bids, "out": out}


@pytest.fixture(scope="session")
def trained(group_study, tmp_path_factory):
    """A model trained once on ``group_study`` (in a copy, so tests may not disturb it)."""
    import shutil

    from ketabids.cli import main

    root = tmp_path_factory.mktemp("trained")
    out = root / "out"
    shutil.copytree(group_study["out"], out)
    code = main([str(group_study["bids"]), str(out), "group", *LABEL, *FAST_GROUP])
    assert code == 0
    model = out / "group" / "train" / "ketabids_model.skops"
    assert model.is_file()
    return {"bids": group_study["bids"], "out": out, "model": model}


@pytest.fixture
def study_copy(group_study, tmp_path):
    """A private copy of the 16-participant study's derivatives (OUTPUT_DIR) per test."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(group_study["out"], out)
    return group_study["bids"], out
