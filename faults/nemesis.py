"""The nemesis: a seeded schedule of faults, injected one at a time, each followed by a
liveness check.

Fault kinds:

- ``kill_api``: ``kill -9`` of one API process, started again on the same port;
- ``kill_worker``: ``kill -9`` of the worker process, started again;
- ``pg_terminate``: ``pg_terminate_backend`` of every connection of the service
  (``application_name = 'stockguard'``) to this run's database;
- ``redis_restart``: Redis killed and started again, empty, on the same port;
- ``redis_freeze``: Redis stopped (SIGSTOP) for 1-3 s, then continued (SIGCONT).

Liveness: when a fault ends (the process restarted, Redis continued...), every API
process must answer ``/readyz`` 200 and a real request (``GET /v1/skus/{sku}``) within
:data:`LIVENESS_S`; the time that took is the fault's recovery time. A miss is a
violation; the nemesis then heals the stuck process (``kill -9`` and a restart) so the
rest of the run still means something. A process that exits by itself is a violation too,
and so is one that keeps a CPU busy for seconds on end (:class:`SpinWatch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench.driver import cpu_seconds
from faults.cluster import Cluster, Process, connect
from faults.workload import SKUS

__all__ = [
    "FAULT_INTERVAL_S",
    "FAULT_KINDS",
    "LIVENESS_S",
    "Fault",
    "Nemesis",
    "Planned",
    "SpinWatch",
    "plan",
]

FAULT_KINDS = ("kill_api", "kill_worker", "pg_terminate", "redis_restart", "redis_freeze")
TARGETS = {"kill_worker": "worker", "pg_terminate": "postgres", "redis_restart": "redis",
           "redis_freeze": "redis"}  # fmt: skip
LIVENESS_S = 10.0
FIRST_FAULT_S = 2.0  # the workload runs unharmed this long first
FAULT_INTERVAL_S = 3.5  # one planned fault per this many seconds of a long run


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the start of the run
    kind: str
    target: int  # which API process (kill_api)
    hold: float  # seconds the fault lasts (down time, freeze time)


@dataclass
class Fault:
    kind: str
    target: str
    planned_at: float
    started: float = 0.0
    ended: float = 0.0
    recover_s: float | None = None  # None: liveness missed
    note: dict[str, Any] = field(default_factory=dict)


def plan(
    seed: int,
    duration: float,
    api_count: int,
    *,
    interval: float = FAULT_INTERVAL_S,
    per_kind: int = 2,
    offset: float = 0.0,
) -> list[Planned]:
    """Every kind at least ``per_kind`` times, more faults as the run gets longer (one per
    ``interval`` seconds of ``duration``), at jittered, evenly spread times. The first five
    are one of each kind (in a shuffled order), so a run whose faults fall behind their
    times still injects every kind. ``offset`` shifts the whole schedule (a fault-free
    baseline phase runs first); the defaults are the short run's schedule."""
    if per_kind < 2:
        raise ValueError("per_kind must be at least 2")
    if interval <= 0:
        raise ValueError("interval must be positive")
    rng = random.Random(f"nemesis:{seed}")
    n = max(per_kind * len(FAULT_KINDS), int(duration / interval))
    first = rng.sample(FAULT_KINDS, len(FAULT_KINDS))
    floor = [*FAULT_KINDS] * (per_kind - 1)
    rest = [*floor, *(rng.choice(FAULT_KINDS) for _ in range(n - len(floor) - len(first)))]
    rng.shuffle(rest)
    kinds = first + rest
    span = max(duration - FIRST_FAULT_S - 2.0, 1.0)
    slot = span / len(kinds)
    out = []
    for i, kind in enumerate(kinds):
        hold = rng.uniform(1.0, 3.0) if kind == "redis_freeze" else rng.uniform(0.2, 1.0)
        at = offset + FIRST_FAULT_S + i * slot + rng.uniform(0, slot / 3)
        out.append(Planned(round(at, 2), kind, rng.randrange(api_count), round(hold, 2)))
    return out


class SpinWatch:
    """Samples each service process's CPU time every second of the run. A process that
    used more than SPIN_SHARE of a CPU over SPIN_WINDOW_S straight is busy-looping:
    this workload keeps no process that busy (a restarted process starts a new window)."""

    SPIN_WINDOW_S = 5
    SPIN_SHARE = 0.8

    def __init__(self, procs: list[Process]) -> None:
        self.procs = procs
        self.samples: dict[str, list[tuple[int, float]]] = {p.name: [] for p in procs}
        self.busiest: dict[str, float] = dict.fromkeys(self.samples, 0.0)
        self.spins: list[dict[str, Any]] = []

    async def run(self, stop: asyncio.Event, t0: float) -> None:
        while not stop.is_set():
            for p in self.procs:
                if p.exited() is not None:
                    continue
                window = self.samples[p.name]
                window.append((p.pid, cpu_seconds(p.pid)))
                del window[: -self.SPIN_WINDOW_S - 1]
                if len(window) > self.SPIN_WINDOW_S and window[0][0] == window[-1][0]:
                    share = (window[-1][1] - window[0][1]) / self.SPIN_WINDOW_S
                    self.busiest[p.name] = max(self.busiest[p.name], round(share, 3))
                    if share > self.SPIN_SHARE:
                        at = round(time.monotonic() - t0, 1)
                        spin = {"process": p.name, "at_s": at, "cpu_share": round(share, 3)}
                        self.spins.append(spin)
                        window.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    def violations(self) -> list[dict[str, Any]]:
        return [
            {"check": "busy_loop", **spin,
             "detail": f"used {spin['cpu_share']:.0%} of a CPU for {self.SPIN_WINDOW_S} s"}
            for spin in self.spins
        ]  # fmt: skip


class Nemesis:
    def __init__(self, cluster: Cluster, t0: float) -> None:
        self.cluster = cluster
        self.t0 = t0
        self.faults: list[Fault] = []
        self.violations: list[dict[str, Any]] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, schedule: list[Planned], stop: asyncio.Event) -> None:
        for p in schedule:
            wait = p.at - self.now()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
            await self.inject(p)

    async def inject(self, p: Planned) -> None:
        c = self.cluster
        target = c.apis[p.target].name if p.kind == "kill_api" else TARGETS[p.kind]
        fault = Fault(p.kind, target, p.at, started=self.now())
        self.faults.append(fault)
        if p.kind == "kill_api":
            await self._restart(c.apis[p.target], p.hold, fault)
        elif p.kind == "kill_worker":
            await self._restart(c.worker, p.hold, fault)
        elif p.kind == "pg_terminate":
            fault.note["terminated"] = await self._terminate_backends()
        elif p.kind == "redis_restart":
            c.kill_redis()
            await asyncio.sleep(p.hold)
            await c.start_redis()
        else:
            c.freeze_redis()
            await asyncio.sleep(p.hold)
            c.thaw_redis()
        fault.note["hold_s"] = p.hold
        fault.ended = self.now()
        await self.check_liveness(fault)

    async def final_check(self) -> None:
        """Liveness once more when the run is over, before the checks use the processes."""
        now = self.now()
        await self.check_liveness(Fault("end_of_run", "all", now, started=now, ended=now))

    async def _restart(self, proc: Process, hold: float, fault: Fault) -> None:
        fault.note["killed_pid"] = proc.pid if proc.exited() is None else None
        proc.kill()
        await asyncio.sleep(hold)
        proc.start()

    async def _terminate_backends(self) -> int:
        conn = await connect(self.cluster.database_url)
        try:
            n: int = await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'stockguard' AND datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        return n

    # ------------------------------------------------------------ liveness

    async def check_liveness(self, fault: Fault) -> None:
        """Every API process ready and serving within LIVENESS_S of the fault's end."""
        c = self.cluster
        deadline = time.monotonic() + LIVENESS_S
        results = await asyncio.gather(*(self._serving(api, deadline) for api in c.apis))
        stuck = [(api, why) for api, why in zip(c.apis, results, strict=True) if why is not None]
        if not stuck:
            fault.recover_s = round(self.now() - fault.ended, 3)
        for api, why in stuck:
            self.violations.append(
                {
                    "check": "liveness",
                    "fault": fault.kind,
                    "at_s": round(fault.ended, 2),
                    "process": api.name,
                    "detail": f"not ready and serving {LIVENESS_S:.0f} s after the fault "
                    f"ended (last: {why})",
                }
            )
            fault.note.setdefault("healed", []).append(api.name)
            api.kill()
            try:
                await c.start_api(api, patience=30.0)
            except RuntimeError as exc:
                self.violations.append(
                    {
                        "check": "restart",
                        "fault": fault.kind,
                        "at_s": round(self.now(), 2),
                        "process": api.name,
                        "detail": str(exc)[:1500],
                    }
                )
        self._check_alive(fault)

    async def _serving(self, api: Process, deadline: float) -> str | None:
        """None once ``api`` answers /readyz 200 and a real request; else the last error."""
        assert api.base_url is not None
        last = "no answer"
        headers = {"Authorization": f"Bearer {self.cluster.admin_key}"}
        async with httpx.AsyncClient(base_url=api.base_url, timeout=2.0, headers=headers) as h:
            while time.monotonic() < deadline:
                try:
                    ready = await h.get("/readyz")
                    if ready.status_code == 200:
                        real = await h.get(f"/v1/skus/{SKUS[0]}")
                        if real.status_code == 200:
                            return None
                        last = f"GET /v1/skus: {real.status_code}"
                    else:
                        last = f"/readyz: {ready.status_code} {ready.text[:120]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}"
                await asyncio.sleep(0.1)
        return last

    def _check_alive(self, fault: Fault) -> None:
        """A process that exited without being killed is a violation (then restarted)."""
        for proc in [*self.cluster.apis, self.cluster.worker]:
            code = proc.exited()
            if code is not None:
                self.violations.append(
                    {
                        "check": "process_exited",
                        "fault": fault.kind,
                        "at_s": round(self.now(), 2),
                        "process": proc.name,
                        "detail": f"exited by itself with status {code}: {proc.log_tail(5)}",
                    }
                )
                proc.start()

    def summary(self) -> dict[str, Any]:
        by_kind: dict[str, dict[str, Any]] = {}
        for kind in FAULT_KINDS:
            mine = [f for f in self.faults if f.kind == kind]
            times = [f.recover_s for f in mine if f.recover_s is not None]
            by_kind[kind] = {
                "injected": len(mine),
                "liveness_missed": sum(1 for f in mine if f.recover_s is None),
                "recover_s_mean": round(sum(times) / len(times), 3) if times else None,
                "recover_s_max": max(times) if times else None,
            }
        return by_kind

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self.faults]
