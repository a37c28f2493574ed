"""Project-owned PostgreSQL, Redis and server processes for `make run`, the test suite and
the load tools.

They listen on loopback only, keep their data under a git-ignored folder, and die with the
process that started them (runtime/processes.py: the kernel's parent-death signal, no Python
between fork and exec), so a crashed test run never leaves servers behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.config import DevSettings
from devstack.credentials import DevCredentials
from runtime.processes import (
    RunAs,
    await_until,
    child_argv,
    failed_start,
    free_port,
    kill_child,
    listening,
    spawn,
    stop_with,
    wait_until,
)

_ROOT = Path(__file__).resolve().parent.parent


def _pg_bindir() -> Path:
    found = shutil.which("postgres") or shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    if candidates:
        return candidates[0].parent
    raise RuntimeError("PostgreSQL server binaries not found: install postgresql (15 or newer)")


def _bin(bindir: Path, name: str) -> str:
    path = bindir / name
    return str(path) if path.exists() else name


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster in `datadir`, listening on 127.0.0.1:`port`."""

    datadir: Path
    port: int
    database: str = "stockcore"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def user(self) -> str:
        """The database superuser name (the OS user that owns the cluster)."""
        return "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def dsn(self) -> str:
        """The DSN of the project database."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.datadir.parent / f"{self.datadir.name}.log"

    def _run_as(self) -> RunAs | None:
        if os.geteuid() != 0:
            return None
        entry = pwd.getpwnam("postgres")  # PostgreSQL refuses to run as root
        return RunAs(entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster when missing, start it, and create the database (blocking)."""
        bindir = _pg_bindir()
        self._prepare(bindir)
        self._launch(bindir)
        assert self.proc is not None
        wait_until(self._ready, self.proc, self.log, timeout, "PostgreSQL")
        self._create_database(bindir)

    async def restart(self, timeout: float = 60.0) -> None:
        """Start the existing cluster again (after `kill` or `stop`) without blocking the
        event loop; crash recovery replays the WAL before it accepts connections."""
        bindir = _pg_bindir()
        self._launch(bindir)
        assert self.proc is not None
        await await_until(self._ready, self.proc, self.log, timeout, "PostgreSQL")

    def _prepare(self, bindir: Path) -> None:
        run_as = self._run_as()
        self.datadir.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            os.chown(self.datadir, run_as.uid, run_as.gid)
        self.datadir.chmod(0o700)
        if (self.datadir / "PG_VERSION").exists():
            return
        initdb = [
            _bin(bindir, "initdb"),
            *("-D", str(self.datadir), "-U", self.user),
            *("--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"),
        ]
        subprocess.run(child_argv(initdb, signal.SIGKILL, run_as), check=True, capture_output=True)

    def _launch(self, bindir: Path) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.datadir),
            "max_connections": "200",
            "shared_buffers": "256MB",
            "max_prepared_transactions": "64",
            "log_min_messages": "warning",
        }
        if (bindir.parent / "lib" / "pg_stat_statements.so").exists():
            # Statement counts for profiles (loadtests/profile.py) and operators; the
            # extension is created by whoever reads them.
            settings["shared_preload_libraries"] = "pg_stat_statements"
        argv = [_bin(bindir, "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        run_as = self._run_as()
        with open(self.log, "ab") as out:
            if run_as is not None:
                os.chown(self.log, run_as.uid, run_as.gid)
            # SIGINT is PostgreSQL's fast shutdown: it ends sessions and checkpoints.
            self.proc = spawn(
                argv,
                death_signal=signal.SIGINT,
                run_as=run_as,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _ready(self) -> bool:
        isready = [
            _bin(_pg_bindir(), "pg_isready"),
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-q"),
        ]
        return subprocess.run(isready, check=False).returncode == 0

    def _psql(self, bindir: Path, sql: str) -> str:
        done = subprocess.run(
            [
                _bin(bindir, "psql"),
                *("-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres"),
                *("-tAc", sql),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def _create_database(self, bindir: Path) -> None:
        exists = self._psql(bindir, f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists != "1":
            self._psql(bindir, f'CREATE DATABASE "{self.database}"')

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend, as a crash of the host would; returns
        once they are gone, so a restart finds no old process attached to shared memory."""
        kill_child(self.proc, tree=True)
        self.proc = None

    def stop(self) -> None:
        """Fast shutdown."""
        stop_with(self.proc, signal.SIGINT, 30)
        self.proc = None


# Past its maxmemory, Redis refuses writes rather than evicting keys. Every key in it is
# one the server counts on: the gate's levels, pending holds (a hold record evicted leaves
# its units counted as held, and the gate, whose refusals are final, turns buyers away from
# stock that is there), known reservation ids, the mirror's ready marker, the event stream
# (one key: evicted, it takes its consumer groups and every event they had not read), its
# marker, and consumer ledgers (evicted, an event may be handled twice). No eviction policy
# spares them: allkeys-* may pick any key, volatile-* the keys with a time-to-live, which the
# known ids and the ledgers are. A refused write, instead, is what every user of this Redis
# already handles as Redis being unavailable: the gate is bypassed and PostgreSQL decides
# alone (correct, slower), the relay keeps the events in the outbox and tries again,
# consumers wait; trimming the stream is allowed while full and makes room.
REDIS_MAXMEMORY_POLICY = "noeviction"


@dataclass
class LocalRedis:
    """A Redis server in `datadir`, listening on 127.0.0.1:`port`, refusing writes past
    `maxmemory_mb` (the memory budget of README, "Redis memory").

    Redis holds only what can be rebuilt from PostgreSQL, so it keeps nothing on disk,
    unless `persistent` (an append-only file, as some operators run it: tests use it to
    show that what survives a restart is not trusted blindly).
    """

    datadir: Path
    port: int
    persistent: bool = False
    maxmemory_mb: int = DevSettings.dev_redis_maxmemory_mb
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The redis:// URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.datadir / "redis.log"

    def start(self, timeout: float = 30.0) -> None:
        """Start redis-server and wait until it listens (blocking)."""
        self._launch()
        assert self.proc is not None
        wait_until(lambda: listening(self.port), self.proc, self.log, timeout, "Redis")

    async def restart(self, timeout: float = 30.0) -> None:
        """Start redis-server again without blocking the event loop."""
        self._launch()
        assert self.proc is not None
        await await_until(lambda: listening(self.port), self.proc, self.log, timeout, "Redis")

    def _launch(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: run `make redis` as root (installs Debian's redis-server), "
                "install it with your package manager, or set STOCKCORE_REDIS_URL"
            )
        self.datadir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "yes" if self.persistent else "no"),
            *("--appendfsync", "always", "--dir", str(self.datadir)),
            *("--protected-mode", "yes", "--daemonize", "no"),
            *("--maxmemory", f"{self.maxmemory_mb}mb"),
            *("--maxmemory-policy", REDIS_MAXMEMORY_POLICY),
            # DEBUG SLEEP from loopback: the tests make this Redis slow without killing it.
            *("--enable-debug-command", "local"),
        ]
        with open(self.log, "ab") as out:
            self.proc = spawn(
                argv, death_signal=signal.SIGTERM, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        """Kill with SIGKILL, as a crash would."""
        kill_child(self.proc, tree=True)
        self.proc = None

    def stop(self) -> None:
        """Shut down."""
        stop_with(self.proc, signal.SIGTERM, 10)
        self.proc = None


@contextlib.contextmanager
def local_servers(
    root: Path,
    pg_port: int,
    redis_port: int,
    *,
    want_pg: bool = True,
    want_redis: bool = True,
    redis_maxmemory_mb: int = DevSettings.dev_redis_maxmemory_mb,
) -> Iterator[tuple[LocalPostgres | None, LocalRedis | None]]:
    """Start the wanted servers under `root` and stop them on exit."""
    pg = LocalPostgres(root / "pg", pg_port) if want_pg else None
    redis = (
        LocalRedis(root / "redis", redis_port, maxmemory_mb=redis_maxmemory_mb)
        if want_redis
        else None
    )
    try:
        if pg is not None:
            pg.start()
        if redis is not None:
            redis.start()
        yield pg, redis
    finally:
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.stop()


class LocalStockcore:
    """`python -m server serve` on 127.0.0.1:port as a child process, dying with its parent
    (so tests and benchmarks can kill -9 it and start it again)."""

    def __init__(
        self,
        pg_dsn: str,
        redis_url: str,
        shards: int,
        data_dir: Path | str = ".data",
        *,
        credentials: DevCredentials | None = None,
        mutual_tls: bool = False,
        **extra_env: str,
    ) -> None:
        """A server with TLS and token checks by the development credentials (those of
        `data_dir` unless given), with mutual TLS if asked; `extra_env` overrides any
        STOCKCORE_* variable (STOCKCORE_PLAINTEXT=true, STOCKCORE_AUTH_DISABLED=true ...)."""
        self.port = free_port()
        self.credentials = credentials or DevCredentials(Path(data_dir)).ensure()
        self.mutual_tls = mutual_tls
        self.env = {
            **os.environ,
            "STOCKCORE_PG_DSN": pg_dsn,
            "STOCKCORE_REDIS_URL": redis_url,
            "STOCKCORE_GRPC_PORT": str(self.port),
            "STOCKCORE_METRICS_PORT": "0",
            "STOCKCORE_SHARDS": str(shards),
            "STOCKCORE_LOG_JSON": "false",
            "STOCKCORE_LOG_LEVEL": "WARNING",
            **self.credentials.server_env(mutual=mutual_tls),
            **extra_env,
        }
        self.log = Path(data_dir) / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """host:port."""
        return f"127.0.0.1:{self.port}"

    @property
    def plaintext(self) -> bool:
        """Whether it serves without TLS."""
        return self.env.get("STOCKCORE_PLAINTEXT", "").lower() in {"1", "true", "yes", "on"}

    def health_channel(self) -> Any:
        """A grpc.aio channel fit for the health service (which needs no token)."""
        import grpc

        if self.plaintext:
            return grpc.aio.insecure_channel(self.target)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.credentials.ca_cert.read_bytes(),
            private_key=self.credentials.client_key.read_bytes() if self.mutual_tls else None,
            certificate_chain=self.credentials.client_cert.read_bytes()
            if self.mutual_tls
            else None,
        )
        return grpc.aio.secure_channel(self.target, credentials)

    async def start(self, timeout: float = 30.0) -> None:
        """Start and wait until the health service says SERVING."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = spawn(
                [sys.executable, "-m", "server", "serve"],
                death_signal=signal.SIGKILL,
                cwd=_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with self.health_channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while loop.time() < deadline:
                if self.proc.poll() is not None:
                    raise failed_start(self.proc, self.log)
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a crash would."""
        kill_child(self.proc, tree=True)
        self.proc = None

    def stop(self) -> None:
        """Graceful stop."""
        stop_with(self.proc, signal.SIGTERM, 15)
        self.proc = None
