"""Running participant graphs: plugin choice, Nipype execution settings, ITK threads, the
MultiProc scheduler and crash attribution (graph factories are in :mod:`ketabids.workflows`)."""
from ketabids.runner.participant import run_participant

__all__ = ["run_participant"]
