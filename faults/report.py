"""The human summary of a fault run (the JSON document carries the same and more)."""

from __future__ import annotations

from typing import Any

from faults.history import OUTCOMES

__all__ = ["summary"]


def summary(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    out = [
        f"stockguard faults  seed {cfg['seed']}  {cfg['duration_s']} s  {cfg['clients']} clients  "
        f"{cfg['api_processes']} API processes + 1 worker  (run {doc['run_id']})",
        "",
        f"{'operation':<16}" + "".join(f"{o:>11}" for o in OUTCOMES) + f"{'total':>9}",
    ]
    for kind, counts in doc["operations"]["by_kind"].items():
        total = sum(counts.values())
        out.append(f"{kind:<16}" + "".join(f"{counts[o]:>11}" for o in OUTCOMES) + f"{total:>9}")
    t = doc["throughput"]
    out += [
        "",
        f"throughput: {t['operations']} operations ({t.get('acknowledged', '?')} acknowledged) "
        f"in {t['workload_s']} s = {t['ops_per_s']} "
        f"ops/s ({t['acknowledged_per_s']} acknowledged/s, {t['attempts']} attempts)",
    ]
    for name, ph in t.get("phases", {}).items():
        out.append(
            f"  {name:<9} {ph['operations']} operations in {ph['seconds']} s = "
            f"{ph['ops_per_s']} ops/s ({ph['acknowledged_per_s']} acknowledged/s, "
            f"{ph['ambiguous']} ambiguous)"
        )
    out += [
        "",
        f"{'fault':<15}{'injected':>9}{'missed':>8}{'recover mean':>14}{'max (s)':>9}",
    ]
    for kind, f in doc["faults"]["by_kind"].items():
        mean = "-" if f["recover_s_mean"] is None else f"{f['recover_s_mean']:.2f}"
        top = "-" if f["recover_s_max"] is None else f"{f['recover_s_max']:.2f}"
        out.append(f"{kind:<15}{f['injected']:>9}{f['liveness_missed']:>8}{mean:>14}{top:>9}")
    if doc["faults"]["skipped"]:
        out.append(f"({doc['faults']['skipped']} planned faults fell after the end of the run)")
    settle = doc.get("settle", {})
    if settle:
        out += ["", f"settled: workers in {settle.get('workers_settled_s')} s, cache parity "
                f"in {settle.get('cache_parity_s')} s"]  # fmt: skip
    violations = doc["violations"]
    out += ["", f"violations: {len(violations)}"]
    for v in violations[:40]:
        rest = {k: v[k] for k in v if k != "check"}
        out.append(f"  [{v['check']}] {rest}"[:400])
    if len(violations) > 40:
        out.append(f"  ... and {len(violations) - 40} more (see the JSON)")
    verdict = "ok" if not violations else f"FAILED ({len(violations)} violations)"
    out += ["", f"RESULT: {verdict}  seed {cfg['seed']}"]
    return "\n".join(out)
