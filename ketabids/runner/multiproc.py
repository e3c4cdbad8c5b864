"""Nipype's MultiProc scheduler, without the cost that made it the bottleneck of many-subject runs.

Before every submission round, Nipype's ``MultiProcPlugin._send_procs_to_workers`` runs a full
``gc.collect()``, which walks every object of the main process, the whole execution graph
included. A participant run is ~30 short nodes per subject, and each node that finishes
triggers a round, so the scheduler's own collections cost O(subjects^2). Measured, with 2
processes on 2 cores, on 10 fast-mode demo subjects: 282 collections, 74 ms each, so 21 s of
a 78 s run, during which no job was submitted. With 40 subjects the run ended with 100 s of
tiny nodes dispatched one collection at a time.

:class:`MultiProcPlugin` freezes the objects alive at the start of a round
(:func:`gc.freeze`) so that collection walks only the young ones, then unfreezes them: nothing
is leaked, and cycles among the older objects are left to Python's automatic collections.
Everything else is Nipype's MultiProc unchanged.
"""
from __future__ import annotations

import gc

from nipype.pipeline.plugins.multiproc import MultiProcPlugin as _NipypeMultiProc


class MultiProcPlugin(_NipypeMultiProc):
    """Nipype's ``MultiProc`` plugin whose per-round ``gc.collect()`` skips old objects.

    >>> plugin = MultiProcPlugin(plugin_args={"n_procs": 2, "raise_insufficient": False})
    >>> plugin.processors
    2
    """

    def _send_procs_to_workers(self, updatehash=False, graph=None):
        gc.freeze()
        try:
            return super()._send_procs_to_workers(updatehash=updatehash, graph=graph)
        finally:
            gc.unfreeze()
