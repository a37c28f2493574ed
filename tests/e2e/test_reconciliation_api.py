"""ReconciliationService over the real stack: the simulated provider, the webhook receiver,
the reconciler's steps, the server over TLS with real tokens, PostgreSQL. What the
reconciler stated is read and resolved through the contract, by the finance scopes only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from clients.credentials import Credentials
from clients.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from clients.reconciliation import ReconciliationClient, Resolution, SubjectKind, Verdict
from payments.reconciler.reconciliation import Reconciler
from payments.reconciler.service import opened
from server.app import App
from server.config import Settings
from tests.e2e.payments_stack import (
    Provider,
    new_secret,
    receiver_settings,
    running_provider,
    running_receiver,
)
from tests.e2e.test_payment_webhooks import (
    PAID,
    PAYER,
    PRICE,
    new_order,
    wait_recorded,
    wait_status,
)
from tests.e2e.test_reconciliation import reconciler_settings

FINANCE = "finance-desk"


@pytest.fixture
async def provider(
    app: App, settings: Settings, credentials_for: Callable[..., Credentials], tmp_path: Path
) -> AsyncIterator[Provider]:
    """The provider, sending its webhooks to stockcore's receiver in front of the server."""
    assert settings.pg_dsn is not None
    secret = new_secret()
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_bytes(secret + b"\n")
    config = receiver_settings(settings.pg_dsn, app.port, secret_file)
    payer = credentials_for(PAYER, scopes=("orders:pay",))
    async with (
        running_receiver(config, payer) as receiver,
        running_provider(receiver.url, secret) as started,
    ):
        yield started


@pytest.fixture
async def reconciler(
    app: App, settings: Settings, provider: Provider, credentials_for: Callable[..., Credentials]
) -> AsyncIterator[Reconciler]:
    """A reconciler over the test server, database and provider; the test runs its steps."""
    payer = credentials_for(PAYER, scopes=("orders:pay",))
    async with opened(reconciler_settings(settings, app, provider), payer) as started:
        yield started


@pytest.fixture
async def finance(
    app: App, credentials_for: Callable[..., Credentials]
) -> AsyncIterator[ReconciliationClient]:
    """A finance person's client: reads and resolves."""
    credentials = credentials_for(FINANCE, scopes=("finance:read", "finance:resolve"))
    async with ReconciliationClient(f"127.0.0.1:{app.port}", credentials=credentials) as client:
        yield client


async def test_the_statement_of_a_matched_payment_is_read_by_payment_and_by_order(
    app: App, provider: Provider, reconciler: Reconciler, finance: ReconciliationClient
) -> None:
    order = await new_order(app, "ra-matched")
    charge = await provider.charge(order.order_id, PRICE, key="ra-matched")
    await wait_status(app, order.order_id, PAID)
    await reconciler.step()

    by_payment = await finance.get_statement(charge["id"])
    by_order = await finance.get_statement(order.order_id)

    assert by_payment == by_order
    [line] = by_payment.lines
    assert (line.subject_kind, line.subject_id, line.order_id) == (
        SubjectKind.SUBJECT_KIND_CHARGE,
        charge["id"],
        order.order_id,
    )
    assert line.verdict == Verdict.VERDICT_MATCHED
    assert (line.ours, line.theirs) == (line.theirs, line.ours)
    assert line.ours is not None and (line.ours.amount_minor, line.ours.currency_code) == (
        PRICE,
        "EUR",
    )
    assert (line.exception_id, line.corrects_statement_id, by_payment.truncated) == (0, 0, False)
    assert line.lag.total_seconds() >= 0 and line.state_time >= line.fact_time
    with pytest.raises(NotFound):
        await finance.get_statement("ch_nothing")
    with pytest.raises(InvalidArgument) as bad:
        await finance.get_statement("no spaces")
    assert [v.field for v in bad.value.field_violations] == ["id"]


async def test_an_exception_is_listed_resolved_once_and_then_listed_only_with_all(
    app: App,
    provider: Provider,
    reconciler: Reconciler,
    finance: ReconciliationClient,
    dsn: str,
) -> None:
    await provider.faults(amount_mismatch_rate=1)
    order = await new_order(app, "ra-amount")
    charge = await provider.charge(order.order_id, PRICE, key="ra-amount")
    await wait_recorded(dsn, charge["id"])
    await reconciler.step()

    page = await finance.list_exceptions()
    [found] = page.exceptions
    assert (found.reason, found.resolution, page.next_page_token) == (
        Verdict.VERDICT_AMOUNT_DIFFERS,
        Resolution.RESOLUTION_UNSPECIFIED,
        "",
    )
    assert found.statement.subject_id == charge["id"]
    assert found.statement.theirs is not None and found.statement.theirs.amount_minor == PRICE + 1
    other = await finance.list_exceptions(reason=Verdict.VERDICT_MISSING_HERE)
    assert other.exceptions == ()

    resolved = await finance.resolve_exception(
        found.exception_id, Resolution.RESOLUTION_REFUNDED, "refunded by hand"
    )
    assert (resolved.resolution, resolved.resolved_by, resolved.resolved_why) == (
        Resolution.RESOLUTION_REFUNDED,
        FINANCE,
        "refunded by hand",
    )
    assert resolved.resolve_time is not None
    # A retry of the same decision answers as the first; another decision is refused.
    assert (
        await finance.resolve_exception(
            found.exception_id, Resolution.RESOLUTION_REFUNDED, "refunded by hand"
        )
        == resolved
    )
    with pytest.raises(FailedPrecondition) as refused:
        await finance.resolve_exception(
            found.exception_id, Resolution.RESOLUTION_ACCEPTED, "changed my mind"
        )
    assert refused.value.error_info is not None
    assert refused.value.error_info.reason == "ALREADY_RESOLVED"
    assert (await finance.list_exceptions()).exceptions == ()
    [listed] = (await finance.list_exceptions(include_resolved=True)).exceptions
    assert listed == resolved
    [line] = (await finance.get_statement(order.order_id)).lines
    assert (line.exception_id, line.resolution) == (
        found.exception_id,
        Resolution.RESOLUTION_REFUNDED,
    )


async def test_resolving_refuses_unknown_exceptions_and_bad_input(
    finance: ReconciliationClient,
) -> None:
    with pytest.raises(NotFound):
        await finance.resolve_exception(10**9, Resolution.RESOLUTION_ACCEPTED, "why")
    with pytest.raises(InvalidArgument) as bad:
        await finance.resolve_exception(0, Resolution.RESOLUTION_CORRECTED, " ")
    assert [v.field for v in bad.value.field_violations] == ["exception_id", "resolution", "why"]
    with pytest.raises(InvalidArgument) as paged:
        await finance.list_exceptions(page_size=501, page_token="x")
    assert [v.field for v in paged.value.field_violations] == ["page_size", "page_token"]


async def test_exceptions_are_paged_oldest_first(
    app: App,
    provider: Provider,
    reconciler: Reconciler,
    finance: ReconciliationClient,
    dsn: str,
) -> None:
    await provider.faults(amount_mismatch_rate=1)
    for n in range(3):
        order = await new_order(app, f"ra-page-{n}")
        charge = await provider.charge(order.order_id, PRICE, key=f"ra-page-{n}")
        await wait_recorded(dsn, charge["id"])
    await reconciler.step()

    first = await finance.list_exceptions(page_size=2)
    second = await finance.list_exceptions(page_size=2, page_token=first.next_page_token)

    ids = [e.exception_id for e in (*first.exceptions, *second.exceptions)]
    assert len(ids) == 3 and ids == sorted(ids)
    assert first.next_page_token and not second.next_page_token
    with pytest.raises(InvalidArgument):
        await finance.list_exceptions(include_resolved=True, page_token=first.next_page_token)


async def test_a_customers_token_and_a_token_without_finance_scopes_are_refused(
    app: App, credentials_for: Callable[..., Credentials]
) -> None:
    target = f"127.0.0.1:{app.port}"
    shopper = credentials_for("shop-web", scopes=("customer",), customer_id="alice")
    reader = credentials_for("auditor", scopes=("finance:read",))
    async with ReconciliationClient(target, credentials=shopper) as client:
        for call in (
            client.get_statement("ch_1"),
            client.list_exceptions(),
            client.resolve_exception(1, Resolution.RESOLUTION_ACCEPTED, "why"),
        ):
            with pytest.raises(PermissionDenied) as refused:
                await call
            assert refused.value.error_info is not None
            assert refused.value.error_info.reason == "CUSTOMER_TOKEN"
    async with ReconciliationClient(target, credentials=reader) as client:
        assert (await client.list_exceptions()).exceptions == ()
        with pytest.raises(PermissionDenied) as missing:
            await client.resolve_exception(1, Resolution.RESOLUTION_ACCEPTED, "why")
        assert missing.value.error_info is not None
        assert missing.value.error_info.reason == "SCOPE_MISSING"
