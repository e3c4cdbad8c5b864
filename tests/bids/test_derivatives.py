"""The derivative dataset's description: written in one place, with provenance."""
import json

from ketabids import __version__
from ketabids.bids.derivatives import write_bidsignore, write_derivative_description


def test_description_names_version_and_source(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.9.0", "DatasetDOI": "doi:10.1/abc"}))
    out = tmp_path / "out"
    out.mkdir()
    path = write_derivative_description(out, raw)
    desc = json.loads(path.read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Version"] == __version__
    assert desc["SourceDatasets"][0] == {"DOI": "doi:10.1/abc", "URL": raw.as_uri(),
                                         "Version": "1.9.0"}
    assert (out / "README").read_text().startswith(f"ketabids {__version__}")


def test_bidsignore_keeps_existing_lines(tmp_path):
    (tmp_path / ".bidsignore").write_text("mine/\n*_xfm.h5\n")
    lines = write_bidsignore(tmp_path).read_text().splitlines()
    assert lines[0] == "mine/"
    assert lines.count("*_xfm.h5") == 1
    assert "*.html" in lines


def test_description_written_once(tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("ketabids"), "propagate", True)  # the CLI turns it off
    """A second run from another BIDS_DIR never rewrites the description."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("raw1", "raw2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dataset_description.json").write_text(json.dumps(
            {"Name": name, "BIDSVersion": "1.9.0"}))
    path = write_derivative_description(out, tmp_path / "raw1")
    before = path.read_bytes()
    with caplog.at_level("WARNING", logger="ketabids"):
        write_derivative_description(out, tmp_path / "raw2")
    assert path.read_bytes() == before
    assert "other source datasets" in caplog.text
