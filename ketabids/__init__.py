"""ketabids: predict ketamine response in treatment-resistant depression from a T1w MRI."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ketabids")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["__version__"]
