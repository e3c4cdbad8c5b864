"""Atomic file writes: write under a temporary name in the same folder, then ``os.replace``.

Readers never see a half-written file, parallel jobs writing the same path never interleave, and
a crash leaves at most a hidden ``.<name>.*.tmp`` file, never a truncated output.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    tmp = Path(tmp)
    if suffix:  # let writers that check the extension see it last
        final_tmp = tmp.with_name(tmp.name[: -len(".tmp")])
        tmp.rename(final_tmp)
        tmp = final_tmp
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
