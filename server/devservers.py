"""Project-owned PostgreSQL and Redis servers for `make run` and the test suite.

They listen on loopback only, keep their data under a git-ignored folder, and die
with the process that started them (the kernel's parent-death signal), so a
crashed test run never leaves servers behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Resolved once here: looking symbols up in a freshly forked child is not safe.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_ROOT = Path(__file__).resolve().parent.parent


def _child_setup(uid: int | None, gid: int | None, death_signal: int) -> Callable[[], None]:
    """Return a preexec function: drop to uid/gid, then die with the parent."""

    def setup() -> None:
        os.setsid()
        if gid is not None and uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        # Set after the credential change: changing credentials clears the setting.
        _prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)

    return setup


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL `proc` and reap it."""
    if proc is not None:
        proc.kill()
        proc.wait()


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, grace: float) -> None:
    """Send `sig`, wait up to `grace` seconds, then SIGKILL."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout}s; see {log}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _pg_bindir() -> Path:
    found = shutil.which("postgres") or shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    if candidates:
        return candidates[0].parent
    raise RuntimeError("PostgreSQL server binaries not found: install postgresql (15 or newer)")


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

    def _ids(self) -> tuple[int | None, int | None]:
        if os.geteuid() != 0:
            return None, None
        entry = pwd.getpwnam("postgres")  # PostgreSQL refuses to run as root
        return entry.pw_uid, entry.pw_gid

    def _run(self, args: list[str]) -> None:
        uid, gid = self._ids()
        subprocess.run(
            args, check=True, capture_output=True, preexec_fn=_child_setup(uid, gid, signal.SIGKILL)
        )

    def start(self) -> None:
        """Create the cluster when missing, start it, and create the database."""
        bindir = _pg_bindir()
        uid, gid = self._ids()
        self.datadir.mkdir(parents=True, exist_ok=True)
        if uid is not None and gid is not None:
            os.chown(self.datadir, uid, gid)
        self.datadir.chmod(0o700)
        if not (self.datadir / "PG_VERSION").exists():
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        log = self.datadir.parent / f"{self.datadir.name}.log"
        logf = open(log, "ab")
        if uid is not None and gid is not None:
            os.chown(log, uid, gid)
        self.proc = subprocess.Popen(
            [
                str(bindir / "postgres"),
                "-D",
                str(self.datadir),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.datadir}",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "max_prepared_transactions=64",
                "-c",
                "log_min_messages=warning",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            # SIGINT is PostgreSQL's fast shutdown: it ends sessions and checkpoints.
            preexec_fn=_child_setup(uid, gid, signal.SIGINT),
        )
        logf.close()
        _wait_for_port(self.port, self.proc, log, 60)
        self._wait_ready(bindir)
        self._create_database(bindir)

    def _psql(self, bindir: Path, sql: str) -> str:
        psql = bindir / "psql"
        done = subprocess.run(
            [
                str(psql) if psql.exists() else "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                "postgres",
                "-tAc",
                sql,
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

    def _wait_ready(self, bindir: Path) -> None:
        isready = bindir / "pg_isready"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ok = subprocess.run(
                [
                    str(isready) if isready.exists() else "pg_isready",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-q",
                ],
                check=False,
            )
            if ok.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not become ready")

    def kill(self) -> None:
        """Kill the postmaster with SIGKILL, as a crash would (children follow it)."""
        _kill(self.proc)
        self.proc = None

    def stop(self) -> None:
        """Fast shutdown."""
        _stop(self.proc, signal.SIGINT, 30)
        self.proc = None


@dataclass
class LocalRedis:
    """A Redis server in `datadir`, listening on 127.0.0.1:`port`, without persistence.

    Redis holds only what can be rebuilt from PostgreSQL, so it keeps nothing on disk.
    """

    datadir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The redis:// URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start redis-server."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: run `make redis` as root (installs Debian's redis-server), "
                "install it with your package manager, or set STOCKCORE_REDIS_URL"
            )
        self.datadir.mkdir(parents=True, exist_ok=True)
        log = self.datadir / "redis.log"
        logf = open(log, "ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.datadir),
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup(None, None, signal.SIGTERM),
        )
        logf.close()
        _wait_for_port(self.port, self.proc, log, 30)

    def kill(self) -> None:
        """Kill with SIGKILL, as a crash would."""
        _kill(self.proc)
        self.proc = None

    def stop(self) -> None:
        """Shut down."""
        _stop(self.proc, signal.SIGTERM, 10)
        self.proc = None


@contextlib.contextmanager
def local_servers(
    root: Path, pg_port: int, redis_port: int, *, want_pg: bool = True, want_redis: bool = True
) -> Iterator[tuple[LocalPostgres | None, LocalRedis | None]]:
    """Start the wanted servers under `root` and stop them on exit."""
    pg = LocalPostgres(root / "pg", pg_port) if want_pg else None
    redis = LocalRedis(root / "redis", redis_port) if want_redis else None
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


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalStockcore:
    """`python -m server serve` on 127.0.0.1:port as a child process, dying with its parent
    (so tests and benchmarks can kill -9 it and start it again)."""

    def __init__(
        self,
        pg_dsn: str,
        redis_url: str,
        shards: int,
        data_dir: Path | str = ".data",
        **extra_env: str,
    ) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "STOCKCORE_PG_DSN": pg_dsn,
            "STOCKCORE_REDIS_URL": redis_url,
            "STOCKCORE_GRPC_PORT": str(self.port),
            "STOCKCORE_METRICS_PORT": "0",
            "STOCKCORE_SHARDS": str(shards),
            "STOCKCORE_LOG_JSON": "false",
            "STOCKCORE_LOG_LEVEL": "WARNING",
            **extra_env,
        }
        self.log = Path(data_dir) / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """host:port."""
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        """Start and wait until the health service says SERVING."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve"],
                cwd=_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_setup(None, None, signal.SIGKILL),
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while loop.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        _kill(self.proc)
        self.proc = None

    def stop(self) -> None:
        """Graceful stop."""
        _stop(self.proc, signal.SIGTERM, 15)
        self.proc = None
