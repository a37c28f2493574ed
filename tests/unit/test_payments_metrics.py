"""The receiver's metrics name each delivery's outcome from its answer."""

from __future__ import annotations

import pytest

from payments.endpoint import outcome_of
from payments.receiver import Reply


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, {"event_id": "e", "outcome": "PAID", "duplicate": False}, "paid"),
        (200, {"event_id": "e", "outcome": "TO_RETURN", "duplicate": False}, "to_return"),
        (200, {"event_id": "e", "outcome": "NOTED", "duplicate": False}, "noted"),
        (200, {"event_id": "e", "outcome": "PAID", "duplicate": True}, "repeat"),
        (401, {"error": "bad signature"}, "refused_signature"),
        (400, {"error": "unknown order"}, "refused"),
        (409, {"error": "the charge already paid another order"}, "conflict"),
        (503, {"error": "not recorded; deliver it again"}, "unavailable"),
    ],
)
def test_each_answer_is_counted_under_its_outcome(
    status: int, body: dict[str, object], outcome: str
) -> None:
    assert outcome_of(Reply(status, body)) == outcome
