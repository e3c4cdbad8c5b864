"""Thin Nipype interfaces over ketabids' pure functions (see
:mod:`ketabids.interfaces.anatomical`), the derivatives data sink (:mod:`ketabids.interfaces.bids`)
and the report builders (:mod:`ketabids.interfaces.reports`)."""
from ketabids.interfaces.bids import DerivativesDataSink

__all__ = ["DerivativesDataSink"]
