"""stockguard fault injection: ``python -m faults --help`` (docs/FAULTS.md)."""
