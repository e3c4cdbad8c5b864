"""Safe output: atomic files, staged folders, disk-full translation.

Files: write under a temporary name in the same folder, then ``os.replace`` (:func:`atomic_path`).
Readers never see a half-written file, parallel jobs writing the same path never interleave, and
a crash leaves at most a hidden ``.<name>.<host>-<pid>-*.tmp[.ext]`` file, never a truncated
output;
:func:`clean_stale` removes such leftovers of dead processes on the next run.

Folders: :func:`staged_dir` builds a whole folder (a subject's derivatives, a group analysis)
beside its destination and renames it into place at the end: it appears complete or not at all.
:func:`exclusive_lock` keeps two runs from writing one folder at once.

Faults: :func:`disk_full` turns ``ENOSPC``/``EDQUOT`` into :class:`~ketabids.errors.OutputError`
(exit 73) with one line naming the folder and the space needed. (A run's own temporary folder
and its SIGTERM handling are :mod:`ketabids.runner.signals`.)
Every file and folder made here honours the process umask.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from ketabids.errors import OutputError, OutputExistsError

#: errno values meaning "the file system is full" (ENOSPC) or "the user's quota is" (EDQUOT)
NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: leftovers of another process are "stale" after this long when their owner cannot be checked
#: (written from another host)
STALE_AFTER_S = 24 * 3600


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc``), else by the
    classic set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new regular file under the current umask (0o644 with the usual 022)."""
    return 0o666 & ~current_umask()


def _owner_tag() -> str:
    """``<host>-<pid>``: who wrote a temporary name, so leftovers of dead writers can be told
    from files still being written."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0])[:16] or "host"
    return f"{host}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_TAG = re.compile(r"[.-](?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-")


def _is_stale(path: Path, now: float | None = None) -> bool:
    """A staging leftover is stale when its writer (``<host>-<pid>`` in the name) is a dead
    process of this host, or, written elsewhere, when it is older than :data:`STALE_AFTER_S`."""
    match = _TAG.search(path.name)
    if match is None:
        return False
    host, pid = match["host"], int(match["pid"])
    if host == _owner_tag().rsplit("-", 1)[0]:
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except OSError:
        return False
    return age > STALE_AFTER_S


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Remove the staging leftovers of dead writers in ``folder``: hidden ``.<name>.<tag>-*.tmp``
    files of :func:`atomic_path` and ``.<name>.stage-<tag>-*`` / ``.<name>.old-<tag>-*`` folders
    of :func:`staged_dir` (a run killed with -9 leaves them). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = "**/.*" if recursive else ".*"
    removed = []
    for path in sorted(folder.glob(pattern)):
        name = path.name
        staging = name.endswith(".tmp") or ".stage-" in name or ".old-" in name \
            or re.search(r"\.tmp(\.[a-z.]+)?$", name) is not None
        if staging and _is_stale(path):
            _remove(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    ``suffix`` keeps writers that infer the format from the name happy (e.g. ``.nii.gz``).

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("hello")
    >>> target.read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # ".<name>.<host>-<pid>-<random>.tmp<suffix>": hidden, marked as temporary, its writer
    # known (for clean_stale), and the extension last for writers that infer the format
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner_tag()}-",
                               suffix=".tmp" + suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_nifti(img, path: str | os.PathLike) -> Path:
    """The one NIfTI writer: ``img`` saved atomically to ``path`` (``.nii`` or ``.nii.gz``)."""
    import nibabel as nib

    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically; return False (and touch nothing) if identical."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> bool:
    """Text version of :func:`atomic_write_bytes` (UTF-8, ``\\n`` line ends)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def jsonable(obj):
    """``obj`` with numpy scalars/arrays, paths and tuples turned into plain JSON types; NaN and
    infinities become None (JSON has no such numbers).

    >>> jsonable({"a": np.float32(0.5), "b": (1, np.int64(2)), "c": Path("x"), "d": np.nan})
    {'a': 0.5, 'b': [1, 2], 'c': 'x', 'd': None}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path: str | os.PathLike, obj, *, sort_keys: bool = False) -> Path:
    """The one JSON writer: ``obj`` (made :func:`jsonable`) with indent 2 and a final newline,
    written atomically. Returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=sort_keys) + "\n")
    return path


def write_tsv(frame, path: str | os.PathLike, *, float_format: str | None = None) -> Path:
    """The one TSV writer: a pandas DataFrame without index, missing values as ``n/a`` (BIDS),
    ``\n`` line ends, written atomically. Returns the path."""
    path = Path(path)
    text = frame.to_csv(sep="\t", index=False, na_rep="n/a", float_format=float_format,
                        lineterminator="\n")
    atomic_write_text(path, text)
    return path


# ----------------------------------------------------------------------------- disk full
def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def no_space_error(folder: str | os.PathLike, *, needed: int | None = None,
                   what: str = "OUTPUT_DIR") -> OutputError:
    """The one-line exit-73 error for a full file system (or quota) under ``folder``.

    >>> str(no_space_error("/data/out", needed=2_500_000_000)).split(",")[0]
    '/data/out: no space left on the device of OUTPUT_DIR (needs about 2.5 GB'
    """
    folder = Path(folder)
    free = _free_bytes(folder)
    parts = []
    if needed:
        parts.append(f"needs about {_size(needed)}")
    if free is not None:
        parts.append(f"{_size(free)} free")
    detail = f" ({', '.join(parts)})" if parts else ""
    return OutputError(f"{folder}: no space left on the device of {what}{detail}; nothing "
                       "partial was kept: free some space or choose another folder, then rerun")


def is_no_space(exc: BaseException) -> bool:
    """True for ``OSError(ENOSPC)`` / ``OSError(EDQUOT)``, also when wrapped (``__cause__``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def disk_full(folder: str | os.PathLike, *, needed: int | None = None, what: str = "OUTPUT_DIR",
              cleanup=()):
    """Run the block; a full disk becomes :func:`no_space_error` (exit 73) after removing the
    paths in ``cleanup`` (e.g. the staging folder, so the space is given back).

    >>> import errno
    >>> try:
    ...     with disk_full("/data/out", needed=10**9):
    ...         raise OSError(errno.ENOSPC, "No space left on device")
    ... except OutputError as exc:
    ...     print(int(exc.exit_code), str(exc)[:52])
    73 /data/out: no space left on the device of OUTPUT_DIR
    """
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:
        if not is_no_space(exc):
            raise
        for path in cleanup:
            _remove(Path(path))
        raise no_space_error(folder, needed=needed, what=what) from exc


# ----------------------------------------------------------------------------- staged folders
def _mkdirs(path: Path) -> list[Path]:
    """``mkdir -p`` honouring the umask; returns the folders it created, outermost first."""
    created = []
    for parent in reversed([path, *path.parents]):
        if not parent.exists():
            try:
                parent.mkdir()
            except FileExistsError:
                continue
            created.append(parent)
    return created


def _remove_if_empty(folders) -> None:
    for folder in reversed(list(folders)):  # innermost first
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, *, overwrite: bool = True,
               option: str = "--overwrite"):
    """Build the folder ``final`` all-or-nothing: yield a staging folder beside it
    (``.<name>.stage-<host>-<pid>-<n>``, same file system), rename it onto ``final`` when the
    block succeeds, delete it when it fails (any exception, SIGTERM included).

    Stale staging of dead runs next to ``final`` is removed first. An existing ``final`` is
    replaced only with ``overwrite`` (else :class:`~ketabids.errors.OutputExistsError`, exit 73,
    naming ``option``); the previous content is kept until the new one is in place. Parent
    folders created here are removed again if the block fails, so a failed run leaves no empty
    ``group/``. A full disk ends in :func:`no_space_error` after the cleanup.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with staged_dir(root / "group" / "train") as stage:
    ...     _ = (stage / "a.txt").write_text("done")
    >>> sorted(p.name for p in (root / "group").iterdir())
    ['train']
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"{final}: already exists and may hold results in use; pass {option} to replace "
            "it, or write into another OUTPUT_DIR")
    created = _mkdirs(final.parent)
    clean_stale(final.parent)
    stage = final.with_name(f".{final.name}.stage-{_owner_tag()}-{time.time_ns()}")
    try:
        with disk_full(final.parent, cleanup=[stage]):
            stage.mkdir()
            yield stage
            if final.exists() and not overwrite:  # appeared while we worked
                raise OutputExistsError(
                    f"{final}: was created by another run meanwhile; pass {option} to replace "
                    "it, or write into another OUTPUT_DIR")
            _swap_in(stage, final)
    except BaseException:
        _remove(stage)
        _remove_if_empty(created)
        raise


def _swap_in(stage: Path, final: Path) -> None:
    """Rename ``stage`` onto ``final``; an existing ``final`` is moved aside first and deleted
    only once the new folder is in place (restored if the rename fails)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{_owner_tag()}-{time.time_ns()}")
        final.rename(old)
    try:
        stage.rename(final)
    except BaseException:
        if old is not None:
            old.rename(final)
        raise
    if old is not None:
        _remove(old)


def owner_tag() -> str:
    """``<host>-<pid>`` of this process, as staging and temporary names carry it."""
    return _owner_tag()


def _same_bytes(a: Path, b: Path) -> bool:
    import filecmp

    try:
        return a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def publish_folder(stage: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Put the staged folder ``stage`` in place of ``final`` with one rename (same file system).

    When ``final`` exists, what it holds and ``stage`` does not (e.g. a session not processed
    this time) is carried over (hard links, else copies), and files whose bytes did not change
    keep their old modification time, so a rerun rewrites nothing visible. The old folder is
    removed only once the new one is in place.
    """
    stage, final = Path(stage), Path(final)
    if final.is_dir():
        for old in final.rglob("*"):
            if old.is_dir() and not old.is_symlink():
                continue
            new = stage / old.relative_to(final)
            if not new.exists():
                new.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(old, new)
                except OSError:
                    shutil.copy2(old, new)
            elif _same_bytes(old, new):
                st = old.stat()
                os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    _swap_in(stage, final)
    return final


def publish_file(staged: str | os.PathLike, final: str | os.PathLike) -> Path:
    """``os.replace`` ``staged`` onto ``final`` (same file system); an identical ``final`` is
    kept as it is (mtime unchanged) and ``staged`` removed."""
    staged, final = Path(staged), Path(final)
    if final.is_file() and _same_bytes(staged, final):
        staged.unlink()
    else:
        os.replace(staged, final)
    return final


# ----------------------------------------------------------------------------- locks
@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike, *, what: str | None = None):
    """Hold an exclusive, non-blocking lock on ``target`` (a folder about to be written) for
    the block: a second run gets :class:`~ketabids.errors.OutputError` (exit 73) naming the
    run that holds it, instead of racing. The lock file ``.<name>.lock`` sits beside ``target``
    and is removed at the end; a lock of a killed run is released by the kernel (``flock``).
    """
    import fcntl

    target = Path(target)
    created = _mkdirs(target.parent)
    lock_path = target.with_name(f".{target.name}.lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                _remove_if_empty(created)
                raise OutputError(f"{lock_path}: cannot lock {what or target} "
                                  f"({exc.strerror})") from exc
            raise OutputError(
                f"{target}: another ketabids run is writing {what or 'this folder'}"
                f"{f' ({holder})' if holder else ''}; wait for it to finish or choose another "
                "OUTPUT_DIR") from None
        # the file may have been unlinked by the previous holder between open and flock
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield lock_path
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()
        os.close(fd)


# ----------------------------------------------------------------------------- writability
def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """Check that ``folder`` can be created and written, without creating it: an existing
    folder gets a probe file (made and removed), a missing one is checked through its nearest
    existing parent. Raises :class:`~ketabids.errors.OutputError` (exit 73) naming ``what``
    (e.g. ``"--work-dir"``) and the fix; returns the resolved path.

    >>> import tempfile, pathlib
    >>> base = pathlib.Path(tempfile.mkdtemp())
    >>> check_writable(base / "new" / "out", "OUTPUT_DIR") == (base / "new" / "out").resolve()
    True
    >>> (base / "new").exists()
    False
    """
    path = Path(folder).expanduser().resolve()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise OutputError(f"{path}: cannot create {what}: {existing} is not a folder; choose "
                          "another path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=f".ketabids-probe.{_owner_tag()}-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space_error(existing, what=what) from exc
        verb = "write" if existing == path else "create"
        raise OutputError(f"{path}: cannot {verb} {what} ({exc.strerror} in {existing}); choose "
                          "a writable folder or fix its permissions") from exc
    return path
