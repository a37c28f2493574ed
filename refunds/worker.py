"""The refund sender's loop. Each round it claims the refunds due (stockcore.claim_refunds:
a lease, rows other senders hold skipped), and for each:

- REQUESTED: POST /v1/refunds with the refund id as Idempotency-Key. An answer binds the
  provider's refund id (SENT, and the order's REFUND_REQUESTED event) and, when the
  provider says it settled already (a repeated send), settles it.
- SENT: GET /v1/refunds/{provider id}, the poll that settles a refund whose webhook did
  not come (the receiver settles it when one does).

A call that did nothing or whose outcome is unknown (refused connection, 5xx, timeout, a
lost or unreadable answer) is tried again later, backing off from refund_retry_initial_s
to refund_retry_max_s, with the same key and body, so the provider makes one refund
however many sends reach it; a sender killed mid-send leaves its lease to lapse and the
next claim sends again. A refusal for good (4xx: no such charge, nothing left to refund)
fails the refund (REFUND_FAILED). Every call is counted by one circuit breaker
(runtime/breaker.py): while it is open no call is made and the refunds claimed are due
again when it half-opens.

Beside the rounds, every few seconds the sender reads how many refunds are not settled and
how long the oldest has been owed and due (refunds/metrics.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time

import asyncpg
from prometheus_client import start_http_server

from refunds.config import RefundSettings
from refunds.metrics import OLDEST_DUE, OLDEST_UNSETTLED, REFUND_CALLS, REGISTRY, UNSETTLED
from refunds.provider import ProviderRefund, ProviderStatus, RefundRequest, RefundsApi
from refunds.store import AttemptOutcome, Refund, RefundReason, RefundStore
from runtime.breaker import CircuitBreaker, Transition
from runtime.partner_http import PartnerError, Rejected

log = logging.getLogger(__name__)

# The reason the provider records, by why the refund is owed.
_PROVIDER_REASONS = {
    RefundReason.ORDER_CANCELLED: "requested_by_customer",
    RefundReason.CHARGE_TO_RETURN: "duplicate",
    RefundReason.LINE_REFUNDED: "requested_by_customer",
}
_OUTCOMES = {
    ProviderStatus.PENDING: AttemptOutcome.PENDING,
    ProviderStatus.SUCCEEDED: AttemptOutcome.SUCCEEDED,
    ProviderStatus.FAILED: AttemptOutcome.FAILED,
}
# Seconds between two reads of the refunds not settled: about a scrape's interval (15 s;
# 5 s under make run), since reading more often changes nothing Prometheus sees, and one
# read of the unsettled rows costs the database little.
BACKLOG_READ_S = 5.0


def _call_of(refund: Refund) -> str:
    """The call a claimed refund needs, as the metrics name it: a send until the provider
    has it, then a poll."""
    return "send" if refund.provider_refund_id is None else "poll"


def sender_name() -> str:
    """This process's name as a lease owner: host and pid."""
    return f"refunds@{socket.gethostname()}:{os.getpid()}"


def backoff_s(settings: RefundSettings, attempts: int) -> float:
    """The wait before attempt `attempts + 1`: doubling from the initial wait, capped, the
    upper half jittered so senders retrying together spread out."""
    ceiling = min(
        settings.refund_retry_max_s,
        settings.refund_retry_initial_s * 2.0 ** max(0, attempts - 1),
    )
    return ceiling / 2 + random.random() * ceiling / 2


def _on_transition(transition: Transition) -> None:
    log.warning(
        "payment provider breaker %s",
        transition.after.name,
        extra={"before": transition.before.name, "reason": transition.reason},
    )


class RefundSender:
    """Sends and follows refunds (see the module's notes)."""

    def __init__(
        self,
        settings: RefundSettings,
        store: RefundStore,
        api: RefundsApi,
        *,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self.name = name or sender_name()
        self.breaker = CircuitBreaker(
            "payment-provider", settings.breaker(), on_transition=_on_transition
        )
        self._stopping = asyncio.Event()

    async def run_once(self) -> int:
        """One round: claim what is due and attempt each; how many were claimed."""
        due = await self.store.claim(
            self.name, self.settings.refund_batch, self.settings.refund_lease_s
        )
        await asyncio.gather(*(self.attempt(refund) for refund in due))
        return len(due)

    async def attempt(self, refund: Refund) -> None:
        """Send (or poll) one claimed refund and record what it learnt."""
        permit = self.breaker.allow()
        if permit is None:
            REFUND_CALLS.labels(_call_of(refund), "breaker_open").inc()
            wait = max(0.1, self.breaker.retry_at() - time.monotonic())
            await self.store.record(
                refund.refund_id,
                self.name,
                AttemptOutcome.RETRY,
                retry_s=wait + random.random(),
                error="not sent: the payment provider's breaker is open",
            )
            return
        started = time.monotonic()
        try:
            reply = await self._call(refund)
        except Rejected as refused:
            # The provider answered: it works, and it refuses this refund for good.
            self.breaker.record(permit, time.monotonic() - started, ok=True)
            await self._refused(refund, refused)
            return
        except PartnerError as failed:
            self.breaker.record(permit, time.monotonic() - started, ok=False)
            REFUND_CALLS.labels(_call_of(refund), "retry").inc()
            log.warning(
                "refund not sent; trying again",
                extra={"refund_id": refund.refund_id, "error": str(failed)},
            )
            await self.store.record(
                refund.refund_id,
                self.name,
                AttemptOutcome.RETRY,
                retry_s=backoff_s(self.settings, refund.attempts),
                error=str(failed),
            )
            return
        self.breaker.record(permit, time.monotonic() - started, ok=True)
        outcome = _OUTCOMES[reply.status]
        REFUND_CALLS.labels(_call_of(refund), outcome.name.lower()).inc()
        recorded = await self.store.record(
            refund.refund_id,
            self.name,
            outcome,
            provider_refund_id=reply.provider_refund_id,
            retry_s=self.settings.refund_poll_s,
            error="the provider failed the refund" if outcome is AttemptOutcome.FAILED else None,
        )
        log.info(
            "refund %s",
            "sent" if refund.provider_refund_id is None else "polled",
            extra={
                "refund_id": refund.refund_id,
                "order_id": refund.order_id,
                "provider_refund_id": reply.provider_refund_id,
                "status": reply.status.value,
                "recorded": recorded,
            },
        )

    async def _call(self, refund: Refund) -> ProviderRefund:
        if refund.provider_refund_id is not None:
            return await self.api.get(refund.provider_refund_id)
        return await self.api.create(
            RefundRequest(
                refund.refund_id,
                refund.charge_id,
                refund.amount_minor,
                _PROVIDER_REASONS[refund.reason],
            )
        )

    async def _refused(self, refund: Refund, refused: Rejected) -> None:
        if refund.provider_refund_id is not None:
            # A poll refused: the refund exists (the provider said so), so this is the
            # provider's fault, not the refund's; ask again later.
            REFUND_CALLS.labels("poll", "retry").inc()
            log.error(
                "refund poll refused", extra={"refund_id": refund.refund_id, "error": str(refused)}
            )
            await self.store.record(
                refund.refund_id,
                self.name,
                AttemptOutcome.RETRY,
                retry_s=backoff_s(self.settings, refund.attempts),
                error=str(refused),
            )
            return
        REFUND_CALLS.labels("send", "refused").inc()
        log.error(
            "refund refused by the payment provider; an operator must return the money",
            extra={
                "refund_id": refund.refund_id,
                "order_id": refund.order_id,
                "error": str(refused),
            },
        )
        await self.store.record(
            refund.refund_id, self.name, AttemptOutcome.FAILED, error=str(refused)
        )

    async def read_backlog(self) -> None:
        """Set the gauges of the refunds not settled."""
        found = await self.store.backlog()
        for state, count in found.unsettled.items():
            UNSETTLED.labels(state.name.lower()).set(count)
            OLDEST_UNSETTLED.labels(state.name.lower()).set(found.oldest_s[state])
        OLDEST_DUE.set(found.oldest_due_s)

    async def run(self) -> None:
        """Rounds, and reads of the backlog every BACKLOG_READ_S beside them, until
        stopped."""
        async with asyncio.TaskGroup() as both:
            both.create_task(self._rounds())
            both.create_task(self._backlog_reads())

    async def _backlog_reads(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.read_backlog()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error(
                    "refund backlog read failed", extra={"error": f"{type(exc).__name__}: {exc}"}
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), BACKLOG_READ_S)

    async def _rounds(self) -> None:
        """At once again after a round that claimed a full batch, else after
        refund_idle_s. A database that fails is tried again after the idle wait."""
        while not self._stopping.is_set():
            try:
                claimed = await self.run_once()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("refund round failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                claimed = 0
            if claimed < self.settings.refund_batch:
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.settings.refund_idle_s)
                except TimeoutError:
                    pass

    def stop(self) -> None:
        """Finish the round under way, then return from run()."""
        self._stopping.set()


async def run_sender(settings: RefundSettings) -> None:
    """`python -m refunds`: send refunds until SIGINT or SIGTERM."""
    assert settings.pg_dsn is not None
    if settings.refund_metrics_port:
        start_http_server(settings.refund_metrics_port, addr="127.0.0.1", registry=REGISTRY)
    store = await RefundStore.connect(settings.pg_dsn, pool_size=4, timeout=settings.db_timeout_s)
    api = RefundsApi(
        settings.provider_url,
        timeout_s=settings.provider_timeout_s,
        max_reply_bytes=settings.provider_max_reply_bytes,
    )
    sender = RefundSender(settings, store, api)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, sender.stop)
    log.info(
        "refund sender running", extra={"sender": sender.name, "provider": settings.provider_url}
    )
    try:
        await sender.run()
    finally:
        await api.close()
        await store.close()
