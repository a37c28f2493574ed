"""What stockctl says when a command fails: one line naming the fix, and the exit status
`--help` documents for each kind of failure."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from clients import reachability
from clients.cli import build_parser, invoked_as
from clients.errors import ErrorInfo, StatusCode, StockcoreError, make_error
from clients.failures import EXIT_MEANINGS, ExitCode, Failure, call_failure
from clients.reachability import Finding, Problem, host_and_port
from clients.stockctl import quiet_grpc
from clients.stockctl_config import DEFAULT, ConfigFile, StockctlConfig, resolve
from clients.token_cli import issue_command
from clients.tokens import SERVICE_SCOPES, issue_token, new_signing_key

FILE = ConfigFile(Path("/home/me/.config/stockcore/config.toml"), DEFAULT)
KEY, _ = new_signing_key("test")


def config(**environ: str) -> StockctlConfig:
    return resolve({}, environ, FILE)


def refused(reason: str, **metadata: str) -> StockcoreError:
    code = StatusCode.PERMISSION_DENIED if reason == "SCOPE_MISSING" else StatusCode.UNAUTHENTICATED
    return make_error(code, "refused", error_info=ErrorInfo(reason, "stockcore", metadata))


def no_answer(target: str, tls: reachability.Tls | None, timeout: float) -> Finding | None:
    raise AssertionError("a call the server answered is not looked into")


def one_line(failure: Failure) -> str:
    [line] = failure.text().splitlines()
    return line


def test_every_exit_status_is_explained_in_help() -> None:
    text = build_parser().format_help()

    assert set(EXIT_MEANINGS) == set(ExitCode)
    for code in ExitCode:
        assert f"{code.value:>3}  {EXIT_MEANINGS[code].split()[0]}" in text


def test_no_token_says_how_to_mint_one_without_depending_on_user() -> None:
    failure = call_failure(refused("TOKEN_MISSING"), config(), prog="stockctl", check=no_answer)

    assert failure.exit_code is ExitCode.NOT_ALLOWED
    assert one_line(failure) == (
        "stockctl: UNAUTHENTICATED: no token was sent: export"
        ' STOCKCORE_TOKEN=$(stockctl token issue --sub "${USER:-dev}" --scopes all), or name a'
        " file holding one with --token-file, STOCKCORE_TOKEN_FILE or token_file in"
        " /home/me/.config/stockcore/config.toml"
    )


def test_an_empty_token_variable_is_named_as_the_cause() -> None:
    failure = call_failure(refused("TOKEN_MISSING"), config(STOCKCORE_TOKEN=""), check=no_answer)

    assert "STOCKCORE_TOKEN is empty, so no token was sent" in one_line(failure)


def test_an_expired_token_names_when_and_the_exact_command_that_renews_it() -> None:
    token = issue_token(KEY, "ops", ["inventory:read", "orders:read"], ttl_s=900, now=1_000)

    failure = call_failure(
        refused("TOKEN_EXPIRED"), config(STOCKCORE_TOKEN=token), prog="stockctl", check=no_answer
    )

    assert one_line(failure) == (
        "stockctl: UNAUTHENTICATED: the token (env STOCKCORE_TOKEN) expired at"
        " 1970-01-01T00:31:40.000Z: renew it: export STOCKCORE_TOKEN=$(stockctl token issue"
        " --sub ops --scopes inventory:read,orders:read --ttl 15m)"
    )


def test_an_expired_token_in_a_file_is_renewed_into_that_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(issue_token(KEY, "ops", SERVICE_SCOPES, ttl_s=3600, now=time.time() - 7200))

    failure = call_failure(
        refused("TOKEN_EXPIRED"),
        config(STOCKCORE_TOKEN_FILE=str(path)),
        prog=".venv/bin/stockctl",
        check=no_answer,
    )

    assert one_line(failure).endswith(
        f"renew it: .venv/bin/stockctl token issue --sub ops --scopes all --ttl 1h > {path}"
    )


def test_a_missing_scope_says_the_command_for_a_token_with_it() -> None:
    token = issue_token(KEY, "ops", ["inventory:read"])

    failure = call_failure(
        refused("SCOPE_MISSING", required_scope="stock:adjust"),
        config(STOCKCORE_TOKEN=token),
        check=no_answer,
    )

    assert failure.exit_code is ExitCode.NOT_ALLOWED
    assert "--scopes inventory:read,stock:adjust --ttl 1h)" in one_line(failure)


@pytest.mark.parametrize(
    ("claims", "command"),
    [
        (
            {"sub": "ops", "scope": " ".join(SERVICE_SCOPES)},
            "stockctl token issue --sub ops --scopes all",
        ),
        (
            {"sub": "shop web", "scope": "customer orders:create", "customer_id": "alice"},
            "stockctl token issue --sub 'shop web' --customer alice --scopes orders:create",
        ),
        (
            {"sub": "a", "scope": "customer", "customer_id": "b", "iat": 0, "exp": 86400},
            "stockctl token issue --sub a --customer b --ttl 1d",
        ),
        (
            {
                "sub": "a",
                "scope": "orders:read",
                "aud": "other",
                "iss": "stockcore",
                "iat": 0,
                "exp": 90,
            },
            "stockctl token issue --sub a --scopes orders:read --ttl 90 --audience other",
        ),
    ],
)
def test_the_issue_command_reproduces_the_token_s_claims(
    claims: dict[str, object], command: str
) -> None:
    assert issue_command(claims, "stockctl") == command


def test_an_unreachable_server_is_one_line_naming_where_the_address_came_from() -> None:
    def refused_here(target: str, tls: reachability.Tls | None, timeout: float) -> Finding:
        assert target == "10.0.0.9:50051" and tls == reachability.Tls(None)
        return Finding(Problem.REFUSED, "connection refused")

    error = make_error(StatusCode.UNAVAILABLE, "failed to connect to all addresses; ...")
    failure = call_failure(error, config(STOCKCORE_TARGET="10.0.0.9:50051"), check=refused_here)

    assert failure.exit_code is ExitCode.UNAVAILABLE
    assert one_line(failure) == (
        "stockctl: UNREACHABLE: cannot reach 10.0.0.9:50051 (env STOCKCORE_TARGET): connection"
        " refused: start the server (`make run` starts one), or name its address with --target,"
        " STOCKCORE_TARGET or target in /home/me/.config/stockcore/config.toml"
    )


def test_an_untrusted_certificate_is_a_configuration_failure_naming_the_ca_settings() -> None:
    def untrusted(target: str, tls: reachability.Tls | None, timeout: float) -> Finding:
        return Finding(Problem.UNTRUSTED, "unable to get local issuer certificate")

    error = make_error(StatusCode.UNAVAILABLE, "Ssl handshake failed ...")
    failure = call_failure(error, config(STOCKCORE_CA_FILE="/etc/ca.pem"), check=untrusted)

    assert failure.exit_code is ExitCode.CONFIGURATION
    assert json.loads(failure.json())["error"] == {
        "code": "CONFIGURATION",
        "message": "the certificate of 127.0.0.1:50051 (default) is not signed by the CA in"
        " /etc/ca.pem (env STOCKCORE_CA_FILE): unable to get local issuer certificate",
        "fix": "name the CA that signed it with --ca-file, STOCKCORE_CA_FILE or ca_file in"
        " /home/me/.config/stockcore/config.toml",
    }


def test_an_unavailable_answer_from_the_server_itself_is_printed_as_it_came() -> None:
    error = make_error(
        StatusCode.UNAVAILABLE,
        "shutting down: retry",
        error_info=ErrorInfo("SHUTTING_DOWN", "stockcore"),
    )

    failure = call_failure(error, config(), check=no_answer)

    assert failure.text() == "stockctl: UNAVAILABLE: shutting down: retry"
    assert failure.exit_code is ExitCode.UNAVAILABLE


def test_a_connection_that_works_again_leaves_the_failure_as_it_came() -> None:
    error = make_error(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    failure = call_failure(error, config(), check=lambda target, tls, timeout: None)

    assert failure.text() == "stockctl: DEADLINE_EXCEEDED: Deadline Exceeded"


def test_a_closed_port_is_found_refused() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    found = reachability.check(f"127.0.0.1:{port}", reachability.Tls(None), 2.0)

    assert found == Finding(Problem.REFUSED, "connection refused")


@pytest.mark.parametrize(
    ("target", "where"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("localhost", ("localhost", 443)),
        ("[::1]:7", ("::1", 7)),
        ("dns:///inventory.internal:443", ("inventory.internal", 443)),
        ("ipv4:10.0.0.1:9", ("10.0.0.1", 9)),
        ("unix:/run/stockcore.sock", None),
        ("a:b", None),
        ("ipv4:10.0.0.1:9,10.0.0.2:9", None),
    ],
)
def test_targets_are_read_as_grpc_reads_them(target: str, where: tuple[str, int] | None) -> None:
    assert host_and_port(target) == where


@pytest.mark.parametrize(
    ("environ", "after"),
    [
        ({}, {"GRPC_VERBOSITY": "NONE"}),
        ({"GRPC_VERBOSITY": "DEBUG"}, {"GRPC_VERBOSITY": "DEBUG"}),
        ({"GRPC_TRACE": "tcp"}, {"GRPC_TRACE": "tcp"}),
    ],
)
def test_grpc_s_own_log_is_off_unless_the_user_asked_for_it(
    environ: dict[str, str], after: dict[str, str]
) -> None:
    quiet_grpc(environ)

    assert environ == after


def test_suggested_commands_use_the_path_stockctl_was_run_by_unless_path_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = tmp_path / "bin" / "stockctl"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert invoked_as(str(program)) == str(program)
    monkeypatch.setenv("PATH", str(program.parent))
    assert invoked_as(str(program)) == "stockctl"
    assert invoked_as("/repo/clients/cli.py") == "stockctl"
