"""Redis: the read cache of availability, kept in parity with PostgreSQL (DESIGN.md §5)."""
