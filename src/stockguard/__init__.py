"""stockguard: an inventory service that never oversells, never loses a unit and never
restores a unit twice."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    # One source: the version in pyproject.toml, as installed.
    __version__ = version("stockguard")
except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
    __version__ = "0.0.0+unknown"
