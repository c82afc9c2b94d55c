"""Background loops: reservation expiry, cache reconciliation, housekeeping. Any number
of processes may run them at once (SKIP LOCKED and status guards keep them apart)."""
