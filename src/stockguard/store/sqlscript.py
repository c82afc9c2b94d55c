"""Split a SQL script into statements (asyncpg prepares one statement at a time)."""

from __future__ import annotations

__all__ = ["split_sql"]


def split_sql(script: str) -> list[str]:
    """Statements of ``script``, split on ``;`` outside ``$$`` bodies and ``--`` comments."""
    out: list[str] = []
    buf: list[str] = []
    in_dollar = False
    for line in script.splitlines():
        stripped = line.strip()
        if not in_dollar and stripped.startswith("--"):
            continue
        in_dollar ^= line.count("$$") % 2 == 1
        buf.append(line)
        if not in_dollar and stripped.endswith(";"):
            stmt = "\n".join(buf).strip().rstrip(";").strip()
            if stmt:
                out.append(stmt)
            buf = []
    tail = "\n".join(buf).strip().rstrip(";").strip()
    if tail:
        out.append(tail)
    return out
