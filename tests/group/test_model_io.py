"""Model files: skops + manifest round trip, and every refusal (altered, foreign, malicious)."""
from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ketabids.errors import BadDataError, MissingInputError
from ketabids.group import model_io

MARKER_NAME = "pwned.txt"


class Evil:
    """Builds a side effect while being loaded (via __setstate__ or __reduce__)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):  # runs when skops rebuilds the object
        Path(state["marker"]).write_text("code ran while loading")
        self.__dict__.update(state)


class EvilPickle:
    def __init__(self, marker):
        self.marker = Path(marker)

    def __reduce__(self):  # runs when pickle loads the object
        return (Path.write_text, (self.marker, "code ran while loading"))


@pytest.fixture
def saved(tmp_path, rng):
    from sklearn.svm import SVC

    X = rng.normal(size=(30, 12))
    y = np.arange(30) % 2
    X[y == 1, :3] += 1.0
    est = SVC(kernel="linear", C=0.5).fit(X, y)
    mask = np.zeros((7, 8, 9), bool)
    mask[2:5, 2:6, 3:4] = True  # 12 voxels
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    out = tmp_path / "model"
    manifest = model_io.save_model(out, est, mask=mask, affine=affine,
                                   manifest={"template": "TPL", "note": np.float64(1.5)})
    return out, est, X, mask, affine, manifest


def test_round_trip(saved):
    out, est, X, mask, affine, manifest = saved
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [model_io.MODEL_NAME, model_io.MANIFEST_NAME, model_io.MASK_NAME])
    on_disk = json.loads((out / model_io.MANIFEST_NAME).read_text())
    assert on_disk["model_sha256"] == manifest["model_sha256"]
    assert on_disk["estimator_class"] == "sklearn.svm._classes.SVC"
    assert on_disk["note"] == 1.5 and on_disk["template"] == "TPL"
    for path in (out, out / model_io.MODEL_NAME, out / model_io.MANIFEST_NAME):
        loaded = model_io.load_model(path)
        np.testing.assert_array_equal(loaded.estimator.decision_function(X),
                                      est.decision_function(X))
        np.testing.assert_array_equal(loaded.mask, mask)
        np.testing.assert_array_equal(loaded.affine, affine)



def test_the_same_model_saves_the_same_bytes(saved, tmp_path):
    """skops names arrays after their id() and stamps members with the time of writing: a copy
    of the model (other arrays, other ids), saved later, must still give the same .skops bytes
    and SHA-256, and load back to the same decisions."""
    import copy

    out, est, X, mask, affine, manifest = saved
    clone = copy.deepcopy(est)  # both alive: every array has another id()
    again = model_io.save_model(tmp_path / "again", clone, mask=mask, affine=affine,
                                manifest={"template": "TPL", "note": np.float64(1.5)})
    first = (out / model_io.MODEL_NAME).read_bytes()
    assert (tmp_path / "again" / model_io.MODEL_NAME).read_bytes() == first
    assert again["model_sha256"] == manifest["model_sha256"]
    with zipfile.ZipFile(out / model_io.MODEL_NAME) as zf:
        assert {info.date_time for info in zf.infolist()} == {model_io.ZIP_EPOCH}
    loaded = model_io.load_model(tmp_path / "again")
    np.testing.assert_array_equal(loaded.estimator.decision_function(X),
                                  est.decision_function(X))

def test_missing_model(tmp_path):
    with pytest.raises(MissingInputError, match="does not exist"):
        model_io.load_model(tmp_path / "nope.skops")


def test_altered_model_refused(saved):
    out = saved[0]
    path = out / model_io.MODEL_NAME
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BadDataError, match="altered"):
        model_io.load_model(out)


def test_replaced_model_refused(saved, tmp_path):
    """A different (valid) skops file in place of the original: hash mismatch."""
    import skops.io as sio

    out = saved[0]
    sio.dump({"format": "ketabids-model", "estimator": [1, 2]}, out / model_io.MODEL_NAME)
    with pytest.raises(BadDataError, match="altered"):
        model_io.load_model(out / model_io.MODEL_NAME)


@pytest.mark.parametrize("content", ['{"format": "something-else"}', "not json", "[1, 2]"])
def test_foreign_manifest_refused(saved, content):
    out = saved[0]
    (out / model_io.MANIFEST_NAME).write_text(content)
    with pytest.raises(BadDataError, match="not a ketabids model"):
        model_io.load_model(out)


def test_skops_file_without_manifest_refused(tmp_path):
    import skops.io as sio
    from sklearn.svm import SVC

    path = tmp_path / "someone_elses.skops"
    sio.dump(SVC(), path)
    with pytest.raises(BadDataError, match="not a ketabids model"):
        model_io.load_model(path)
    with pytest.raises(BadDataError, match="not a ketabids model"):
        model_io.load_model(tmp_path)


def _forge_manifest(out: Path, model_file: Path) -> None:
    """Make the manifest match a substituted file, as an attacker who rewrites both would."""
    manifest = json.loads((out / model_io.MANIFEST_NAME).read_text())
    manifest["model_sha256"] = model_io.sha256_file(model_file)
    (out / model_io.MANIFEST_NAME).write_text(json.dumps(manifest))


def test_malicious_skops_refused_and_nothing_runs(saved, tmp_path):
    import skops.io as sio

    marker = tmp_path / MARKER_NAME
    out = saved[0]
    evil_path = tmp_path / "evil.skops"
    sio.dump({"format": "ketabids-model", "format_version": 1, "estimator": Evil(marker)},
             evil_path)
    # control: a loader that trusts the type does execute code from this file
    sio.load(evil_path, trusted=[f"{__name__}.Evil", f"{Evil.__module__}.Evil"])
    assert marker.is_file()
    marker.unlink()

    shutil.copy(evil_path, out / model_io.MODEL_NAME)
    _forge_manifest(out, out / model_io.MODEL_NAME)
    with pytest.raises(BadDataError, match="refused.*Evil"):
        model_io.load_model(out)
    assert not marker.exists()


def test_function_reference_refused(saved, tmp_path):
    """A file naming os.system (a FunctionNode) is refused without importing anything."""
    import os

    import skops.io as sio

    out = saved[0]
    sio.dump({"format": "ketabids-model", "estimator": os.system}, out / model_io.MODEL_NAME)
    _forge_manifest(out, out / model_io.MODEL_NAME)
    with pytest.raises(BadDataError, match="system"):
        model_io.load_model(out)


def test_pickle_file_refused_and_nothing_runs(saved, tmp_path):
    marker = tmp_path / MARKER_NAME
    out = saved[0]
    payload = pickle.dumps(EvilPickle(marker))
    pickle.loads(payload)  # control: unpickling runs the payload
    assert marker.is_file()
    marker.unlink()

    (out / model_io.MODEL_NAME).write_bytes(payload)
    _forge_manifest(out, out / model_io.MODEL_NAME)
    with pytest.raises(BadDataError, match="not a skops model file"):
        model_io.load_model(out)
    assert not marker.exists()


def test_schema_types_lists_everything(saved):
    types = model_io.schema_types(saved[0] / model_io.MODEL_NAME)
    assert "sklearn.svm._classes.SVC" in types and "numpy.ndarray" in types
    assert types <= set(model_io.trusted_types())


def test_zip_without_schema_refused(saved):
    out = saved[0]
    with zipfile.ZipFile(out / model_io.MODEL_NAME, "w") as archive:
        archive.writestr("readme.txt", "hello")
    _forge_manifest(out, out / model_io.MODEL_NAME)
    with pytest.raises(BadDataError, match="not a skops model file"):
        model_io.load_model(out)
