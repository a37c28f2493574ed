"""A caller in another language: a Node.js client built from the .proto files alone
(tests/e2e/node, installed from npm by `make test` when node is present) reserves over TLS
with a token and reads the google.rpc details of a refusal."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from google.rpc import status_pb2
from stockcore.v1 import inventory_pb2 as pb

from devstack.credentials import DevCredentials
from server.app import App
from tests import callers
from tests.conftest import ROOT

NODE_CALLER = ROOT / "tests" / "e2e" / "node"
GOOGLE_PROTOS = Path(status_pb2.__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None, reason="node is not installed: the Node.js caller cannot run"
)


async def test_a_node_client_reserves_over_tls_and_reads_a_refusal_s_error_info(
    app: App, stub, credentials: DevCredentials
) -> None:
    assert (NODE_CALLER / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "run `make test` (or npm ci in tests/e2e/node) to install the Node.js caller"
    )
    await stub.AdjustStock(
        pb.AdjustStockRequest(sku="N-1", on_hand=5, reason="restock", idempotency_key="n")
    )
    holds_only = callers.token(credentials, "node-shop", ["inventory:hold"])

    done = await asyncio.to_thread(
        subprocess.run,
        [
            "node",
            "caller.mjs",
            f"127.0.0.1:{app.port}",
            str(credentials.ca_cert),
            holds_only,
            str(ROOT / "protos"),
            str(GOOGLE_PROTOS),
            "N-1",
        ],
        cwd=NODE_CALLER,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["reserved"] == "RESERVATION_STATUS_HELD"
    assert answer["refused"] == {
        "code": "PERMISSION_DENIED",
        "reason": "SCOPE_MISSING",
        "domain": "stockcore.v1",
        "metadata": {"required_scope": "stock:adjust"},
    }
    (level,) = (await stub.GetStock(pb.GetStockRequest(skus=["N-1"]))).levels
    assert (level.on_hand, level.reserved) == (5, 1)
