#!/usr/bin/env python3
"""BIDS-App entry point: ``run.py BIDS_DIR OUTPUT_DIR {participant,group} [options]``."""
from ketabids.cli import main

raise SystemExit(main())
