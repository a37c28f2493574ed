"""gRPC status -> HTTP status through the gateway, for every code in the README's table,
with the google.rpc.Status body and its details; and the Authorization header arriving as
call metadata. The real server answers only some of these codes on demand, so a stand-in
InventoryService (plaintext) answers whatever code the reservation id names; the secured
server's own 401 and 403 are tested in test_gateway.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from stockcore.v1 import inventory_pb2

from gateway.config import GatewaySettings
from gateway.envoy import Gateway
from runtime.processes import free_port

# The README's table.
HTTP_STATUS_OF = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
}


class StandIn:
    """GetReservation answering the status code its reservation_id names, with details."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    async def get_reservation(
        self,
        request: inventory_pb2.GetReservationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inventory_pb2.GetReservationResponse:
        self.metadata.append(
            {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        )
        code = code_pb2.Code.Value(request.reservation_id)
        info = error_details_pb2.ErrorInfo(reason=request.reservation_id, domain="stockcore.v1")
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2))
        status = status_pb2.Status(code=code, message=f"answered {request.reservation_id}")
        status.details.add().Pack(info)
        status.details.add().Pack(retry)
        await context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returns only by raising")


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[StandIn, int]]:
    servicer = StandIn()
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "stockcore.v1.InventoryService",
        {
            "GetReservation": grpc.unary_unary_rpc_method_handler(
                servicer.get_reservation,
                request_deserializer=inventory_pb2.GetReservationRequest.FromString,
                response_serializer=inventory_pb2.GetReservationResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(0)


@pytest.fixture
def plain_settings(tmp_path: Path) -> GatewaySettings:
    """A plaintext upstream, as the stand-in serves: the real, secured server's answers
    through the gateway are in test_gateway.py."""
    return GatewaySettings(
        plaintext=True,
        gateway_port=free_port(),
        gateway_stats_port=0,
        gateway_access_log=str(tmp_path / "access.log"),
    ).validate()


@pytest.fixture
def gateway(
    stand_in: tuple[StandIn, int], plain_settings: GatewaySettings, tmp_path: Path
) -> Iterator[Gateway]:
    with Gateway(plain_settings, tmp_path / "gw", grpc_port=stand_in[1]) as gw:
        yield gw


def _get(gateway: Gateway, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(gateway.url + path, timeout=10, **kwargs)


@pytest.mark.parametrize(("code", "http_status"), sorted(HTTP_STATUS_OF.items()))
async def test_grpc_status_becomes_http_status_with_its_details(
    gateway: Gateway, code: str, http_status: int
) -> None:
    reply = await asyncio.to_thread(_get, gateway, f"/v1/reservations/{code}")
    assert reply.status_code == http_status
    body = reply.json()
    assert body["code"] == code_pb2.Code.Value(code)
    assert body["message"] == f"answered {code}"
    types = [d["@type"].rsplit(".", 1)[-1] for d in body["details"]]
    assert types == ["ErrorInfo", "RetryInfo"]
    assert body["details"][0]["reason"] == code
    assert body["details"][1]["retryDelay"] == "2s"


async def test_authorization_header_reaches_the_server_as_call_metadata(
    gateway: Gateway, stand_in: tuple[StandIn, int]
) -> None:
    headers = {"Authorization": "Bearer token-for-checkout"}
    await asyncio.to_thread(_get, gateway, "/v1/reservations/NOT_FOUND", headers=headers)
    assert stand_in[0].metadata[-1]["authorization"] == "Bearer token-for-checkout"


async def test_server_down_is_503_as_json(plain_settings: GatewaySettings, tmp_path: Path) -> None:
    with Gateway(plain_settings, tmp_path / "gw", grpc_port=free_port()) as gw:
        reply = await asyncio.to_thread(_get, gw, "/v1/reservations/r1")
    assert reply.status_code == 503
    body = reply.json()
    assert body["code"] == 14
    assert body["details"][0]["reason"] == "UPSTREAM_UNAVAILABLE"


def test_gateway_timeouts_must_name_known_rpcs(
    plain_settings: GatewaySettings, tmp_path: Path
) -> None:
    from gateway.config import SettingsError

    wrong = replace(plain_settings, gateway_timeouts={"Reserv": 1.0})
    with pytest.raises(SettingsError, match="unknown RPCs: Reserv"):
        Gateway(wrong, tmp_path / "gw", grpc_port=1)
