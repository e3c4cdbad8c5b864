"""Software versions for provenance (reports, model manifests, methods text)."""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

#: Distributions whose versions every provenance record carries.
CORE = ("ketabids", "numpy", "scipy", "nibabel", "nilearn")


def software_versions(*dists: str) -> dict[str, str]:
    """``{"python": ..., <dist>: <version> or "not installed"}`` for :data:`CORE` + ``dists``.

    >>> versions = software_versions("scikit-learn")
    >>> sorted(versions)[:3], versions["python"] == platform.python_version()
    (['ketabids', 'nibabel', 'nilearn'], True)
    """
    out = {"python": platform.python_version()}
    for dist in dict.fromkeys(CORE + dists):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover - depends on the installation
            out[dist] = "not installed"
    return out
