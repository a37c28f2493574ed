"""The payment provider's own fault knobs, beside the common ones of simulators/faults.py on
the same `/_faults`, and the record of every fault it injected:

    PUT  /_faults  {"webhook_drop_rate": 0.01, ...}   change some knobs (the others stay)
    GET  /_faults/injected                            every fault injected, oldest first
                                                      (?kind=... for one kind)

Rates are shares of the things they apply to, spread evenly as the common rates are (with
0.01, exactly one in each hundred), so a load run can inject 1 % of each kind and a test
compare what was injected with what stockcore detected:

| knob | applies to | what happens |
|---|---|---|
| `webhook_drop_rate` | each event | its first delivery is lost on the way (never reaches stockcore); the provider sees no answer and retries on its schedule |
| `webhook_duplicate_rate` | each event | delivered twice at once, the same event id in both |
| `webhook_delay_rate`, `webhook_delay_s` | each event | its first delivery waits `webhook_delay_s` (5) |
| `webhook_reorder_rate` | each event | held back until an event created after it has been sent (at most `webhook_reorder_max_s`, 10), so it arrives after a later one |
| `confirmation_lost_rate` | each captured charge | no webhook is ever sent for it: the charge is in the settlement feed only |
| `amount_mismatch_rate` | each charge | captured for one minor unit more than asked |
| `currency_mismatch_rate` | each charge | captured in another currency than asked (EUR, or USD for EUR) |
| `decline_rate` | each charge | declined: `charge.failed`, nothing captured |
| `refund_fail_rate` | each refund | fails: `refund.failed`, and a `refund_failure` balance transaction gives the money back |
| `refund_late_rate`, `refund_late_s` | each refund | settles `refund_late_s` (30) later than usual |
| `settlement_late_rate`, `settlement_late_s` | each balance transaction | reaches the settlement feed `settlement_late_s` (30) after it was created |
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

RATES = frozenset(
    {
        "webhook_drop_rate",
        "webhook_duplicate_rate",
        "webhook_delay_rate",
        "webhook_reorder_rate",
        "confirmation_lost_rate",
        "amount_mismatch_rate",
        "currency_mismatch_rate",
        "decline_rate",
        "refund_fail_rate",
        "refund_late_rate",
        "settlement_late_rate",
    }
)
SECONDS = frozenset(
    {"webhook_delay_s", "webhook_reorder_max_s", "refund_late_s", "settlement_late_s"}
)


@dataclass
class PaymentFaults:
    """The provider's knobs (see the module's notes)."""

    webhook_drop_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0
    webhook_delay_rate: float = 0.0
    webhook_delay_s: float = 5.0
    webhook_reorder_rate: float = 0.0
    webhook_reorder_max_s: float = 10.0
    confirmation_lost_rate: float = 0.0
    amount_mismatch_rate: float = 0.0
    currency_mismatch_rate: float = 0.0
    decline_rate: float = 0.0
    refund_fail_rate: float = 0.0
    refund_late_rate: float = 0.0
    refund_late_s: float = 30.0
    settlement_late_rate: float = 0.0
    settlement_late_s: float = 30.0

    def names(self) -> frozenset[str]:
        """The knobs a PUT body may name."""
        return RATES | SECONDS

    def update(self, changes: dict[str, Any]) -> None:
        """Apply the named knobs; ValueError for values out of range."""
        for name, value in changes.items():
            number = float(value)
            if name in RATES and not 0 <= number <= 1:
                raise ValueError(f"{name} must be within [0, 1]")
            if name in SECONDS and not 0 <= number <= 86_400:
                raise ValueError(f"{name} must be within [0, 86400]")
            if name not in RATES | SECONDS:
                raise ValueError(f"unknown knob {name!r}")
            setattr(self, name, number)

    def reset(self) -> None:
        """Every knob back to its default."""
        fresh = PaymentFaults()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))

    def view(self) -> dict[str, Any]:
        """The knobs as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class InjectedFault:
    """One fault the provider injected: its kind (the knob's name without `_rate`), when,
    and what it touched (an event, a charge or refund, a balance transaction)."""

    kind: str
    at: float
    object_id: str
    order_id: str = ""
    event_id: str = ""
    detail: str = ""

    def view(self) -> dict[str, Any]:
        """As JSON-ready data."""
        return asdict(self)


@dataclass
class Injected:
    """Every fault injected since the provider started, oldest first."""

    faults: list[InjectedFault] = field(default_factory=list)

    def add(
        self,
        kind: str,
        object_id: str,
        *,
        order_id: str = "",
        event_id: str = "",
        detail: str = "",
    ) -> None:
        """Record one injected fault."""
        self.faults.append(InjectedFault(kind, time.time(), object_id, order_id, event_id, detail))

    def of_kind(self, kind: str | None) -> list[InjectedFault]:
        """Those of one kind (every one for None)."""
        return [f for f in self.faults if kind is None or f.kind == kind]
