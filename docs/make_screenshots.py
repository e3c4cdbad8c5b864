"""Make the README's screenshots: the participant report, qc.html and the training report.

Builds small realistic outputs (``ketabids.demo.preview.build_preview``: a synthetic
60-participant cohort with a planted effect, two sites, reduced training protocol; about 2-3
minutes on 2 cores) unless ``--from`` names an existing preview folder, then renders each page
with headless Chromium (Debian's ``chromium`` package: ``apt-get install -y chromium``) into
``docs/screenshot-<page>.png`` (1280 px wide, 256-colour PNG). Fails if a page logs a console
error.

    PYTHONPATH=. python docs/make_screenshots.py            # writes docs/screenshot-*.png
    PYTHONPATH=. python docs/make_screenshots.py --from /tmp/preview
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ketabids.demo.preview import CHROMIUM, build_preview, screenshot

#: page -> (file name in docs/, window height in CSS px, CSS selector of what to leave out)
SHOTS = {
    "participant": ("screenshot-participant.png", 1150, "body > p:not(.verdict), h2 + .verdict, "
                    "section > p:first-of-type + p, h3:first-of-type, h3:first-of-type + table"),
    "qc": ("screenshot-qc.png", 1150, ""),
    "train": ("screenshot-training.png", 1150, "body > nav, body > table, #files, #cohort, "
              "#performance > p, #performance > table, .headline + .muted"),
}


def _pages(root: Path) -> dict:
    out = root / "out"
    return {"participant": out / "sub-001.html", "qc": out / "qc.html",
            "train": out / "group" / "train" / "report.html"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path,
                        help="an existing preview folder (build_preview's root)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder of the PNGs (default: docs/)")
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        print(f"{args.chromium} not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ketabids-preview-") as tmp:
        root = args.source or Path(tmp)
        if args.source is None:
            build_preview(root)
        pages = _pages(root)
        failed = False
        for key, (name, height, hide) in SHOTS.items():
            png = args.out / name
            errors = screenshot(pages[key], png, height=height, hide=hide,
                                chromium=args.chromium)
            print(f"{png}: {png.stat().st_size // 1024} kB"
                  + (f"; console errors: {errors}" if errors else ""))
            failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
