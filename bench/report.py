"""Markdown tables from a benchmark JSON: ``python -m bench.report results.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["render"]


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cpu_per_op(cell: dict[str, Any], key: str) -> str:
    cpu = cell.get("cpu", {})
    ok = cell.get("ok") or cell.get("calls") or 0
    if key not in cpu or not ok:
        return "-"
    return f"{1000 * cpu[key] / ok:.2f}"


def _cell_row(label: list[str], cell: dict[str, Any], http: bool = False) -> list[str]:
    lat = cell.get("latency_ms", {})
    row = [
        *label,
        _f(cell.get("ok_per_s")),
        _f(lat.get("p50"), 2),
        _f(lat.get("p99"), 2),
        _f(cell.get("cpu", {}).get("machine_busy_pct")),
        _cpu_per_op(cell, "bench_process_s"),
        _cpu_per_op(cell, "postgres_s"),
    ]
    if http:
        row.append(_cpu_per_op(cell, "http_server_s"))
    return row


CPU_HEAD = ["machine CPU busy %", "bench process CPU ms/op", "postgres CPU ms/op"]


def render(doc: dict[str, Any]) -> str:
    out: list[str] = []
    m = doc.get("machine", {})
    pg = m.get("postgres", {})
    out.append("### Machine\n")
    out.append(
        _table(
            ["", ""],
            [
                ["CPU", f"{m.get('cpu_count')} x {m.get('cpu_model')}"],
                ["memory", f"{m.get('memory_gib')} GiB"],
                [
                    "kernel / Python",
                    f"{m.get('kernel')} / {m.get('python')} ({m.get('event_loop')})",
                ],
                [
                    "PostgreSQL",
                    f"{pg.get('server_version')} (fsync={pg.get('fsync')}, synchronous_commit="
                    f"{pg.get('synchronous_commit')}, wal_sync_method={pg.get('wal_sync_method')}, "
                    f"shared_buffers={pg.get('shared_buffers')}"
                    f"{', embedded' if pg.get('embedded') else ''})",
                ],
                ["Redis", f"{m.get('redis', {}).get('version')}"],
                [
                    "load average at start / end",
                    f"{m.get('loadavg_at_start')} / {m.get('loadavg_at_end')}",
                ],
                ["git commit", f"{m.get('git', {}).get('commit')}"],
                [
                    "run",
                    f"{doc.get('mode')} run, {doc.get('started_at')}, {doc.get('elapsed_s')} s",
                ],
            ],
        )
    )
    sc = doc.get("scenarios", {})
    rows: list[list[str]] = []
    for shape, per_c in sc.get("reserve_service", {}).items():
        for c, cell in per_c.items():
            rows.append(_cell_row(["service", shape, c], cell))
    for shape, per_c in sc.get("reserve_http", {}).items():
        if shape == "server":
            continue
        for c, cell in per_c.items():
            rows.append([*_cell_row(["HTTP", shape, c], cell, http=True)])
    if rows:
        out.append("\n### 1. Reservations (`place_order`, one order per transaction)\n")
        head = ["path", "orders", "concurrency", "reservations/s", "p50 ms", "p99 ms", *CPU_HEAD]
        out.append(
            _table(
                [*head, "HTTP server CPU ms/op"],
                [r if len(r) == len(head) + 1 else [*r, "-"] for r in rows],
            )
        )
    if "cancel_latency" in sc:
        cell = sc["cancel_latency"]
        out.append("\n### 2. Cancel (`cancel_order`, spread orders)\n")
        out.append(
            _table(
                ["concurrency", "cancels", "cancels/s", "p50 ms", "p99 ms", *CPU_HEAD],
                [
                    [
                        str(cell["concurrency"]),
                        _f(cell["ok"]),
                        *_cell_row([], cell),
                    ]
                ],
            )
        )
    if "flash_sale" in sc:
        f = sc["flash_sale"]
        lat = f.get("latency_ms", {})
        out.append("\n### 3. Flash sale\n")
        out.append(
            _table(
                [
                    "units",
                    "attempts",
                    "concurrency",
                    "successes",
                    "out of stock",
                    "decisions/s",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "final on_hand / reserved",
                    "Redis available",
                    "ok",
                ],
                [
                    [
                        _f(f["units"]),
                        _f(f["attempts"]),
                        str(f["concurrency"]),
                        _f(f["successes"]),
                        _f(f["out_of_stock"]),
                        _f(f["decisions_per_s"]),
                        _f(lat.get("p50"), 2),
                        _f(lat.get("p99"), 2),
                        _f(lat.get("max"), 0),
                        f"{f['final_level']['on_hand']} / {f['final_level']['reserved']}",
                        _f(f["redis_available"]),
                        "yes" if f["ok"] else "NO",
                    ]
                ],
            )
        )
    if "availability" in sc:
        a = sc["availability"]
        out.append(f"\n### 4. Availability reads ({a.get('skus_per_request')} SKUs per call)\n")
        out.append(
            _table(
                [
                    "source",
                    "concurrency",
                    "calls/s",
                    "SKUs/s",
                    "p50 ms",
                    "p99 ms",
                    *CPU_HEAD,
                ],
                [
                    [
                        src,
                        str(a[src]["concurrency"]),
                        _f(a[src]["ok_per_s"]),
                        _f(a[src]["skus_per_s"], 0),
                        *_cell_row([], a[src])[1:],
                    ]
                    for src in ("redis", "postgres")
                    if src in a
                ],
            )
        )
    if "cache_parity_cost" in sc:
        p = sc["cache_parity_cost"]
        out.append("\n### 5. Cost of strict Redis sync (spread orders, service layer)\n")
        rows = []
        for c in p.get("strict", {}):
            for mode in ("strict", "disabled"):
                rows.append(_cell_row([mode, c], p[mode][c]))
        out.append(
            _table(["cache", "concurrency", "reservations/s", "p50 ms", "p99 ms", *CPU_HEAD], rows)
        )
        out.append(
            "\nThroughput lost to strict sync: "
            + ", ".join(f"c={c}: {v} %" for c, v in p.get("strict_cost_pct", {}).items())
        )
    if "batched_reservations" in sc:
        out.append("\n### 6. Batched reservations (`place_orders`, hot SKU)\n")
        rows = []
        for cell in sc["batched_reservations"].values():
            lat = cell.get("latency_ms", {})
            rows.append(
                [
                    str(cell["batch_size"]),
                    str(cell["concurrency"]),
                    _f(cell["orders_per_s"]),
                    _f(cell["calls_per_s"]),
                    _f(lat.get("p50"), 2),
                    _f(lat.get("p99"), 2),
                    _f(cell.get("cpu", {}).get("machine_busy_pct")),
                ]
            )
        out.append(
            _table(
                [
                    "orders per batch",
                    "concurrent batches",
                    "orders/s",
                    "transactions/s",
                    "batch p50 ms",
                    "batch p99 ms",
                    "machine CPU busy %",
                ],
                rows,
            )
        )
    if "trace_concurrency_1" in sc:
        t = sc["trace_concurrency_1"]
        out.append("\n### 7. Where the time goes (concurrency 1, mean per operation)\n")
        out.append(
            _table(
                [
                    "operation",
                    "wall ms",
                    "PostgreSQL round trips",
                    "in them ms",
                    "Redis ms",
                    "rest (Python) ms",
                ],
                [
                    [
                        name,
                        _f(v["wall_ms"], 2),
                        _f(v["postgres_round_trips"]),
                        _f(v["postgres_ms"], 2),
                        _f(v["redis_ms"], 2),
                        _f(v["python_ms"], 2),
                    ]
                    for name, v in t.items()
                ],
            )
        )
        for name, v in t.items():
            out.append(f"\n`{name}` statements:\n")
            out.append(
                _table(
                    ["statement", "per op", "mean ms"],
                    [
                        [f"`{s['sql'][:70]}`", _f(s["per_op"], 2), _f(s["mean_ms"], 3)]
                        for s in v["statements"]
                    ],
                )
            )
    pgb = sc.get("pgbench_hot_row")
    if pgb and "skipped" not in pgb:
        out.append(f"\n### 8. pgbench: one hot row, `{pgb.get('script')}`\n")
        out.append(
            _table(
                ["clients", "tps", "latency avg ms"],
                [
                    [c, _f(v.get("tps")), _f(v.get("latency_avg_ms"), 3)]
                    for c, v in pgb.items()
                    if isinstance(v, dict)
                ],
            )
        )
    out.extend(_issue10(sc.get("issue10")))
    checks = doc.get("checks", {})
    if checks:
        out.append("\n### Checks after the run\n")
        out.append(
            _table(
                ["verify", "violations", "cache parity (SKUs checked / drifted)", "rows"],
                [
                    [
                        "ok" if checks["verify"]["ok"] else "FAILED",
                        _f(checks["verify"]["violations"]),
                        f"{checks['cache_parity']['checked']:,} / "
                        f"{checks['cache_parity']['drifted']}",
                        ", ".join(f"{k} {v:,}" for k, v in checks.get("rows", {}).items()),
                    ]
                ],
            )
        )
    return "\n".join(out) + "\n"


def _issue10(i10: dict[str, Any] | None) -> list[str]:
    """Issue 10's rows (wrk, one run) and its targets."""
    if not i10 or "skipped" in i10:
        return []
    out = [f"\n### 9. HTTP with an outside load generator ({i10['load_generator']})\n"]
    rows = [
        [
            name,
            _f(c["connections"]),
            _f(c["per_s"]),
            _f(c["latency_ms"]["p50"], 2),
            _f(c["latency_ms"]["p99"], 2),
            ", ".join(f"{k}: {v:,}" for k, v in sorted(c["statuses"].items())),
        ]
        for name, c in i10["rows"].items()
    ]
    out.append(_table(["row", "connections", "answers/s", "p50 ms", "p99 ms", "statuses"], rows))
    paying = i10.get("payments", {}).get("batched_over_unbatched")
    if paying:
        out.append(
            "\nPayments, group commit on / off (the `_unbatched` rows, a server with "
            "`STOCKGUARD_ORDER_BATCHING=false`): "
            + ", ".join(f"{k} {_f(v, 2)}x" for k, v in paying.items())
            + "\n"
        )
    sb = i10.get("service_batcher", {})
    if sb:
        out.append("\nService layer through the batcher (hot SKU):\n")
        out.append(_table(list(sb), [[_f(v) for v in sb.values()]]))
    growth = i10.get("growth", {})
    if growth:
        plans = growth.get("plans_without_analyze", {})
        out.append(
            f"\nCost growth: {growth['history_orders']:,} orders loaded in "
            f"{growth['load_seconds']} s; spread {growth['fresh']['per_s']}/s fresh, "
            f"{growth['grown']['per_s']}/s after. Plans without ANALYZE: "
            + "; ".join(f"{k}: {' > '.join(v['nodes'])}" for k, v in plans.items())
            + "\n"
        )
    out.append("\nTargets:\n")
    out.append(
        _table(
            ["target", "measured", "ratio", "wanted", "met"],
            [
                [t["name"], _f(t["measured"]), _f(t["ratio"], 3), t["target"],
                 "met" if t["met"] else "**missed**"]
                for t in i10.get("targets", [])
            ],
        )
    )  # fmt: skip
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.report RESULTS.json", file=sys.stderr)
        return 2
    print(render(json.loads(Path(argv[0]).read_text())), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
