"""Unit tests of the fail-safe output helpers in ketabids.io: staged folders, stale
staging cleanup, locks, disk-full translation, writability checks, run-scoped temp folders."""
from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ketabids import io
from ketabids.errors import ExitCode, OutputError, OutputExistsError, Terminated
from ketabids.runner.signals import run_temp_dir


@pytest.fixture
def umask002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _host() -> str:
    return io._owner_tag().rsplit("-", 1)[0]


# ----------------------------------------------------------------------------- staged_dir
def test_staged_dir_publishes_complete_folder(tmp_path, umask002):
    final = tmp_path / "group" / "train"
    with io.staged_dir(final) as stage:
        assert stage.parent == final.parent and stage.name.startswith(".train.stage-")
        (stage / "model.txt").write_text("m")
        assert not final.exists()
    assert (final / "model.txt").read_text() == "m"
    assert sorted(p.name for p in final.parent.iterdir()) == ["train"]
    assert stat.S_IMODE(final.stat().st_mode) == 0o775  # umask honoured (mkdtemp gives 0700)


def test_staged_dir_failure_leaves_nothing(tmp_path):
    final = tmp_path / "out" / "group" / "train"
    (tmp_path / "out").mkdir()
    with pytest.raises(RuntimeError), io.staged_dir(final) as stage:
        (stage / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert list((tmp_path / "out").iterdir()) == []  # the group/ it created is gone too


def test_staged_dir_terminated_leaves_nothing(tmp_path):
    final = tmp_path / "train"
    with pytest.raises(Terminated), io.staged_dir(final) as stage:
        (stage / "half.txt").write_text("x")
        raise Terminated(signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []


def test_staged_dir_refuses_to_replace_without_overwrite(tmp_path):
    final = tmp_path / "train"
    final.mkdir()
    (final / "model.txt").write_text("old")
    with pytest.raises(OutputExistsError) as info, io.staged_dir(final, overwrite=False):
        pytest.fail("the block must not run")
    assert info.value.exit_code == ExitCode.CANT_CREATE
    assert str(final) in str(info.value) and "--overwrite" in str(info.value)
    assert (final / "model.txt").read_text() == "old"


def test_staged_dir_refuses_when_destination_appears_meanwhile(tmp_path):
    final = tmp_path / "train"
    with pytest.raises(OutputExistsError), io.staged_dir(final, overwrite=False) as stage:
        (stage / "new.txt").write_text("new")
        final.mkdir()  # another run published first
        (final / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
    assert sorted(p.name for p in final.iterdir()) == ["theirs.txt"]


def test_staged_dir_overwrite_replaces(tmp_path):
    final = tmp_path / "train"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with io.staged_dir(final, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
        assert (final / "old.txt").is_file()  # the old results stay until the new are in
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_staged_dir_cleans_stale_staging_of_dead_runs_only(tmp_path):
    dead = tmp_path / f".train.stage-{_host()}-{_dead_pid()}-1"
    alive = tmp_path / f".train.stage-{_host()}-{os.getppid()}-2"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "x").write_text("x")
    with io.staged_dir(tmp_path / "train"):
        pass
    assert not dead.exists() and alive.exists()


def test_staged_dir_disk_full_becomes_exit_73(tmp_path):
    final = tmp_path / "group" / "train"
    with pytest.raises(OutputError) as info, io.staged_dir(final) as stage:
        (stage / "big").write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.exit_code == 73
    assert "no space left" in str(info.value) and str(tmp_path / "group") in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- atomic files
def test_atomic_files_honour_umask(tmp_path, umask002):
    path = io.write_json(tmp_path / "a.json", {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


def test_clean_stale_removes_dead_writers_tmp_files(tmp_path):
    dead = tmp_path / f".x.nii.gz.{_host()}-{_dead_pid()}-abcd.tmp.nii.gz"
    mine = tmp_path / f".x.nii.gz.{io._owner_tag()}-efgh.tmp.nii.gz"
    foreign_old = tmp_path / ".y.tsv.otherhost-12-ijkl.tmp"
    foreign_new = tmp_path / ".z.tsv.otherhost-13-mnop.tmp"
    keep = tmp_path / ".bidsignore"
    for p in (dead, mine, foreign_old, foreign_new, keep):
        p.write_text("x")
    old = os.path.getmtime(foreign_old) - io.STALE_AFTER_S - 60
    os.utime(foreign_old, (old, old))
    removed = io.clean_stale(tmp_path)
    assert sorted(removed) == sorted([dead, foreign_old])
    assert mine.exists() and foreign_new.exists() and keep.exists()


def test_atomic_path_names_its_writer(tmp_path):
    with io.atomic_path(tmp_path / "a.nii.gz", suffix=".nii.gz") as tmp:
        assert io._owner_tag() in tmp.name and tmp.name.endswith(".tmp.nii.gz")
        tmp.write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


def test_leftover_of_a_killed_writer_is_cleaned(tmp_path):
    """kill -9 while ``atomic_path`` is open: the hidden file stays; the next run removes it."""
    code = ("import os, signal, sys\n"
            "from ketabids import io\n"
            f"with io.atomic_path({str(tmp_path / 'x.nii.gz')!r}, suffix='.nii.gz') as tmp:\n"
            "    tmp.write_bytes(b'half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code])
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".x.nii.gz.")
    assert io.clean_stale(tmp_path) == left and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- locks
def test_exclusive_lock_refuses_second_writer(tmp_path):
    target = tmp_path / "group" / "train"
    with io.exclusive_lock(target, what="group/train") as lock:
        assert lock.is_file() and str(os.getpid()) in lock.read_text()
        with pytest.raises(OutputError) as info, io.exclusive_lock(target, what="group/train"):
            pytest.fail("the second lock must not be granted")
        assert info.value.exit_code == 73 and "another ketabids run" in str(info.value)
        assert f"pid {os.getpid()}" in str(info.value)
    assert not lock.exists()
    with io.exclusive_lock(target):  # free again
        pass


def test_exclusive_lock_across_processes(tmp_path):
    target = tmp_path / "train"
    code = ("import sys; from ketabids import io; from ketabids.errors import OutputError\n"
            "try:\n"
            f"    with io.exclusive_lock({str(target)!r}): sys.exit(0)\n"
            "except OutputError: sys.exit(3)\n")
    with io.exclusive_lock(target):
        assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------------------- disk full
def test_disk_full_translates_and_cleans(tmp_path):
    junk = tmp_path / "partial"
    junk.mkdir()
    with pytest.raises(OutputError) as info, io.disk_full(tmp_path, needed=3_000_000,
                                                         cleanup=[junk]):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.exit_code == 73 and "needs about 3.0 MB" in str(info.value)
    assert not junk.exists()
    assert "\n" not in str(info.value)


def test_disk_full_sees_wrapped_errors_and_passes_others(tmp_path):
    with pytest.raises(OutputError):
        with io.disk_full(tmp_path):
            try:
                raise OSError(errno.EDQUOT, "Disk quota exceeded")
            except OSError as exc:
                raise RuntimeError("node failed") from exc
    with pytest.raises(PermissionError), io.disk_full(tmp_path):
        raise PermissionError(errno.EACCES, "Permission denied")


# ----------------------------------------------------------------------------- check_writable
def test_check_writable_creates_nothing(tmp_path):
    assert io.check_writable(tmp_path / "a" / "b", "OUTPUT_DIR") == (tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []


def test_check_writable_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError) as info:
        io.check_writable(tmp_path / "f" / "work", "--work-dir")
    assert "--work-dir" in str(info.value) and info.value.exit_code == 73


def test_check_writable_read_only_file_system(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with pytest.raises(OutputError) as info:
            io.check_writable(mnt, "--work-dir")
        assert "--work-dir" in str(info.value) and "Read-only" in str(info.value)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ----------------------------------------------------------------------------- temp folders
def test_run_temp_dir_redirects_and_cleans(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    before = tempfile.gettempdir()
    with run_temp_dir(tmp_path / "work") as folder:
        assert folder.parent == tmp_path / "work"
        assert tempfile.gettempdir() == str(folder) == os.environ["TMPDIR"]
        # a child process (a MultiProc worker, an ANTs call) inherits the folder
        child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.mktemp("
                                "prefix='antsr', suffix='prob%02d.nii.gz'))"],
                               capture_output=True, text=True).stdout.strip()
        assert child.startswith(str(folder))
        Path(child.replace("%02d", "01")).write_text("atropos")
    assert not folder.exists()
    assert os.environ["TMPDIR"] == str(tmp_path) and tempfile.gettempdir() == before
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == []


def test_run_temp_dir_sigterm_cleans_up(tmp_path):
    seen = {}
    with pytest.raises(Terminated) as info:
        with run_temp_dir(tmp_path) as folder:
            seen["folder"] = folder
            (folder / "antsr1prob01.nii.gz").write_text("x")
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0) if hasattr(signal, "sigtimedwait") else None
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert info.value.exit_code == 143
    assert not seen["folder"].exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_run_temp_dir_sigterm_in_a_process(tmp_path):
    """A process killed with SIGTERM inside ``run_temp_dir`` leaves nothing in its TMPDIR."""
    code = (
        "import time, tempfile, sys\n"
        "from ketabids.errors import Terminated\n"
        "from ketabids.runner.signals import run_temp_dir\n"
        "try:\n"
        "    with run_temp_dir():\n"
        "        open(tempfile.mktemp(prefix='antsr', suffix='prob01.nii.gz'), 'w').write('x')\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "except Terminated as exc:\n"
        "    sys.exit(exc.exit_code)\n"
    )
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "ready"
    assert len(list(tmp_path.rglob("antsr*"))) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert list(tmp_path.iterdir()) == []
