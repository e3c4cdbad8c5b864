"""BIDS dataset queries and the derivative dataset's description.

Everything that touches the input dataset goes through pybids here (no globbing ``sub-*``), and
nothing in this module writes into BIDS_DIR.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ketabids import __version__
from ketabids.errors import (
    BadDataError,
    MissingInputError,
    NoDataError,
    OutputError,
    UsageError,
)
from ketabids.io import atomic_write_text

LOGGER = logging.getLogger("ketabids")
BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/ketabids/ketabids"

#: Default pybids query for the T1w image of one subject (sMRIPrep's convention).
DEFAULT_T1W_QUERY = {"datatype": "anat", "suffix": "T1w", "extension": [".nii", ".nii.gz"]}


DERIVATIVE_README = """\
ketabids {version} derivatives
==============================

Participant level (sub-*/): conformed and bias-corrected T1w, brain mask, GM/WM/CSF probability
maps and hard labels, template-space T1w and GM/WM maps (unmodulated and Jacobian-modulated VBM
maps), transforms, tissue volumes (desc-volumes_morph.tsv) and one HTML QC report per subject.
Group level (group/): nested cross-validation results, saved models and predictions, with HTML
reports. Crash logs of failed subjects are under logs/.
See https://doi.org/10.1038/s41398-026-04085-4 for the study ketabids implements.
"""


def check_bids_dir(bids_dir: str | os.PathLike) -> Path:
    """Resolve BIDS_DIR and check it is a dataset root (has ``dataset_description.json``)."""
    path = Path(bids_dir).expanduser().resolve()
    if not path.is_dir():
        raise MissingInputError(f"{path}: BIDS_DIR does not exist; give the root of a BIDS dataset")
    if not (path / "dataset_description.json").is_file():
        raise MissingInputError(
            f"{path}: no dataset_description.json, so this is not the root of a BIDS dataset; "
            "point BIDS_DIR at the folder that contains dataset_description.json"
        )
    return path


def check_output_dir(output_dir: str | os.PathLike, bids_dir: Path) -> Path:
    """Resolve OUTPUT_DIR, refuse it inside BIDS_DIR and make sure it can be written."""
    path = Path(output_dir).expanduser().resolve()
    if path == bids_dir or bids_dir in path.parents:
        raise UsageError(
            f"{path}: OUTPUT_DIR is inside BIDS_DIR {bids_dir}, which ketabids never writes to; "
            f"choose a folder outside it, e.g. {bids_dir.parent / 'derivatives' / 'ketabids'}"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".ketabids-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot create or write OUTPUT_DIR ({exc.strerror}); "
            "choose a writable folder or fix its permissions"
        ) from exc
    return path


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
                f"available: {', '.join(available[:20]) or 'none'}"
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


def container_info() -> dict | None:
    """The container the app runs in, for GeneratedBy (Docker, Apptainer/Singularity or None)."""
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        return {"Type": "apptainer", "URI": os.environ.get("APPTAINER_CONTAINER")
                or os.environ.get("SINGULARITY_CONTAINER")}
    if os.environ.get("KETABIDS_DOCKER_TAG") or Path("/.dockerenv").exists():
        return {"Type": "docker", "Tag": os.environ.get("KETABIDS_DOCKER_TAG",
                                                         f"ketabids/ketabids:{__version__}")}
    return None


def derivative_description(bids_dir: Path) -> dict:
    """The ``dataset_description.json`` content of the ketabids derivative dataset."""
    generated_by = {"Name": "ketabids", "Version": __version__, "CodeURL": CODE_URL}
    container = container_info()
    if container:
        generated_by["Container"] = container
    source = {"URL": bids_dir.as_uri()}
    try:
        raw = json.loads((bids_dir / "dataset_description.json").read_text())
        if raw.get("DatasetDOI"):
            source = {"DOI": raw["DatasetDOI"], "URL": bids_dir.as_uri()}
        if raw.get("BIDSVersion"):
            source["Version"] = str(raw["BIDSVersion"])
    except (OSError, json.JSONDecodeError):
        pass
    return {
        "Name": "ketabids: VBM derivatives and ketamine-response predictions",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source],
        "HowToAcknowledge": "Cite the ketabids paper (doi:10.1038/s41398-026-04085-4) and the "
        "software it uses (ANTs, Nipype, nilearn, scikit-learn).",
    }


def write_derivative_description(output_dir: str | os.PathLike, bids_dir: str | os.PathLike) -> Path:
    """Write OUTPUT_DIR/dataset_description.json atomically (safe for parallel jobs).

    Identical content is left untouched; a description written by another ketabids version is
    replaced, with a warning, since outputs of mixed versions should not be mixed.
    """
    output_dir, bids_dir = Path(output_dir), Path(bids_dir)
    path = output_dir / "dataset_description.json"
    content = derivative_description(bids_dir)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            old_version = old.get("GeneratedBy", [{}])[0].get("Version")
            if old_version and old_version != __version__:
                LOGGER.warning(
                    "%s was written by ketabids %s; this is %s: do not mix outputs of "
                    "different versions in one folder", path, old_version, __version__,
                )
        except (OSError, json.JSONDecodeError, IndexError, AttributeError):
            pass
    atomic_write_text(path, json.dumps(content, indent=2, sort_keys=False) + "\n")
    atomic_write_text(output_dir / "README", DERIVATIVE_README.format(version=__version__))
    return path
