"""The payment provider's webhooks: every event is sent to one endpoint, signed, and sent
again with exponential backoff until the endpoint acknowledges it with a 2xx.

A delivery is a POST of the event as JSON with the header

    Stockcore-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>

signed afresh at each attempt (so a retry hours later carries a current timestamp), as
payment providers sign theirs. Events are sent independently, in no promised order. After
`give_up_s` without an acknowledgement the provider stops trying and marks the event given
up (`GET /_webhooks` lists every event with its attempts).

The webhook knobs of simulators/payment_faults.py are decided when an event is created and
recorded there: a dropped first delivery, a duplicate, a delay, an event held back until
one created after it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from simulators.faults import FaultState
from simulators.payment_faults import Injected, PaymentFaults

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Stockcore-Signature"


def signature_header(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header of `body` sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass(frozen=True)
class WebhookEndpoint:
    """Where events go and how hard the provider tries; an empty url sends nothing."""

    url: str
    secret: bytes
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    give_up_s: float = 3 * 86_400.0
    timeout_s: float = 10.0


@dataclass(frozen=True)
class Event:
    """One event: its id, type, creation time and the object it is about."""

    event_id: str
    type: str
    created: int
    data: dict[str, Any]

    @staticmethod
    def new(kind: str, data: dict[str, Any]) -> Event:
        """A new event about `data` (a charge, refund or payout as the API shows it)."""
        return Event(f"evt_{uuid.uuid4().hex[:24]}", kind, int(time.time()), data)

    def body(self) -> bytes:
        """What is sent, byte for byte (and signed)."""
        document = {
            "id": self.event_id,
            "object": "event",
            "type": self.type,
            "created": self.created,
            "data": {"object": self.data},
        }
        return json.dumps(document, separators=(",", ":")).encode()


@dataclass
class Delivery:
    """What became of one event's delivery."""

    event: Event
    attempts: int = 0
    acknowledged_at: float | None = None
    given_up: bool = False
    last_outcome: str = ""
    # Requests that reached the endpoint (a duplicate counts two; a dropped attempt none).
    sent: int = 0

    def view(self) -> dict[str, Any]:
        """As JSON-ready data."""
        return {
            "event_id": self.event.event_id,
            "type": self.event.type,
            "object_id": self.event.data.get("id", ""),
            "order_id": self.event.data.get("order_id", ""),
            "attempts": self.attempts,
            "sent": self.sent,
            "acknowledged": self.acknowledged_at is not None,
            "given_up": self.given_up,
            "last_outcome": self.last_outcome,
        }


@dataclass
class WebhookSender:
    """Sends events to `endpoint` in tasks of their own, with the faults the knobs ask for."""

    endpoint: WebhookEndpoint
    state: FaultState
    knobs: PaymentFaults
    injected: Injected
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Events held back until an event created after them has been sent: (the held one's
    # place in creation order, its release).
    _held: list[tuple[int, asyncio.Event]] = field(default_factory=list)
    _created: int = 0

    async def start(self) -> None:
        """Open the HTTP client."""
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        """Stop every delivery and close the client."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    def send(self, event: Event) -> None:
        """Deliver `event` (in the background), deciding its faults now."""
        delivery = Delivery(event)
        self.deliveries[event.event_id] = delivery
        self._created += 1
        place = self._created
        if not self.endpoint.url:
            delivery.last_outcome = "no endpoint"
            return
        knobs, due = self.knobs, self.state.due
        drop = due("webhook_drop", knobs.webhook_drop_rate)
        duplicate = due("webhook_duplicate", knobs.webhook_duplicate_rate)
        delay = knobs.webhook_delay_s if due("webhook_delay", knobs.webhook_delay_rate) else 0.0
        hold: asyncio.Event | None = None
        if due("webhook_reorder", knobs.webhook_reorder_rate):
            hold = asyncio.Event()
            self._held.append((place, hold))
        object_id = str(event.data.get("id", ""))
        order_id = str(event.data.get("order_id", ""))
        for kind, happened, detail in (
            ("webhook_dropped", drop, "first delivery lost"),
            ("webhook_duplicated", duplicate, "delivered twice"),
            ("webhook_delayed", bool(delay), f"first delivery {delay:g} s late"),
            ("webhook_reordered", hold is not None, "held until the next event was sent"),
        ):
            if happened:
                self.injected.add(
                    kind, object_id, order_id=order_id, event_id=event.event_id, detail=detail
                )
        task = asyncio.get_running_loop().create_task(
            self._deliver(delivery, place, drop=drop, duplicate=duplicate, delay=delay, hold=hold)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self,
        delivery: Delivery,
        place: int,
        *,
        drop: bool,
        duplicate: bool,
        delay: float,
        hold: asyncio.Event | None,
    ) -> None:
        endpoint = self.endpoint
        started = time.monotonic()
        if hold is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hold.wait(), self.knobs.webhook_reorder_max_s)
        if delay:
            await asyncio.sleep(delay)
        backoff = endpoint.retry_initial_s
        while True:
            delivery.attempts += 1
            first = delivery.attempts == 1
            if first and drop:
                acknowledged, delivery.last_outcome = False, "dropped"
            else:
                if first and duplicate:
                    outcomes = await asyncio.gather(self._post(delivery), self._post(delivery))
                    acknowledged = any(ok for ok, _ in outcomes)
                    delivery.last_outcome = " / ".join(what for _, what in outcomes)
                else:
                    acknowledged, delivery.last_outcome = await self._post(delivery)
                if hold is None:
                    # Sent: the events held back until a later one was sent may go.
                    for held_place, held in self._held:
                        if held_place < place:
                            held.set()
                    self._held = [(p, h) for p, h in self._held if not h.is_set()]
            if acknowledged:
                delivery.acknowledged_at = time.time()
                return
            if time.monotonic() - started + backoff > endpoint.give_up_s:
                delivery.given_up = True
                log.warning(
                    "webhook given up",
                    extra={"event_id": delivery.event.event_id, "attempts": delivery.attempts},
                )
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, endpoint.retry_max_s)

    async def _post(self, delivery: Delivery) -> tuple[bool, str]:
        """One request: whether the endpoint acknowledged it, and what it answered."""
        assert self._session is not None
        body = delivery.event.body()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(self.endpoint.secret, body, int(time.time())),
        }
        timeout = aiohttp.ClientTimeout(total=self.endpoint.timeout_s)
        try:
            async with self._session.post(
                self.endpoint.url,
                data=body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as reply:
                await reply.read()
                delivery.sent += 1
                return 200 <= reply.status < 300, str(reply.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, type(exc).__name__
