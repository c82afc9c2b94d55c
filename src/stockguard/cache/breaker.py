"""A circuit breaker for the availability cache.

After a Redis call fails or times out, the next calls fail at once instead of each
waiting out its own timeout (on a hot SKU they would queue behind one another holding
its level locks); one call at a time probes Redis again after a short cooldown, and the
first success closes the breaker, so a Redis that answers again is used at once.
"""

from __future__ import annotations

import time

__all__ = ["CacheBreaker"]


class CacheBreaker:
    """Closed (calls go to Redis), open (calls fail fast), or probing (one call is let
    through; the others fail fast until it ends)."""

    def __init__(self, cooldown: float = 0.05, probe_limit: float = 0.5) -> None:
        self.cooldown = cooldown
        self.probe_limit = probe_limit  # a probe that never reports back frees the slot
        self._blocked_until = 0.0
        self._failed = False

    def allow(self) -> bool:
        """May this call use Redis? While open, only one probe per cooldown may."""
        if not self._failed:
            return True
        now = time.monotonic()
        if now < self._blocked_until:
            return False
        self._blocked_until = now + self.probe_limit
        return True

    def succeeded(self) -> None:
        self._failed = False
        self._blocked_until = 0.0

    def failed(self) -> None:
        self._failed = True
        self._blocked_until = time.monotonic() + self.cooldown
