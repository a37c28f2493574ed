"""Adapters of the partners' HTTP APIs as the project's simulators speak them
(simulators/): one class per kind of partner, mapping replies to the values of
fulfilment/partners.py and failures to its errors. Their transport (JsonApi and
partner_url, runtime/partner_http.py, shared with the refund sender) keeps this contract:

- a refused or timed-out connection attempt, 503 and 429 applied nothing (NotApplied);
- a timeout after the request was sent, a dropped connection, any other 5xx, and a 2xx
  whose body is not what the API promises may have applied (OutcomeUnknown /
  MalformedReply);
- any other 4xx refused the request for good (Rejected);
- a redirect is not followed (a partner does not get to send our request, body and
  headers, elsewhere): it is a reply the API does not promise (MalformedReply), as is a
  reply larger than `max_reply_bytes`, which is read no further than that. The whole
  exchange, the reply's last byte included, is bounded by `timeout_s`: a partner that
  drips its reply gets no answer in time (OutcomeUnknown). Each is a failed attempt for
  the guard to retry and the breaker to count, never a worker stuck on one call.

Every id goes into a URL as one percent-encoded path segment (`partner_url`), and the URL
is handed to aiohttp as already encoded, so nothing on the way re-normalises it: an id
with slashes or dots names one order at the partner, never another one. A reply that
acknowledges another id than the one sent is malformed.

A real partner with another API gets an adapter of its own beside these."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fulfilment.partners import (
    Booking,
    BookingRequest,
    HandOff,
    HandOffAck,
    PackState,
    PackStatus,
    TrackingUpdate,
)
from runtime.partner_http import JsonApi
from server.domain.orders import MAX_CARRIER_ACK, TRACKING_PATTERN


def _time(api: JsonApi, value: Any) -> datetime:
    if not isinstance(value, str):
        raise api.malformed(f"a time is missing ({value!r})")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise api.malformed(f"not a time: {value!r}") from exc
    if moment.tzinfo is None:
        raise api.malformed(f"a time without a zone: {value!r}")
    return moment


def _object(api: JsonApi, reply: Any, what: str) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise api.malformed(f"{what}: not a JSON object")
    return reply


class HttpWarehouse:
    """The simulated warehouse's API."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "warehouse",
        timeout_s: float = 10.0,
        connections: int = 100,
        max_reply_bytes: int = 1 << 20,
    ) -> None:
        self._api = JsonApi(name, base_url, timeout_s, connections, max_reply_bytes)

    @property
    def name(self) -> str:
        """The partner's name."""
        return self._api.partner

    async def hand_off(self, order: HandOff) -> HandOffAck:
        """POST /v1/handoffs."""
        body = {
            "order_id": order.order_id,
            "customer_id": order.customer_id,
            "lines": [{"sku": sku, "quantity": qty} for sku, qty in order.lines],
            "paid_at": order.paid_at.isoformat(),
        }
        reply = _object(self._api, await self._api.post(("v1", "handoffs"), body), "hand-off")
        ref = reply.get("warehouse_ref")
        if reply.get("order_id") != order.order_id or not isinstance(ref, str) or not ref:
            raise self._api.malformed("hand-off reply without the order id and a reference")
        return HandOffAck(order.order_id, ref)

    async def statuses(self, order_ids: Sequence[str]) -> Mapping[str, PackStatus]:
        """POST /v1/handoffs/status; orders the warehouse does not name are UNKNOWN."""
        reply = _object(
            self._api,
            await self._api.post(("v1", "handoffs", "status"), {"order_ids": list(order_ids)}),
            "status",
        )
        rows = reply.get("orders")
        if not isinstance(rows, list):
            raise self._api.malformed("status reply without orders")
        found = {order_id: PackStatus(order_id, PackState.UNKNOWN) for order_id in order_ids}
        for row in rows:
            row = _object(self._api, row, "status row")
            order_id = row.get("order_id")
            try:
                state = PackState(row.get("state"))
            except ValueError as exc:
                raise self._api.malformed(f"unknown state {row.get('state')!r}") from exc
            if order_id not in found:
                raise self._api.malformed(f"status of an order not asked about: {order_id!r}")
            packed = _time(self._api, row.get("packed_at")) if state is PackState.PACKED else None
            found[order_id] = PackStatus(order_id, state, packed)
        return found

    async def cancel(self, order_id: str) -> None:
        """POST /v1/handoffs/{order_id}/cancel."""
        reply = _object(
            self._api, await self._api.post(("v1", "handoffs", order_id, "cancel"), {}), "cancel"
        )
        if reply.get("order_id") != order_id:
            raise self._api.malformed(
                f"cancel acknowledged for another order: {reply.get('order_id')!r}"
            )

    async def close(self) -> None:
        """Close the connections."""
        await self._api.close()


class HttpCarrier:
    """The simulated carriers' API; `code` is the carrier code ShipOrder is given."""

    def __init__(
        self,
        code: str,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        connections: int = 100,
        max_reply_bytes: int = 1 << 20,
    ) -> None:
        self._api = JsonApi(code, base_url, timeout_s, connections, max_reply_bytes)

    @property
    def name(self) -> str:
        """The carrier code."""
        return self._api.partner

    async def book(self, request: BookingRequest) -> Booking:
        """POST /v1/bookings with the key as Idempotency-Key."""
        body = {
            "booking_key": request.booking_key,
            "order_id": request.order_id,
            "lines": [{"sku": sku, "quantity": qty} for sku, qty in request.lines],
        }
        reply = _object(
            self._api,
            await self._api.post(
                ("v1", "bookings"), body, headers={"Idempotency-Key": request.booking_key}
            ),
            "booking",
        )
        tracking, ack = reply.get("tracking_no"), reply.get("ack_id")
        if reply.get("booking_key") != request.booking_key:
            raise self._api.malformed("booking reply for another key")
        if not isinstance(tracking, str) or TRACKING_PATTERN.fullmatch(tracking) is None:
            raise self._api.malformed(
                f"booking reply with an unusable tracking number {tracking!r}"
            )
        if not isinstance(ack, str) or not ack.strip() or len(ack) > MAX_CARRIER_ACK:
            raise self._api.malformed(f"booking reply with an unusable ack id {ack!r}")
        return Booking(self.name, request.booking_key, tracking, ack)

    async def track(self, tracking_nos: Sequence[str]) -> Mapping[str, TrackingUpdate]:
        """POST /v1/tracking; parcels the carrier does not name are unknown."""
        reply = _object(
            self._api,
            await self._api.post(("v1", "tracking"), {"tracking_nos": list(tracking_nos)}),
            "tracking",
        )
        parcels = reply.get("parcels")
        if not isinstance(parcels, list):
            raise self._api.malformed("tracking reply without parcels")
        found = {number: TrackingUpdate(number, known=False) for number in tracking_nos}
        for parcel in parcels:
            parcel = _object(self._api, parcel, "parcel")
            number = parcel.get("tracking_no")
            events = parcel.get("events")
            if number not in found or not isinstance(events, list):
                raise self._api.malformed(f"tracking of a parcel not asked about: {number!r}")
            in_transit = delivered = None
            for event in events:
                event = _object(self._api, event, "scan")
                if event.get("kind") == "in_transit":
                    in_transit = _time(self._api, event.get("at"))
                elif event.get("kind") == "delivered":
                    delivered = _time(self._api, event.get("at"))
            found[number] = TrackingUpdate(number, True, in_transit, delivered)
        return found

    async def cancel(self, booking_key: str) -> None:
        """POST /v1/bookings/{key}/void."""
        reply = _object(
            self._api, await self._api.post(("v1", "bookings", booking_key, "void"), {}), "void"
        )
        if reply.get("booking_key") != booking_key:
            raise self._api.malformed(
                f"void acknowledged for another booking: {reply.get('booking_key')!r}"
            )

    async def close(self) -> None:
        """Close the connections."""
        await self._api.close()


async def close_all(*partners: HttpWarehouse | HttpCarrier) -> None:
    """Close several adapters."""
    await asyncio.gather(*(p.close() for p in partners), return_exceptions=True)
