"""What a load run that paid at the simulated provider checks of the money afterwards:
reconciliation settled, every charge the provider acknowledged recorded, every refund owed
made once at the provider. The database is only read; the provider is asked with GETs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg

from loadtests import reconciliation

_PROVIDER_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
_REFUND_STATES = {1: "REQUESTED", 2: "SENT", 3: "REFUNDED", 4: "FAILED"}


@dataclass(frozen=True)
class Settled:
    """Reconciliation once settled, or when the wait ran out."""

    found: reconciliation.Reconciled
    unsettled_refunds: int
    refund_states: dict[str, int]
    waited_s: float

    @property
    def ok(self) -> bool:
        """Every subject stated and every refund settled."""
        return self.found.unstated == 0 and self.unsettled_refunds == 0


async def _refund_states(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM stockcore.refunds GROUP BY 1")
    finally:
        await conn.close()
    return {_REFUND_STATES.get(r["state"], str(r["state"])): r["n"] for r in rows}


async def settle(dsn: str, timeout_s: float, poll_s: float = 1.0) -> Settled:
    """Wait (at most `timeout_s`) until every payment, charge to return and refund is
    stated and no refund is waiting for the provider."""
    started = time.monotonic()
    while True:
        found = await reconciliation.read_reconciled(dsn)
        states = await _refund_states(dsn)
        unsettled = states.get("REQUESTED", 0) + states.get("SENT", 0)
        waited = time.monotonic() - started
        if (found.unstated == 0 and unsettled == 0) or waited >= timeout_s:
            return Settled(found, unsettled, states, waited)
        await asyncio.sleep(poll_s)


async def charges_unaccounted(dsn: str, charged: dict[str, str]) -> list[str]:
    """The acknowledged charges (order -> charge id) that neither paid their order nor
    are money to return."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT c.order_id, c.charge_id
              FROM unnest($1::text[], $2::text[]) AS c(order_id, charge_id)
             WHERE NOT EXISTS (SELECT FROM stockcore.payments p
                                WHERE p.payment_id = c.charge_id AND p.order_id = c.order_id)
               AND NOT EXISTS (SELECT FROM stockcore.payments_to_return r
                                WHERE r.charge_id = c.charge_id)
            """,
            list(charged),
            list(charged.values()),
        )
    finally:
        await conn.close()
    return [f"{r['order_id']} {r['charge_id']}" for r in rows]


@dataclass
class RefundsFound:
    """Refunds checked against the provider, and what was wrong."""

    checked: int = 0
    charges: int = 0
    wrong: list[str] = field(default_factory=list)


async def refunds_at_provider(dsn: str, provider_url: str, refunded: set[str]) -> RefundsFound:
    """Every refund of ours found at the provider by its id, of its charge and amount; each
    refunded charge's amount_refunded at the provider equal to our refunds of it that
    succeeded (a refund made twice would show more); and a refund row for every order whose
    cancellation once paid was acknowledged (`refunded`)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT refund_id, order_id, charge_id, amount_minor, state, provider_refund_id"
            " FROM stockcore.refunds"
        )
    finally:
        await conn.close()
    result = RefundsFound()
    owed = {r["order_id"] for r in rows}
    result.wrong.extend(f"order {o}: no refund owed" for o in sorted(refunded - owed))
    succeeded: Counter[str] = Counter()
    for r in rows:
        if r["state"] == 3:
            succeeded[r["charge_id"]] += r["amount_minor"]
    base = provider_url.rstrip("/")
    async with aiohttp.ClientSession(timeout=_PROVIDER_TIMEOUT) as http:

        async def get(path: str) -> Any:
            async with http.get(f"{base}{path}") as answer:
                if answer.status != 200:
                    return None
                return await answer.json(content_type=None)

        for r in rows:
            if r["provider_refund_id"] is None:
                result.wrong.append(f"{r['refund_id']}: never accepted by the provider")
                continue
            theirs = await get(f"/v1/refunds/{quote(r['provider_refund_id'], safe='')}")
            result.checked += 1
            if theirs is None:
                result.wrong.append(f"{r['refund_id']}: {r['provider_refund_id']} not found")
            elif (theirs.get("charge"), theirs.get("amount")) != (
                r["charge_id"],
                r["amount_minor"],
            ):
                result.wrong.append(
                    f"{r['refund_id']}: provider {theirs.get('charge')} {theirs.get('amount')},"
                    f" ours {r['charge_id']} {r['amount_minor']}"
                )
        charges = {r["charge_id"] for r in rows}
        result.charges = len(charges)
        for charge_id in sorted(charges):
            charge = await get(f"/v1/charges/{quote(charge_id, safe='')}")
            refunded_minor = None if charge is None else charge.get("amount_refunded")
            if refunded_minor != succeeded[charge_id]:
                result.wrong.append(
                    f"charge {charge_id}: refunded {refunded_minor} at the provider,"
                    f" {succeeded[charge_id]} by our refunds"
                )
    return result
