"""Reading and resolving what the reconciler found, as plain code: the codes of its tables
(018_reconciliation.sql, 020_daily_close.sql), the rows a reader gets, and the validation
of each request of ReconciliationService."""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.inventory import check_id, check_reason

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# The most lines GetStatement answers with; an order has a handful.
MAX_STATEMENT_LINES = 1000
# Days from 2000 to 2100: another is a typo, not a day of the provider's.
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(2100, 12, 31)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")


class Verdict(enum.IntEnum):
    """A statement's finding (reconciliation_statements.verdict)."""

    MATCHED = 1
    MISSING_AT_PROVIDER = 2
    MISSING_HERE = 3
    AMOUNT_DIFFERS = 4
    CURRENCY_DIFFERS = 5
    DUPLICATED = 6
    SETTLED_LATE = 7
    REFUND_FAILED = 8
    """The provider failed a refund: what it was to pay back is still owed."""


class SubjectKind(enum.IntEnum):
    """What a statement is about (reconciliation_statements.subject_kind)."""

    CHARGE = 1
    REFUND = 2


class Resolution(enum.IntEnum):
    """How an exception was resolved (reconciliation_exceptions.resolution)."""

    ACCEPTED = 1
    REFUNDED = 2
    WRITTEN_OFF = 3
    CORRECTED = 4
    """By the reconciler: a later statement about the same subject superseded it."""


#: The resolutions a person may give; CORRECTED is the reconciler's.
BY_PERSON = frozenset({Resolution.ACCEPTED, Resolution.REFUNDED, Resolution.WRITTEN_OFF})


class Resolved(enum.IntEnum):
    """The answer of stockcore.resolve_reconciliation_exception."""

    RESOLVED = 0
    UNKNOWN = 1
    ALREADY_RESOLVED = 2
    REFUSED = 3


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in minor units of a currency."""

    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One line of reconciliation_statements, with its exception (if it opened one)."""

    statement_id: int
    subject_kind: SubjectKind
    subject_id: str
    order_id: str | None
    verdict: Verdict
    ours: Money | None
    theirs: Money | None
    recovered: bool
    corrects: int | None
    fact_at: datetime
    stated_at: datetime
    lag_s: float
    exception_id: int | None
    resolution: Resolution | None


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One row of reconciliation_exceptions with the line that opened it."""

    exception_id: int
    reason: Verdict
    opened_at: datetime
    resolution: Resolution | None
    resolved_by: str | None
    resolved_why: str | None
    resolved_at: datetime | None
    statement: StatementLine


@dataclass(frozen=True, slots=True)
class Statement:
    """The lines about one id, oldest first; truncated when more than the limit matched."""

    lines: tuple[StatementLine, ...]
    truncated: bool


@dataclass(frozen=True, slots=True)
class ListExceptions:
    """A validated ListExceptions query: after `after` (an exception id; 0 for the first
    page), at most page_size of them."""

    include_resolved: bool
    reason: Verdict | None
    page_size: int
    after: int

    @property
    def filter_digest(self) -> str:
        """What a page token is bound to: the same filters on every page."""
        text = f"{self.include_resolved}|{self.reason}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def token(self, last: int) -> str:
        """The opaque token of the page after exception `last`."""
        raw = json.dumps([last, self.filter_digest], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class ResolveException:
    """A validated ResolveException: who is the caller's token subject."""

    exception_id: int
    resolution: Resolution
    by: str
    why: str


@dataclass(frozen=True, slots=True)
class LateItem:
    """A provider transfer counted in a day after the closed day it belongs to."""

    transfer_id: int
    txn_id: str
    type: str
    amount_minor: int
    belongs_to: date


@dataclass(frozen=True, slots=True)
class DailyClose:
    """One currency's provider balance over one UTC day, closed or as it stands."""

    currency: str
    day: date
    closed: bool
    opening_minor: int
    charges_minor: int
    refunds_minor: int
    fees_minor: int
    payouts_minor: int
    refund_failures_minor: int
    closing_minor: int
    closed_at: datetime | None
    closed_by: str | None
    late_items: tuple[LateItem, ...]


def statement_of(value: str) -> str:
    """Validate GetStatement's id."""
    violations = check_id(value, "id")
    if violations:
        raise InvalidArgument(violations)
    return value


def _read_token(token: str) -> tuple[int, str] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        last, digest = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        return None
    if not (isinstance(last, int) and last > 0 and isinstance(digest, str)):
        return None
    return last, digest


def list_exceptions(
    include_resolved: bool, reason: int, page_size: int, page_token: str
) -> ListExceptions:
    """Validate a ListExceptions request; reason 0 means any, page_size 0 the default."""
    violations: list[FieldViolation] = []
    wanted: Verdict | None = None
    if reason:
        try:
            wanted = Verdict(reason)
        except ValueError:
            violations.append(FieldViolation("reason", f"unknown verdict {reason}"))
        else:
            if wanted is Verdict.MATCHED:
                violations.append(FieldViolation("reason", "a MATCHED line opens no exception"))
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        violations.append(FieldViolation("page_size", f"must be 1 to {MAX_PAGE_SIZE} (0: default)"))
    query = ListExceptions(include_resolved, wanted, page_size or DEFAULT_PAGE_SIZE, 0)
    if page_token:
        read = _read_token(page_token)
        if read is None:
            violations.append(FieldViolation("page_token", "is not a token this server issued"))
        elif read[1] != query.filter_digest:
            violations.append(FieldViolation("page_token", "belongs to a query with other filters"))
        else:
            query = ListExceptions(include_resolved, wanted, query.page_size, read[0])
    if violations:
        raise InvalidArgument(violations)
    return query


def resolve_exception(exception_id: int, resolution: int, why: str, by: str) -> ResolveException:
    """Validate a ResolveException by the caller `by`."""
    violations: list[FieldViolation] = []
    if exception_id <= 0:
        violations.append(FieldViolation("exception_id", "must be a positive exception id"))
    chosen: Resolution | None = None
    try:
        chosen = Resolution(resolution)
    except ValueError:
        pass
    if chosen not in BY_PERSON:
        violations.append(FieldViolation("resolution", "must be ACCEPTED, REFUNDED or WRITTEN_OFF"))
    violations += check_reason(why, "why")
    if violations:
        raise InvalidArgument(violations)
    assert chosen is not None
    return ResolveException(exception_id, chosen, by, why)


def daily_close_of(currency: str, day: str) -> tuple[str, date]:
    """Validate GetDailyClose's currency and day."""
    violations: list[FieldViolation] = []
    if _CURRENCY.fullmatch(currency) is None:
        violations.append(FieldViolation("currency_code", "must be three capital letters"))
    parsed: date | None = None
    if _DAY.fullmatch(day) is None:
        violations.append(FieldViolation("day", "must be a UTC day as YYYY-MM-DD"))
    else:
        try:
            parsed = date.fromisoformat(day)
        except ValueError:
            violations.append(FieldViolation("day", f"{day} is not a day of the calendar"))
        else:
            if not FIRST_DAY <= parsed <= LAST_DAY:
                violations.append(FieldViolation("day", f"must be from {FIRST_DAY} to {LAST_DAY}"))
    if violations:
        raise InvalidArgument(violations)
    assert parsed is not None
    return currency, parsed
