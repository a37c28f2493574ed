"""The HTTP/JSON gateway forwards to the server only what its transcoder made from JSON: a
gRPC request sent to the gateway's HTTP port (any `application/grpc…` content type, over
HTTP/2 as gRPC clients send it or over HTTP/1.1 as any page's fetch can) is refused by
Envoy with 415 and never reaches the server, whichever method it names (stockcore's,
health, reflection) and whatever token it carries; JSON sent to a gRPC method's path is
not transcoded. gRPC callers reach the server directly, over TLS. Against the real Envoy
in front of the real server, with the checkout page's token where a page could send it."""

from __future__ import annotations

import asyncio
import http.client
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import grpc
import pytest
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from stockcore.v1 import inventory_pb2

from gateway.bootstrap import GRPC_REFUSED, rpc_methods
from gateway.config import GatewaySettings
from gateway.envoy import Gateway
from server.app import App
from server.config import Settings
from tests.e2e.conftest import GatewayCaller

# Every method a gRPC client could name: the API's, and the open services beside it.
METHODS: list[descriptor.MethodDescriptor] = [
    *rpc_methods(),
    *health_pb2.DESCRIPTOR.services_by_name["Health"].methods,
    *reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].methods,
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's server with reflection on, as `make run` serves it."""
    return replace(settings, reflection=True)


@pytest.fixture
async def page_token(api: GatewayCaller) -> str:
    """The token the checkout page gets from its session, as the page asks for it."""
    session = await asyncio.to_thread(api.page_session)
    token: str = session["token"]
    return token


@pytest.fixture
async def gateway_channel(api: GatewayCaller) -> AsyncIterator[grpc.aio.Channel]:
    """A gRPC channel (HTTP/2 without TLS) to the gateway's HTTP port."""
    async with grpc.aio.insecure_channel(urlsplit(api.url).netloc) as channel:
        yield channel


def _path(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def _refusal(
    channel: grpc.aio.Channel, method: descriptor.MethodDescriptor, token: str
) -> grpc.aio.AioRpcError:
    """The error a raw call of `method` (an empty request, sent as bytes) ends with."""
    metadata = (("authorization", f"Bearer {token}"),)
    path = _path(method)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if method.client_streaming:
            bidi = channel.stream_stream(path)(iter([b""]), metadata=metadata, timeout=10)
            await bidi.read()
        elif method.server_streaming:
            await channel.unary_stream(path)(b"", metadata=metadata, timeout=10).read()
        else:
            await channel.unary_unary(path)(b"", metadata=metadata, timeout=10)
    return raised.value


def _is_the_gateways_refusal(error: grpc.aio.AioRpcError) -> bool:
    # The server never answers UNKNOWN; Envoy's local reply to a gRPC request is UNKNOWN
    # (from 415) with the direct response's text.
    return (error.code(), error.details()) == (grpc.StatusCode.UNKNOWN, GRPC_REFUSED)


async def _stock_is_unknown(api: GatewayCaller, sku: str) -> bool:
    """The server knows no stock of `sku` (asked over HTTP/JSON)."""
    reply = await asyncio.to_thread(api.request, "GET", f"/v1/stock?skus={sku}")
    return reply.status_code == 404 and reply.json()["details"][0]["reason"] == "NOT_FOUND"


@pytest.mark.parametrize("method", METHODS, ids=_path)
async def test_grpc_call_through_the_gateway_is_refused(
    gateway_channel: grpc.aio.Channel, page_token: str, method: descriptor.MethodDescriptor
) -> None:
    """Every method, with the checkout page's token: refused by the gateway (the server
    would answer each otherwise: health and reflection need no token)."""
    error = await _refusal(gateway_channel, method, page_token)
    assert _is_the_gateways_refusal(error), (error.code(), error.details())


async def test_grpc_call_that_would_change_stock_changes_nothing(
    api: GatewayCaller, gateway_channel: grpc.aio.Channel
) -> None:
    """A valid AdjustStock with a token that may adjust stock: refused, nothing applied;
    the same change as JSON is served."""
    request = inventory_pb2.AdjustStockRequest(
        sku="RAW-1", delta=5, reason="restock", idempotency_key="raw-1"
    )
    adjust = gateway_channel.unary_unary(
        "/stockcore.v1.InventoryService/AdjustStock",
        request_serializer=inventory_pb2.AdjustStockRequest.SerializeToString,
        response_deserializer=inventory_pb2.AdjustStockResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await adjust(request, metadata=(("authorization", f"Bearer {api.token}"),), timeout=10)
    assert _is_the_gateways_refusal(raised.value), raised.value
    assert await _stock_is_unknown(api, "RAW-1")

    body = {"delta": "5", "reason": "restock", "idempotencyKey": "raw-1"}
    served = await asyncio.to_thread(api.request, "POST", "/v1/stock/RAW-1:adjust", json=body)
    assert served.status_code == 200, served.text


def _adjust_frame(sku: str) -> bytes:
    """One gRPC message frame: an AdjustStock request for `sku`."""
    message = inventory_pb2.AdjustStockRequest(
        sku=sku, delta=5, reason="restock", idempotency_key=sku
    ).SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def _http1_post(
    url: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """A POST over HTTP/1.1 with exactly `headers` (repeated names kept, in order)."""
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    try:
        connection.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in [*headers, ("content-length", str(len(body)))]:
            connection.putheader(name, value)
        connection.endheaders(body)
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


def _refused_by_the_gateway(status: int, headers: dict[str, str], body: bytes) -> bool:
    """Envoy's own answer: to gRPC, status UNKNOWN with GRPC_REFUSED; to anything else
    named application/grpc…, 415 with it; to the rest, the transcoder's 404 (no route)."""
    if status == 200:
        return (
            headers.get("grpc-status") == "2"
            and unquote(headers.get("grpc-message", "")) == GRPC_REFUSED
        )
    if status == 415:
        return body.decode() == GRPC_REFUSED
    return status == 404 and json.loads(body)["details"][0]["reason"] == "NO_ROUTE"


async def _post_adjust_frame(
    api: GatewayCaller, headers: list[tuple[str, str]], sku: str
) -> tuple[int, dict[str, str], bytes]:
    sent = [*headers, ("te", "trailers"), ("authorization", f"Bearer {api.token}")]
    path = "/stockcore.v1.InventoryService/AdjustStock"
    return await asyncio.to_thread(_http1_post, api.url, path, sent, _adjust_frame(sku))


@pytest.mark.parametrize(
    "headers",
    [
        [("content-type", "application/grpc")],
        [("content-type", "application/grpc+proto")],
        [("content-type", "application/grpc;charset=utf-8")],
        [("content-type", "Application/GRPC")],
        [("content-type", "application/grpc-web+proto")],
        # The transcoder's mark of a request it made cannot be forged.
        [("content-type", "application/grpc"), ("x-envoy-original-path", "/v1/stock")],
        [("content-type", "application/grpc"), ("content-type", "text/plain")],
        [("content-type", "text/plain"), ("content-type", "application/grpc")],
        [("content-type", "application/json")],
        [],
    ],
    ids=lambda headers: " ".join(f"{k}={v}" for k, v in headers) or "no content-type",
)
async def test_grpc_frame_over_http1_never_reaches_the_server(
    api: GatewayCaller, headers: list[tuple[str, str]]
) -> None:
    """A gRPC-framed AdjustStock sent as a plain HTTP/1.1 POST to the method's path, as a
    page's script could send it: refused, whatever the content type says, and the stock
    is never created."""
    answer = await _post_adjust_frame(api, headers, "RAW-HTTP1")
    assert _refused_by_the_gateway(*answer), answer
    assert await _stock_is_unknown(api, "RAW-HTTP1")


async def test_forged_transcoder_mark_is_dropped_from_internal_clients_too(
    app: App, gateway_settings: GatewaySettings, service_token: str, tmp_path: Path
) -> None:
    """Envoy itself drops x-envoy-original-path only from clients it deems external; the
    gateway drops it from all, so one that trusts its network (loopback here) refuses the
    forged gRPC call as well."""
    gateway = Gateway(gateway_settings, tmp_path / "internal", grpc_port=app.port)
    manager = gateway.config["static_resources"]["listeners"][0]["filter_chains"][0]
    manager["filters"][0]["typed_config"]["internal_address_config"] = {
        "cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]
    }
    with gateway:
        api = GatewayCaller(gateway, service_token)
        forged = [("content-type", "application/grpc"), ("x-envoy-original-path", "/v1/stock")]
        answer = await _post_adjust_frame(api, forged, "RAW-INTERNAL")
        assert _refused_by_the_gateway(*answer), answer
        assert await _stock_is_unknown(api, "RAW-INTERNAL")


JSON_BODIES = {
    "/stockcore.v1.OrderService/ConfirmPayment": {
        "orderId": "o-raw",
        "paymentId": "p-raw",
        "amountMinor": "1",
        "currencyCode": "EUR",
    },
    "/stockcore.v1.InventoryService/AdjustStock": {
        "sku": "RAW-JSON",
        "delta": "5",
        "reason": "restock",
        "idempotencyKey": "raw-json",
    },
}


@pytest.mark.parametrize("path", sorted(JSON_BODIES))
async def test_json_to_a_grpc_method_path_is_not_transcoded(api: GatewayCaller, path: str) -> None:
    """Only the google.api.http routes are transcoded; a gRPC method's own path is not
    one of them: the transcoder answers it (404) and forwards nothing."""
    reply = await asyncio.to_thread(api.request, "POST", path, json=JSON_BODIES[path])
    assert reply.status_code == 404, reply.text
    (info,) = reply.json()["details"]
    assert (info["reason"], info["domain"]) == ("NO_ROUTE", "gateway.stockcore.v1")
