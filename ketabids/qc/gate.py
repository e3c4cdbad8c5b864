"""The QC gate of the group level: whose scan may enter training or receive a prediction.

Two inputs decide, and every decision is listed (cohort table, report, log, model manifest or
``metrics.json``); nothing is dropped silently:

* **QC verdicts** of the participant level, read from the per-subject QC JSON next to each map
  (:func:`ketabids.qc.table.qc_json_path`, ``sub-X[_ses-Y]_desc-qc_metrics.json``). These files
  are the source of truth: ``OUTPUT_DIR/qc.tsv`` is only rebuilt from them after each participant
  job, so it can be stale (a subject re-run or its folder removed by hand since).
  ``--qc-policy`` says what a verdict does:

  ``exclude`` (default)
      ``fail`` -> left out (reason ``QC fail: <reasons>``); ``warn`` -> kept and listed.
  ``warn``
      every scan is kept; ``fail`` and ``warn`` scans are listed with their verdict and the log
      warns about the kept failures.
  ``ignore``
      QC records are not read; the manifest records that QC was ignored.

  A scan **without a QC record** (derivatives from a ketabids without QC, or written by other
  tools) is kept under every policy, with one warning naming them (rerun the participant level
  to check them, or list them in the exclusion file).
* **Review decisions**: ``--exclude-file TSV`` with columns ``participant_id``, ``reason`` and
  optionally ``session`` (``n/a`` or empty = every session). These are the decisions of a visual
  review (look at ``qc.html`` and the subject reports, write the file, train) and apply under
  every policy, ``ignore`` included. The ratings file exported by ``qc.html``
  (``participant_id, session, rating, comment``) is accepted as is: rows rated ``exclude`` are
  left out, with the comment as the reason.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ketabids.errors import BadDataError, UsageError

LOGGER = logging.getLogger("ketabids")

#: the values of ``--qc-policy``; the first is the default
QC_POLICIES = ("exclude", "warn", "ignore")
#: how the exclusion file's columns are named
EXCLUDE_FILE_COLUMNS = "participant_id, reason (session optional)"
_EMPTY = ("", "n/a", "na", "nan", "none")

__all__ = ["QC_POLICIES", "ReviewDecision", "QCGate", "read_exclude_file", "read_verdict",
           "open_gate", "pass_gate", "apply_qc_gate"]


@dataclass(frozen=True)
class ReviewDecision:
    """One row of the exclusion file.

    Parameters
    ----------
    participant_id : str
        ``sub-<label>``.
    session : str or None
        ``ses-<label>``; ``None``: every session of the participant.
    reason : str
        Why the scan is excluded (goes into the report and the model manifest).
    """

    participant_id: str
    session: str | None
    reason: str

    def matches(self, subject: str, session: str | None) -> bool:
        """Whether this decision applies to ``subject`` (with or without ``sub-``) and
        ``session`` (with or without ``ses-``, or None).

        Examples
        --------
        >>> ReviewDecision("sub-01", None, "motion").matches("01", "2")
        True
        """
        return self.participant_id == _sub(subject) and (
            self.session is None or self.session == _ses(session))


@dataclass
class QCGate:
    """What the gate decided for one cohort (recorded in manifests and reports).

    Built by :func:`open_gate` and filled by :func:`pass_gate`.

    Attributes
    ----------
    policy : str
        The ``--qc-policy`` (:data:`QC_POLICIES`).
    exclude_file, exclude_file_sha256 : str or None
        The exclusion file and its SHA-256.
    decisions : list of ReviewDecision
        The rows of the exclusion file.
    verdicts : dict
        participant_id -> ``{"session", "verdict" (None = no record), "reasons"}`` for every
        candidate.
    excluded : list of dict
        ``{"participant_id", "session", "reason", "by": "qc" | "review"}`` of each scan left
        out.
    """

    policy: str = "exclude"
    exclude_file: str | None = None
    exclude_file_sha256: str | None = None
    decisions: list[ReviewDecision] = field(default_factory=list)
    #: participant_id -> {"session", "verdict" (None = no record), "reasons"}, every candidate
    verdicts: dict = field(default_factory=dict)
    #: [{"participant_id", "session", "reason", "by": "qc" | "review"}]
    excluded: list = field(default_factory=list)

    @property
    def kept_flagged(self) -> list[dict]:
        """Kept participants whose verdict is warn or fail."""
        out_ids = {e["participant_id"] for e in self.excluded}
        return [{"participant_id": pid, **rec} for pid, rec in self.verdicts.items()
                if pid not in out_ids and rec["verdict"] in ("warn", "fail")]

    @property
    def no_record(self) -> list[str]:
        """Participants without a QC record (none under the ``ignore`` policy)."""
        if self.policy == "ignore":
            return []
        return [pid for pid, rec in self.verdicts.items() if rec["verdict"] is None]

    def counts(self) -> dict:
        """Number of candidates per verdict: ``pass``, ``warn``, ``fail``, ``no_record``."""
        counts = {"pass": 0, "warn": 0, "fail": 0, "no_record": 0}
        if self.policy != "ignore":
            for rec in self.verdicts.values():
                counts[rec["verdict"] or "no_record"] += 1
        return counts

    def as_dict(self) -> dict:
        """The manifest's ``qc`` entry."""
        return {
            "policy": self.policy,
            "source": None if self.policy == "ignore" else
            "per-subject QC JSON (sub-<X>/[ses-<Y>/]anat/*_desc-qc_metrics.json)",
            "exclude_file": self.exclude_file,
            "exclude_file_sha256": self.exclude_file_sha256,
            "counts": self.counts(),
            "excluded": list(self.excluded),
            "kept_flagged": self.kept_flagged,
            "no_record": self.no_record,
        }

    def summary_line(self) -> str:
        """One log line: the policy, the verdict counts and how many were left out."""
        by_qc = sum(e["by"] == "qc" for e in self.excluded)
        by_review = sum(e["by"] == "review" for e in self.excluded)
        review = (f", {by_review} by review ({Path(self.exclude_file).name})"
                  if self.exclude_file else "")
        if self.policy == "ignore":
            return f"QC (--qc-policy ignore): verdicts not read{review}"
        c = self.counts()
        return (f"QC (--qc-policy {self.policy}): {c['pass']} pass, {c['warn']} warn, "
                f"{c['fail']} fail, {c['no_record']} without a QC record; {by_qc} left out for "
                f"failing QC{review}")


def _sub(label) -> str:
    label = str(label).strip()
    return label if label.startswith("sub-") else f"sub-{label}"


def _ses(label) -> str | None:
    if label is None or str(label).strip().lower() in _EMPTY:
        return None
    label = str(label).strip()
    return label if label.startswith("ses-") else f"ses-{label}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_exclude_file(path, *, known_participants, roots=()) -> list[ReviewDecision]:
    """Read and check an exclusion TSV; every problem is one :class:`BadDataError` naming it.

    A ``rating`` column (the export of ``qc.html``) keeps the rows rated ``exclude``; their
    reason is ``reason``, else ``comment``, else "rated exclude in qc.html".

    Parameters
    ----------
    path : str or os.PathLike
        The TSV: ``participant_id``, ``reason``, optional ``session`` (``n/a`` or empty =
        every session).
    known_participants : iterable of str
        Labels of participants.tsv (with or without ``sub-``).
    roots : iterable of path
        Folders in which a named session must exist (``<root>/sub-X/ses-Y``), e.g. BIDS_DIR
        and OUTPUT_DIR; empty: sessions are not checked.

    Returns
    -------
    list of ReviewDecision
        One per row to exclude, in file order.

    Raises
    ------
    BadDataError
        An unreadable file, a missing column, a row without participant or reason, an unknown
        participant or session; the message names the file, the line and the fix.
    """
    import pandas as pd

    path = Path(path)
    fix = f"the exclusion file needs tab-separated columns {EXCLUDE_FILE_COLUMNS}"
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many kinds (empty file, ragged rows, binary)
        raise BadDataError(f"{path}: cannot be read as a TSV ({str(exc).splitlines()[0]}); "
                           f"{fix}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    rated = "rating" in table.columns
    missing = [c for c in ("participant_id",) + (() if rated else ("reason",))
               if c not in table.columns]
    if missing:
        raise BadDataError(f"{path}: no column {', '.join(repr(m) for m in missing)} "
                           f"(found {', '.join(table.columns) or 'none'}); {fix}")
    table = table.apply(lambda col: col.str.strip())
    if rated:
        table = table[table["rating"].str.lower() == "exclude"]
    known = {_sub(p) for p in known_participants}
    decisions, unknown = [], []
    for number, row in zip(table.index + 2, table.itertuples(index=False)):
        row = row._asdict()
        pid = row["participant_id"]
        if pid.lower() in _EMPTY:
            raise BadDataError(f"{path}: line {number} has no participant_id; {fix}")
        pid = _sub(pid)
        if pid not in known:
            unknown.append(pid)
            continue
        reason = row.get("reason", "")
        if reason.lower() in _EMPTY and rated:
            reason = row.get("comment", "")
            if reason.lower() in _EMPTY:
                reason = "rated exclude in qc.html"
        if reason.lower() in _EMPTY:
            raise BadDataError(f"{path}: line {number} ({pid}) has no reason; write why the "
                               "scan is excluded (it goes into the report and the model manifest)")
        session = _ses(row.get("session"))
        if session and roots and not any((Path(r) / pid / session).is_dir() for r in roots):
            raise BadDataError(f"{path}: line {number}: {pid} has no session {session} in "
                               f"{' or '.join(str(r) for r in roots)}; fix the session or "
                               "write n/a for every session")
        decisions.append(ReviewDecision(pid, session, reason))
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more"
                                           if len(unknown) > 10 else "")
        raise BadDataError(f"{path}: {len(unknown)} participant(s) not in participants.tsv: "
                           f"{shown}; fix the participant_id column")
    return decisions


def read_verdict(output_dir, subject: str, session: str | None = None) -> dict | None:
    """The QC verdict of one scan, from its per-subject QC JSON.

    Parameters
    ----------
    output_dir : str or os.PathLike
        The participant level's OUTPUT_DIR.
    subject : str
        Participant label.
    session : str or None
        Session label.

    Returns
    -------
    dict or None
        ``{"verdict", "reasons"}``; ``None`` when there is no record, or it is unreadable or
        holds no pass/warn/fail verdict (a warning is logged for the last two).
    """
    from ketabids.qc.table import qc_json_path

    path = qc_json_path(output_dir, subject, session)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        LOGGER.warning("%s: unreadable QC record, treated as missing", path)
        return None
    verdict = record.get("verdict")
    if verdict not in ("pass", "warn", "fail"):
        LOGGER.warning("%s: QC verdict %r is not pass/warn/fail, treated as missing", path,
                       verdict)
        return None
    return {"verdict": verdict, "reasons": list(record.get("reasons") or [])}


def open_gate(*, policy: str = "exclude", exclude_file=None, known_participants=(),
              roots=()) -> QCGate:
    """A gate with its policy and the review decisions read and checked.

    Call it before any long work, so that a bad exclusion file fails at once.

    Parameters
    ----------
    policy : {"exclude", "warn", "ignore"}
        What a QC verdict does (module docstring).
    exclude_file : path or None
        The review decisions (:func:`read_exclude_file`).
    known_participants, roots
        As :func:`read_exclude_file`.

    Returns
    -------
    QCGate
        With ``policy``, ``decisions`` and the file's name and SHA-256; no verdict read yet.

    Raises
    ------
    UsageError
        An unknown policy.
    BadDataError
        A bad exclusion file.
    """
    if policy not in QC_POLICIES:
        raise UsageError(f"--qc-policy {policy!r} is unknown; use one of {', '.join(QC_POLICIES)}")
    gate = QCGate(policy=policy)
    if exclude_file is not None:
        exclude_file = Path(exclude_file)
        gate.decisions = read_exclude_file(exclude_file, known_participants=known_participants,
                                           roots=roots)
        gate.exclude_file = str(exclude_file)
        gate.exclude_file_sha256 = _sha256(exclude_file)
    return gate


def pass_gate(gate: QCGate, candidates: dict, *, output_dir) -> list:
    """Split the candidates into kept and left out, recording every decision in ``gate``.

    Logs one summary line and one warning line per kind of problem (failures kept under
    ``warn``, scans without a QC record).

    Parameters
    ----------
    gate : QCGate
        From :func:`open_gate`; filled in place (``verdicts``, ``excluded``).
    candidates : dict
        ``{subject: session or None}``, in cohort order.
    output_dir : str or os.PathLike
        Where the QC records are (:func:`read_verdict`).

    Returns
    -------
    list of str
        The kept subjects, in cohort order.
    """
    kept = []
    for subject, session in candidates.items():
        pid, ses = _sub(subject), _ses(session)
        record = None if gate.policy == "ignore" else read_verdict(output_dir, subject, session)
        gate.verdicts[pid] = {"session": ses, "verdict": record and record["verdict"],
                              "reasons": record["reasons"] if record else []}
        review = next((d for d in gate.decisions if d.matches(subject, session)), None)
        if review is not None:
            gate.excluded.append({"participant_id": pid, "session": ses, "by": "review",
                                  "reason": f"excluded by review "
                                            f"({Path(gate.exclude_file).name}): {review.reason}"})
        elif gate.policy == "exclude" and record and record["verdict"] == "fail":
            gate.excluded.append({"participant_id": pid, "session": ses, "by": "qc",
                                  "reason": "QC fail: " + "; ".join(record["reasons"])})
        else:
            kept.append(subject)
    LOGGER.info("%s", gate.summary_line())
    kept_fail = [f for f in gate.kept_flagged if f["verdict"] == "fail"]
    if kept_fail:
        LOGGER.warning("QC (--qc-policy warn): %d participant(s) with a failing QC verdict "
                       "kept: %s", len(kept_fail),
                       "; ".join(f"{f['participant_id']} ({'; '.join(f['reasons'])})"
                                 for f in kept_fail[:30]))
    missing = gate.no_record
    if missing and len(missing) == len(gate.verdicts):
        LOGGER.warning("QC: none of the %d participants has a QC record (derivatives from a "
                       "ketabids without QC?): all kept unchecked; rerun the participant level "
                       "to check them", len(missing))
    elif missing:
        LOGGER.warning("QC: %d participant(s) have no QC record (derivatives from a ketabids "
                       "without QC?) and are kept unchecked: %s%s; rerun the participant level "
                       "to check them, or list them in --exclude-file", len(missing),
                       ", ".join(missing[:20]), " ..." if len(missing) > 20 else "")
    return kept


def apply_qc_gate(candidates: dict, *, output_dir, policy: str = "exclude",
                  exclude_file=None, known_participants=(), roots=()) -> tuple[list, QCGate]:
    """:func:`open_gate` then :func:`pass_gate`, in one call.

    Parameters
    ----------
    candidates, output_dir
        As :func:`pass_gate`.
    policy, exclude_file, known_participants, roots
        As :func:`open_gate`.

    Returns
    -------
    kept : list of str
        The kept subjects.
    gate : QCGate
        Every decision, for the manifest and the report.

    Raises
    ------
    UsageError, BadDataError
        As :func:`open_gate`.
    """
    gate = open_gate(policy=policy, exclude_file=exclude_file,
                     known_participants=known_participants, roots=roots)
    return pass_gate(gate, candidates, output_dir=output_dir), gate
