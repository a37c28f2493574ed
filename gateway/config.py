"""The gateway's settings: the only place it reads environment variables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from runtime.settings import EnvSettings, SettingsError, Variables, parse_list, parse_timeouts

__all__ = ["GatewaySettings", "SettingsError", "from_env", "to_env"]

# scheme://host[:port], as a browser sends it in Origin.
ORIGIN_PATTERN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
# host[:port], as a client sends it in Host: a name, an IPv4 or a bracketed IPv6 address.
HOST_PATTERN = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


@dataclass(frozen=True)
class GatewaySettings(EnvSettings):
    """Everything the HTTP/JSON gateway (Envoy) needs, validated once at start-up."""

    # The gRPC server behind the gateway, and whether it serves plaintext (else TLS).
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    plaintext: bool = False
    log_level: str = "INFO"
    log_json: bool = True
    # Envoy's files (configuration, admin socket, log) go to <data_dir>/gateway.
    data_dir: str = ".data"
    # Where the gateway listens; gateway_port 0 starts none (`make run`).
    # Envoy's admin interface listens on a Unix socket in the data folder, owner-only: it
    # can stop and reconfigure Envoy, and a page in the developer's browser can post to
    # any loopback port. Prometheus scrapes the gateway's metrics from a listener of their
    # own on loopback (gateway_stats_port, Envoy's usual 9901) that serves
    # /stats/prometheus and nothing else; 0 lets Envoy pick a free port, as tests that
    # start several gateways at once do.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    gateway_stats_port: int = 9901
    # The names the gateway answers to (the Host header, as host or host:port), besides
    # localhost, 127.0.0.1, [::1] and gateway_host on gateway_port: any other is refused
    # (421), so a site whose name was rebound to this machine reaches nothing.
    gateway_hosts: tuple[str, ...] = ()
    # Storefront origins allowed to call the gateway from a browser (CORS); the checkout
    # page the gateway serves itself needs none.
    gateway_origins: tuple[str, ...] = ()
    # The Unix socket of the checkout page's session endpoint (`make run` starts one:
    # devstack/page_session.py), where the gateway forwards /session from the page's own
    # origin only; empty: the page gets no session, and calls without a token.
    gateway_session_socket: str = ""
    # Larger request bodies are refused (413) before they reach the server.
    gateway_max_request_bytes: int = 65_536
    # Seconds a unary call may take through the gateway; it becomes the call's gRPC
    # deadline. gateway_timeouts overrides it per RPC ("Reserve=2,GetStock=0.5").
    gateway_timeout_s: float = 5.0
    gateway_timeouts: Mapping[str, float] = field(default_factory=dict)
    # Envoy's access log: a file path, or "-" for standard output.
    gateway_access_log: str = "-"
    # Envoy worker threads.
    gateway_threads: int = 1
    # The gateway reaches the gRPC server over TLS unless the server is plaintext,
    # trusting this CA (PEM; `make run` names the development CA) and checking that the
    # server's certificate names gateway_upstream_server_name (empty: the gRPC host, an
    # IP address matched as such). A server asking for client certificates (mutual TLS)
    # gets gateway_upstream_cert_file and its key.
    gateway_upstream_ca_file: str = ""
    gateway_upstream_server_name: str = ""
    gateway_upstream_cert_file: str = ""
    gateway_upstream_key_file: str = ""

    # The STOCKCORE_* variable of each field that one can set.
    VARIABLES: ClassVar[Variables] = {
        "STOCKCORE_GRPC_HOST": ("grpc_host", str),
        "STOCKCORE_GRPC_PORT": ("grpc_port", int),
        "STOCKCORE_PLAINTEXT": ("plaintext", bool),
        "STOCKCORE_LOG_LEVEL": ("log_level", str),
        "STOCKCORE_LOG_JSON": ("log_json", bool),
        "STOCKCORE_DATA_DIR": ("data_dir", str),
        "STOCKCORE_GATEWAY_HOST": ("gateway_host", str),
        "STOCKCORE_GATEWAY_PORT": ("gateway_port", int),
        "STOCKCORE_GATEWAY_STATS_PORT": ("gateway_stats_port", int),
        "STOCKCORE_GATEWAY_HOSTS": ("gateway_hosts", parse_list),
        "STOCKCORE_GATEWAY_ORIGINS": ("gateway_origins", parse_list),
        "STOCKCORE_GATEWAY_SESSION_SOCKET": ("gateway_session_socket", str),
        "STOCKCORE_GATEWAY_MAX_REQUEST_BYTES": ("gateway_max_request_bytes", int),
        "STOCKCORE_GATEWAY_TIMEOUT": ("gateway_timeout_s", float),
        "STOCKCORE_GATEWAY_TIMEOUTS": ("gateway_timeouts", parse_timeouts),
        "STOCKCORE_GATEWAY_ACCESS_LOG": ("gateway_access_log", str),
        "STOCKCORE_GATEWAY_THREADS": ("gateway_threads", int),
        "STOCKCORE_GATEWAY_UPSTREAM_CA": ("gateway_upstream_ca_file", str),
        "STOCKCORE_GATEWAY_UPSTREAM_SERVER_NAME": ("gateway_upstream_server_name", str),
        "STOCKCORE_GATEWAY_UPSTREAM_CERT": ("gateway_upstream_cert_file", str),
        "STOCKCORE_GATEWAY_UPSTREAM_KEY": ("gateway_upstream_key_file", str),
    }

    def checks(self) -> list[tuple[bool, str]]:
        """The rules a gateway's settings must keep."""
        return [
            (1 <= self.grpc_port <= 65535 or self.grpc_port == 0, "grpc_port must be 0-65535"),
            (0 <= self.gateway_port <= 65535, "gateway_port must be 0-65535"),
            (0 <= self.gateway_stats_port <= 65535, "gateway_stats_port must be 0-65535"),
            (
                all(HOST_PATTERN.fullmatch(h) for h in self.gateway_hosts),
                "gateway_hosts must be host names such as shop-api.example.com or localhost:8080",
            ),
            (
                all(ORIGIN_PATTERN.fullmatch(o) for o in self.gateway_origins),
                "gateway_origins must be origins such as https://shop.example.com",
            ),
            (
                1024 <= self.gateway_max_request_bytes <= 64 * 1024 * 1024,
                "gateway_max_request_bytes must be 1 KiB-64 MiB",
            ),
            (0 < self.gateway_timeout_s <= 300, "gateway_timeout_s must be in (0, 300]"),
            (
                all(0 < t <= 300 for t in self.gateway_timeouts.values()),
                "gateway_timeouts must be in (0, 300] seconds",
            ),
            (1 <= self.gateway_threads <= 64, "gateway_threads must be 1-64"),
            (
                bool(self.gateway_upstream_cert_file) == bool(self.gateway_upstream_key_file),
                "gateway_upstream_cert_file and gateway_upstream_key_file go together",
            ),
        ]


# The names the program's callers read and write its variables by.
from_env = GatewaySettings.from_env
to_env = GatewaySettings.to_env
