"""The derivative dataset: file names, description, README, ``.bidsignore``, data dictionaries.

One place names derivatives (:func:`derivative_relpath`) and one place writes
``dataset_description.json`` (:func:`write_derivative_description`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePath

from ketabids import __version__
from ketabids.io import atomic_write_text
from ketabids.qc.table import QC_BIDSIGNORE

LOGGER = logging.getLogger("ketabids")
BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/ketabids/ketabids"

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

#: What ``.bidsignore`` at the output root hides from the BIDS validator (not in the spec yet).
#: ``/group`` (anchored, no trailing slash: ``group/`` leaves the folder itself NOT_INCLUDED,
#: measured with bids-validator-deno 3.0.2); ``qc.tsv``/``qc.json``
#: of the QC summary at the root.
BIDSIGNORE = ["*_xfm.h5", "*_morph.tsv", "*_morph.json", "*.html", "logs/", "/group",
              *QC_BIDSIGNORE]

#: Name of the dseg look-up table at the output root: it applies by inheritance to every
#: ``sub-*_dseg.nii.gz`` (BIDS), as sMRIPrep's/fMRIPrep's ``dseg.tsv``.
#: The frozen model of ``group/train`` and its manifest (:mod:`ketabids.group.model_io`).
MODEL_NAME = "ketabids_model.skops"
MANIFEST_NAME = "ketabids_model.json"
DSEG_LUT = "dseg.tsv"
#: The sidecar of :data:`DSEG_LUT` (column dictionary).
DSEG_LUT_DICTIONARY = {
    "Description": "Look-up table of the tissue labels of every sub-*_dseg.nii.gz in this "
                   "dataset (sMRIPrep/fMRIPrep order; ketabids 0.1.0 used 1=CSF 2=GM 3=WM).",
    "index": {"LongName": "Label value", "Description": "Voxel value in the dseg image (0, "
                                                         "outside the brain mask, is not listed)"},
    "name": {"LongName": "Tissue name", "Description": "Full name of the tissue class"},
    "abbreviation": {"LongName": "Tissue abbreviation",
                     "Description": "Short name, as in the label- entity of the probseg maps"},
}

#: Data dictionary of ``desc-volumes_morph.tsv`` (its JSON sidecar).
VOLUMES_DICTIONARY = {
    "tiv_ml": {"LongName": "Total intracranial volume",
               "Description": "Sum of the GM, WM and CSF probabilities inside the brain mask "
                              "times the voxel volume", "Units": "mL"},
    "gm_ml": {"LongName": "Grey-matter volume",
              "Description": "Sum of the native-space GM probability map times the voxel volume",
              "Units": "mL"},
    "wm_ml": {"LongName": "White-matter volume",
              "Description": "Sum of the native-space WM probability map times the voxel volume",
              "Units": "mL"},
    "csf_ml": {"LongName": "Cerebrospinal-fluid volume",
               "Description": "Sum of the native-space CSF probability map times the voxel "
                              "volume", "Units": "mL"},
}

REGIONAL_DICTIONARY = {
    "index": {"Description": "Atlas label value"},
    "name": {"Description": "Atlas region name"},
    "gm_ml": {"Description": "Grey-matter volume of the region from the Jacobian-modulated GM "
                             "map in template space", "Units": "mL"},
}



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


def write_derivative_description(output_dir: str | os.PathLike,
                                 bids_dir: str | os.PathLike) -> Path:
    """Write OUTPUT_DIR/dataset_description.json (and README) once, atomically.

    An existing, readable description is never rewritten with different content (a later run
    from another BIDS_DIR or another ketabids version would otherwise change what earlier
    outputs claim): a different version or source is logged as a warning instead. An
    unreadable one (not JSON) is replaced.
    """
    output_dir, bids_dir = Path(output_dir), Path(bids_dir)
    path = output_dir / "dataset_description.json"
    content = derivative_description(bids_dir)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict):
            generated = (old.get("GeneratedBy") or [{}])[0] if isinstance(
                old.get("GeneratedBy"), list) else {}
            old_version = generated.get("Version") if isinstance(generated, dict) else None
            if old_version and old_version != __version__:
                LOGGER.warning(
                    "%s was written by ketabids %s; this is %s: do not mix outputs of "
                    "different versions in one folder", path, old_version, __version__,
                )
            elif old.get("SourceDatasets") != content.get("SourceDatasets"):
                LOGGER.warning("%s describes other source datasets (%s); kept as it is",
                               path, old.get("SourceDatasets"))
            if not (output_dir / "README").exists():
                atomic_write_text(output_dir / "README",
                                  DERIVATIVE_README.format(version=__version__))
            return path
    atomic_write_text(path, json.dumps(content, indent=2, sort_keys=False) + "\n")
    atomic_write_text(output_dir / "README", DERIVATIVE_README.format(version=__version__))
    return path


def dseg_lut_table() -> str:
    """The text of :data:`DSEG_LUT` (columns ``index, name, abbreviation``).

    >>> print(dseg_lut_table(), end="")  # doctest: +NORMALIZE_WHITESPACE
    index	name	abbreviation
    1	Gray Matter	GM
    2	White Matter	WM
    3	Cerebrospinal Fluid	CSF
    """
    from ketabids.anat.segmentation import LABELS

    rows = ["index\tname\tabbreviation"] + [f"{value}\t{name}\t{abbr}"
                                             for value, (name, abbr) in sorted(LABELS.items())]
    return "\n".join(rows) + "\n"


def write_dseg_lut(output_dir: str | os.PathLike) -> Path:
    """``OUTPUT_DIR/dseg.tsv`` and its ``dseg.json`` (rewritten only when they differ)."""
    output_dir = Path(output_dir)
    path = output_dir / DSEG_LUT
    content = dseg_lut_table()
    sidecar = json.dumps(DSEG_LUT_DICTIONARY, indent=2) + "\n"
    for target, text in ((path, content), (path.with_suffix(".json"), sidecar)):
        if not (target.is_file() and target.read_text() == text):
            atomic_write_text(target, text)
    return path


def write_bidsignore(output_dir: Path) -> Path:
    """``.bidsignore`` at the output root (kept lines of an existing one are preserved)."""
    path = Path(output_dir) / ".bidsignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    for entry in BIDSIGNORE:
        if entry not in lines:
            lines.append(entry)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


#: Entities in BIDS schema order (``from``/``to``/``mode`` as sMRIPrep writes transforms).
ENTITY_ORDER = ("sub", "ses", "from", "to", "mode", "space", "res", "seg", "label", "desc")
_KEPT_FROM_SOURCE = ("sub", "ses")


def source_entities(source_file: str | os.PathLike) -> dict[str, str]:
    """The ``sub``/``ses`` entities of a BIDS file name.

    >>> source_entities("/data/sub-01/ses-A/anat/sub-01_ses-A_run-2_T1w.nii.gz")
    {'sub': '01', 'ses': 'A'}
    >>> source_entities("sub-02_acq-mp2rage_T1w.nii")
    {'sub': '02'}
    """
    name = Path(source_file).name.split(".")[0]
    found = {}
    for part in name.split("_")[:-1]:
        key, _, value = part.partition("-")
        if key in _KEPT_FROM_SOURCE and value:
            found[key] = value
    if "sub" not in found:
        raise ValueError(f"{source_file}: not a BIDS file name (no sub- entity)")
    return found


def derivative_relpath(
    source_file: str | os.PathLike, *, suffix: str, extension: str, datatype: str = "anat",
    **entities: str | None,
) -> str:
    """The path of a derivative relative to the dataset root (POSIX separators).

    ``entities`` use the BIDS keys; ``from_`` stands for ``from`` (a Python keyword).

    >>> derivative_relpath("sub-01_ses-A_T1w.nii.gz", suffix="probseg", extension=".nii.gz",
    ...                    space="MNI152NLin2009aSym", label="GM", desc="modulated")
    'sub-01/ses-A/anat/sub-01_ses-A_space-MNI152NLin2009aSym_label-GM_desc-modulated_probseg.nii.gz'
    >>> derivative_relpath("sub-01_T1w.nii", suffix="xfm", extension=".h5", from_="T1w",
    ...                    to="MNI152NLin2009aSym", mode="image")
    'sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5'
    """
    ents = source_entities(source_file)
    for key, value in entities.items():
        key = key.rstrip("_")
        if key not in ENTITY_ORDER:
            raise ValueError(f"unknown entity {key!r}; known: {', '.join(ENTITY_ORDER)}")
        if value:
            if not str(value).isalnum():
                raise ValueError(f"entity {key}-{value}: BIDS labels are letters and digits only")
            ents[key] = str(value)
    stem = "_".join(f"{k}-{ents[k]}" for k in ENTITY_ORDER if k in ents)
    folder = [f"sub-{ents['sub']}"] + ([f"ses-{ents['ses']}"] if "ses" in ents else [])
    if datatype:
        folder.append(datatype)
    return "/".join(folder + [f"{stem}_{suffix}{extension}"])


def raw_uri(source_file, bids_dir) -> str:
    """``bids:raw:<path relative to the input dataset>`` for the input T1w."""
    try:
        rel = Path(source_file).resolve().relative_to(Path(bids_dir).resolve()).as_posix()
    except ValueError:
        rel = Path(source_file).name
    return f"bids:raw:{rel}"


def sidecar_name(filename: str) -> str:
    """The sidecar's file name: ``.tsv``/``.nii.gz``/``.nii`` replaced by ``.json``.

    >>> sidecar_name("space-MNI152NLin2009aSym_desc-weight_statmap.nii.gz")
    'space-MNI152NLin2009aSym_desc-weight_statmap.json'
    """
    name = PurePath(filename).name
    for ext in (".nii.gz", ".nii", ".tsv"):
        if name.endswith(ext):
            return name[: -len(ext)] + ".json"
    raise ValueError(f"{filename}: only .tsv and NIfTI files get a JSON sidecar")
