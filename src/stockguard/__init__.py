"""stockguard: an inventory service that never oversells, never loses a unit and never
restores a unit twice."""

__all__ = ["__version__"]

__version__ = "0.1.0"
