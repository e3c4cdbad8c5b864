"""A synthetic demo: two small BIDS datasets of T1w phantoms with a planted response effect.

:func:`generate_demo` writes::

    OUT/bids/discovery/   raw BIDS: ketamine + saline arms, sites A and B (two "scanners")
    OUT/bids/external/    raw BIDS: ketamine arm (+ saline arm with n_external_saline),
                          site C (another scanner: 1.5 T, other
                          contrast, more noise, stronger bias field)
    OUT/truth/<cohort>/   ground truth, OUTSIDE the BIDS trees:
        truth.tsv                        one row per subject: arm, site, responder (MADRS rule),
                                         planted image label, head scale, true volumes (mL), pose
        sub-X/sub-X_label-{GM,WM,CSF}_probseg.nii.gz, sub-X_desc-brain_mask.nii.gz (T1w grid)
        sub-X/sub-X_space-MNI152NLin2009aSym_label-GM_desc-modulated_probseg.nii.gz
        sub-X/sub-X_params.json          every drawn simulation parameter

Response (MADRS drop >= 50 % at 24 h, the group level's ``--response-from`` rule) is planted in
the images of the ketamine arm only (see :mod:`ketabids.demo.phantom` and
:mod:`ketabids.demo.head`): responders have more frontal and less cerebellar grey matter.
Saline participants respond at a lower rate and their images carry no effect, so a model trained
on the ketamine arm should be at chance on them. Everything is deterministic for ``seed``.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ketabids.bids.derivatives import BIDS_VERSION
from ketabids.demo.head import ORIENTATIONS, Acquisition, SubjectTraits, simulate_subject
from ketabids.demo.participants import PARTICIPANTS_JSON, make_participants_table, planted_label
from ketabids.demo.scanners import COMMON_SIDECAR, SCANNERS
from ketabids.group.labels import is_response
from ketabids.io import atomic_write_text, save_nifti, write_json, write_tsv

#: Default planted effect of the demo. Larger than the template-space default
#: (:data:`ketabids.demo.phantom.DEFAULT_EFFECT_SIZE`): the phantoms' smooth deformation adds ~8 %
#: local volume variation on top of the anatomy model, and the participant level (fast mode,
#: 2 mm) recovers about half of the planted regional difference (measured on 6 phantoms:
#: frontal/cerebellar log-ratio difference 0.14 estimated vs 0.29 true at 0.15).
DEMO_EFFECT_SIZE = 0.2


@dataclass
class DemoCohort:
    """What :func:`generate_demo` wrote.

    Attributes
    ----------
    root : Path
        The demo folder.
    bids, truth : dict
        Cohort name (``discovery``, ``external``) -> its BIDS folder / ground-truth folder.
    participants, truth_tables : dict
        Cohort name -> DataFrame (``participants.tsv`` / ``truth.tsv`` content).
    options : dict
        The call's options.
    """

    root: Path
    bids: dict
    truth: dict
    participants: dict = field(default_factory=dict)
    truth_tables: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def _readme(name: str, description: str, n: int, seed: int, effect_size: float) -> str:
    return (
        f"# {name}\n\n"
        f"{description}\n\n"
        f"Synthetic data made by `ketabids.demo.generate_demo` (seed {seed}, effect size "
        f"{effect_size}); {n} participants, one T1w each. No real person was scanned.\n\n"
        "T1w images are phantoms built from the MNI ICBM 2009a symmetric template tissue maps "
        "with a scalp/skull/neck model, a smooth non-linear deformation, head-size scaling, age "
        "atrophy, a bias field, Rician noise, a random head pose and varied header orientations. "
        "Responders to ketamine (MADRS drop >= 50 % at 24 h) have more frontal and less "
        "cerebellar grey matter; saline participants' images carry no effect. The ground truth "
        "is stored next to the BIDS folders, in `truth/`.\n"
    )


def _write_cohort(
    bids_dir: Path,
    truth_dir: Path,
    table,
    *,
    name: str,
    description: str,
    seed: int,
    cohort_key: int,
    effect_size: float,
    resolution: float,
    null: bool,
    orientations,
    template,
    nprocs: int = 1,
):
    import pandas as pd

    from ketabids import __version__

    bids_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        bids_dir / "dataset_description.json",
        {
            "Name": name,
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["ketabids developers", "Synthetic Imaging Centre"],
            "GeneratedBy": [
                {
                    "Name": "ketabids",
                    "Version": __version__,
                    "Description": "ketabids.demo.generate_demo (synthetic T1w phantoms)",
                }
            ],
        },
    )
    atomic_write_text(
        bids_dir / "README.md", _readme(name, description, len(table), seed, effect_size)
    )
    write_tsv(table, bids_dir / "participants.tsv")
    pjson = json.loads(json.dumps(PARTICIPANTS_JSON))
    pjson["site"]["Levels"] = {
        s: f"{SCANNERS[s]['sidecar']['Manufacturer']} "
        f"{SCANNERS[s]['sidecar']['ManufacturersModelName']} "
        f"{SCANNERS[s]['sidecar']['MagneticFieldStrength']} T"
        for s in sorted(set(table["site"]))
    }
    write_json(bids_dir / "participants.json", pjson)

    null_rng = np.random.default_rng([seed, cohort_key, 7919])
    # labels drawn in table order (the null coin flips share one generator); every subject
    # then has its own seed, so subjects can be written in any order, in parallel
    jobs = [
        dict(row=row.to_dict(), label=planted_label(row, null=null, rng=null_rng),
             bids_dir=bids_dir, truth_dir=truth_dir, seed=seed, cohort_key=cohort_key,
             effect_size=effect_size, resolution=resolution, orientations=orientations,
             template=template)
        for _, row in table.iterrows()
    ]
    if nprocs > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(nprocs, len(jobs))) as pool:
            rows = list(pool.map(_write_subject_job, jobs))
    else:
        rows = [_write_subject_job(job) for job in jobs]
    truth = pd.DataFrame(rows)
    write_tsv(truth, truth_dir / "truth.tsv")
    return truth


def _write_subject_job(job: dict) -> dict:
    """Simulate one participant, write its T1w and ground truth; return its truth row."""
    return _write_subject(**job)


def _write_subject(*, row: dict, label, bids_dir: Path, truth_dir: Path, seed: int,
                   cohort_key: int, effect_size: float, resolution: float, orientations,
                   template) -> dict:
    sub = row["participant_id"]
    sub_seed = [int(seed), int(cohort_key), zlib.crc32(sub.encode())]
    rng = np.random.default_rng(sub_seed)
    orientation = str(orientations[int(rng.integers(len(orientations)))])
    scanner = SCANNERS[row["site"]]
    subj = simulate_subject(
        template,
        seed=rng,
        traits=SubjectTraits(responder=label, effect_size=effect_size, age=float(row["age"]),
                             sex=row["sex"]),
        acquisition=Acquisition(resolution=resolution, orientation=orientation,
                                **scanner["simulation"]),
    )
    anat = bids_dir / sub / "anat"
    save_nifti(subj.t1w, anat / f"{sub}_T1w.nii.gz")
    write_json(anat / f"{sub}_T1w.json", {**COMMON_SIDECAR, **scanner["sidecar"]})
    tdir = truth_dir / sub
    save_nifti(subj.gm, tdir / f"{sub}_label-GM_probseg.nii.gz")
    save_nifti(subj.wm, tdir / f"{sub}_label-WM_probseg.nii.gz")
    save_nifti(subj.csf, tdir / f"{sub}_label-CSF_probseg.nii.gz")
    save_nifti(subj.brain_mask, tdir / f"{sub}_desc-brain_mask.nii.gz")
    tpl_name = subj.params["template"]
    save_nifti(
        subj.template_gm,
        tdir / f"{sub}_space-{tpl_name}_label-GM_desc-modulated_probseg.nii.gz",
    )
    params = {**subj.params, "seed": sub_seed, "planted": label}
    write_json(tdir / f"{sub}_params.json", params)
    tpl = np.asarray(subj.template_gm.dataobj, dtype=np.float64)
    tpl_ml = float(tpl.sum() * np.prod(subj.template_gm.header.get_zooms()[:3]) / 1000.0)
    return {
        "participant_id": sub,
        "arm": row["arm"],
        "site": row["site"],
        "responder": bool(is_response(row["madrs_pre"], row["madrs_24h"])),
        "planted": "none" if label is None else ("responder" if label else "nonresponder"),
        "head_scale": round(subj.params["head_scale"], 6),
        **{k: round(v, 4) for k, v in subj.volumes.items()},
        "template_gm_ml": round(tpl_ml, 4),
        "orientation": orientation,
    }


def demo_tables(design: DemoDesign | None = None, *, seed: int = 0) -> dict:
    """The ``participants.tsv`` tables :func:`generate_demo` writes, without writing anything.

    So a caller can check what the cohort supports (e.g. its cross-validation folds) before
    any work.

    Parameters
    ----------
    design : DemoDesign or None
        The cohort design (None: ``DemoDesign()``); only sizes, arms, sites and response
        rates matter here.
    seed : int
        As for :func:`generate_demo`.

    Returns
    -------
    dict
        Cohort name -> DataFrame (no ``external`` when it has no participant).
    """
    import pandas as pd

    d = design or DemoDesign()
    tables = {"discovery": make_participants_table(
        d.n_discovery, seed=seed, saline_fraction=d.saline_fraction,
        site=list(d.discovery_sites), ketamine_response_rate=d.ketamine_response_rate,
        saline_response_rate=d.saline_response_rate)}
    external = []
    if d.n_external:
        external.append(make_participants_table(
            d.n_external, seed=seed + 1_000_003, site=d.external_site,
            ketamine_response_rate=d.ketamine_response_rate, label_prefix="ext"))
    if d.n_external_saline:  # appended: the ketamine rows above stay as they are
        external.append(make_participants_table(
            d.n_external_saline, seed=seed + 2_000_003, saline_fraction=1.0,
            site=d.external_site, saline_response_rate=d.saline_response_rate,
            label_prefix="ext", start=d.n_external + 1))
    if external:
        tables["external"] = pd.concat(external, ignore_index=True)
    return tables


@dataclass(frozen=True)
class DemoDesign:
    """The demo's study design: cohort sizes, arms, sites, planted effect and response rates.

    Everything :func:`generate_demo` and :func:`demo_tables` need besides the seed, the voxel
    size and the process count. Frozen: vary one field with :func:`dataclasses.replace`.

    Parameters
    ----------
    n_discovery : int
        Participants of the discovery dataset (``bids/discovery``), ``sub-001``...
    n_external : int
        Participants of the external-validation dataset (``bids/external``),
        ``sub-ext001``...; 0 skips it.
    n_external_saline : int
        Saline participants added to the external dataset (same scanner, numbered after the
        ketamine ones, images without effect, ``saline_response_rate``): the external cohort
        becomes a two-arm trial for the treatment-specificity analysis (``--arm-column arm``).
        The ketamine participants' rows and images do not depend on it.
    saline_fraction : float
        Share of the discovery participants in the saline arm, in [0, 1).
    discovery_sites : sequence of str
        Scanner profiles of the discovery sites (keys of :data:`SCANNERS`: A Siemens 3 T, B GE
        3 T, C Philips 1.5 T with lower GM/WM contrast, more noise and a stronger bias field);
        stored as a tuple.
    external_site : str
        Scanner profile of the external site.
    effect_size : float
        Relative GM difference planted between ketamine responders and non-responders
        (frontal +, cerebellar -; half as GM probability, half as local volume change, see
        :func:`ketabids.demo.head.simulate_subject`); 0 plants nothing.
    ketamine_response_rate, saline_response_rate : float
        Exact shares of responders (MADRS drop >= 50 % at 24 h) per arm (saline: the placebo
        response of ketamine trials, about a third). With the CLI's 1:1 external trial of 30
        per arm, the decision x arm interaction of a model that separates the ketamine arm is
        detected with a simulated power of about 90 % (5 % under ``null``; docs/benchmarks.md);
        at 20 per arm about 78 %.
    null : bool
        Plant the image effect by an independent coin flip: labels unrelated to the images.
    """

    n_discovery: int = 40
    n_external: int = 30
    n_external_saline: int = 0
    saline_fraction: float = 0.25
    discovery_sites: tuple[str, ...] = ("A", "B")
    external_site: str = "C"
    effect_size: float = DEMO_EFFECT_SIZE
    ketamine_response_rate: float = 0.45
    saline_response_rate: float = 0.35
    null: bool = False

    def __post_init__(self):
        object.__setattr__(self, "discovery_sites", tuple(self.discovery_sites))


def generate_demo(
    out_dir,
    design: DemoDesign | None = None,
    *,
    resolution: float = 2.0,
    seed: int = 0,
    nprocs: int = 1,
) -> DemoCohort:
    """Write the demo: two raw BIDS datasets of T1w phantoms plus their ground truth.

    ``generate_demo(out, DemoDesign(n_discovery=10, n_external=4))`` writes a small one.
    Every file is written atomically; re-running with the same options into the same folder
    rewrites identical bytes (``truth/demo_options.json`` records the options).

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder of the demo: ``bids/<cohort>``, ``truth/``.
    design : DemoDesign or None
        Cohort sizes, arms, sites, planted effect, response rates (None: ``DemoDesign()``).
    resolution : float
        T1w voxel size in mm, 0.5 to 4 (2 mm: quick; 1 mm: realistic).
    seed : int
        Everything is a deterministic function of it (same bytes for the same options).
    nprocs : int
        Participants simulated in parallel processes; the output does not depend on it.

    Returns
    -------
    DemoCohort
        The folders written and their tables.

    Raises
    ------
    UsageError
        An option out of range or an unknown site.
    OutputError
        ``out_dir`` holds a demo made with other options.
    """
    from ketabids.errors import OutputError, UsageError
    from ketabids.templates import get_template

    design = design or DemoDesign()
    n_discovery, n_external = design.n_discovery, design.n_external
    n_external_saline, saline_fraction = design.n_external_saline, design.saline_fraction
    if not 0.0 <= saline_fraction < 1.0:
        raise UsageError(f"saline_fraction {saline_fraction}: use a value in [0, 1)")
    if n_external_saline < 0:
        raise UsageError(f"n_external_saline {n_external_saline}: use a count >= 0")
    if n_discovery < 1 or n_external < 0:
        raise UsageError(
            f"n_discovery {n_discovery}, n_external {n_external}: use n_discovery >= 1 and "
            "n_external >= 0"
        )
    if not 0.5 <= resolution <= 4.0:
        raise UsageError(f"resolution {resolution} mm: use a voxel size between 0.5 and 4 mm")
    unknown = [s for s in (*design.discovery_sites, design.external_site) if s not in SCANNERS]
    if unknown:
        raise UsageError(f"unknown site(s) {unknown}: use {sorted(SCANNERS)}")

    root = Path(out_dir)
    template = get_template(resolution=1 if resolution < 1.5 else 2)
    options = {
        "n_discovery": n_discovery,
        "n_external": n_external,
        "n_external_saline": n_external_saline,
        "saline_fraction": saline_fraction,
        "discovery_sites": list(design.discovery_sites),
        "external_site": design.external_site,
        "effect_size": design.effect_size,
        "ketamine_response_rate": design.ketamine_response_rate,
        "saline_response_rate": design.saline_response_rate,
        "resolution": resolution,
        "null": design.null,
        "seed": seed,
    }
    tables = demo_tables(design, seed=seed)
    cohorts = {
        "discovery": dict(
            table=tables["discovery"],
            name="ketabids demo: discovery cohort",
            description="Discovery cohort: a randomised ketamine vs saline trial in "
            "treatment-resistant depression, two scanners.",
            key=1,
        ),
    }
    if n_external or n_external_saline:
        cohorts["external"] = dict(
            table=tables["external"],
            name="ketabids demo: external validation cohort",
            description=("External validation cohort: a randomised ketamine vs saline trial, "
                         "another scanner." if n_external_saline else
                         "External validation cohort: open-label ketamine, another scanner."),
            key=2,
        )
    # never mix two demos: a folder already holding one must have been made with these options
    stamp = root / "truth" / "demo_options.json"
    if stamp.is_file():
        previous = json.loads(stamp.read_text())
        if previous != options:
            raise OutputError(
                f"{root}: holds a demo made with other options ({stamp}); choose an empty "
                "folder or delete this one"
            )
    elif (root / "bids").exists() or (root / "truth").exists():
        raise OutputError(
            f"{root}: bids/ or truth/ exist but were not written by generate_demo; choose an "
            "empty folder"
        )
    try:
        write_json(stamp, options)
    except OSError as exc:
        raise OutputError(f"{root}: cannot write the demo there ({exc}); choose a writable folder")
    demo = DemoCohort(root=root, bids={}, truth={}, options=options)
    for cohort, spec in cohorts.items():
        bids_dir = root / "bids" / cohort
        truth_dir = root / "truth" / cohort
        truth = _write_cohort(
            bids_dir,
            truth_dir,
            spec["table"],
            name=spec["name"],
            description=spec["description"],
            seed=seed,
            cohort_key=spec["key"],
            effect_size=design.effect_size,
            resolution=resolution,
            null=design.null,
            orientations=ORIENTATIONS,
            template=template,
            nprocs=nprocs,
        )
        demo.bids[cohort] = bids_dir
        demo.truth[cohort] = truth_dir
        demo.participants[cohort] = spec["table"]
        demo.truth_tables[cohort] = truth
    return demo
