"""stockctl, the installed program, run from a folder outside the checkout against a real
server: it finds the server, the CA and the signing key through the config file `make
run` writes, every stockctl command the README shows works, and each failure is one line
on stderr naming its fix, with the exit status `--help` documents."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from clients.failures import ExitCode
from clients.inventory import InventoryClient
from clients.stockctl_config import MAKE_RUN_MARK, render
from devstack import demo
from devstack.credentials import DevCredentials
from devstack.stockctl import write_stockctl_config
from server.app import App
from server.config import Settings
from tests import callers
from tests.callers import STOCKCTL, stockctl, user_environment
from tests.conftest import ROOT
from tests.doc_blocks import Kind, blocks, shell_commands

# gRPC's C-core log lines (`I1207 15:00:41.297331  7608 ssl_transport_security.cc:2563] ...`).
CORE_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|\.cc:\d+\]", re.MULTILINE)


@pytest.fixture
def anywhere(tmp_path: Path) -> Path:
    """A folder outside the checkout, stockctl's working folder."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    assert not folder.resolve().is_relative_to(ROOT)
    return folder


@pytest.fixture
def config_file(app: App, settings: Settings, credentials: DevCredentials, tmp_path: Path) -> Path:
    """stockctl's config file for the test server, written as `make run` writes it."""
    path = tmp_path / "config" / "stockcore" / "config.toml"
    assert write_stockctl_config(
        path, settings.with_overrides(grpc_port=app.port), credentials.data_dir
    )
    return path


async def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = await asyncio.to_thread(stockctl, args, env=env, cwd=cwd)
    assert not CORE_LOG.search(done.stderr), done.stderr
    return done


async def shell(line: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", line],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert not CORE_LOG.search(done.stderr), done.stderr
    return done


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def readme_stockctl_lines() -> list[str]:
    """Every stockctl command of the README's shell examples that the server alone answers,
    comments dropped: not the fulfilment worker's commands, nor streams, which wait for
    events (tests/e2e/test_docs.py runs those against `make run`'s stack)."""
    commands = [
        command.text
        for block in blocks(ROOT / "README.md", ROOT)
        if block.kind is Kind.SHELL
        for command in shell_commands(block)
    ]
    return [
        re.sub(r"\s+#\s.*$", "", line).strip()
        for line in commands
        if re.match(r"(export \w+=\$\()?\.venv/bin/stockctl ", line)
        and not re.search(r" (fulfilment|order watch) ", line)
        # A command naming a shell variable a line before it set (`"$id"`) runs only there.
        and not re.search(r"\$\w", line)
    ]


async def test_every_readme_stockctl_command_works_from_another_folder(
    app: App, settings: Settings, config_file: Path, anywhere: Path, credentials_for
) -> None:
    async with InventoryClient(
        f"127.0.0.1:{app.port}", credentials=credentials_for("catalogue")
    ) as inventory:
        for sku, on_hand in demo.CATALOGUE.items():
            await inventory.adjust_stock(sku, on_hand=on_hand, reason="count", idempotency_key=sku)
    env = user_environment(
        STOCKCORE_CONFIG=str(config_file),
        # `make run`'s database and Redis, for the commands that read them.
        STOCKCORE_PG_DSN=settings.pg_dsn or "",
        STOCKCORE_REDIS_URL=settings.redis_url or "",
    )
    # Under service managers and in containers, $USER is often unset.
    env.pop("USER", None)
    lines = readme_stockctl_lines()
    assert len(lines) >= 12 and lines[0].startswith("export STOCKCORE_TOKEN=$(")

    for line in lines:
        command = line.replace(".venv/bin/stockctl", shlex.quote(str(STOCKCTL)))
        export = re.fullmatch(r"export (\w+)=\$\((.*)\)", command)
        if export is not None:
            minted = await shell(export.group(2), env, anywhere)
            assert minted.returncode == 0 and minted.stdout.strip(), (line, minted.stderr)
            env[export.group(1)] = minted.stdout.strip()
            continue
        done = await shell(command, env, anywhere)
        assert done.returncode == ExitCode.OK, (line, done.stderr)
    rows = await app.store.fetch("SELECT DISTINCT caller FROM stockcore.movements")
    # The README's token names its caller `dev` when $USER is unset, never an empty name.
    assert {r["caller"] for r in rows} == {"catalogue", "dev"}
    # Paid: with no fulfilment worker here, nobody ships it.
    order = await run(["order", "get", "order-7", "--json"], env, anywhere)
    assert json.loads(order.stdout)["status"] == "PAID"


async def test_a_moved_ca_file_is_one_line_naming_the_key_that_named_it(
    app: App, credentials: DevCredentials, service_token: str, anywhere: Path, tmp_path: Path
) -> None:
    ca = tmp_path / "data" / "ca.pem"
    ca.parent.mkdir()
    shutil.copy(credentials.ca_cert, ca)
    config = tmp_path / "config.toml"
    config.write_text(
        render(
            {"target": f"127.0.0.1:{app.port}", "ca_file": str(ca)},
            [MAKE_RUN_MARK.removeprefix("# ") + " for this test"],
        )
    )
    env = user_environment(STOCKCORE_CONFIG=str(config), STOCKCORE_TOKEN=service_token)
    # Reached, trusted and authenticated: the server answers that it knows no such SKU.
    assert (await run(["stock", "get", "A"], env, anywhere)).returncode == ExitCode.NOT_FOUND

    ca.rename(ca.with_name("ca.pem.moved"))
    done = await run(["stock", "get", "A"], env, anywhere)

    assert done.returncode == ExitCode.CONFIGURATION == 6
    assert one_line(done) == (
        f"stockctl: CONFIGURATION: the CA file {ca} (file {config}): no such file: correct"
        f" ca_file in {config}, or start `make run`, which writes that file anew"
    )


async def test_an_untrusted_certificate_is_one_line_and_grpc_logs_nothing(
    app: App, service_token: str, anywhere: Path, tmp_path: Path
) -> None:
    # No CA file: the system's CAs, which did not sign the test server's certificate. The
    # failed handshakes are what gRPC's C-core logs at INFO.
    config = tmp_path / "config.toml"
    config.write_text(render({"target": f"127.0.0.1:{app.port}"}))
    env = user_environment(STOCKCORE_CONFIG=str(config), STOCKCORE_TOKEN=service_token)

    done = await run(["--timeout", "2", "stock", "get", "A"], env, anywhere)

    assert done.returncode == ExitCode.CONFIGURATION
    assert one_line(done) == (
        f"stockctl: CONFIGURATION: the certificate of 127.0.0.1:{app.port} (file {config}) is"
        " not signed by any of the system's CAs (no CA file is set): unable to get local issuer"
        f" certificate: name the CA that signed it with --ca-file, STOCKCORE_CA_FILE or"
        f" ca_file in {config}"
    )
    # The premise: without stockctl keeping it quiet, gRPC does log those handshakes.
    loud = await asyncio.to_thread(
        stockctl,
        ["--timeout", "2", "stock", "get", "A"],
        env=env | {"GRPC_VERBOSITY": "INFO"},
        cwd=anywhere,
    )
    assert loud.returncode == ExitCode.CONFIGURATION
    assert CORE_LOG.search(loud.stderr), loud.stderr


async def test_an_unreachable_server_is_one_line_naming_where_its_address_came_from(
    service_token: str, anywhere: Path
) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    env = user_environment(
        STOCKCORE_CONFIG="none", STOCKCORE_TARGET=f"127.0.0.1:{port}", STOCKCORE_TOKEN=service_token
    )

    done = await run(["--timeout", "1", "stock", "get", "A"], env, anywhere)

    assert done.returncode == ExitCode.UNAVAILABLE == 7
    assert one_line(done) == (
        f"stockctl: UNREACHABLE: cannot reach 127.0.0.1:{port} (env STOCKCORE_TARGET):"
        " connection refused: start the server (`make run` starts one), or name its address"
        " with --target or STOCKCORE_TARGET"
    )


async def test_no_token_and_an_expired_one_say_the_command_that_mints_a_fresh_one(
    app: App, config_file: Path, credentials: DevCredentials, anywhere: Path
) -> None:
    env = user_environment(STOCKCORE_CONFIG=str(config_file))
    none = await run(["stock", "get", "A"], env, anywhere)
    assert none.returncode == ExitCode.NOT_ALLOWED == 5
    assert one_line(none).startswith(
        "stockctl: UNAUTHENTICATED: no token was sent: export STOCKCORE_TOKEN=$("
    )
    assert 'token issue --sub "${USER:-dev}" --scopes all)' in one_line(none)

    # Lived an hour, ended an hour ago: past the server's leeway.
    expired = callers.token(credentials, "ops", ttl_s=3600, now=time.time() - 7200)
    done = await run(["stock", "get", "A"], env | {"STOCKCORE_TOKEN": expired}, anywhere)

    assert done.returncode == ExitCode.NOT_ALLOWED
    problem, _, renew = one_line(done).partition(": renew it: ")
    assert re.fullmatch(
        r"stockctl: UNAUTHENTICATED: the token \(env STOCKCORE_TOKEN\) expired at"
        r" \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z",
        problem,
    ), problem
    assert renew.startswith("export STOCKCORE_TOKEN=$(")
    assert renew.endswith(" token issue --sub ops --scopes all --ttl 1h)")
    # The command given renews it: run as said, then the call succeeds.
    renewed = await shell(
        f"{renew} && {shlex.quote(str(STOCKCTL))} --json stock adjust A --set 5 --reason count",
        env | {"STOCKCORE_TOKEN": expired},
        anywhere,
    )
    assert renewed.returncode == ExitCode.OK, renewed.stderr
    assert json.loads(renewed.stdout)["level"]["on_hand"] == 5


async def test_config_show_says_where_each_setting_came_from(
    config_file: Path, credentials: DevCredentials, service_token: str, anywhere: Path
) -> None:
    env = user_environment(
        STOCKCORE_CONFIG=str(config_file),
        STOCKCORE_TARGET="inventory.internal:443",
        STOCKCORE_TOKEN=service_token,
        STOCKCORE_CLIENT_CERT="",
    )

    done = await run(
        ["config", "show", "--json", "--ca-file", str(credentials.ca_cert)], env, anywhere
    )

    assert done.returncode == ExitCode.OK, done.stderr
    shown = json.loads(done.stdout)
    assert shown["config_file"] == {
        "path": str(config_file),
        "exists": True,
        "chosen_by": "env STOCKCORE_CONFIG",
    }
    sources = {name: (s["source"], s["from"]) for name, s in shown["settings"].items()}
    assert sources == {
        "target": ("env", "STOCKCORE_TARGET"),
        "timeout": ("default", None),
        "ca_file": ("flag", "--ca-file"),
        "client_cert": ("default", None),
        "client_key": ("default", None),
        "plaintext": ("default", None),
        "token": ("env", "STOCKCORE_TOKEN"),
        "signing_key": ("file", str(config_file)),
    }
    settings = shown["settings"]
    assert settings["signing_key"]["value"] == str(credentials.signing_key)
    assert settings["token"]["value"]["sub"] == callers.SUBJECT
    assert service_token not in done.stdout
    assert shown["empty_variables"] == ["STOCKCORE_CLIENT_CERT"]
    text = await run(["config", "show"], env, anywhere)
    assert re.search(
        r"^target\s+inventory\.internal:443\s+env STOCKCORE_TARGET$", text.stdout, re.M
    )


async def test_an_empty_subject_is_refused_in_one_line(config_file: Path, anywhere: Path) -> None:
    env = user_environment(STOCKCORE_CONFIG=str(config_file))
    env.pop("USER", None)

    done = await run(["token", "issue", "--sub", "", "--scopes", "all"], env, anywhere)
    assert done.returncode == ExitCode.USAGE == 2 and done.stdout == ""
    assert one_line(done) == (
        'stockctl: USAGE: --sub is empty (an unset $USER?): name the caller, e.g. --sub "${USER:-dev}"'
    )
    # What the README said before: an unset $USER, quoted, exported nothing but a warning.
    quoted = await shell(
        f'export STOCKCORE_TOKEN=$({shlex.quote(str(STOCKCTL))} token issue --sub "$USER"'
        ' --scopes all); printf %s "$STOCKCORE_TOKEN"',
        env,
        anywhere,
    )
    assert quoted.stdout == "" and "--sub is empty" in one_line(quoted)


async def test_version_works_from_anywhere(anywhere: Path) -> None:
    done = await run(["--version"], user_environment(STOCKCORE_CONFIG="none"), anywhere)

    assert done.returncode == 0 and re.fullmatch(r"stockctl \d+\.\d+\.\d+\n", done.stdout)
