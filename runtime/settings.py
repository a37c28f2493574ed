"""Typed settings from STOCKCORE_* environment variables: what every program's settings
share. A program's settings class holds only its own fields, its rules (`checks`) and its
variables (`VARIABLES`: name -> field and parser); it derives from `EnvSettings` (or
`CheckedSettings`, for a program configured by its command line alone) for the rest. Its
`__main__` reads it once, at start-up, inside `exit_if_invalid`."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, NoReturn, Protocol, Self, TypeVar

#: A program's variables: the variable's name -> (the settings field, its parser).
Variables = Mapping[str, tuple[str, Callable[[str], object]]]

#: The value of a variable that names nothing (STOCKCORE_FALLBACK_CARRIER=none: no
#: fallback), since an empty variable means the default.
NONE = "none"


class SettingsError(ValueError):
    """A setting is missing or out of range."""


class Validated(Protocol):
    """A settings class: built from keyword arguments, then validated."""

    def validate(self) -> Self:
        """Raise SettingsError for values the program cannot run with."""
        ...


S = TypeVar("S", bound=Validated)


def parse_bool(raw: str) -> bool:
    """`1`, `true`, `yes`, `on` or their opposites."""
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def parse_list(raw: str) -> tuple[str, ...]:
    """`a, b,c` -> ("a", "b", "c")."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def parse_timeouts(raw: str) -> dict[str, float]:
    """`Reserve=2,GetStock=0.5` -> {"Reserve": 2.0, "GetStock": 0.5}."""
    timeouts: dict[str, float] = {}
    for item in parse_list(raw):
        name, sep, seconds = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected RPC=seconds, got {item!r}")
        timeouts[name.strip()] = float(seconds)
    return timeouts


def parse_optional_name(raw: str) -> str:
    """A name, or "" for `none`."""
    return "" if raw.strip().lower() == NONE else raw.strip()


def read(
    kind: Callable[..., S], variables: Variables, environ: Mapping[str, str] | None = None
) -> S:
    """Build `kind` from the set `variables` of `environ` (default: the process's
    environment), validated; a SettingsError names the variables at fault."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name, (attr, parse) in variables.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            values[attr] = parse_bool(raw) if parse is bool else parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from exc
    try:
        return kind(**values).validate()
    except SettingsError as exc:
        named = [name for name, (attr, _) in variables.items() if attr in str(exc).split()[0]]
        raise SettingsError(f"{exc} (from {', '.join(named) or 'defaults'})") from exc


def write(settings: object, variables: Variables) -> dict[str, str]:
    """The variables that `read` turns back into `settings` (for child processes started
    with these settings); a field at its unset value is left out."""
    env: dict[str, str] = {}
    for name, (attr, parse) in variables.items():
        value = getattr(settings, attr)
        if parse is parse_optional_name and value == "":
            env[name] = NONE
        elif value is None or value == "":
            continue  # unset: the default
        elif parse is bool:
            env[name] = "1" if value else "0"
        elif parse is parse_list:
            env[name] = ",".join(value)
        elif parse is parse_timeouts:
            env[name] = ",".join(f"{rpc}={seconds!r}" for rpc, seconds in value.items())
        else:
            env[name] = str(value)
    return env


class CheckedSettings:
    """Base of a program's frozen settings dataclass: validation by its rules, and copies."""

    # Set on each subclass by @dataclass; declared so that `dataclasses.replace` type-checks.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def checks(self) -> Iterable[tuple[bool, str]]:
        """Each rule the values must keep: (whether they keep it, what it says)."""
        return ()

    def validate(self) -> Self:
        """Return self, or raise SettingsError saying the first rule of `checks` broken."""
        for ok, message in self.checks():
            if not ok:
                raise SettingsError(message)
        return self

    def with_overrides(self, **changes: object) -> Self:
        """Return a copy with the given fields changed, validated."""
        return dataclasses.replace(self, **changes).validate()


class EnvSettings(CheckedSettings):
    """Base of the settings of a program that reads STOCKCORE_* variables (`VARIABLES`)."""

    VARIABLES: ClassVar[Variables] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Build the settings from STOCKCORE_* variables (default: the process's), validated."""
        return read(cls, cls.VARIABLES, environ)

    def to_env(self) -> dict[str, str]:
        """The STOCKCORE_* variables that `from_env` reads back as these settings (for child
        processes started with them)."""
        return write(self, self.VARIABLES)


def command_line(
    prog: str, description: str | None, commands: Sequence[str] = (), epilog: str | None = None
) -> argparse.ArgumentParser:
    """A program's command line: `prog [COMMAND]`, the first of `commands` when none is named
    (no COMMAND when there are none)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    if commands:
        parser.add_argument("command", choices=commands, nargs="?", default=commands[0])
    return parser


def exit_invalid(parser: argparse.ArgumentParser, problem: object) -> NoReturn:
    """Exit with status 2 (a usage error), saying why the program cannot run so configured."""
    parser.exit(2, f"invalid settings: {problem}\n")


@contextmanager
def exit_if_invalid(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Around a program's start-up: a SettingsError raised in the block ends the program
    through `exit_invalid` rather than with a traceback."""
    try:
        yield
    except SettingsError as exc:
        exit_invalid(parser, exc)
