"""PostgreSQL's own ceiling for one transaction per change of a single hot row, measured
with ``pgbench`` (when it is installed) in the bench database, for comparison.

The script is one autocommit ``UPDATE ... SET n = n + 1 WHERE id = 1``: the least a
reservation transaction on a hot SKU can do (a row lock held until the commit is flushed).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import asyncpg

__all__ = ["pgbench_available", "pgbench_hot_row"]

SCRIPT = "UPDATE bench_pgbench_hot SET n = n + 1 WHERE id = 1;\n"


async def _run(args: list[str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await proc.communicate()
    return proc.returncode or 0, stdout.decode(errors="replace"), stderr.decode(errors="replace")


def pgbench_available() -> str | None:
    return shutil.which("pgbench")


async def pgbench_hot_row(
    database_url: str, workdir: Path, clients: list[int], seconds: int
) -> dict[str, Any]:
    binary = pgbench_available()
    if binary is None:
        return {"skipped": "pgbench is not installed"}
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_pgbench_hot (id int PRIMARY KEY, n bigint NOT NULL);"
            "INSERT INTO bench_pgbench_hot VALUES (1, 0) ON CONFLICT DO NOTHING"
        )
    finally:
        await conn.close()
    script = workdir / "hot_row.sql"
    script.write_text(SCRIPT)
    version = (await _run([binary, "--version"]))[1].strip()
    out: dict[str, Any] = {"pgbench": version, "script": SCRIPT.strip(), "seconds": seconds}
    cpus = os.cpu_count() or 1
    for c in clients:
        args = [
            binary, "-n", "-M", "prepared", "-f", str(script), "-c", str(c),
            "-j", str(min(c, cpus)), "-T", str(seconds), database_url,
        ]  # fmt: skip
        code, stdout, stderr = await _run(args)
        tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", stdout)
        lat = re.search(r"latency average = ([0-9.]+) ms", stdout)
        if code != 0 or tps is None:
            out[str(c)] = {"error": (stderr or stdout)[-300:]}
            continue
        out[str(c)] = {
            "tps": round(float(tps.group(1)), 1),
            "latency_avg_ms": float(lat.group(1)) if lat else None,
        }
    return out
