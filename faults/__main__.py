"""stockguard fault injection, a small Jepsen: ``python -m faults [--seed N] [--duration S]
[--clients C] [--fault-interval S] [--faults-per-kind K] [--baseline S] [--out FILE]``.

Starts a fresh database (from the migrations) on the PostgreSQL server named by
STOCKGUARD_DATABASE_URL, a redis-server of its own on a free loopback port, two API
processes (``stockguard serve --no-run-workers``) and one worker process
(``stockguard worker``) with short TTLs and intervals. C clients then place, pay (API,
signed Stripe and Razorpay webhooks, replays), cancel, delete, ship and adjust stock on
four SKUs at two locations for S seconds, retrying with the same order id and
Idempotency-Key, while a seeded nemesis kills API and worker processes (kill -9),
terminates the service's PostgreSQL backends, kills Redis (it comes back empty) and
freezes it (SIGSTOP). After every fault each API process must be ready and serving
within 10 s.

Then the faults stop, the workers settle, and the history of every answer is checked
against the database: verify clean, Redis equal to PostgreSQL, stock conserved per SKU,
no unit given back twice, every acknowledged order, cancel, delete, payment and shipment
reflected, no paid order released without a cancel or delete (docs/FAULTS.md).

Prints a summary; --out also writes the JSON document (with the whole history). Exit
status: 0 no violation, 1 violations found, 2 the run could not be made. The seed makes
the fault schedule and each client's choices repeatable (timing still varies).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.env import check_local, fresh_database, run_guarded, wait_for_headroom
from faults.checker import check, settle
from faults.cluster import Timing, cluster
from faults.events_check import check_events, events_snapshot
from faults.history import AMBIGUOUS, OK, History
from faults.nemesis import FAULT_INTERVAL_S, Nemesis, SpinWatch, plan
from faults.report import summary
from faults.workload import Workload, seed_catalogue
from stockguard.logging import configure_logging

__all__ = ["main", "parse_args", "phases", "run"]

SETTLE_PATIENCE_S = 20.0


def progress(message: str) -> None:
    print(f"[faults] {message}", file=sys.stderr, flush=True)


def phases(history: History, baseline_s: float, workload_s: float) -> dict[str, Any]:
    """Throughput of the fault-free baseline and of the faulted rest, each operation in the
    phase it started in (the last one's drain after the stop counts as faulted time)."""
    out: dict[str, Any] = {}
    for name, lo, hi in (("baseline", 0.0, baseline_s), ("faults", baseline_s, workload_s)):
        mine = [o for o in history.ops if lo <= o.start < hi]
        acked = sum(1 for o in mine if o.outcome == OK)
        span = max(hi - lo, 1e-9)
        out[name] = {
            "seconds": round(hi - lo, 1),
            "operations": len(mine),
            "acknowledged": acked,
            "ambiguous": sum(1 for o in mine if o.outcome == AMBIGUOUS),
            "ops_per_s": round(len(mine) / span, 1),
            "acknowledged_per_s": round(acked / span, 1),
        }
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m faults",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the schedule and the "
                   "workload (default: random, printed)")  # fmt: skip
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of workload under faults (default 60; at least 20)")  # fmt: skip
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--fault-interval", type=float, default=FAULT_INTERVAL_S,
                   help="seconds between planned faults (default 3.5)")  # fmt: skip
    p.add_argument("--faults-per-kind", type=int, default=2,
                   help="plan at least this many faults of every kind (default 2)")  # fmt: skip
    p.add_argument("--baseline", type=float, default=0.0, help="seconds of the same "
                   "workload without faults first, reported apart (default 0)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="write the JSON document here")
    p.add_argument("--keep", action="store_true", help="keep the process logs (kept anyway "
                   "when a check fails)")  # fmt: skip
    args = p.parse_args(argv)
    if args.duration < 20:
        p.error("--duration must be at least 20 s (every fault kind twice)")
    if not 1 <= args.clients <= 64:
        p.error("--clients must be 1 to 64")
    if not 0.5 <= args.fault_interval <= args.duration:
        p.error("--fault-interval must be 0.5 s to --duration")
    if args.faults_per_kind < 2:
        p.error("--faults-per-kind must be at least 2")
    if args.baseline < 0:
        p.error("--baseline must not be negative")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server_url = os.environ.get("STOCKGUARD_DATABASE_URL")
    if not server_url:
        progress("STOCKGUARD_DATABASE_URL must name a PostgreSQL server (any database on it)")
        raise SystemExit(2)
    check_local(server_url, "STOCKGUARD_DATABASE_URL")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    run_id = secrets.token_hex(3)
    timing = Timing()
    admin_key = f"sgfaults_{secrets.token_urlsafe(24)}"
    workdir = Path(tempfile.mkdtemp(prefix="stockguard-faults-"))
    doc: dict[str, Any] = {
        "suite": "stockguard faults",
        "run_id": run_id,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "seed": seed,
            "duration_s": args.duration,
            "clients": args.clients,
            "fault_interval_s": args.fault_interval,
            "faults_per_kind": args.faults_per_kind,
            "baseline_s": args.baseline,
            "api_processes": 2,
            "timing": asdict(timing),
        },
    }
    progress(f"seed {seed}, run {run_id}, logs in {workdir}")
    # Three service processes with their pools, and the suite's own connections.
    doc["waited_for_connections"] = await wait_for_headroom(
        server_url, 3 * timing.db_pool_max + 4, 120.0
    )
    async with (
        fresh_database(server_url, f"stockguard_faults_{run_id}", progress) as database_url,
        cluster(database_url, admin_key, workdir, timing) as c,
    ):
        assert c.apis[0].base_url is not None
        initial = await seed_catalogue(c.apis[0].base_url, admin_key)
        history = History()
        urls = [a.base_url for a in c.apis if a.base_url is not None]
        workload = Workload(urls, admin_key, seed, run_id, history, timing.abandon_after_seconds)
        nemesis = Nemesis(c, workload.t0)
        watch = SpinWatch([*c.apis, c.worker])
        schedule = plan(
            seed,
            args.duration,
            len(c.apis),
            interval=args.fault_interval,
            per_kind=args.faults_per_kind,
            offset=args.baseline,
        )
        stop = asyncio.Event()
        if args.baseline:
            progress(f"workload without faults for {args.baseline:.0f} s")
        progress(f"workload and {len(schedule)} faults for {args.duration:.0f} s")
        clients = asyncio.create_task(workload.run(args.clients, stop))
        faults = asyncio.create_task(nemesis.run(schedule, stop))
        watching = asyncio.create_task(watch.run(stop, workload.t0))
        try:
            await asyncio.sleep(args.baseline + args.duration)
            stop.set()
            await faults
            await clients
            await watching
        finally:
            # After a failure too: no task may outlive the run (or its HTTP client).
            stop.set()
            for task in (clients, faults, watching):
                task.cancel()
            await asyncio.gather(clients, faults, watching, return_exceptions=True)
            await workload.aclose()
        workload_s = workload.now()
        await nemesis.final_check()
        progress(f"{len(history.ops)} operations, {len(nemesis.faults)} faults; settling")
        violations = [*nemesis.violations, *watch.violations()]
        doc["busiest_cpu_share"] = watch.busiest
        settle_violations, doc["settle"] = await settle(
            c, timing.abandon_after_seconds, SETTLE_PATIENCE_S
        )
        violations += settle_violations
        progress("checking the history against the database")
        check_violations, doc["database"] = await check(c, history, initial)
        violations += check_violations
        progress("checking the events against the database")
        outbox = await events_snapshot(c.database_url)
        violations += check_events(outbox)
        doc["events"] = dict(Counter(e["type"] for e in outbox["events"]).most_common())
        doc["processes"] = {p.name: {"starts": p.starts} for p in [*c.apis, c.worker]}
    ops = len(history.ops)
    acked = sum(1 for o in history.ops if o.outcome == OK)
    doc["operations"] = {
        "total": ops,
        "by_kind": history.table(),
        "acknowledged_kinds": sorted({o.kind for o in history.ops if o.outcome == OK}),
        "refusal_codes": history.refusal_codes(),
        "ambiguity_causes": history.ambiguity_causes(),
    }
    doc["throughput"] = {
        "operations": ops,
        "acknowledged": acked,
        "attempts": sum(o.attempts for o in history.ops),
        "workload_s": round(workload_s, 1),
        "ops_per_s": round(ops / workload_s, 1),
        "acknowledged_per_s": round(acked / workload_s, 1),
    }
    if args.baseline:
        doc["throughput"]["phases"] = phases(history, args.baseline, workload_s)
    doc["faults"] = {
        "by_kind": nemesis.summary(),
        "skipped": len(schedule) - len(nemesis.faults),
        "list": nemesis.as_json(),
    }
    doc["violations"] = violations
    doc["ok"] = not violations
    doc["history"] = history.as_json()
    if violations or args.keep:
        doc["logs"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return doc


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # stockguard's own logs (embedded Redis starts) would mix with the summary on stdout.
    configure_logging("WARNING", json=True)
    started = time.monotonic()
    doc = run_guarded(lambda: asyncio.run(run(args)), progress, "the fault run")
    if doc is None:
        return 2
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(summary(doc), flush=True)
    if doc.get("logs"):
        progress(f"process logs kept in {doc['logs']}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
