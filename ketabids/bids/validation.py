"""BIDS validation of an input dataset with the official validator, offline.

The validator is the reference implementation shipped on PyPI as ``bids-validator-deno`` (the
validator's JavaScript bundle, its BIDS schema and the Deno runtime, so no network is needed).
It runs as a subprocess, ``bids-validator-deno DIR --format json``. This module turns its JSON
into a :class:`ValidationSummary` (issues grouped by code, with counts and the files concerned)
and raises :class:`~ketabids.errors.BIDSValidationError` (exit code 16) when it reports errors.
Warnings never stop a run: they come back in the summary for the caller to log.

The JSON shape (validator 3.0.2, schema 1.2.7)::

    {"issues": {"issues": [{"code": "NOT_INCLUDED", "severity": "error",
                            "location": "/sub-01/anat/sub-01_T2x.nii.gz",
                            "subCode": ..., "issueMessage": ..., "rule": ...}, ...],
                "codeMessages": {"NOT_INCLUDED": "Files with such naming scheme ..."}},
     "summary": {"subjects": [...], "totalFiles": 3, "schemaVersion": "1.2.7", ...}}

One entry per (code, sub-code, file). Dataset-level issues may carry ``affects`` (a list of
files) instead of ``location``. The process exits 0 without errors, 16 with errors, anything
else when the validator itself failed (then stdout is not JSON).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ketabids.errors import BIDSValidationError, KetabidsError, MissingInputError

VALIDATOR = "bids-validator-deno"
DEFAULT_TIMEOUT = 1800  # seconds; a few thousand scans validate in well under a minute
_SKIP = "rerun with --skip-bids-validation"


@dataclass(frozen=True)
class Issue:
    """All reports of one validator code at one severity.

    ``count`` is the number of raw reports (one per file and sub-code), ``files`` the files
    concerned relative to the dataset root (``/sub-01/anat/...``), ``sub_codes`` the distinct
    sub-codes (e.g. the missing sidecar keys), both in first-seen order.
    """

    code: str
    severity: str
    message: str
    count: int
    files: tuple[str, ...] = ()
    sub_codes: tuple[str, ...] = ()

    def format(self, max_files: int = 3) -> str:
        """One or two lines: severity, code, count, message, then the first files."""
        subs = f" [{', '.join(self.sub_codes[:5])}{', ...' if len(self.sub_codes) > 5 else ''}]"
        line = (
            f"{self.severity.upper()} {self.code} (x{self.count})"
            f"{subs if self.sub_codes else ''}: {self.message}"
        )
        if self.files:
            shown = ", ".join(self.files[:max_files])
            more = (f" and {len(self.files) - max_files} more" if len(self.files) > max_files
                    else "")
            line += f"\n    files: {shown}{more}"
        return line


@dataclass(frozen=True)
class ValidationSummary:
    """What the validator said about one dataset, grouped by code (errors first)."""

    dataset: Path
    errors: tuple[Issue, ...]
    warnings: tuple[Issue, ...]
    n_errors: int
    n_warnings: int
    schema_version: str | None = None
    validator_version: str | None = None
    seconds: float = 0.0
    subjects: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when the validator reported no errors (warnings allowed)."""
        return self.n_errors == 0

    @property
    def error_codes(self) -> tuple[str, ...]:
        return tuple(issue.code for issue in self.errors)

    @property
    def warning_codes(self) -> tuple[str, ...]:
        return tuple(issue.code for issue in self.warnings)

    def headline(self) -> str:
        """One line: dataset, counts, validator and schema versions, time."""
        versions = ", ".join(
            v
            for v in (
                f"bids-validator {self.validator_version}" if self.validator_version else "",
                f"schema {self.schema_version}" if self.schema_version else "",
            )
            if v
        )
        return (
            f"BIDS validation of {self.dataset}: {self.n_errors} error(s), "
            f"{self.n_warnings} warning(s) in {self.seconds:.1f} s"
            + (f" ({versions})" if versions else "")
        )

    def format(self, max_issues: int = 5, max_files: int = 3) -> str:
        """The headline, then the first ``max_issues`` codes (errors before warnings)."""
        issues = self.errors + self.warnings
        lines = [self.headline()]
        for issue in issues[:max_issues]:
            lines.append("  " + issue.format(max_files).replace("\n", "\n  "))
        if len(issues) > max_issues:
            rest = issues[max_issues:]
            lines.append(
                f"  ... and {len(rest)} more code(s): {', '.join(i.code for i in rest[:10])}"
                + (", ..." if len(rest) > 10 else "")
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def find_validator() -> Path:
    """The ``bids-validator-deno`` executable: next to the running Python first, then on PATH.

    Looking next to ``sys.executable`` first finds the validator of the environment ketabids is
    installed in even when that environment is not activated (``/venv/bin/ketabids ...``).
    """
    here = Path(sys.executable).parent / VALIDATOR
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which(VALIDATOR)
    if found:
        return Path(found)
    raise MissingInputError(
        f"{VALIDATOR}: the BIDS validator is not installed (looked in {here.parent} and on PATH); "
        f"install it with: pip install bids-validator-deno (or {_SKIP})"
    )


def _validator_version() -> str | None:
    try:
        from importlib.metadata import version

        return version(VALIDATOR)
    except Exception:  # noqa: BLE001 - provenance only, never fatal
        return None


def _first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of the first line, whitespace collapsed, at most ``limit`` chars."""
    if not text or not text.strip():
        return ""
    line = " ".join(text.strip().splitlines()[0].split())
    end = line.find(". ")
    line = line[: end + 1] if end >= 0 else line
    line = line.rstrip(" -:")
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def parse_report(report: dict, dataset: Path | str, *, seconds: float = 0.0) -> ValidationSummary:
    """Group the validator's JSON ``report`` (already loaded) into a :class:`ValidationSummary`.

    >>> report = {"issues": {"issues": [
    ...     {"code": "NOT_INCLUDED", "severity": "error", "location": "/sub-01/anat/x.nii.gz"},
    ...     {"code": "JSON_KEY_RECOMMENDED", "subCode": "License", "severity": "warning",
    ...      "location": "/dataset_description.json"}],
    ...     "codeMessages": {"NOT_INCLUDED": "Files with such naming scheme are not BIDS."}},
    ...     "summary": {"schemaVersion": "1.2.7", "subjects": ["01"]}}
    >>> summary = parse_report(report, "/data")
    >>> summary.n_errors, summary.error_codes, summary.warnings[0].sub_codes
    (1, ('NOT_INCLUDED',), ('License',))
    """
    try:
        raw = report["issues"]["issues"]
    except (KeyError, TypeError) as exc:
        raise KetabidsError(
            f"{dataset}: unexpected output from {VALIDATOR} (no issues list: {exc!r}); "
            f"update bids-validator-deno or {_SKIP}"
        ) from None
    messages = report.get("issues", {}).get("codeMessages", {}) or {}
    groups: dict[tuple[str, str], dict] = {}
    counts = {"error": 0, "warning": 0}
    for item in raw:
        severity = str(item.get("severity", "error")).lower()
        if severity not in counts:  # "ignore" and future levels never fail a run
            continue
        counts[severity] += 1
        code = str(item.get("code", "UNKNOWN"))
        group = groups.setdefault(
            (severity, code),
            {
                "message": _first_sentence(messages.get(code, ""))
                or _first_sentence(item.get("issueMessage", "")),
                "count": 0,
                "files": {},
                "sub_codes": {},
            },
        )
        group["count"] += 1
        files = [item["location"]] if item.get("location") else list(item.get("affects") or [])
        for f in files:
            group["files"][str(f)] = None  # dicts keep first-seen order, no duplicates
        if item.get("subCode"):
            group["sub_codes"][str(item["subCode"])] = None

    def issues(severity):
        return tuple(
            Issue(code, severity, g["message"], g["count"], tuple(g["files"]),
                  tuple(g["sub_codes"]))
            for (sev, code), g in groups.items()
            if sev == severity
        )

    info = report.get("summary") or {}
    return ValidationSummary(
        dataset=Path(dataset),
        errors=issues("error"),
        warnings=issues("warning"),
        n_errors=counts["error"],
        n_warnings=counts["warning"],
        schema_version=info.get("schemaVersion"),
        validator_version=_validator_version(),
        seconds=seconds,
        subjects=tuple(info.get("subjects") or ()),
    )


def _check_derivative(bids_dir: Path) -> None:
    """A derivative dataset must say so (``DatasetType: derivative``); the validator's own
    ``--datasetTypes derivative`` option crashes on raw datasets (3.0.2), so it is checked here."""
    description = bids_dir / "dataset_description.json"
    try:
        kind = json.loads(description.read_text()).get("DatasetType", "raw")
    except (OSError, ValueError, AttributeError) as exc:
        raise BIDSValidationError(
            f"{description}: unreadable ({exc.__class__.__name__}); a derivative dataset needs "
            'a dataset_description.json with "DatasetType": "derivative"'
        ) from None
    if kind != "derivative":
        raise BIDSValidationError(
            f'{description}: DatasetType is "{kind}", not "derivative"; point ketabids at the '
            "derivative dataset (the participant-level OUTPUT_DIR), not the raw BIDS dataset"
        )


def validate_bids(
    bids_dir: Path | str,
    *,
    derivative: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    max_rows: int | None = None,
) -> ValidationSummary:
    """Run the official BIDS validator on ``bids_dir`` and summarise what it found.

    Raises :class:`~ketabids.errors.BIDSValidationError` (exit 16) when the validator reports
    errors, naming the first error codes and the fix; returns the summary (with its warnings, for
    logging) otherwise. ``derivative=True`` also requires ``DatasetType: derivative``.
    ``max_rows`` is passed to ``--max-rows`` (TSV rows checked; the validator's default is 1000).
    Raises :class:`~ketabids.errors.MissingInputError` when the dataset folder or the validator
    is missing, and :class:`~ketabids.errors.KetabidsError` (exit 1) when the validator fails
    or exceeds ``timeout`` seconds.
    """
    bids_dir = Path(bids_dir).absolute()
    if not bids_dir.is_dir():
        raise MissingInputError(f"{bids_dir}: no such dataset folder; check the BIDS_DIR argument")
    if derivative:
        _check_derivative(bids_dir)
    exe = find_validator()
    cmd = [str(exe), str(bids_dir), "--format", "json"]
    if max_rows is not None:
        cmd += ["--max-rows", str(int(max_rows))]
    env = {**os.environ, "NO_COLOR": "1"}  # a copy for the child; os.environ is not touched
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        raise KetabidsError(
            f"{bids_dir}: {VALIDATOR} did not finish within {timeout:g} s; {_SKIP}"
        ) from None
    except OSError as exc:
        raise KetabidsError(f"{exe}: cannot run the BIDS validator ({exc}); {_SKIP}") from None
    seconds = time.perf_counter() - start
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
        detail = " ".join(detail.split())
        raise KetabidsError(
            f"{bids_dir}: {VALIDATOR} failed (exit {proc.returncode}"
            f"{': ' + detail[:200] if detail else ''}); {_SKIP}"
        ) from None
    summary = parse_report(report, bids_dir, seconds=seconds)
    if summary.n_errors:
        first = summary.errors[0]
        where = f" in {first.files[0]}" if first.files else ""
        codes = ", ".join(summary.error_codes[:3]) + (", ..." if len(summary.errors) > 3 else "")
        error = BIDSValidationError(
            f"{bids_dir}: the BIDS validator found {summary.n_errors} error(s) ({codes}; "
            f"first: {first.code}{where}); fix the dataset or {_SKIP}"
        )
        error.summary = summary  # the full grouped report, for the CLI to log
        raise error
    return summary
