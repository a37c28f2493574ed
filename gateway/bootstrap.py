"""Envoy's bootstrap configuration for the gateway, built from GatewaySettings.

Everything Envoy does for stockcore is decided here: the JSON routes come from the
`google.api.http` annotations in protos/ (through the descriptor set `make proto`
writes), and this module adds the edge around them: CORS for the configured storefront
origins, a request-size limit, per-RPC timeouts that reach the server as gRPC deadlines,
a refusal of gRPC sent to it, access logs, JSON bodies for the gateway's own errors, the
host names it answers to, and the static checkout page with the way to its session
endpoint, for the page's own origin only. The upstream cluster of the API is built by
`upstream_cluster`: TLS to the gRPC port, checked against the CA that signed the
server's certificate, unless the server is plaintext. Request headers, Authorization
among them, reach the server as call metadata; so does Idempotency-Key, which the server
binds to the RPC's id (server/rpc/idempotency.py).

No token and no signing key is in this configuration: Envoy's admin interface shows all
of it (config_dump). The page gets its token from the session endpoint, over a Unix
socket no browser reaches.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import descriptor
from stockcore.v1 import inventory_pb2, orders_pb2, reconciliation_pb2

from gateway.config import GatewaySettings, SettingsError

Config = dict[str, Any]

SERVICES: tuple[descriptor.ServiceDescriptor, ...] = (
    inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
    orders_pb2.DESCRIPTOR.services_by_name["OrderService"],
    reconciliation_pb2.DESCRIPTOR.services_by_name["ReconciliationService"],
)
CLUSTER = "stockcore_grpc"
ADMIN_CLUSTER = "envoy_admin"
# The server gets the route's timeout as its deadline; the gateway waits this much
# longer, so the server's own DEADLINE_EXCEEDED (with its details) is what callers see.
DEADLINE_MARGIN_S = 0.25
# A server stream (WatchOrders) with no event for this long is closed; clients resume
# with the last cursor they saw.
STREAM_IDLE_TIMEOUT_S = 300
# Headers a browser on a storefront origin may send, and read back.
CORS_ALLOW_HEADERS = "authorization, content-type, idempotency-key, x-request-id"
CORS_EXPOSE_HEADERS = "x-request-id, grpc-status, grpc-message"
_STATIC = resources.files("gateway") / "static"
# path -> (file under static/, content type)
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/checkout.js": ("checkout.js", "text/javascript; charset=utf-8"),
    "/checkout.css": ("checkout.css", "text/css; charset=utf-8"),
    "/catalogue.json": ("catalogue.json", "application/json"),
}
# The checkout page's session endpoint (devstack/page_session.py): its paths, and the
# cluster of its Unix socket.
SESSION_PATH = "/session"
SESSION_CLUSTER = "checkout_session"
SESSION_TIMEOUT_S = 10.0
# Errors the gateway answers itself (no route, too large, server down, timeout) carry
# the same google.rpc.Status JSON body as the server's: HTTP status -> (code, reason).
LOCAL_ERRORS: dict[int, tuple[int, str]] = {
    400: (3, "BAD_REQUEST"),  # INVALID_ARGUMENT: JSON that does not fit the request
    403: (7, "CROSS_ORIGIN"),  # PERMISSION_DENIED: /session from another origin
    404: (5, "NO_ROUTE"),  # NOT_FOUND
    405: (12, "METHOD_NOT_ALLOWED"),  # UNIMPLEMENTED
    408: (4, "REQUEST_TIMEOUT"),  # DEADLINE_EXCEEDED
    413: (8, "PAYLOAD_TOO_LARGE"),  # RESOURCE_EXHAUSTED
    421: (7, "UNKNOWN_HOST"),  # PERMISSION_DENIED: a Host the gateway does not answer to
    431: (8, "HEADERS_TOO_LARGE"),  # RESOURCE_EXHAUSTED
    500: (13, "GATEWAY_ERROR"),  # INTERNAL
    502: (14, "BAD_UPSTREAM"),  # UNAVAILABLE
    503: (14, "UPSTREAM_UNAVAILABLE"),  # UNAVAILABLE
    504: (4, "UPSTREAM_TIMEOUT"),  # DEADLINE_EXCEEDED
}
GATEWAY_DOMAIN = "gateway.stockcore.v1"
# Set by the transcoder on the gRPC request it makes from JSON, never by a client: the
# gRPC-refused route tells transcoded requests apart by the path, and the access log reads
# both. Envoy itself drops them only from requests it deems external; they are dropped from
# all.
ENVOY_MARKS = ("x-envoy-original-path", "x-envoy-original-method")
# The gateway is the HTTP/JSON front: gRPC clients call the server itself, over TLS. A gRPC
# client that calls the gateway reads this as its status's message (code UNKNOWN, from 415);
# it is plain text, not a google.rpc.Status body (no LOCAL_ERRORS entry): no JSON client
# sends gRPC.
GRPC_REFUSED = (
    "this is stockcore's HTTP/JSON gateway: it does not forward gRPC; call the gRPC server"
)
# One JSON object per request; never the Authorization header.
ACCESS_LOG_FIELDS: dict[str, str] = {
    "time": "%START_TIME%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "rpc": "%ROUTE_NAME%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "response_ms": "%RESPONSE_DURATION%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "idempotency_key": "%REQ(IDEMPOTENCY-KEY)%",
    "origin": "%REQ(ORIGIN)%",
    "user_agent": "%REQ(USER-AGENT)%",
}


def _type(name: str) -> str:
    return f"type.googleapis.com/{name}"


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def descriptor_path() -> Path:
    """The descriptor set `make proto` writes beside the generated stubs."""
    path = Path(str(resources.files("stockcore.v1") / "descriptor.pb"))
    if not path.exists():
        raise SettingsError(f"{path} is missing: run `make proto`")
    return path


def static_path(name: str) -> Path:
    """A file of the checkout page."""
    return Path(str(_STATIC / name))


def rpc_methods() -> Iterator[descriptor.MethodDescriptor]:
    """Every public RPC, in service order."""
    for service in SERVICES:
        yield from service.methods


def rpc_timeouts(settings: GatewaySettings) -> dict[str, float | None]:
    """Seconds each RPC may take through the gateway (None: a stream, no limit)."""
    known = {method.name for method in rpc_methods()}
    unknown = sorted(set(settings.gateway_timeouts) - known)
    if unknown:
        raise SettingsError(
            f"gateway_timeouts names unknown RPCs: {', '.join(unknown)}"
            f" (known: {', '.join(sorted(known))})"
        )
    return {
        method.name: None
        if method.server_streaming
        else settings.gateway_timeouts.get(method.name, settings.gateway_timeout_s)
        for method in rpc_methods()
    }


def _grpc_timeout(seconds: float) -> str:
    """The grpc-timeout header value (milliseconds, at most 8 digits)."""
    return f"{max(1, round(seconds * 1000))}m"


def _rpc_route(method: descriptor.MethodDescriptor, timeout: float | None) -> Config:
    path = f"/{method.containing_service.full_name}/{method.name}"
    if timeout is None:
        action: Config = {
            "cluster": CLUSTER,
            "timeout": "0s",
            "idle_timeout": _seconds(STREAM_IDLE_TIMEOUT_S),
        }
        return {"name": method.name, "match": {"path": path}, "route": action}
    return {
        "name": method.name,
        "match": {"path": path},
        "route": {"cluster": CLUSTER, "timeout": _seconds(timeout + DEADLINE_MARGIN_S)},
        # Overwrites whatever a caller sent: the route decides the deadline.
        "request_headers_to_add": [
            {
                "header": {"key": "grpc-timeout", "value": _grpc_timeout(timeout)},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def _static_route(path: str, name: str, content_type: str) -> Config:
    return {
        "name": f"static {name}",
        "match": {"path": path, "headers": [_method_is("GET")]},
        "direct_response": {"status": 200, "body": {"filename": str(static_path(name))}},
        "typed_per_filter_config": _transcoder_off(),
        "response_headers_to_add": [
            _header("content-type", content_type),
            _header("cache-control", "no-cache"),
            _header("x-content-type-options", "nosniff"),
            _header(
                "content-security-policy",
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
    }


def _method_is(method: str) -> Config:
    return {"name": ":method", "string_match": {"exact": method}}


def _header(key: str, value: str) -> Config:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _filters_off(*names: str) -> Config:
    return {
        name: {"@type": _type("envoy.config.route.v3.FilterConfig"), "disabled": True}
        for name in names
    }


def _transcoder_off() -> Config:
    # For what is not an API path: the transcoder must not refuse it as an unknown method.
    return _filters_off("envoy.filters.http.grpc_json_transcoder")


def own_origins(settings: GatewaySettings) -> list[str]:
    """The origins of the pages the gateway serves: each of its host names, over HTTP or
    HTTPS (a proxy in front may end TLS)."""
    return [f"{scheme}://{name}" for name in host_names(settings) for scheme in ("http", "https")]


def session_routes(settings: GatewaySettings) -> list[Config]:
    """/session and below, for the checkout page's session endpoint: a POST from the
    gateway's own pages is forwarded (as one without Origin: not a browser's); a request
    another site or origin makes (a browser says so in Sec-Fetch-Site and Origin) is
    refused with 403, any other method with 405. Never CORS: no other origin may read
    the answer. None without an endpoint."""
    if not settings.gateway_session_socket:
        return []
    path = {"path_separated_prefix": SESSION_PATH}
    off = _filters_off("envoy.filters.http.grpc_json_transcoder", "envoy.filters.http.cors")
    headers = [
        _header("cache-control", "no-store"),
        _header("x-content-type-options", "nosniff"),
        _header("cross-origin-resource-policy", "same-origin"),
    ]

    def forwarded(name: str, match: list[Config]) -> Config:
        return {
            "name": name,
            "match": {**path, "headers": [_method_is("POST"), *match]},
            "route": {"cluster": SESSION_CLUSTER, "timeout": _seconds(SESSION_TIMEOUT_S)},
            "typed_per_filter_config": off,
            "response_headers_to_add": headers,
        }

    def refused(name: str, match: list[Config], status: int) -> Config:
        return {
            "name": name,
            "match": {**path, "headers": match},
            "direct_response": {
                "status": status,
                "body": {"inline_string": "a session is for the gateway's own pages, by POST"},
            },
            "typed_per_filter_config": off,
            "response_headers_to_add": headers,
        }

    return [
        refused(
            "session: another site",
            [
                {"name": "sec-fetch-site", "present_match": True},
                {
                    "name": "sec-fetch-site",
                    "string_match": {"exact": "same-origin"},
                    "invert_match": True,
                },
            ],
            403,
        ),
        *(
            forwarded("session", [{"name": "origin", "string_match": {"exact": origin}}])
            for origin in own_origins(settings)
        ),
        refused("session: another origin", [{"name": "origin", "present_match": True}], 403),
        forwarded("session", []),
        refused("session: method", [], 405),
    ]


def _grpc_refused_route() -> Config:
    """gRPC sent to the gateway (any application/grpc… content type, over HTTP/2 or 1.1):
    415, whatever the path. The gRPC requests the transcoder makes from JSON are told apart
    by x-envoy-original-path, which it sets and no client can (ENVOY_MARKS), so only they
    reach the method routes."""
    return {
        "name": "grpc refused",
        "match": {
            "prefix": "/",
            "headers": [
                {
                    "name": "content-type",
                    "string_match": {"prefix": "application/grpc", "ignore_case": True},
                },
                {"name": "x-envoy-original-path", "present_match": True, "invert_match": True},
            ],
        },
        "direct_response": {"status": 415, "body": {"inline_string": GRPC_REFUSED}},
        # gRPC-Web is not gRPC to the transcoder: without this it would answer 404 first.
        "typed_per_filter_config": _transcoder_off(),
    }


def routes(settings: GatewaySettings) -> list[Config]:
    """gRPC refused, the gRPC method routes (matched after transcoding), the checkout page
    and its session endpoint, and a JSON 404 for any other path."""
    timeouts = rpc_timeouts(settings)
    found: list[Config] = [_grpc_refused_route()]
    found += [_rpc_route(m, timeouts[m.name]) for m in rpc_methods()]
    found += [_static_route(path, *file) for path, file in STATIC_FILES.items()]
    found += session_routes(settings)
    # Everything else. The CORS filter, which runs before transcoding, acts only on a
    # route that forwards, so this one does; yet nothing is forwarded by it: a path the
    # transcoder maps is routed again as its gRPC method, and any other path is refused
    # by the transcoder (404) or answered by the CORS filter (a preflight).
    found.append({"name": "unmapped", "match": {"prefix": "/"}, "route": {"cluster": CLUSTER}})
    return found


def host_names(settings: GatewaySettings) -> list[str]:
    """The Host header values the gateway answers to: localhost, 127.0.0.1 and [::1] on
    its port, the address it listens on when that is a name or a particular address, and
    settings.gateway_hosts (a browser leaves out port 80)."""
    port = settings.gateway_port
    names = ["localhost", "127.0.0.1", "[::1]"]
    listen = settings.gateway_host
    if listen not in ("", "0.0.0.0", "::", "::1", *names):
        names.append(f"[{listen}]" if ":" in listen else listen)
    found = [f"{name}:{port}" for name in names]
    if port == 80:
        found += names
    return [*found, *(h for h in settings.gateway_hosts if h not in found)]


def unknown_host() -> Config:
    """Every other Host: refused with 421 and nothing forwarded. A site whose name was
    made to point at this machine (DNS rebinding) is, to a browser, the page's own
    origin; its requests still name it."""
    return {
        "name": "unknown host",
        "domains": ["*"],
        "routes": [
            {
                "name": "unknown host",
                "match": {"prefix": "/"},
                "direct_response": {
                    "status": 421,
                    "body": {"inline_string": "this gateway does not answer to that host name"},
                },
            }
        ],
        "typed_per_filter_config": _transcoder_off(),
    }


def cors_policy(settings: GatewaySettings) -> Config:
    """CORS for the configured storefront origins (exact matches)."""
    return {
        "@type": _type("envoy.extensions.filters.http.cors.v3.CorsPolicy"),
        "allow_origin_string_match": [{"exact": o} for o in settings.gateway_origins],
        "allow_methods": "GET, POST, OPTIONS",
        "allow_headers": CORS_ALLOW_HEADERS,
        "expose_headers": CORS_EXPOSE_HEADERS,
        "max_age": "600",
        "allow_credentials": False,
        # A preflight from an origin not allowed is answered here, without CORS headers.
        "forward_not_matching_preflights": False,
    }


def transcoder(settings: GatewaySettings) -> Config:
    """grpc_json_transcoder: JSON <-> protobuf by the proto annotations."""
    return {
        "@type": _type("envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"),
        "proto_descriptor": str(descriptor_path()),
        "services": [service.full_name for service in SERVICES],
        "print_options": {
            # A sold-out SKU prints "available": "0" rather than no field at all.
            "always_print_primitive_fields": True,
            # WatchOrders: one JSON object per line, readable as it arrives.
            "stream_newline_delimited": True,
        },
        # Non-OK statuses become HTTP statuses with the google.rpc.Status as the body.
        "convert_grpc_status": True,
        # Ids may hold '/' and ':': clients percent-encode them in paths.
        "url_unescape_spec": "ALL_CHARACTERS",
        "request_validation_options": {
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
        },
        "case_insensitive_enum_parsing": True,
    }


def local_reply_config() -> Config:
    """The gateway's own error responses as google.rpc.Status JSON."""
    return {
        "mappers": [
            {
                "filter": {
                    "status_code_filter": {
                        "comparison": {
                            "op": "EQ",
                            "value": {"default_value": status, "runtime_key": f"gw.lr.{status}"},
                        }
                    }
                },
                "body_format_override": {
                    "json_format": {
                        "code": code,
                        "message": "%LOCAL_REPLY_BODY%",
                        "details": [
                            {
                                "@type": _type("google.rpc.ErrorInfo"),
                                "reason": reason,
                                "domain": GATEWAY_DOMAIN,
                                "metadata": {"detail": "%RESPONSE_CODE_DETAILS%"},
                            }
                        ],
                    },
                },
            }
            for status, (code, reason) in LOCAL_ERRORS.items()
        ]
    }


def access_log(settings: GatewaySettings) -> Config:
    """One JSON line per request, to a file or standard output."""
    log_format = {"json_format": ACCESS_LOG_FIELDS}
    if settings.gateway_access_log == "-":
        return {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": _type("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"),
                "log_format": log_format,
            },
        }
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": _type("envoy.extensions.access_loggers.file.v3.FileAccessLog"),
            "path": settings.gateway_access_log,
            "log_format": log_format,
        },
    }


def http_filters(settings: GatewaySettings) -> list[Config]:
    """CORS first (preflights never reach the server), then the request-size limit (413),
    the transcoder, and the router."""
    return [
        {
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": _type("envoy.extensions.filters.http.cors.v3.Cors")},
        },
        {
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": _type("envoy.extensions.filters.http.buffer.v3.Buffer"),
                "max_request_bytes": settings.gateway_max_request_bytes,
            },
        },
        {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder(settings)},
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": _type("envoy.extensions.filters.http.router.v3.Router"),
                "suppress_envoy_headers": True,
            },
        },
    ]


def _removed_from_requests(headers: tuple[str, ...]) -> Config:
    """Headers taken off every request as it arrives, before any route is chosen."""
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": _type(
                "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
            ),
            "mutations": [{"remove": name} for name in headers],
        },
    }


def connection_manager(settings: GatewaySettings) -> Config:
    """The HTTP connection manager of the public listener."""
    return {
        "@type": _type(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        ),
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        "server_name": "stockcore-gateway",
        # The edge: the client's address is the connection's; x-envoy-* headers from
        # clients are not trusted.
        "use_remote_address": True,
        "early_header_mutation_extensions": [_removed_from_requests(ENVOY_MARKS)],
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        # A storefront's own x-request-id is kept (it names the change in the order
        # history); otherwise Envoy makes one. Either way the response carries it.
        "preserve_external_request_id": True,
        "always_set_request_id_in_response": True,
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "stream_idle_timeout": _seconds(STREAM_IDLE_TIMEOUT_S),
        "request_headers_timeout": "10s",
        "access_log": [access_log(settings)],
        "local_reply_config": local_reply_config(),
        "route_config": {
            "name": "stockcore",
            "max_direct_response_body_size_bytes": 1024 * 1024,
            "virtual_hosts": [
                {
                    "name": "stockcore",
                    "domains": host_names(settings),
                    "routes": routes(settings),
                    "typed_per_filter_config": {"envoy.filters.http.cors": cors_policy(settings)},
                },
                unknown_host(),
            ],
        },
        "http_filters": http_filters(settings),
    }


def _socket_address(host: str, port: int) -> Config:
    return {"socket_address": {"address": host, "port_value": port}}


def _upstream_host(host: str) -> str:
    """Where to reach the gRPC server: a wildcard listen address means this machine."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _absolute_file(path: str, setting: str) -> str:
    found = Path(path).resolve()
    if not found.is_file():
        raise SettingsError(f"{setting} names {path}, which is not a file")
    return str(found)


def upstream_tls(settings: GatewaySettings, host: str) -> Config | None:
    """The TLS transport socket to the gRPC server (None when it serves plaintext): the
    server's certificate must chain to gateway_upstream_ca_file and name the server (SNI
    and a subject alternative name check; an IP address is checked as one, sent no SNI)."""
    if settings.plaintext:
        return None
    if not settings.gateway_upstream_ca_file:
        raise SettingsError(
            "the gRPC server serves TLS: the gateway needs the CA that signed its certificate"
            " (STOCKCORE_GATEWAY_UPSTREAM_CA), or STOCKCORE_PLAINTEXT=true for a plaintext server"
        )
    name = settings.gateway_upstream_server_name or host
    common: Config = {
        # gRPC is HTTP/2; ALPN says so.
        "alpn_protocols": ["h2"],
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "validation_context": {
            "trusted_ca": {
                "filename": _absolute_file(
                    settings.gateway_upstream_ca_file, "gateway_upstream_ca_file"
                )
            },
            "match_typed_subject_alt_names": [
                {"san_type": "IP_ADDRESS" if _is_ip(name) else "DNS", "matcher": {"exact": name}}
            ],
        },
    }
    if settings.gateway_upstream_cert_file:
        common["tls_certificates"] = [
            {
                "certificate_chain": {
                    "filename": _absolute_file(
                        settings.gateway_upstream_cert_file, "gateway_upstream_cert_file"
                    )
                },
                "private_key": {
                    "filename": _absolute_file(
                        settings.gateway_upstream_key_file, "gateway_upstream_key_file"
                    )
                },
            }
        ]
    context: Config = {
        "@type": _type("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
        "common_tls_context": common,
    }
    if not _is_ip(name):
        context["sni"] = name
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def upstream_cluster(settings: GatewaySettings, grpc_port: int) -> Config:
    """The gRPC server as Envoy's one upstream: HTTP/2 over TLS (or plaintext, when the
    server is), limits wide enough for load runs."""
    host = _upstream_host(settings.grpc_host)
    limits = {"max_connections": 1024, "max_pending_requests": 65536, "max_requests": 65536}
    cluster: Config = {
        "name": CLUSTER,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
                # Bounded streams per connection: more connections under load, which
                # SO_REUSEPORT spreads over the server's worker processes.
                "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 64}},
            }
        },
        "circuit_breakers": {"thresholds": [limits]},
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(host, grpc_port)}}]}
            ],
        },
    }
    tls = upstream_tls(settings, host)
    if tls is not None:
        cluster["transport_socket"] = tls
    return cluster


def session_cluster(settings: GatewaySettings) -> Config:
    """The checkout page's session endpoint: HTTP/1.1 on its Unix socket."""
    path = Path(settings.gateway_session_socket).resolve()
    return {
        "name": SESSION_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SESSION_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(path)}}}}]}
            ],
        },
    }


def stats_listener(settings: GatewaySettings) -> Config:
    """Loopback HTTP on gateway_stats_port serving GET /stats/prometheus from the admin
    interface, and 404 for everything else: what Prometheus needs, and nothing a page
    posting to loopback ports could use to stop or reconfigure Envoy."""
    routes = [
        {
            "match": {
                "path": "/stats/prometheus",
                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
            },
            "route": {"cluster": ADMIN_CLUSTER},
        },
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
    ]
    manager = {
        "@type": _type(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        ),
        "stat_prefix": "stats",
        "route_config": {
            "name": "stats",
            "virtual_hosts": [{"name": "stats", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _type("envoy.extensions.filters.http.router.v3.Router")},
            }
        ],
    }
    return {
        "name": "stats",
        "address": _socket_address("127.0.0.1", settings.gateway_stats_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def admin_cluster(admin_socket: Path) -> Config:
    """Envoy's own admin interface, on its Unix socket, for the stats listener."""
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(admin_socket)}}}}]}
            ],
        },
    }


def admin_socket_in(workdir: Path, settings: GatewaySettings) -> Path:
    """Where the admin interface of the gateway of `settings` listens, in its `workdir`."""
    return workdir / f"envoy-{settings.gateway_port}.admin.sock"


def bootstrap(
    settings: GatewaySettings,
    *,
    grpc_port: int | None = None,
    admin_socket: Path | None = None,
) -> Config:
    """The whole Envoy configuration; `grpc_port` overrides settings.grpc_port (a test
    server on a port picked at start); the admin interface listens on `admin_socket`
    (owner-only; by default in <data_dir>/gateway)."""
    if admin_socket is None:
        admin_socket = admin_socket_in(Path(settings.data_dir) / "gateway", settings)
    port = settings.grpc_port if grpc_port is None else grpc_port
    if not 1 <= port <= 65535:
        raise SettingsError("the gateway needs the gRPC server's port")
    listener = {
        "name": "http",
        "address": _socket_address(settings.gateway_host, settings.gateway_port),
        "per_connection_buffer_limit_bytes": max(32768, settings.gateway_max_request_bytes),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": connection_manager(settings),
                    }
                ]
            }
        ],
    }
    admin_socket = admin_socket.resolve()
    clusters = [upstream_cluster(settings, port), admin_cluster(admin_socket)]
    if settings.gateway_session_socket:
        clusters.append(session_cluster(settings))
    return {
        "node": {"id": "stockcore-gateway", "cluster": "stockcore"},
        # Its owner's alone: the admin interface stops, drains and reconfigures Envoy, and
        # shows its whole configuration (no secret, but no one else's).
        "admin": {"address": {"pipe": {"path": str(admin_socket), "mode": 0o600}}},
        "static_resources": {
            "listeners": [listener, stats_listener(settings)],
            "clusters": clusters,
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _type(
                            "envoy.extensions.resource_monitors.downstream_connections.v3."
                            "DownstreamConnectionsConfig"
                        ),
                        "max_active_downstream_connections": 10000,
                    },
                }
            ]
        },
    }


def describe_routes() -> Mapping[str, tuple[str, str]]:
    """RPC name -> (HTTP method, path template), from the proto annotations."""
    from google.api import annotations_pb2, http_pb2

    found: dict[str, tuple[str, str]] = {}
    for method in rpc_methods():
        rule: http_pb2.HttpRule = method.GetOptions().Extensions[annotations_pb2.http]
        kind = rule.WhichOneof("pattern")
        assert kind is not None, f"{method.full_name} has no google.api.http annotation"
        found[method.name] = (kind.upper(), getattr(rule, kind))
    return found
