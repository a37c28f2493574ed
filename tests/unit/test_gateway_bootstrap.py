"""Envoy's configuration as built from GatewaySettings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.bootstrap import bootstrap, rpc_timeouts
from gateway.config import GatewaySettings, SettingsError, from_env, to_env

Config = dict[str, Any]


def _virtual_hosts(config: Config) -> list[Config]:
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hosts: list[Config] = manager["route_config"]["virtual_hosts"]
    return hosts


def _routes(config: Config) -> dict[str, Config]:
    return {r["name"]: r for r in _virtual_hosts(config)[0]["routes"]}


def test_route_timeout_is_sent_as_the_grpc_deadline() -> None:
    settings = GatewaySettings(
        plaintext=True, gateway_timeout_s=5.0, gateway_timeouts={"Reserve": 2.0}
    ).validate()
    routes = _routes(bootstrap(settings))
    reserve = routes["Reserve"]
    assert reserve["match"] == {"path": "/stockcore.v1.InventoryService/Reserve"}
    assert reserve["request_headers_to_add"][0]["header"] == {
        "key": "grpc-timeout",
        "value": "2000m",
    }
    # The gateway waits a little longer, so the server's answer is the one callers see.
    assert reserve["route"]["timeout"] == "2.250s"
    assert routes["GetStock"]["request_headers_to_add"][0]["header"]["value"] == "5000m"


def test_watch_orders_streams_without_a_deadline() -> None:
    assert rpc_timeouts(GatewaySettings())["WatchOrders"] is None
    watch = _routes(bootstrap(GatewaySettings(plaintext=True)))["WatchOrders"]
    assert watch["route"]["timeout"] == "0s"
    assert "request_headers_to_add" not in watch


def test_cors_allows_only_the_configured_origins() -> None:
    settings = GatewaySettings(
        plaintext=True, gateway_origins=("https://shop.example.com",)
    ).validate()
    listener = bootstrap(settings)["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    policy = manager["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]
    assert policy["envoy.filters.http.cors"]["allow_origin_string_match"] == [
        {"exact": "https://shop.example.com"}
    ]


def test_only_the_configured_host_names_are_served() -> None:
    settings = GatewaySettings(
        plaintext=True, gateway_port=8080, gateway_hosts=("shop-api.example.com",)
    ).validate()
    served, others = _virtual_hosts(bootstrap(settings))
    assert served["domains"] == [
        "localhost:8080",
        "127.0.0.1:8080",
        "[::1]:8080",
        "shop-api.example.com",
    ]
    # Any other Host (a name rebound to this machine): 421, nothing forwarded.
    assert others["domains"] == ["*"]
    (refusal,) = others["routes"]
    assert refusal["direct_response"]["status"] == 421
    assert "route" not in refusal


def test_a_gateway_on_a_named_address_answers_to_that_name_too() -> None:
    settings = GatewaySettings(plaintext=True, gateway_host="10.1.2.3", gateway_port=80)
    served, _ = _virtual_hosts(bootstrap(settings.validate()))
    assert "10.1.2.3:80" in served["domains"] and "10.1.2.3" in served["domains"]
    assert "localhost" in served["domains"]  # port 80: browsers send the name alone


def test_gateway_settings_come_from_the_environment() -> None:
    settings = from_env(
        {
            "STOCKCORE_GATEWAY_PORT": "8081",
            "STOCKCORE_GATEWAY_ORIGINS": "https://a.example, http://localhost:3000",
            "STOCKCORE_GATEWAY_TIMEOUTS": "Reserve=2,GetStock=0.5",
            "STOCKCORE_GATEWAY_MAX_REQUEST_BYTES": "4096",
        }
    )
    assert settings.gateway_port == 8081
    assert settings.gateway_origins == ("https://a.example", "http://localhost:3000")
    assert settings.gateway_timeouts == {"Reserve": 2.0, "GetStock": 0.5}
    assert settings.gateway_max_request_bytes == 4096


@pytest.mark.parametrize(
    "env",
    [
        {"STOCKCORE_GATEWAY_ORIGINS": "shop.example.com"},
        {"STOCKCORE_GATEWAY_TIMEOUTS": "Reserve"},
        {"STOCKCORE_GATEWAY_TIMEOUTS": "Reserve=0"},
        {"STOCKCORE_GATEWAY_MAX_REQUEST_BYTES": "10"},
        {"STOCKCORE_GATEWAY_PORT": "70000"},
        {"STOCKCORE_GATEWAY_HOSTS": "https://shop.example.com"},
        {"STOCKCORE_GATEWAY_HOSTS": "shop.example.com/x"},
    ],
)
def test_bad_gateway_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        from_env(env)


def test_unknown_rpc_in_timeouts_is_refused() -> None:
    with pytest.raises(SettingsError, match="Reserv"):
        bootstrap(GatewaySettings(gateway_timeouts={"Reserv": 1.0}))


def test_gateway_settings_round_trip_through_the_environment() -> None:
    changed = GatewaySettings(
        gateway_origins=("https://a.example", "http://localhost:3000"),
        gateway_timeouts={"Reserve": 2.0, "GetStock": 0.25},
        gateway_port=0,
    )
    assert from_env(to_env(changed)) == changed


def _cluster(config: Config) -> Config:
    cluster: Config = config["static_resources"]["clusters"][0]
    return cluster


def test_plaintext_server_is_reached_in_plaintext() -> None:
    assert "transport_socket" not in _cluster(bootstrap(GatewaySettings(plaintext=True)))


def test_tls_server_is_reached_over_tls_checking_its_ip_address(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA certificate")
    socket = _cluster(bootstrap(GatewaySettings(gateway_upstream_ca_file=str(ca))))[
        "transport_socket"
    ]
    context = socket["typed_config"]
    assert context["@type"].endswith("UpstreamTlsContext")
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["validation_context"]["trusted_ca"] == {"filename": str(ca)}
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
    ]
    assert "sni" not in context  # no SNI for an IP address
    assert "tls_certificates" not in common


def test_tls_server_name_is_sent_as_sni_and_checked(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client-key.pem"):
        (tmp_path / name).write_text(name)
    settings = GatewaySettings(
        gateway_upstream_ca_file=str(tmp_path / "ca.pem"),
        gateway_upstream_server_name="localhost",
        gateway_upstream_cert_file=str(tmp_path / "client.pem"),
        gateway_upstream_key_file=str(tmp_path / "client-key.pem"),
    ).validate()
    context = _cluster(bootstrap(settings))["transport_socket"]["typed_config"]
    assert context["sni"] == "localhost"
    common = context["common_tls_context"]
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "localhost"}}
    ]
    assert common["tls_certificates"][0]["certificate_chain"]["filename"].endswith("client.pem")


def test_tls_server_without_a_ca_for_the_gateway_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="STOCKCORE_GATEWAY_UPSTREAM_CA"):
        bootstrap(GatewaySettings())
    with pytest.raises(SettingsError, match="not a file"):
        bootstrap(GatewaySettings(gateway_upstream_ca_file=str(tmp_path / "missing.pem")))


def test_the_configuration_holds_no_page_token_and_no_config_script() -> None:
    config = bootstrap(GatewaySettings(plaintext=True, gateway_session_socket="/run/s.sock"))
    assert not any("config.js" in str(r["match"]) for r in _routes(config).values())
    assert "eyJ" not in json.dumps(config) and "token" not in json.dumps(config).lower()
    # The admin interface shows all of it: on its owner's Unix socket only.
    assert config["admin"]["address"]["pipe"]["mode"] == 0o600


def test_the_stats_listener_serves_prometheus_metrics_and_nothing_else(tmp_path: Path) -> None:
    admin = tmp_path / "admin.sock"
    config = bootstrap(GatewaySettings(plaintext=True, gateway_stats_port=9901), admin_socket=admin)
    (stats,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "stats"]
    assert stats["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    manager = stats["filter_chains"][0]["filters"][0]["typed_config"]
    served, rest = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert served["match"]["path"] == "/stats/prometheus"
    assert served["match"]["headers"][0]["string_match"] == {"exact": "GET"}
    assert rest == {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "envoy_admin"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": str(admin.resolve())}}
    assert config["admin"]["address"]["pipe"]["path"] == str(admin.resolve())


def _session_routes(config: Config) -> list[Config]:
    return [r for r in _virtual_hosts(config)[0]["routes"] if r["name"].startswith("session")]


def test_the_session_is_forwarded_from_the_gateways_own_pages_only(tmp_path: Path) -> None:
    socket = tmp_path / "session.sock"
    settings = GatewaySettings(
        plaintext=True, gateway_port=8080, gateway_session_socket=str(socket)
    )
    config = bootstrap(settings.validate())
    routes = _session_routes(config)

    cross_site, *forwarded, other_origin, without_origin, method = routes
    assert cross_site["direct_response"]["status"] == 403
    assert [h["name"] for h in cross_site["match"]["headers"]] == ["sec-fetch-site"] * 2
    origins = [r["match"]["headers"][1]["string_match"]["exact"] for r in forwarded]
    assert "http://127.0.0.1:8080" in origins and "http://localhost:8080" in origins
    assert all(o.startswith(("http://", "https://")) for o in origins)
    assert other_origin["direct_response"]["status"] == 403
    assert other_origin["match"]["headers"] == [{"name": "origin", "present_match": True}]
    assert without_origin["route"]["cluster"] == "checkout_session"
    assert method["direct_response"]["status"] == 405
    for route in routes:
        assert route["match"]["path_separated_prefix"] == "/session"
        # Never CORS: no other origin may read what /session answers.
        assert route["typed_per_filter_config"]["envoy.filters.http.cors"]["disabled"] is True
    (cluster,) = [
        c for c in config["static_resources"]["clusters"] if c["name"] == "checkout_session"
    ]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": str(socket)}}


def test_without_a_session_endpoint_there_is_no_session_route() -> None:
    config = bootstrap(GatewaySettings(plaintext=True))
    assert _session_routes(config) == []
    names = [c["name"] for c in config["static_resources"]["clusters"]]
    assert names == ["stockcore_grpc", "envoy_admin"]


def test_grpc_is_refused_before_any_route_that_forwards() -> None:
    config = bootstrap(GatewaySettings(plaintext=True))
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    first = manager["route_config"]["virtual_hosts"][0]["routes"][0]
    assert first["name"] == "grpc refused"
    assert first["direct_response"]["status"] == 415
    # A client cannot pass for a request the transcoder made.
    (early,) = manager["early_header_mutation_extensions"]
    removed = {m["remove"] for m in early["typed_config"]["mutations"]}
    assert "x-envoy-original-path" in removed
