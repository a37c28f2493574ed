"""`stockctl recon ...`: read what the reconciler found about the money, resolve its
exceptions, and read a currency's daily close, through ReconciliationService."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import date
from typing import TextIO, assert_never

from clients.commands import Leaf, Subcommands, bounded_int, rfc3339, table
from clients.reconciliation import (
    Amount,
    DailyClose,
    ReconciliationClient,
    ReconciliationException,
    Resolution,
    StatementLine,
    Verdict,
    resolution_name,
    subject_kind_name,
    verdict_name,
)


@dataclass(frozen=True)
class ReadStatement:
    """`recon statement`: every line about a payment, a refund or an order."""

    id: str


@dataclass(frozen=True)
class ListExceptions:
    """`recon exceptions`: one page of exceptions, the open ones unless include_resolved."""

    include_resolved: bool
    reason: Verdict.ValueType
    page_size: int
    page_token: str


@dataclass(frozen=True)
class ResolveException:
    """`recon resolve`: a person's decision about an open exception."""

    exception_id: int
    resolution: Resolution.ValueType
    why: str


@dataclass(frozen=True)
class ReadClose:
    """`recon close`: a currency's close of a UTC day."""

    currency_code: str
    day: date


ReconCommand = ReadStatement | ListExceptions | ResolveException | ReadClose
RECON_COMMANDS = (ReadStatement, ListExceptions, ResolveException, ReadClose)

#: --as choices, as people write them.
RESOLUTIONS: dict[str, Resolution.ValueType] = {
    "accepted": Resolution.RESOLUTION_ACCEPTED,
    "refunded": Resolution.RESOLUTION_REFUNDED,
    "written-off": Resolution.RESOLUTION_WRITTEN_OFF,
}


def parse_reason(text: str) -> Verdict.ValueType:
    """A verdict by its name, as printed (amount-differs or AMOUNT_DIFFERS)."""
    name = "VERDICT_" + text.strip().upper().replace("-", "_")
    try:
        verdict = Verdict.Value(name)
    except ValueError:
        known = ", ".join(
            verdict_name(v).lower().replace("_", "-")
            for v in Verdict.values()
            if v not in (Verdict.VERDICT_UNSPECIFIED, Verdict.VERDICT_MATCHED)
        )
        raise argparse.ArgumentTypeError(f"{text!r} is not a reason; one of: {known}") from None
    if verdict in (Verdict.VERDICT_UNSPECIFIED, Verdict.VERDICT_MATCHED):
        raise argparse.ArgumentTypeError(f"{text!r} opens no exception")
    return verdict


def parse_day(text: str) -> date:
    """A UTC day as YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day as YYYY-MM-DD") from None


def parse_currency(text: str) -> str:
    """An ISO 4217 code, three letters (upper-cased)."""
    code = text.strip().upper()
    if len(code) != 3 or not code.isalpha() or not code.isascii():
        raise argparse.ArgumentTypeError(f"{text!r} is not a three-letter currency code")
    return code


def add_recon_commands(commands: Subcommands, leaf: Leaf) -> None:
    """Add `recon` and its subcommands to stockctl's parser."""
    recon = commands.add_parser(
        "recon", help="read what the reconciler found about the money, resolve exceptions"
    )
    group = recon.add_subparsers(dest="recon_command", required=True, metavar="COMMAND")

    statement = leaf(
        group, "statement", "every statement line about a payment, a refund or an order"
    )
    statement.add_argument("id", metavar="PAYMENT-OR-ORDER-ID")
    statement.set_defaults(make=lambda ns: ReadStatement(ns.id))

    exceptions = leaf(group, "exceptions", "list the open exceptions (--all: resolved too)")
    exceptions.add_argument("--all", action="store_true", help="also the resolved ones")
    exceptions.add_argument(
        "--reason", type=parse_reason, metavar="R", help="only of this verdict (amount-differs ...)"
    )
    exceptions.add_argument(
        "--page-size", type=bounded_int(1, 500), default=0, metavar="N", help="1-500 (50)"
    )
    exceptions.add_argument("--page-token", default="", metavar="T", help="the next page's")
    exceptions.set_defaults(
        make=lambda ns: ListExceptions(
            ns.all,
            Verdict.VERDICT_UNSPECIFIED if ns.reason is None else ns.reason,
            ns.page_size,
            ns.page_token,
        )
    )

    resolve = leaf(group, "resolve", "resolve an open exception, saying why")
    resolve.add_argument("exception_id", type=bounded_int(1), metavar="ID")
    resolve.add_argument(
        "--as", dest="resolution", required=True, choices=sorted(RESOLUTIONS), help="the decision"
    )
    resolve.add_argument("--why", required=True, help="the reason, kept with the exception")
    resolve.set_defaults(
        make=lambda ns: ResolveException(ns.exception_id, RESOLUTIONS[ns.resolution], ns.why)
    )

    close = leaf(group, "close", "a currency's provider balance over one UTC day")
    close.add_argument("currency", type=parse_currency, metavar="CURRENCY")
    close.add_argument("day", type=parse_day, metavar="YYYY-MM-DD")
    close.set_defaults(make=lambda ns: ReadClose(ns.currency, ns.day))


def _money(value: Amount | None) -> str:
    return "-" if value is None else f"{value.amount_minor} {value.currency_code}"


def line_data(line: StatementLine) -> dict[str, object]:
    """A statement line as JSON-ready data."""

    def amount(value: Amount | None) -> dict[str, object] | None:
        return (
            None
            if value is None
            else {"amount_minor": value.amount_minor, "currency": value.currency_code}
        )

    return {
        "statement_id": line.statement_id,
        "subject_kind": subject_kind_name(line.subject_kind),
        "subject_id": line.subject_id,
        "order_id": line.order_id,
        "verdict": verdict_name(line.verdict),
        "ours": amount(line.ours),
        "theirs": amount(line.theirs),
        "recovered": line.recovered,
        "corrects": line.corrects_statement_id or None,
        "fact_time": rfc3339(line.fact_time),
        "state_time": rfc3339(line.state_time),
        "lag_s": line.lag.total_seconds(),
        "exception_id": line.exception_id or None,
        "resolution": resolution_name(line.resolution) if line.exception_id else None,
    }


def exception_data(found: ReconciliationException) -> dict[str, object]:
    """An exception as JSON-ready data."""
    return {
        "exception_id": found.exception_id,
        "reason": verdict_name(found.reason),
        "open_time": rfc3339(found.open_time),
        "resolution": resolution_name(found.resolution),
        "resolved_by": found.resolved_by or None,
        "resolved_why": found.resolved_why or None,
        "resolve_time": None if found.resolve_time is None else rfc3339(found.resolve_time),
        "statement": line_data(found.statement),
    }


def close_data(close: DailyClose) -> dict[str, object]:
    """A daily close as JSON-ready data."""
    return {
        "currency": close.currency_code,
        "day": close.day.isoformat(),
        "closed": close.closed,
        "opening_minor": close.opening_minor,
        "charges_minor": close.charges_minor,
        "refunds_minor": close.refunds_minor,
        "fees_minor": close.fees_minor,
        "payouts_minor": close.payouts_minor,
        "refund_failures_minor": close.refund_failures_minor,
        "closing_minor": close.closing_minor,
        "close_time": None if close.close_time is None else rfc3339(close.close_time),
        "closed_by": close.closed_by or None,
        "late_items": [
            {
                "transfer_id": i.transfer_id,
                "txn_id": i.txn_id,
                "type": i.type,
                "amount_minor": i.amount_minor,
                "belongs_to": i.belongs_to.isoformat(),
            }
            for i in close.late_items
        ],
    }


def format_statement(lines: tuple[StatementLine, ...]) -> str:
    """Statement lines as a table, oldest first."""
    return table(
        ("LINE", "SUBJECT", "ORDER", "VERDICT", "OURS", "THEIRS", "LAG_S", "CORRECTS", "EXCEPTION"),
        [
            (
                line.statement_id,
                f"{subject_kind_name(line.subject_kind).lower()} {line.subject_id}",
                line.order_id or "-",
                verdict_name(line.verdict),
                _money(line.ours),
                _money(line.theirs),
                f"{line.lag.total_seconds():.1f}",
                str(line.corrects_statement_id or "-"),
                f"{line.exception_id} {resolution_name(line.resolution)}"
                if line.exception_id
                else "-",
            )
            for line in lines
        ],
    )


def format_exceptions(found: tuple[ReconciliationException, ...]) -> str:
    """Exceptions as a table, oldest first."""
    return table(
        ("EXCEPTION", "REASON", "SUBJECT", "ORDER", "OURS", "THEIRS", "OPENED", "RESOLUTION"),
        [
            (
                e.exception_id,
                verdict_name(e.reason),
                e.statement.subject_id,
                e.statement.order_id or "-",
                _money(e.statement.ours),
                _money(e.statement.theirs),
                rfc3339(e.open_time),
                resolution_name(e.resolution)
                + (f" by {e.resolved_by}: {e.resolved_why}" if e.resolved_by else ""),
            )
            for e in found
        ],
    )


def format_close(close: DailyClose) -> str:
    """A daily close as a block of figures, then its late items."""
    state = (
        f"closed {rfc3339(close.close_time)} by {close.closed_by}"
        if close.closed and close.close_time is not None
        else "open (figures as they stand)"
    )
    figures = table(
        (f"{close.currency_code} {close.day.isoformat()}", state),
        [
            ("opening", close.opening_minor),
            ("+ charges", close.charges_minor),
            ("- refunds", close.refunds_minor),
            ("- fees", close.fees_minor),
            ("- payouts", close.payouts_minor),
            ("+ failed refunds", close.refund_failures_minor),
            ("closing", close.closing_minor),
        ],
    )
    if not close.late_items:
        return figures
    late = table(
        ("LATE TRANSFER", "TXN", "TYPE", "AMOUNT", "BELONGS TO"),
        [
            (i.transfer_id, i.txn_id, i.type, i.amount_minor, i.belongs_to.isoformat())
            for i in close.late_items
        ],
    )
    return f"{figures}\n\n{late}"


async def execute_recon(
    client: ReconciliationClient, command: ReconCommand, *, out: TextIO, as_json: bool
) -> None:
    """Perform a recon command and print its result."""
    data: object
    match command:
        case ReadStatement(id=subject):
            statement = await client.get_statement(subject)
            data = {
                "lines": [line_data(line) for line in statement.lines],
                "truncated": statement.truncated,
            }
            text = format_statement(statement.lines)
            if statement.truncated:
                text += "\n(more lines than shown)"
        case ListExceptions():
            page = await client.list_exceptions(
                include_resolved=command.include_resolved,
                reason=command.reason,
                page_size=command.page_size,
                page_token=command.page_token,
            )
            data = {
                "exceptions": [exception_data(e) for e in page.exceptions],
                "next_page_token": page.next_page_token,
            }
            text = format_exceptions(page.exceptions) if page.exceptions else "no exception"
            if page.next_page_token:
                text += f"\nnext page: --page-token {page.next_page_token}"
        case ResolveException():
            resolved = await client.resolve_exception(
                command.exception_id, command.resolution, command.why
            )
            data = exception_data(resolved)
            text = format_exceptions((resolved,))
        case ReadClose(currency_code=currency, day=day):
            close = await client.get_daily_close(currency, day)
            data = close_data(close)
            text = format_close(close)
        case _:
            assert_never(command)
    print(json.dumps(data, indent=2) if as_json else text, file=out)
