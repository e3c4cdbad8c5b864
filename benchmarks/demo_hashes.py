"""sha256 of output folders and of demo phantoms: check that a change keeps every byte.

Two sub-commands:

``files DIR [DIR2]``
    Hashes every file under ``DIR`` (paths relative to it). With ``DIR2`` (a folder, or a JSON
    manifest saved by ``--save``) it compares the two: files identical, differing, present on
    one side only. ``--ignore GLOB`` (repeatable, matched against the relative path) leaves out
    files that legitimately vary from run to run (logs with timestamps, crash files); the
    files left out are listed, never silently dropped. ``--strip REGEX`` removes a part of
    every relative path before pairing (e.g. the time stamp and run id of the run-log folders,
    ``--strip='-\\d{8}T\\d{6}Z-[0-9a-f]{8}'`` for ``logs/participant-20261208T002017Z-4e70a333/``),
    so that such files are still compared.
    Exit 1 when anything differs.

``phantoms``
    Hashes the arrays, affines, volumes and drawn parameters of
    :func:`ketabids.demo.head.simulate_subject` for a few argument sets (:data:`PHANTOM_CASES`:
    defaults, scanner profiles, a 1 mm subject, no skull/warp); ``--save`` / ``--against`` as
    above.

Typical use around a refactor that must not change the data::

    python benchmarks/demo_hashes.py phantoms --save /tmp/phantoms-before.json
    ketabids demo /tmp/d --n-discovery 10 --n-external 1 --generate-only
    python benchmarks/demo_hashes.py files /tmp/d --save /tmp/demo-before.json
    # ... change the code, regenerate into /tmp/d2 ...
    python benchmarks/demo_hashes.py files /tmp/d2 /tmp/demo-before.json
    python benchmarks/demo_hashes.py phantoms --against /tmp/phantoms-before.json
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import sys
from pathlib import Path


def sha256_file(path: Path) -> str:
    """sha256 hex digest of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _strip(rels: list[str], patterns: list[str]) -> dict:
    """``{relative path: path with the patterns removed}``; paths that then coincide (two runs'
    log folders) get ``#1``, ``#2``... in the order of their original paths (time stamps sort
    in time order)."""
    out = {}
    for rel in sorted(rels):
        short = rel
        for pattern in patterns:
            short = re.sub(pattern, "", short)
        out[rel] = short
    counts = {}
    for rel, short in out.items():
        counts[short] = counts.get(short, 0) + 1
    seen = {}
    for rel, short in out.items():
        if counts[short] > 1:
            seen[short] = seen.get(short, 0) + 1
            out[rel] = f"{short}#{seen[short]}"
    return out


def hash_folder(root: Path, ignore: list[str] = (), strip: list[str] = ()) -> tuple[dict, list]:
    """``{relative path: sha256}`` of every file under ``root``, and the paths ignored.

    ``strip``: regular expressions removed from each relative path (before ``ignore``)."""
    files = {p.relative_to(root).as_posix(): p for p in Path(root).rglob("*") if p.is_file()}
    names = _strip(list(files), strip)
    hashes, ignored = {}, []
    for rel, path in sorted(files.items()):
        rel = names[rel]
        if any(fnmatch.fnmatch(rel, pattern) for pattern in ignore):
            ignored.append(rel)
            continue
        hashes[rel] = sha256_file(path)
    return hashes, ignored


def compare(a: dict, b: dict) -> dict:
    """Keys identical, differing, only in ``a``, only in ``b`` (sorted lists)."""
    common = sorted(set(a) & set(b))
    return {
        "identical": [k for k in common if a[k] == b[k]],
        "differing": [k for k in common if a[k] != b[k]],
        "only_first": sorted(set(a) - set(b)),
        "only_second": sorted(set(b) - set(a)),
    }


def _load(source: str, ignore: list[str], strip: list[str]) -> tuple[dict, list[str]]:
    path = Path(source)
    if path.is_file():  # a manifest saved by --save
        saved = json.loads(path.read_text())
        names = _strip(list(saved["hashes"]), strip)
        hashes = {names[k]: v for k, v in saved["hashes"].items()
                  if not any(fnmatch.fnmatch(names[k], p) for p in ignore)}
        return hashes, sorted(set(saved["hashes"]) - set(hashes)) + saved.get("ignored", [])
    return hash_folder(path, ignore, strip)


#: simulate_subject argument sets hashed by ``phantoms``: template resolution, keywords
#: (``traits``/``acquisition``/``pose`` as plain dicts of the config objects' fields).
PHANTOM_CASES = {
    "defaults-2mm": (2, dict(seed=0)),
    "responder-LIA": (2, dict(seed=7, traits=dict(responder=True, age=50, sex="M"),
                              acquisition=dict(orientation="LIA"))),
    "scanner-C-noskull-nowarp": (2, dict(
        seed=3, traits=dict(responder=False, effect_size=0.1, head_scale=1.05),
        acquisition=dict(resolution=2.0, skull=False, noise=0.045, bias_strength=0.3,
                         contrast={"gm": 0.55, "wm": 0.88, "csf": 0.15, "fat": 0.85,
                                   "muscle": 0.35}),
        pose=dict(warp_mm=0.0))),
    "pose-warp-share": (2, dict(
        seed=11, traits=dict(responder=True, variation=0.05, effect_volume_share=0.2),
        acquisition=dict(orientation="PIL"),
        pose=dict(max_rotation=10.0, max_translation=4.0, warp_mm=0.5, warp_fwhm=40.0))),
    "1mm-PIL": (1, dict(seed=1, acquisition=dict(resolution=1.0, orientation="PIL"))),
}


def _simulate(template, case: dict):
    from ketabids.demo.head import Acquisition, PoseAndWarp, SubjectTraits, simulate_subject

    configs = {"traits": SubjectTraits, "acquisition": Acquisition, "pose": PoseAndWarp}
    kwargs = {k: configs[k](**v) if k in configs else v for k, v in case.items()}
    return simulate_subject(template, **kwargs)


def hash_phantom(subject) -> str:
    """One sha256 over every image (data bytes, affine, dtype), the volumes and the params."""
    import numpy as np

    digest = hashlib.sha256()
    for key in ("t1w", "gm", "wm", "csf", "brain_mask", "template_gm"):
        img = getattr(subject, key)
        data = np.asarray(img.dataobj)
        digest.update(key.encode())
        digest.update(str(data.dtype).encode())
        digest.update(np.ascontiguousarray(data).tobytes())
        digest.update(np.asarray(img.affine, dtype=np.float64).tobytes())
    digest.update(json.dumps(subject.volumes, sort_keys=True).encode())
    digest.update(json.dumps(subject.params, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def hash_phantoms(cases: dict = PHANTOM_CASES) -> dict:
    """``{case: sha256}`` of :func:`hash_phantom` for each argument set."""
    from ketabids.templates import get_template

    return {name: hash_phantom(_simulate(get_template(resolution=res), kwargs))
            for name, (res, kwargs) in cases.items()}


def _report(hashes: dict, ignored: list[str], other: dict | None, save: str | None,
            label: str) -> int:
    if save:
        Path(save).write_text(json.dumps({"hashes": hashes, "ignored": ignored}, indent=1))
    if ignored:
        print(f"ignored ({len(ignored)}, vary per run): " + ", ".join(ignored))
    if other is None:
        for key, value in hashes.items():
            print(f"{value}  {key}")
        print(f"{len(hashes)} {label} hashed")
        return 0
    result = compare(hashes, other)
    for kind in ("differing", "only_first", "only_second"):
        for key in result[kind]:
            print(f"{kind}: {key}")
    print(f"{len(set(hashes) | set(other))} {label} compared: {len(result['identical'])} "
          f"identical, {len(result['differing'])} differing, {len(result['only_first'])} only "
          f"in the first, {len(result['only_second'])} only in the second")
    return 0 if len(result["identical"]) == len(set(hashes) | set(other)) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    files = sub.add_parser("files", help="hash (and compare) every file under a folder")
    files.add_argument("first", help="folder, or a manifest saved by --save")
    files.add_argument("second", nargs="?", help="folder or manifest to compare with")
    files.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                       help="relative paths that vary per run (repeatable; listed, not hashed)")
    files.add_argument("--strip", action="append", default=[], metavar="REGEX",
                       help="remove this from every relative path before pairing (repeatable)")
    files.add_argument("--save", help="write the first folder's hashes to this JSON file")
    phantoms = sub.add_parser("phantoms", help="hash simulate_subject for PHANTOM_CASES")
    phantoms.add_argument("--against", help="manifest saved by --save to compare with")
    phantoms.add_argument("--save", help="write the hashes to this JSON file")
    args = parser.parse_args(argv)
    if args.command == "files":
        hashes, ignored = _load(args.first, args.ignore, args.strip)
        other = _load(args.second, args.ignore, args.strip)[0] if args.second else None
        return _report(hashes, ignored, other, args.save, "files")
    hashes = hash_phantoms()
    other = json.loads(Path(args.against).read_text())["hashes"] if args.against else None
    return _report(hashes, [], other, args.save, "phantoms")


if __name__ == "__main__":
    sys.exit(main())
