"""BIDS dataset queries (the input side; derivative names and descriptions: ``derivatives``).

Everything that touches the input dataset goes through pybids here (no globbing ``sub-*``), and
nothing in this module writes into BIDS_DIR.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ketabids.errors import (
    BadDataError,
    MissingInputError,
    NoDataError,
    UsageError,
)

LOGGER = logging.getLogger("ketabids")

#: Default pybids query for the T1w image of one subject (sMRIPrep's convention).
DEFAULT_T1W_QUERY = {"datatype": "anat", "suffix": "T1w", "extension": [".nii", ".nii.gz"]}


def check_bids_dir(bids_dir: str | os.PathLike) -> Path:
    """Resolve BIDS_DIR and check it is a dataset root (has ``dataset_description.json``)."""
    path = Path(bids_dir).expanduser().resolve()
    if not path.is_dir():
        raise MissingInputError(f"{path}: BIDS_DIR does not exist; give the root of a BIDS "
                                "dataset")
    if not (path / "dataset_description.json").is_file():
        raise MissingInputError(
            f"{path}: no dataset_description.json, so this is not the root of a BIDS dataset; "
            "point BIDS_DIR at the folder that contains dataset_description.json"
        )
    return path


def check_output_dir(output_dir: str | os.PathLike, bids_dir: Path) -> Path:
    """Resolve OUTPUT_DIR, check where it lies relative to BIDS_DIR and make sure it can be
    written, without creating it (it is created once every input check has passed).

    ``BIDS_DIR/derivatives/<name>`` is accepted (the layout of fMRIPrep and of many labs and
    platforms: input queries ignore ``derivatives/``, see :func:`load_layout`). Refused
    (:class:`~ketabids.errors.UsageError`, exit 64): BIDS_DIR itself or a folder containing it,
    any other folder inside BIDS_DIR (its raw data, ``code/``, ``sourcedata/``...) and
    ``derivatives/`` itself, which holds one folder per pipeline.
    """
    from ketabids.io import check_writable

    path = Path(output_dir).expanduser().resolve()
    derivatives = bids_dir / "derivatives"
    suggestion = derivatives / "ketabids"
    if path == bids_dir or path in bids_dir.parents:
        raise UsageError(
            f"{path}: OUTPUT_DIR is BIDS_DIR {bids_dir} or contains it, and ketabids never "
            f"writes into the raw dataset; choose e.g. {suggestion}"
        )
    if bids_dir in path.parents and derivatives not in path.parents:
        where = ("is BIDS_DIR's derivatives/ folder, which holds one folder per pipeline"
                 if path == derivatives else
                 "is inside BIDS_DIR but not in its derivatives/ folder")
        raise UsageError(
            f"{path}: OUTPUT_DIR {where}; ketabids never writes into the raw dataset; "
            f"choose e.g. {suggestion}"
        )
    return check_writable(path, "OUTPUT_DIR")


def load_layout(bids_dir: Path, *, derivatives: list[Path] | None = None):
    """A pybids layout of BIDS_DIR (no validation here: the official validator does that)."""
    from bids import BIDSLayout

    try:
        layout = BIDSLayout(str(bids_dir), validate=False)
        for deriv in derivatives or []:
            if (deriv / "dataset_description.json").is_file():
                layout.add_derivatives(str(deriv), parent_database_path=None, validate=False)
    except Exception as exc:  # pybids raises bare ValueErrors/BIDSValidationErrors
        raise BadDataError(f"{bids_dir}: pybids cannot index this dataset ({exc})") from exc
    return layout


def parse_participant_labels(values: list[str] | None) -> list[str] | None:
    """Participant labels from the command line: with or without ``sub-``, or text files.

    A value that names an existing file is read as whitespace-separated labels (``#`` starts a
    comment). Duplicates are dropped, order is kept.

    >>> parse_participant_labels(["sub-01", "02", "sub-01"])
    ['01', '02']
    >>> parse_participant_labels(None) is None
    True
    """
    if not values:
        return None
    labels: list[str] = []
    for value in values:
        candidate = Path(value)
        if candidate.is_file():
            tokens = []
            for line in candidate.read_text().splitlines():
                tokens.extend(line.split("#", 1)[0].split())
        else:
            tokens = [value]
        for token in tokens:
            label = token.strip().removeprefix("sub-")
            if not label or not label.isalnum():
                raise UsageError(
                    f"--participant-label {token!r}: a label is letters and digits, with or "
                    "without 'sub-' (e.g. 01 or sub-01)"
                )
            if label not in labels:
                labels.append(label)
    return labels


def parse_session_labels(values: list[str] | None) -> list[str] | None:
    """Session labels with or without ``ses-``."""
    if not values:
        return None
    return list(dict.fromkeys(v.removeprefix("ses-") for v in values))


def load_bids_filters(path: str | os.PathLike | None) -> dict:
    """Read a ``--bids-filter-file``: JSON ``{"t1w": {<pybids entities>}}``.

    Only the ``t1w`` query is used; other keys are an error so a typo is not ignored.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: --bids-filter-file does not exist")
    try:
        filters = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BadDataError(
            f"{path}: --bids-filter-file is not valid JSON ({exc.msg} at line {exc.lineno}); "
            'write e.g. {"t1w": {"acquisition": "mprage"}}'
        ) from exc
    if not isinstance(filters, dict) or set(filters) - {"t1w"}:
        raise BadDataError(
            f"{path}: --bids-filter-file must be an object with the single key \"t1w\" "
            f"(got {sorted(filters) if isinstance(filters, dict) else type(filters).__name__}); "
            'write e.g. {"t1w": {"acquisition": "mprage"}}'
        )
    if not isinstance(filters.get("t1w", {}), dict):
        raise BadDataError(f'{path}: "t1w" must map pybids entities to values')
    return filters


#: pybids query keywords that are not entities but are valid in a filter
QUERY_KEYWORDS = frozenset({"extension", "suffix", "datatype", "scope", "invalid_filters",
                            "regex_search", "absolute_paths"})


#: the entities a T1w file name can carry (BIDS schema order), listed in filter errors
ANAT_ENTITIES = ("subject", "session", "acquisition", "ceagent", "reconstruction", "run",
                 "echo", "flip", "inv", "mt", "part", "chunk")


def check_filters(layout, filters: dict | None, path=None) -> None:
    """Refuse filter keys that are not entities of ``layout`` (pybids would raise a bare
    ``ValueError`` deep in a query): :class:`~ketabids.errors.UsageError` (exit 64) naming the
    file, the key, the closest valid entity and the valid ones."""
    import difflib

    query = (filters or {}).get("t1w", filters or {})
    if not query:
        return
    valid = set(layout.get_entities()) | QUERY_KEYWORDS
    for key in query:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            names = [e for e in ANAT_ENTITIES if e in valid]
            raise UsageError(
                f"{path or '--bids-filter-file'}: unknown entity {key!r} in \"t1w\"; {hint}"
                f"T1w entities: {', '.join(names)} (also suffix, extension, datatype)")


def t1w_query(filters: dict | None) -> dict:
    """The pybids query for T1w images: the default updated by the filter file's ``t1w``."""
    query = dict(DEFAULT_T1W_QUERY)
    query.update((filters or {}).get("t1w", {}))
    return query


def select_subjects(layout, *, labels=None, sessions=None, filters=None) -> list[str]:
    """Subjects (labels, sorted) that have at least one T1w matching the filters.

    Requested labels that are absent, or filters that select nothing, raise
    :class:`~ketabids.errors.NoDataError` (exit code 18).
    """
    available = sorted(layout.get_subjects())
    if labels:
        missing = [label for label in labels if label not in available]
        if missing:
            raise NoDataError(
                f"{layout.root}: no participant(s) {', '.join('sub-' + m for m in missing)}; "
                + (f"{len(available)} available: {', '.join(available[:20])}"
                   + (f", ... (first 20 of {len(available)})" if len(available) > 20 else "")
                   if available else "no participant has data")
            )
    candidates = sorted(labels) if labels else available
    query = t1w_query(filters)
    if sessions:
        query["session"] = sessions
    selected = [s for s in candidates if layout.get(subject=s, return_type="file", **query)]
    if not selected:
        what = f"participants {', '.join(candidates)}" if labels else "any participant"
        raise NoDataError(
            f"{layout.root}: the filters selected no T1w image for {what} "
            f"(query {query}); check --participant-label, --session-label and --bids-filter-file"
        )
    return selected


@dataclass(frozen=True)
class T1wInput:
    """One T1w to process: subject, session (or None), the chosen file and the ones skipped."""

    subject: str
    session: str | None
    t1w: str
    skipped: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``<sub>`` or ``<sub>_ses-<ses>``: used in node names."""
        return self.subject + (f"_ses-{self.session}" if self.session else "")


def collect_t1w(layout, subjects, *, sessions=None, bids_filters=None) -> list[T1wInput]:
    """The T1w to process for each subject and session, in BIDS order.

    With several T1w runs for one subject/session the first (sorted by file name, i.e. BIDS
    order) is used and a warning names the others; ``bids_filters`` (``{"t1w": {...}}``, the
    ``--bids-filter-file`` format; a flat entity dict is accepted too) selects another.
    """
    filters = bids_filters or {}
    if filters and "t1w" not in filters:
        filters = {"t1w": filters}
    query = t1w_query(filters)
    wanted = {s.removeprefix("ses-") for s in sessions} if sessions else None
    found: list[T1wInput] = []
    for subject in subjects:
        subject = str(subject).removeprefix("sub-")
        files = sorted(layout.get(subject=subject, return_type="file", **query))
        by_session: dict[str | None, list[str]] = {}
        for path in files:
            session = layout.parse_file_entities(path).get("session")
            if wanted is not None and session not in wanted:
                continue
            by_session.setdefault(session, []).append(path)
        for session in sorted(by_session, key=lambda s: (s is not None, s or "")):
            paths = by_session[session]
            if len(paths) > 1:
                LOGGER.warning(
                    "sub-%s%s: %d T1w images match; using %s (first in BIDS order) and skipping "
                    "%s. Select another with --bids-filter-file, e.g. "
                    '{"t1w": {"run": 2}}', subject, f" ses-{session}" if session else "",
                    len(paths), Path(paths[0]).name,
                    ", ".join(Path(p).name for p in paths[1:]))
            found.append(T1wInput(subject, session, paths[0], tuple(paths[1:])))
    return found
