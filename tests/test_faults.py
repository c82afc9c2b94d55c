"""The fault-injection suite (``python -m faults``, docs/FAULTS.md) in a short run.

One bounded run (35 s of workload under faults, about a minute of wall time) against the
test session's PostgreSQL server: it must find no violation, and it must have done
something: every fault kind injected and every operation kind acknowledged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faults.history import OK, OP_KINDS
from faults.nemesis import FAULT_KINDS, plan
from tests.conftest import Servers

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("STOCKGUARD_FAULTS_SEED", "7"))


def test_schedule_is_seeded_and_injects_every_kind_early() -> None:
    first, again, other = plan(3, 40, 2), plan(3, 40, 2), plan(4, 40, 2)
    assert first == again
    assert first != other
    kinds = [p.kind for p in first]
    assert sorted(kinds[: len(FAULT_KINDS)]) == sorted(FAULT_KINDS)
    assert all(kinds.count(k) >= 2 for k in FAULT_KINDS)
    times = [p.at for p in first]
    assert times == sorted(times)
    assert 2.0 <= times[0] and times[-1] < 40
    assert all(1.0 <= p.hold <= 3.0 for p in first if p.kind == "redis_freeze")


@pytest.mark.faults
def test_short_fault_run_finds_no_violation(servers: Servers, tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    env = dict(os.environ, STOCKGUARD_DATABASE_URL=servers.admin_url)
    args = [sys.executable, "-m", "faults", "--seed", str(SEED), "--duration", "35",
            "--clients", "6", "--out", str(out)]  # fmt: skip
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    doc = json.loads(out.read_text())

    faults = doc["faults"]["by_kind"]
    assert {k for k, f in faults.items() if f["injected"] >= 1} == set(FAULT_KINDS), faults
    acked = doc["operations"]["by_kind"]
    assert {k for k, c in acked.items() if c[OK] >= 1} == set(OP_KINDS), acked
    assert doc["operations"]["total"] >= 200, doc["throughput"]

    assert doc["violations"] == [], f"seed {SEED}:\n{done.stdout}"
    assert doc["ok"] is True
    assert done.returncode == 0
    assert all(f["recover_s_max"] is not None for f in faults.values()), faults
