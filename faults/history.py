"""The history: every operation the workload attempted and how it came out.

An operation is one logical request, however many attempts it took (every retry reuses
its order id and its ``Idempotency-Key``). Its outcome is

- ``ok``: some attempt was answered 2xx (acknowledged: it happened);
- ``refused``: answered 4xx (with its ``code``) and no earlier attempt was in doubt;
- ``ambiguous``: it may or may not have happened (a timeout, a connection error, a 5xx,
  or a refusal after an attempt whose fate is unknown).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AMBIGUOUS", "OK", "OP_KINDS", "OUTCOMES", "REFUSED", "History", "Op"]

OK = "ok"
REFUSED = "refused"
AMBIGUOUS = "ambiguous"
OUTCOMES = (OK, REFUSED, AMBIGUOUS)
OP_KINDS = (
    "place",
    "pay",
    "cancel",
    "delete",
    "process",
    "ship",
    "adjust",
    "read",
    "unavailable",
    "write_off",
    "safety_stock",
    "return",
    "transfer",
    "receive",
    "transfer_cancel",
)


@dataclass
class Op:
    id: str  # also the Idempotency-Key of POSTs
    kind: str
    client: int
    target: str  # an order id, a transfer id, or a SKU for adjustments and read
    start: float  # seconds since the run started
    end: float = 0.0
    outcome: str = AMBIGUOUS
    code: str | None = None  # the refusal code, or what made it ambiguous
    attempts: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    answer: Any = None  # the acknowledged answer's JSON body


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def add(self, op: Op) -> None:
        self.ops.append(op)

    def of(self, kind: str, outcome: str | None = None) -> list[Op]:
        return [o for o in self.ops if o.kind == kind and outcome in (None, o.outcome)]

    def for_order(self, order_id: str, *kinds: str) -> list[Op]:
        return [o for o in self.ops if o.target == order_id and o.kind in kinds]

    def table(self) -> dict[str, dict[str, int]]:
        """Operations by kind and outcome."""
        counts: dict[str, Counter[str]] = {k: Counter() for k in OP_KINDS}
        for o in self.ops:
            counts.setdefault(o.kind, Counter())[o.outcome] += 1
        return {k: {out: c[out] for out in OUTCOMES} for k, c in counts.items()}

    def refusal_codes(self) -> dict[str, int]:
        return dict(
            Counter(f"{o.kind}:{o.code}" for o in self.ops if o.outcome == REFUSED).most_common()
        )

    def ambiguity_causes(self) -> dict[str, int]:
        return dict(
            Counter(f"{o.kind}:{o.code}" for o in self.ops if o.outcome == AMBIGUOUS).most_common()
        )

    def as_json(self) -> list[dict[str, Any]]:
        out = []
        for o in self.ops:
            d = asdict(o)
            d.pop("answer")
            d["start"] = round(o.start, 3)
            d["end"] = round(o.end, 3)
            out.append(d)
        return out
