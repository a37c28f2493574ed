"""`stockctl config show`: the settings stockctl runs with, and where each came from (the
command line, a STOCKCORE_* variable, the config file, or the default)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from clients import stockctl_config
from clients.commands import Leaf, rfc3339
from clients.stockctl_config import Origin, Setting, StockctlConfig
from clients.tokens import read_claims


@dataclass(frozen=True)
class ShowConfig:
    """`config show`: print the effective settings and their sources."""


CONFIG_COMMANDS = (ShowConfig,)
ConfigCommand = ShowConfig

_FORMAT = (stockctl_config.__doc__ or "").split("The config file is TOML", 1)[-1]


def add_config_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], leaf: Leaf
) -> None:
    """Add `config` and its subcommands to stockctl's parser."""
    config = commands.add_parser("config", help="stockctl's own settings and where they come from")
    group = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    show = leaf(group, "show", "print the settings in effect and where each came from")
    show.formatter_class = argparse.RawDescriptionHelpFormatter
    show.epilog = "The config file is TOML" + _FORMAT.rstrip()
    show.set_defaults(make=lambda ns: ShowConfig())


def _token_text(
    setting: Setting[str | Path | None], now: datetime
) -> tuple[str, dict[str, object]]:
    """The token as `config show` describes it: never the token itself."""
    value = setting.value
    if value is None:
        return "-", {}
    if isinstance(value, Path):
        try:
            text = value.read_text().strip()
        except OSError:
            return f"file {value} (unreadable)", {"file": str(value), "readable": False}
        where: dict[str, object] = {"file": str(value), "readable": True}
        label = f"file {value}: "
    else:
        text, where, label = value, {}, ""
    claims = read_claims(text) if text else None
    if claims is None:
        return f"{label}not a JWT", {**where, "jwt": False}
    sub, expires = claims.get("sub"), claims.get("exp")
    data: dict[str, object] = {**where, "jwt": True, "sub": sub, "scope": claims.get("scope")}
    if isinstance(expires, int):
        moment = datetime.fromtimestamp(expires, UTC)
        data["expires"] = rfc3339(moment)
        state = "expired" if moment <= now else "expires"
        return f"{label}sub={sub}, {state} {rfc3339(moment)}", data
    return f"{label}sub={sub}", data


def _shown(setting: Setting[object]) -> tuple[str, object]:
    value = setting.value
    if value is None:
        return "-", None
    if isinstance(value, bool):
        return str(value).lower(), value
    if isinstance(value, float):
        return f"{value:g}", value
    if isinstance(value, Path):
        return str(value) + ("" if value.exists() else " (missing)"), str(value)
    return str(value), value


def execute_config(
    command: ConfigCommand, *, out: TextIO, config: StockctlConfig, as_json: bool
) -> None:
    """Print the settings; it needs no server."""
    now = datetime.now(UTC)
    rows: list[tuple[str, str, str]] = []
    data: dict[str, object] = {}
    for name, setting in config.settings().items():
        if name == "token":
            text, detail = _token_text(setting, now)
            value: object = detail or None
        else:
            text, value = _shown(setting)
        rows.append((name, text, str(setting.source)))
        data[name] = {
            "value": value,
            "source": setting.source.origin.value,
            "from": setting.source.name or None,
        }
    file = config.file
    chosen = "where stockctl looks" if file.chosen_by.origin is Origin.DEFAULT else file.chosen_by
    if file.path is None:
        file_text = f"none ({chosen})"
    else:
        file_text = f"{file.path} ({'read' if file.exists else 'not there'}; {chosen})"
    if as_json:
        body = {
            "config_file": {
                "path": None if file.path is None else str(file.path),
                "exists": file.exists,
                "chosen_by": str(file.chosen_by),
            },
            "settings": data,
            "empty_variables": list(config.empty_variables),
        }
        print(json.dumps(body, indent=2), file=out)
        return
    width = max(len(name) for name, _, _ in rows)
    value_width = max(len(text) for _, text, _ in rows)
    print(f"{'config file':<{width}}  {file_text}", file=out)
    for name, text, source in rows:
        print(f"{name:<{width}}  {text:<{value_width}}  {source}", file=out)
    for variable in config.empty_variables:
        print(f"note: {variable} is set but empty, so it counts as unset", file=out)
