"""Fault knobs of a simulated partner, settable at run time over its own HTTP API:

    GET  /_faults            the knobs now
    PUT  /_faults  {...}     change some knobs (the others stay); {"reset": true} clears all
    GET  /_stats             requests served, by operation and outcome

Knobs: `latency_s` (added before every answer, plus up to `latency_jitter_s`),
`error_rate` (share of requests answered 503 without being applied), `outage_s` (every
request is answered 503 for that many seconds from now; 0 ends an outage),
`malformed_rate` (share of successful answers sent as broken JSON, after applying),
`lost_ack_rate` (share of requests applied whose connection is then dropped without an
answer), `lose_next` (drop the answers of the next N requests applied) and `poison`
(order ids whose every answer is malformed in a way that stays malformed, until they are
taken off the list). The API's own endpoints (under /v1) all go through them; /_faults and
/_stats never do.

Rates are spread evenly rather than drawn at random: with `error_rate` 0.06, exactly 6 of
every 100 requests fail (the 17th, the 34th ...), so a test or a load run sees the share it
asked for, every time. A PUT starts the spread of the rates it names afresh and leaves the
others' where they are, so rates set at different times fall on different requests (a
`reset` starts every one afresh).

A simulator with knobs of its own (the payment provider's, simulators/payment_faults.py)
adds them to the same /_faults: a PUT naming them changes them, `reset` clears them too."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Faults:
    """The knobs (see the module's notes)."""

    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    error_rate: float = 0.0
    outage_until: float = 0.0
    malformed_rate: float = 0.0
    lost_ack_rate: float = 0.0
    lose_next: int = 0
    poison: list[str] = field(default_factory=list)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a PUT body; ValueError for unknown knobs or values out of range."""
        if changes.get("reset"):
            fresh = Faults()
            for f in fields(self):
                setattr(self, f.name, getattr(fresh, f.name))
        for name, value in changes.items():
            if name == "reset":
                continue
            if name == "outage_s":
                seconds = float(value)
                if seconds < 0:
                    raise ValueError("outage_s must be >= 0")
                self.outage_until = time.time() + seconds if seconds else 0.0
            elif name == "poison":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError("poison must be a list of order ids")
                self.poison = list(value)
            elif name == "lose_next":
                if int(value) < 0:
                    raise ValueError("lose_next must be >= 0")
                self.lose_next = int(value)
            elif name in {"latency_s", "latency_jitter_s"}:
                if float(value) < 0:
                    raise ValueError(f"{name} must be >= 0")
                setattr(self, name, float(value))
            elif name in {"error_rate", "malformed_rate", "lost_ack_rate"}:
                if not 0 <= float(value) <= 1:
                    raise ValueError(f"{name} must be within [0, 1]")
                setattr(self, name, float(value))
            else:
                raise ValueError(f"unknown knob {name!r}")

    def view(self) -> dict[str, Any]:
        """The knobs as JSON-ready data, with the outage's seconds left."""
        data = asdict(self)
        data["outage_s"] = round(max(0.0, self.outage_until - time.time()), 3)
        return data

    @property
    def in_outage(self) -> bool:
        """Whether an outage is under way."""
        return time.time() < self.outage_until


class Knobs(Protocol):
    """Knobs a simulator adds to /_faults beside the common ones."""

    def names(self) -> frozenset[str]:
        """The knobs a PUT body may name."""
        ...

    def update(self, changes: dict[str, Any]) -> None:
        """Apply the named knobs of a PUT body; ValueError for values out of range."""
        ...

    def reset(self) -> None:
        """Every knob back to its default."""
        ...

    def view(self) -> dict[str, Any]:
        """The knobs as JSON-ready data."""
        ...


class Unapplied(Exception):
    """Raised by a handler before it changed anything: answered 503 by the middleware."""


@dataclass
class FaultState:
    """A simulator's knobs and what it served."""

    faults: Faults = field(default_factory=Faults)
    served: Counter[str] = field(default_factory=Counter)
    rand: random.Random = field(default_factory=random.Random)
    # Each rate's accumulated share: a fault is due each time it reaches 1.
    credit: dict[str, float] = field(default_factory=dict)
    # The simulator's own knobs, if it has any.
    extra: Knobs | None = None

    def due(self, knob: str, rate: float) -> bool:
        """Whether the fault of `knob` is due now, at `rate` (evenly spread, see above)."""
        return self._due(knob, rate)

    def _due(self, knob: str, rate: float) -> bool:
        self.credit[knob] = self.credit.get(knob, 0.0) + rate
        if self.credit[knob] >= 1.0 - 1e-9:
            self.credit[knob] -= 1.0
            return True
        return False

    def refuse(self) -> bool:
        """Whether this request is refused (outage or error rate), before it applies."""
        return self.faults.in_outage or self._due("error", self.faults.error_rate)

    def malformed(self, order_ids: list[str]) -> bool:
        """Whether this answer is sent broken."""
        if any(order_id in self.faults.poison for order_id in order_ids):
            return True
        return self._due("malformed", self.faults.malformed_rate)

    def lose_ack(self) -> bool:
        """Whether this request's answer is lost after it applied."""
        if self.faults.lose_next > 0:
            self.faults.lose_next -= 1
            return True
        return self._due("lost_ack", self.faults.lost_ack_rate)


STATE_KEY: web.AppKey[FaultState] = web.AppKey("faults", FaultState)


def operation_of(request: web.Request) -> str:
    """The name a request is counted under: its route's name."""
    return request.match_info.route.name or request.path


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency, outages and errors before the handler; lost answers after it."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    state = request.app[STATE_KEY]
    op = operation_of(request)
    faults = state.faults
    delay = faults.latency_s + state.rand.random() * faults.latency_jitter_s
    if delay:
        await asyncio.sleep(delay)
    if state.refuse():
        state.served[f"{op} 503"] += 1
        return web.json_response(
            {"error": "unavailable", "applied": False}, status=503, headers={"Retry-After": "1"}
        )
    try:
        response = await handler(request)
    except Unapplied as exc:
        state.served[f"{op} 503"] += 1
        return web.json_response({"error": str(exc), "applied": False}, status=503)
    if response.status < 300 and state.lose_ack():
        state.served[f"{op} lost"] += 1
        # The request was applied; the caller never hears so.
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    state.served[f"{op} {response.status}"] += 1
    return response


def broken_json(data: dict[str, Any]) -> web.Response:
    """A 200 whose body is cut off mid-JSON."""
    text = json.dumps(data)
    return web.Response(
        status=200, text=text[: max(1, len(text) // 2)], content_type="application/json"
    )


def _view(state: FaultState) -> dict[str, Any]:
    view = state.faults.view()
    if state.extra is not None:
        view.update(state.extra.view())
    return view


async def get_faults(request: web.Request) -> web.Response:
    """GET /_faults."""
    return web.json_response(_view(request.app[STATE_KEY]))


async def put_faults(request: web.Request) -> web.Response:
    """PUT /_faults."""
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        state = request.app[STATE_KEY]
        own = state.extra.names() if state.extra is not None else frozenset()
        if state.extra is not None:
            if body.get("reset"):
                state.extra.reset()
            state.extra.update({k: v for k, v in body.items() if k in own})
        state.faults.update({k: v for k, v in body.items() if k not in own})
        if body.get("reset"):
            state.credit.clear()
        for name in body:
            # A knob's credit is kept under its name without "_rate" (see `due`'s callers).
            state.credit.pop(str(name).removesuffix("_rate"), None)
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(_view(request.app[STATE_KEY]))


async def get_stats(request: web.Request) -> web.Response:
    """GET /_stats."""
    return web.json_response({"served": dict(request.app[STATE_KEY].served)})


def fault_app(seed: int | None = None) -> web.Application:
    """An application with the fault knobs and their middleware."""
    app = web.Application(middlewares=[fault_middleware])
    app[STATE_KEY] = FaultState(rand=random.Random(seed))
    app.router.add_get("/_faults", get_faults)
    app.router.add_put("/_faults", put_faults)
    app.router.add_get("/_stats", get_stats)
    return app
