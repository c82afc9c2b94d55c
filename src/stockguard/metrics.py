"""Prometheus metrics (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "AVAILABILITY_READS",
    "CACHE_SYNC_FAILURES",
    "COMPENSATION_FAILED",
    "EVENTS_SEQUENCED",
    "EVENTS_WRITTEN",
    "OPERATION_SECONDS",
    "OUT_OF_STOCK",
    "RECONCILER_REPAIRS",
    "RESTORED_UNITS",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_OLDEST_UNDELIVERED",
    "WORKER_RUNS",
]

OPERATION_SECONDS = Histogram(
    "stockguard_operation_seconds",
    "Time of one stock use case, transaction included",
    ["operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
OUT_OF_STOCK = Counter("stockguard_out_of_stock_total", "Orders refused for lack of stock")
RESTORED_UNITS = Counter("stockguard_restored_units_total", "Units given back", ["reason"])
COMPENSATION_FAILED = Counter(
    "stockguard_inventory_compensation_failed_total",
    "Operations whose undo (rollback or cache restore) itself failed",
)
CACHE_SYNC_FAILURES = Counter(
    "stockguard_cache_sync_failures_total", "Redis writes that failed", ["mode"]
)
RECONCILER_REPAIRS = Counter("stockguard_reconciler_repairs_total", "SKUs the reconciler rewrote")
AVAILABILITY_READS = Counter(
    "stockguard_availability_reads_total", "Availability lookups per SKU", ["source"]
)
WORKER_RUNS = Counter("stockguard_worker_runs_total", "Worker passes", ["worker", "outcome"])
EVENTS_WRITTEN = Counter(
    "stockguard_events_written_total", "Events committed to the outbox", ["type"]
)
EVENTS_SEQUENCED = Counter(
    "stockguard_events_sequenced_total", "Events numbered into the feed (commit order)"
)

# ---- webhook delivery (API.md "Outgoing events"; RUNBOOK "A failing webhook endpoint")
WEBHOOK_DELIVERIES = Counter(
    "stockguard_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (2xx), retry (failed, tried again "
    "later), failed (failed and the retry schedule is spent)",
    ["outcome"],
)
WEBHOOK_OLDEST_UNDELIVERED = Gauge(
    "stockguard_webhook_oldest_undelivered_seconds",
    "Age of the oldest event still pending for the endpoint (0 when none)",
    ["endpoint"],
)
