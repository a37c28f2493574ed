"""A call's `idempotency-key` metadata names the idempotency id of the RPCs that have one
(the HTTP gateway passes its Idempotency-Key header on as this metadata, like every
header): a request that leaves its id empty takes the key's, and one that names another id
is refused whole with INVALID_ARGUMENT. The key is compared with the decoded request, the
id the server acts on, so no spelling of a JSON body (escapes, key order, whitespace, a
repeated key, an id in the query) makes the key and the id differ unseen. Checked right
after decoding, beside the repeated-field bounds (server/rpc/bounds.py); other RPCs ignore
the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import descriptor

from server.domain.errors import FieldViolation, InvalidArgument

METADATA_KEY = "idempotency-key"

# Request message -> the field the key names.
ID_FIELDS: dict[str, str] = {
    "stockcore.v1.ReserveRequest": "reservation_id",
    "stockcore.v1.CreateOrderRequest": "order_id",
    "stockcore.v1.ConfirmPaymentRequest": "payment_id",
    "stockcore.v1.AdjustStockRequest": "idempotency_key",
    "stockcore.v1.SetReservationLineRequest": "change_id",
    "stockcore.v1.RefundLineRequest": "line_refund_id",
}

Metadata = Iterable[tuple[str, str | bytes]] | None


class UnknownIdField(Exception):
    """ID_FIELDS names a field its message does not have as a singular string."""


def binder(kind: Any) -> Callable[[Any, Metadata], None] | None:
    """What binds the key of a call's metadata to a decoded `kind` request: fills its id
    field or refuses a different one (None: `kind` has no id the key names). An entry of
    ID_FIELDS that names no string field of its message fails here, when the handlers are
    built."""
    name = ID_FIELDS.get(kind.full_name)
    if name is None:
        return None
    field = kind.fields_by_name.get(name)
    if field is None or field.type != descriptor.FieldDescriptor.TYPE_STRING or field.is_repeated:
        raise UnknownIdField(f"{kind.full_name} has no string field {name}")

    def bind(request: Any, metadata: Metadata) -> None:
        keys = {value for key, value in metadata or () if key == METADATA_KEY and value}
        if not keys:
            return
        if len(keys) > 1:
            raise InvalidArgument(
                [FieldViolation(name, f"the call names {len(keys)} different {METADATA_KEY}s")]
            )
        (key,) = keys
        named = getattr(request, name)
        if not named:
            setattr(request, name, key)
        elif named != key:
            raise InvalidArgument(
                [FieldViolation(name, f"differs from the call's {METADATA_KEY} (Idempotency-Key)")]
            )

    return bind
