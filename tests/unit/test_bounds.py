"""Every repeated field of every request is bounded, in code and in its proto comment,
and the check refuses a request over a bound whole, at the cost of a length check."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from stockcore.v1 import inventory_pb2, orders_pb2, reconciliation_pb2

from server.domain.errors import MAX_VIOLATIONS, FieldViolation, InvalidArgument
from server.rpc import bounds

ROOT = Path(__file__).resolve().parents[2]
SERVICES = (
    inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
    orders_pb2.DESCRIPTOR.services_by_name["OrderService"],
    reconciliation_pb2.DESCRIPTOR.services_by_name["ReconciliationService"],
)


def request_types() -> list[object]:
    return [m.input_type for service in SERVICES for m in service.methods]


def test_every_request_of_every_rpc_has_its_repeated_fields_bounded() -> None:
    for kind in request_types():
        bounds.checker(kind)  # raises Unbounded for a repeated field without a bound
    named = {
        f.full_name
        for kind in request_types()
        for f in kind.fields
        if f.is_repeated  # type: ignore[attr-defined]
    }
    assert named == set(bounds.MAX_ENTRIES)


def _comment_above(proto: str, message: str, field: str) -> str:
    body = proto[proto.index(f"message {message} {{") :]
    lines = body[: body.index(f" {field} = ")].splitlines()
    comment = []
    for line in reversed(lines[:-1]):
        if not line.strip().startswith("//"):
            break
        comment.append(line.strip().removeprefix("//").strip())
    return " ".join(reversed(comment))


@pytest.mark.parametrize("full_name", sorted(bounds.MAX_ENTRIES))
def test_the_proto_comment_states_the_bound(full_name: str) -> None:
    _, _, message, field = full_name.split(".")
    proto = "\n".join(p.read_text() for p in (ROOT / "protos/stockcore/v1").glob("*.proto"))
    comment = _comment_above(proto, message, field)
    assert f"{bounds.MAX_ENTRIES[full_name]:,}" in comment, comment


def test_a_repeated_field_without_a_bound_is_refused_at_start_up() -> None:
    proto = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t")
    msg = proto.message_type.add(name="Unlisted")
    msg.field.add(
        name="names",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    with pytest.raises(bounds.Unbounded, match=r"t\.Unlisted\.names"):
        bounds.checker(pool.FindMessageTypeByName("t.Unlisted"))


def test_a_request_over_a_bound_is_refused_with_the_count() -> None:
    check = bounds.checker(orders_pb2.WatchOrdersRequest.DESCRIPTOR)
    check(orders_pb2.WatchOrdersRequest(types=[1] * 16))
    with pytest.raises(InvalidArgument) as raised:
        check(orders_pb2.WatchOrdersRequest(types=[1] * 17))
    assert raised.value.violations == (
        FieldViolation("types", "must hold at most 16 entries, got 17"),
    )


def test_an_invalid_argument_lists_twenty_violations_and_counts_all() -> None:
    many = [FieldViolation(f"f{i}", "bad") for i in range(MAX_VIOLATIONS + 5)]
    error = InvalidArgument(many)
    assert error.listed == tuple(many[:MAX_VIOLATIONS])
    assert len(error.violations) == MAX_VIOLATIONS + 5
    assert str(error).endswith("; and 5 more (25 violations)")
    assert "f20" not in str(error)
