"""The payment provider's refunds API, as the simulator (simulators/payments.py) and card
providers speak it, over runtime/partner_http.py's transport (no redirects, a capped reply
and time, ids encoded as one path segment):

    POST /v1/refunds       {charge, amount, reason}, Idempotency-Key: stockcore's refund id
    GET  /v1/refunds/{id}  the provider's refund

A reply is the refund with its `status`: pending, succeeded or failed. The transport's
errors say what a retry may assume (NotApplied, OutcomeUnknown, Rejected); a refund is
only ever sent again with the same key and body, so a repeat is the same refund."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from runtime.partner_http import JsonApi

PARTNER = "payment-provider"


class ProviderStatus(enum.Enum):
    """A refund's status at the provider."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class ProviderRefund:
    """What the provider said of a refund: its id and status."""

    provider_refund_id: str
    status: ProviderStatus


@dataclass(frozen=True)
class RefundRequest:
    """One refund to send: stockcore's id (the idempotency key), the charge, the amount in
    minor units, and the reason the provider records."""

    refund_id: str
    charge_id: str
    amount_minor: int
    reason: str


class RefundsApi:
    """The provider's refunds API at `base_url`."""

    def __init__(
        self, base_url: str, *, timeout_s: float = 10.0, max_reply_bytes: int = 65_536
    ) -> None:
        self._api = JsonApi(PARTNER, base_url, timeout_s, 16, max_reply_bytes)

    async def create(self, request: RefundRequest) -> ProviderRefund:
        """POST /v1/refunds with the refund id as Idempotency-Key."""
        reply = await self._api.post(
            ("v1", "refunds"),
            {
                "charge": request.charge_id,
                "amount": request.amount_minor,
                "reason": request.reason,
            },
            headers={"Idempotency-Key": request.refund_id},
        )
        refund = self._refund(reply)
        if reply.get("charge") != request.charge_id or reply.get("amount") != request.amount_minor:
            raise self._api.malformed("a refund reply for another charge or amount")
        return refund

    async def get(self, provider_refund_id: str) -> ProviderRefund:
        """GET /v1/refunds/{id}."""
        refund = self._refund(await self._api.get(("v1", "refunds", provider_refund_id)))
        if refund.provider_refund_id != provider_refund_id:
            raise self._api.malformed("a refund reply for another refund")
        return refund

    def _refund(self, reply: Any) -> ProviderRefund:
        if not isinstance(reply, dict):
            raise self._api.malformed("a refund reply that is not a JSON object")
        refund_id, status = reply.get("id"), reply.get("status")
        if not isinstance(refund_id, str) or not 1 <= len(refund_id) <= 128:
            raise self._api.malformed(f"a refund reply without a usable id {refund_id!r}")
        try:
            return ProviderRefund(refund_id, ProviderStatus(status))
        except ValueError as exc:
            raise self._api.malformed(f"a refund of unknown status {status!r}") from exc

    async def close(self) -> None:
        """Close the connections."""
        await self._api.close()
