"""Run records under OUTPUT_DIR/logs/: content, names, all-or-nothing writes."""
from __future__ import annotations

import json
import re
import shlex
import stat
from datetime import datetime, timedelta, timezone

import pytest

from ketabids.bids import logs
from ketabids.errors import ExitCode, OutputError

NOW = datetime(2026, 11, 30, 7, 15, 0, tzinfo=timezone.utc)
ARGV = ["ketabids", "/data/my bids", "/out", "participant", "--participant-label", "01",
        "--fast"]
METHODS = ("Results come from ketabids 0.1.0, based on Nipype. Bias was corrected with N4 "
           "(Tustison et al., 2010).")


def test_record_holds_command_config_versions_and_citation(tmp_path):
    config = {"bids_dir": tmp_path / "bids", "fast": True, "c_grid": (0.5, 2.0), "mem_gb": None}
    folder = logs.write_run_logs(tmp_path, level="participant", argv=ARGV, config=config,
                                 versions={"ketabids": "0.1.0", "python": "3.11.2"},
                                 methods=METHODS, now=NOW, run_id="3f2a9c1d")
    assert folder == tmp_path / "logs" / "participant-20261130T071500Z-3f2a9c1d"
    assert sorted(p.name for p in folder.iterdir()) == [
        "CITATION.bib", "CITATION.html", "CITATION.md", "command.txt", "config.json",
        "versions.json"]
    command = (folder / "command.txt").read_text()
    assert command.endswith("\n") and command.count("\n") == 1
    assert shlex.split(command) == ARGV  # quoting survives the space in "/data/my bids"
    assert json.loads((folder / "config.json").read_text()) == {
        "bids_dir": str(tmp_path / "bids"), "fast": True, "c_grid": [0.5, 2.0], "mem_gb": None}
    assert json.loads((folder / "versions.json").read_text())["ketabids"] == "0.1.0"
    md = (folder / "CITATION.md").read_text()
    assert "corrected with N4 [" in md and "10.1109/TMI.2010.2046908" in md
    assert "@article{n4," in (folder / "CITATION.bib").read_text()
    assert "<ol>" in (folder / "CITATION.html").read_text()
    assert [p.name for p in (tmp_path / "logs").iterdir()] == [folder.name]  # no staging left


def test_without_methods_no_citation_files(tmp_path):
    folder = logs.write_run_logs(tmp_path, level="group", argv=["ketabids"], config={},
                                 versions={}, now=NOW)
    assert sorted(p.name for p in folder.iterdir()) == ["command.txt", "config.json",
                                                         "versions.json"]
    assert re.fullmatch(r"group-20261130T071500Z-[0-9a-f]{8}", folder.name)


def test_parallel_runs_get_distinct_folders_and_time_is_utc(tmp_path):
    local = NOW.astimezone(timezone(timedelta(hours=-5)))  # the same instant elsewhere
    names = {logs.write_run_logs(tmp_path, level="participant", argv=[], config={},
                                 versions={}, now=local).name for _ in range(5)}
    assert len(names) == 5
    assert all(n.startswith("participant-20261130T071500Z-") for n in names)


def test_record_folder_is_readable_by_the_group(tmp_path):
    folder = logs.write_run_logs(tmp_path, level="group", argv=[], config={}, versions={})
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~_umask()  # not mkdtemp's 0700
    assert (folder / "config.json").stat().st_mode & 0o444 == 0o444


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    import ketabids.reports.citation as citation

    def broken(_text, **_kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(citation, "boilerplate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        logs.write_run_logs(tmp_path, level="group", argv=[], config={}, versions={},
                            methods=METHODS)
    assert list((tmp_path / "logs").iterdir()) == []


def test_unwritable_logs_is_exit_73_naming_the_folder(tmp_path):
    (tmp_path / "logs").write_text("a file where the folder should be")
    with pytest.raises(OutputError, match=re.escape(str(tmp_path / "logs"))) as err:
        logs.write_run_logs(tmp_path, level="group", argv=[], config={}, versions={})
    assert err.value.exit_code == ExitCode.CANT_CREATE


def test_existing_record_is_never_replaced(tmp_path):
    kwargs = dict(level="group", argv=["ketabids"], config={}, versions={}, now=NOW,
                  run_id="00000000")
    first = logs.write_run_logs(tmp_path, **kwargs)
    (first / "command.txt").write_text("original\n")
    with pytest.raises(OutputError):
        logs.write_run_logs(tmp_path, **kwargs)
    assert (first / "command.txt").read_text() == "original\n"


@pytest.mark.parametrize("level, now, run_id", [
    ("Group", NOW, None), ("group/../x", NOW, None), ("", NOW, None),
    ("group", datetime(2026, 11, 30), None), ("group", NOW, "XYZ"),
])
def test_bad_names_are_refused(level, now, run_id):
    with pytest.raises(ValueError):
        logs.run_folder_name(level, now=now, run_id=run_id)
