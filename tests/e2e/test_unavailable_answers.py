"""When PostgreSQL cannot be reached, the caller learns that it may retry and under which
request id it can ask about the call, never the database's address or driver error: those
go to the server's log with the same request id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from stockcore.v1 import inventory_pb2 as pb

from devstack.credentials import DevCredentials
from server.config import Settings
from tests import callers
from tests.servers import serving
from tests.support import connected, create_request, put_stock


class Cuttable:
    """A TCP proxy to PostgreSQL that can be cut: then every connection through it is
    closed and new ones are refused."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.links:
            writer.close()
        await self.server.wait_closed()


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[tuple[Cuttable, str]]:
    assert settings.pg_dsn is not None
    parts = urlsplit(settings.pg_dsn)
    cuttable = Cuttable(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await cuttable.start()
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    yield cuttable, urlunsplit(parts._replace(netloc=netloc))
    with contextlib.suppress(Exception):
        await cuttable.cut()


async def test_an_unreachable_database_is_answered_without_its_address_or_error(
    settings: Settings,
    credentials: DevCredentials,
    proxy: tuple[Cuttable, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cuttable, dsn = proxy
    async with serving(settings.with_overrides(pg_dsn=dsn, db_timeout_s=2.0)) as app:
        async with callers.secure_channel(
            f"127.0.0.1:{app.port}", credentials, callers.token(credentials)
        ) as channel:
            from stockcore.v1 import inventory_pb2_grpc

            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            read = pb.GetStockRequest(skus=["A"], consistency=pb.CONSISTENCY_STRONG)
            await put_stock(stub, "A", 5)
            await stub.GetStock(read, timeout=10)
            await cuttable.cut()
            with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetStock(read, timeout=10, metadata=(("x-request-id", "probe-1"),))

    error = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    text = error.details() or ""
    assert "request id probe-1" in text and "retry" in text
    port = str(urlsplit(dsn).port)
    for leak in (port, "127.0.0.1", "PostgreSQL", "Error", "Errno"):
        assert leak not in text, text
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == "probe-1"]
    assert logged and "PostgreSQL unavailable" in logged[0].error  # type: ignore[attr-defined]


async def test_a_request_id_outside_the_id_charset_is_replaced(
    settings: Settings, credentials: DevCredentials, dsn: str
) -> None:
    from stockcore.v1 import orders_pb2 as opb
    from stockcore.v1 import orders_pb2_grpc

    async with serving(settings) as app:
        async with callers.secure_channel(
            f"127.0.0.1:{app.port}", credentials, callers.token(credentials)
        ) as channel:
            from stockcore.v1 import inventory_pb2_grpc

            await put_stock(inventory_pb2_grpc.InventoryServiceStub(channel), "A", 10)
            orders = orders_pb2_grpc.OrderServiceStub(channel)
            bad = "x" * 129
            await orders.CreateOrder(create_request("o-1"), metadata=(("x-request-id", bad),))
            await orders.CreateOrder(
                create_request("o-2"), metadata=(("x-request-id", "<script> 'quoted'"),)
            )
            await orders.CreateOrder(create_request("o-3"), metadata=(("x-request-id", "ok-3"),))
            reply = await orders.GetOrder(opb.GetOrderRequest(order_id="o-1"))
    async with connected(dsn) as conn:
        ids = dict(await conn.fetch("SELECT order_id, request_id FROM stockcore.order_history"))
    assert ids["o-3"] == "ok-3"
    for replaced in (ids["o-1"], ids["o-2"]):
        assert len(replaced) == 32 and replaced.isalnum()
    assert reply.history[0].request_id == ids["o-1"]
