"""Drive an operation from N concurrent asyncio tasks and measure it.

An operation is an async callable that returns how its units came out, e.g.
``{"ok": 1}``, ``{"out_of_stock": 1}`` or, for a batch, ``{"ok": 48, "out_of_stock": 2}``.
An exception is counted as an error (by type and message) and never stops the run.

A cell runs a warm-up phase (results thrown away), then the measured phase, which ends
at its deadline or after ``limit`` calls, whichever comes first. Calls in flight at the
deadline finish and count; the elapsed time runs to the last completion.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "OK",
    "OUT_OF_STOCK",
    "CpuSample",
    "Op",
    "cpu_seconds",
    "drive",
    "percentile",
    "summarise",
]

Op = Callable[[], Awaitable[dict[str, int]]]
OK: dict[str, int] = {"ok": 1}
OUT_OF_STOCK: dict[str, int] = {"out_of_stock": 1}

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def summarise(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds."""
    values = sorted(latencies)
    if not values:
        return {}
    return {
        "p50": _ms(percentile(values, 50)),
        "p90": _ms(percentile(values, 90)),
        "p99": _ms(percentile(values, 99)),
        "max": _ms(values[-1]),
        "mean": _ms(sum(values) / len(values)),
    }


# ---------------------------------------------------------------- CPU accounting


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0, 0
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def _process_ticks(names: frozenset[str]) -> dict[str, int]:
    """CPU jiffies (user + system) per process name, summed over all such processes."""
    out = dict.fromkeys(names, 0)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.find("(") + 1 : raw.rfind(")")]
        if name in out:
            fields = raw[raw.rfind(")") + 2 :].split()
            out[name] += int(fields[11]) + int(fields[12])
    return out


def _pid_ticks(pid: int) -> int:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; 0 when it is gone."""
    return _pid_ticks(pid) / _CLK_TCK


@dataclass
class CpuSample:
    """Where the CPU went during a cell: the whole machine, this process, the HTTP
    server process, every process called postgres / redis-server on the machine (other
    users of those servers included) and the rest (``other_s``: anything else running)."""

    server_pid: int | None = None
    _wall: float = 0.0
    _machine: tuple[int, int] = (0, 0)
    _self: float = 0.0
    _server: int = 0
    _procs: dict[str, int] = field(default_factory=dict)

    NAMES = frozenset({"postgres", "redis-server"})

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._machine = _machine_ticks()
        self._self = time.process_time()
        self._server = _pid_ticks(self.server_pid) if self.server_pid else 0
        self._procs = _process_ticks(self.NAMES)

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._wall
        busy, total = _machine_ticks()
        procs = _process_ticks(self.NAMES)
        out: dict[str, Any] = {
            "machine_busy_pct": (
                round(100 * (busy - self._machine[0]) / (total - self._machine[1]), 1)
                if total > self._machine[1]
                else None
            ),
            "bench_process_s": round(time.process_time() - self._self, 3),
            "postgres_s": round((procs["postgres"] - self._procs["postgres"]) / _CLK_TCK, 3),
            "redis_s": round((procs["redis-server"] - self._procs["redis-server"]) / _CLK_TCK, 3),
            "wall_s": round(wall, 3),
        }
        if self.server_pid:
            out["http_server_s"] = round((_pid_ticks(self.server_pid) - self._server) / _CLK_TCK, 3)
        # CPU that none of the above used: other work on the machine (noise).
        accounted = sum(
            out.get(k) or 0.0 for k in ("bench_process_s", "postgres_s", "redis_s", "http_server_s")
        )
        out["other_s"] = round((busy - self._machine[0]) / _CLK_TCK - accounted, 3)
        return out


# ---------------------------------------------------------------- the driver


@dataclass
class _Phase:
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    started: float = 0.0
    last_end: float = 0.0


async def _run_phase(op: Op, concurrency: int, deadline: float, limit: int | None) -> _Phase:
    phase = _Phase(started=time.perf_counter())
    phase.last_end = phase.started

    async def worker() -> None:
        while time.perf_counter() < deadline:
            if limit is not None and phase.calls >= limit:
                return
            phase.calls += 1
            t0 = time.perf_counter()
            try:
                result = await op()
            except Exception as exc:
                result = {"error": 1}
                phase.errors[f"{type(exc).__name__}: {str(exc)[:160]}"] += 1
            t1 = time.perf_counter()
            phase.latencies.append(t1 - t0)
            phase.outcomes.update(result)
            phase.last_end = max(phase.last_end, t1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return phase


async def drive(
    op: Op,
    *,
    concurrency: int,
    duration: float | None,
    warmup: float = 0.0,
    limit: int | None = None,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Run ``op`` from ``concurrency`` tasks; return the cell's figures."""
    if warmup > 0:
        await _run_phase(op, concurrency, time.perf_counter() + warmup, None)
    cpu = CpuSample(server_pid)
    cpu.start()
    deadline = time.perf_counter() + duration if duration is not None else math.inf
    phase = await _run_phase(op, concurrency, deadline, limit)
    cpu_figures = cpu.stop()
    elapsed = max(phase.last_end - phase.started, 1e-9)
    ok = phase.outcomes.get("ok", 0)
    cell: dict[str, Any] = {
        "concurrency": concurrency,
        "calls": phase.calls,
        "elapsed_s": round(elapsed, 3),
        "calls_per_s": round(phase.calls / elapsed, 1),
        "ok": ok,
        "ok_per_s": round(ok / elapsed, 1),
        "outcomes": dict(sorted(phase.outcomes.items())),
        "errors": sum(phase.errors.values()),
        "latency_ms": summarise(phase.latencies),
        "cpu": cpu_figures,
    }
    if phase.errors:
        cell["error_kinds"] = dict(phase.errors.most_common(5))
    return cell
