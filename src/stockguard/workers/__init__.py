"""Background loops: reservation expiry, cache reconciliation, housekeeping (idempotency
keys, event retention), the event sequencer and webhook delivery. Any number of processes
may run them at once (SKIP LOCKED, leases and status guards keep them apart)."""
