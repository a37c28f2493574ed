"""The user-facing docs run as written: every command block and Python block of README.md,
the other Markdown files at the top of the repository and docs/*.md (tests/doc_blocks.py
says how each block is taken) is run, in order, against the stack `make run` starts, and a
doc whose example has drifted from the code fails here.

The stack is `python -m devstack`, what `make run` runs, started once for all docs: the
server over TLS with tokens, Envoy, the simulated warehouse, carriers and payment provider,
a fulfilment worker, the payment webhook receiver and Prometheus, on the suite's
PostgreSQL and Redis, with the STOCKCORE_* variables the docs' `make run` lines set. Its ports are free loopback ports, not the defaults the docs name
(another stack may hold those): a command's `127.0.0.1:50051`, `localhost:8080`,
`localhost:58081` ... are rewritten to the stack's ports for the same services
(tests/doc_blocks.py, `on_stack_ports`), the only change made to a command.

Commands run from the repository root, as the README says, in a user's environment
(none of the suite's STOCKCORE_* variables) with three more: STOCKCORE_CONFIG, the
stockctl config file the stack wrote (make run writes the user's), and STOCKCORE_PG_DSN
and STOCKCORE_REDIS_URL, the stack's database and Redis, which `stockctl fulfilment` and
`stockctl events` find at make run's ports otherwise.
Python blocks also get STOCKCORE_CA_FILE, the stack's CA, which the typed clients find
under .data/ when run from the repository root of a `make run` checkout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.credentials import DevCredentials
from runtime.processes import await_until, free_port, kill_child, listening, spawn, tail
from tests import doc_blocks
from tests.callers import user_environment
from tests.conftest import ROOT, reset_state
from tests.doc_blocks import (
    DEFAULT_PORTS,
    Block,
    Kind,
    blocks,
    on_stack_ports,
    problems,
    shell_commands,
    stack_variables,
    user_docs,
)
from tests.doc_session import Ran, Session
from tests.servers import SHARDS, Servers
from tests.waiting import sql_is, until

DOCS = user_docs(ROOT)

# Each service's port variable under `make run` (the stack's own; the suite's PostgreSQL
# and Redis keep theirs).
_PORT_VARIABLES = {
    "gRPC": "STOCKCORE_GRPC_PORT",
    "server metrics": "STOCKCORE_METRICS_PORT",
    "gateway": "STOCKCORE_GATEWAY_PORT",
    "gateway stats": "STOCKCORE_GATEWAY_STATS_PORT",
    "warehouse": "STOCKCORE_DEV_WAREHOUSE_PORT",
    "primary carrier": "STOCKCORE_DEV_PRIMARY_CARRIER_PORT",
    "fallback carrier": "STOCKCORE_DEV_FALLBACK_CARRIER_PORT",
    "worker metrics": "STOCKCORE_FULFIL_METRICS_PORT",
    "payment provider": "STOCKCORE_DEV_PAYMENTS_PORT",
    "webhook receiver": "STOCKCORE_WEBHOOK_PORT",
    "webhook receiver metrics": "STOCKCORE_WEBHOOK_METRICS_PORT",
    "reconciler metrics": "STOCKCORE_RECONCILE_METRICS_PORT",
    "refund sender metrics": "STOCKCORE_REFUND_METRICS_PORT",
    "Prometheus": "STOCKCORE_DEV_PROMETHEUS_PORT",
}
_START_S = 120.0


@dataclass(frozen=True)
class DocsStack:
    """The running stack: its ports by service, and the environments the docs run in."""

    ports: dict[str, int]
    logs: Path
    """Where the stack's logs are: its own, and its programs' under data/logs/."""
    env: dict[str, str]
    python_env: dict[str, str]


def _loopback_port(url: str) -> int | None:
    """The port of a server on loopback that `url` names (None: another host)."""
    parts = urlsplit(url)
    return parts.port if parts.hostname in {"127.0.0.1", "localhost"} else None


def _answers(url: str) -> bool:
    """Whether `url` answers 200 (blocking): the stack's own server, not another process
    that took the port meanwhile."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _healthy(port: int, ca: Path) -> bool:
    """Whether the gRPC server on `port` says SERVING (blocking)."""
    if not ca.is_file():
        return False
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
async def docs_stack(
    servers: Servers, migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DocsStack]:
    """`make run`'s stack on free ports and the suite's emptied PostgreSQL and Redis,
    started once for every doc; stopped as Ctrl-C stops it."""
    await reset_state(migrated, servers.redis_url)
    home = tmp_path_factory.mktemp("docs-stack")
    data, config, log = home / "data", home / "config" / "config.toml", home / "stack.log"
    ports = {name: free_port() for name in _PORT_VARIABLES}
    for name, url in (("PostgreSQL", servers.pg_dsn), ("Redis", servers.redis_url)):
        if (port := _loopback_port(url)) is not None:
            ports[name] = port
    assert set(ports) <= set(DEFAULT_PORTS)
    docs_variables = stack_variables(b for path in DOCS for b in blocks(path, ROOT))
    own = {
        "STOCKCORE_PG_DSN": servers.pg_dsn,
        "STOCKCORE_REDIS_URL": servers.redis_url,
        "STOCKCORE_SHARDS": str(SHARDS),
        "STOCKCORE_DATA_DIR": str(data),
        "STOCKCORE_CONFIG": str(config),
        **{_PORT_VARIABLES[name]: str(ports[name]) for name in _PORT_VARIABLES},
    }
    assert not set(docs_variables) & set(own), "the docs set what the test stack must choose"
    env = {
        **{n: v for n, v in os.environ.items() if not n.startswith(("STOCKCORE_", "GRPC_"))},
        **docs_variables,
        **own,
    }
    with log.open("ab") as out:
        stack = spawn(
            [sys.executable, "-m", "devstack"],
            death_signal=signal.SIGINT,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ca = DevCredentials(data).ca_cert
        # The checkout page, the simulators' fault knobs, Prometheus: each answered by the
        # stack's own server.
        pages = [
            f"http://127.0.0.1:{ports['gateway']}/",
            *(
                f"http://127.0.0.1:{ports[n]}/_faults"
                for n in ("warehouse", "primary carrier", "fallback carrier", "payment provider")
            ),
            f"http://127.0.0.1:{ports['Prometheus']}/-/ready",
        ]
        await await_until(
            lambda: (
                all(map(_answers, pages))
                and listening(ports["webhook receiver"])
                and _healthy(ports["gRPC"], ca)
            ),
            stack,
            log,
            _START_S,
            "make run's stack",
        )
        await until(
            lambda: sql_is(migrated, "SELECT count(*) > 0 FROM stockcore.fulfilment_workers", True),
            "the fulfilment worker's first heartbeat",
            _START_S,
        )
        assert config.is_file(), tail(log)
        yield DocsStack(
            ports,
            home,
            user_environment(
                STOCKCORE_CONFIG=str(config),
                STOCKCORE_PG_DSN=servers.pg_dsn,
                STOCKCORE_REDIS_URL=servers.redis_url,
            ),
            {"STOCKCORE_CA_FILE": str(ca)},
        )
    finally:
        stack.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            stack.wait(30)
        except subprocess.TimeoutExpired:
            kill_child(stack, tree=True)


@pytest.fixture(scope="module")
def make_help() -> str:
    """What `make help` prints in the checkout."""
    return doc_blocks.make_help(ROOT)


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_the_doc_runs_as_written(
    doc: Path, docs_stack: DocsStack, make_help: str, tmp_path: Path
) -> None:
    found = blocks(doc, ROOT)
    makefile = (ROOT / "Makefile").read_text()
    # A block the test cannot classify fails here too, before anything runs.
    assert [p for b in found for p in problems(b, make_help, makefile, ROOT)] == []
    session = Session(
        ROOT, dict(docs_stack.env), tmp_path / "session", python_env=docs_stack.python_env
    )
    began = time.monotonic()
    done: list[Ran] = []
    for block in found:
        for ran in _runs(session, block, docs_stack.ports):
            done.append(ran)
            if ran.problem:
                pytest.fail(f"{ran.report()}\n{_last_logged(docs_stack.logs)}", pytrace=False)
    for ran in done:
        print(f"{ran.seconds:6.2f} s  {ran.where}  {ran.written.splitlines()[0][:80]}")
    print(f"{doc.name}: {len(done)} commands and scripts in {time.monotonic() - began:.1f} s")


def _last_logged(home: Path, lines: int = 6) -> str:
    """The last lines of each of the stack's logs, for a failure message."""
    shown = []
    for log in [home / "stack.log", *sorted((home / "data" / "logs").glob("*.log"))]:
        shown.append(f"--- {log}")
        shown += [line[:240] for line in tail(log, lines).splitlines()]
    return "\n".join(shown)


def _runs(session: Session, block: Block, ports: dict[str, int]) -> Iterator[Ran]:
    """Run what a block holds, one command after the other, as a user pastes them."""
    if block.kind is Kind.PYTHON:
        yield session.run_python(block, on_stack_ports(block.code, ports))
    elif block.kind is Kind.SHELL:
        for command in shell_commands(block):
            where = f"{block.doc}:{command.line}"
            ran = on_stack_ports(command.text, ports)
            yield session.run(command, where, ran)
