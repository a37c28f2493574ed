"""stockctl's settings, wherever it runs: the server's address, the CA it trusts, its own
certificate, the token it sends and the key `stockctl token issue` signs with.

Each setting is taken from the first of these that gives it, and remembers which:

1. the command line (`--target`, `--ca-file`, ...);
2. the environment (`STOCKCORE_TARGET`, `STOCKCORE_CA_FILE`, ...; an empty variable counts
   as unset);
3. the config file: the file `STOCKCORE_CONFIG` names (`none`: no file), else
   `$XDG_CONFIG_HOME/stockcore/config.toml`, else `~/.config/stockcore/config.toml`.
   `make run` writes it, with absolute paths, each time it starts;
4. the default.

The config file is TOML: keys at the top level, every one optional, nothing else. A
relative path in it is taken from the file's own folder.

    target      = "127.0.0.1:50051"                      the server's address
    ca_file     = "/home/me/stockcore/.data/tls/ca.pem"  the CA of the server's certificate
                                                         (unset: the system's CAs)
    client_cert = "/home/me/certs/client.pem"            this client's certificate and its
    client_key  = "/home/me/certs/client-key.pem"        key, for mutual TLS
    plaintext   = false                                  true: no TLS at all
    token_file  = "/home/me/.stockcore-token"            a file holding the bearer token
    signing_key = "/home/me/stockcore/.data/auth/signing-key.json"
                                                         the private JWK tokens are signed with

A token itself is never kept there: it comes from `STOCKCORE_TOKEN`, or from the file
`--token-file`, `STOCKCORE_TOKEN_FILE` or `token_file` names.
"""

from __future__ import annotations

import enum
import os
import pwd
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from clients.credentials import Credentials
from clients.tokens import load_signing_key

#: Names the config file to read instead of the usual one; `none` reads no file.
CONFIG_ENV = "STOCKCORE_CONFIG"
NO_FILE = "none"
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 5.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigurationError(Exception):
    """stockctl cannot run as configured: `problem` says what is wrong, `fix` what to do
    about it, each naming the file, variable, option or command concerned."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}: {fix}")
        self.problem = problem
        self.fix = fix


class Origin(enum.Enum):
    """Where a setting came from, first to last in precedence."""

    FLAG = "flag"
    ENV = "env"
    FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True)
class Source:
    """Where a setting came from: the option, the variable or the file that gave it."""

    origin: Origin
    name: str = ""

    def __str__(self) -> str:
        return f"{self.origin.value} {self.name}" if self.name else self.origin.value


DEFAULT = Source(Origin.DEFAULT)

T = TypeVar("T")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """A setting's value and where it came from."""

    value: T
    source: Source


@dataclass(frozen=True)
class Place:
    """The names one setting is given by: its option, its variables, its config file key."""

    option: str | None
    variables: tuple[str, ...]
    key: str | None


#: Every setting, by name, and how to give it. `token` is the token itself when a variable
#: holds it, and a file holding it when an option, a variable or the config file names one.
PLACES: Mapping[str, Place] = {
    "target": Place("--target", ("STOCKCORE_TARGET",), "target"),
    "timeout": Place("--timeout", (), None),
    "ca_file": Place("--ca-file", ("STOCKCORE_CA_FILE",), "ca_file"),
    "client_cert": Place("--client-cert", ("STOCKCORE_CLIENT_CERT",), "client_cert"),
    "client_key": Place("--client-key", ("STOCKCORE_CLIENT_KEY",), "client_key"),
    "plaintext": Place("--plaintext", ("STOCKCORE_PLAINTEXT",), "plaintext"),
    "token": Place("--token-file", ("STOCKCORE_TOKEN", "STOCKCORE_TOKEN_FILE"), "token_file"),
    "signing_key": Place("--signing-key", ("STOCKCORE_SIGNING_KEY",), "signing_key"),
}

#: The config file's keys, and whether each is a path (else a string or a boolean).
FILE_KEYS: Mapping[str, type] = {
    "target": str,
    "ca_file": Path,
    "client_cert": Path,
    "client_key": Path,
    "plaintext": bool,
    "token_file": Path,
    "signing_key": Path,
}


@dataclass(frozen=True)
class ConfigFile:
    """The config file stockctl reads (or would read, had it been there) and its values,
    paths made absolute."""

    path: Path | None
    """None: no file at all (STOCKCORE_CONFIG=none, or no home folder to look in)."""
    chosen_by: Source
    exists: bool = False
    values: Mapping[str, str | bool] = field(default_factory=dict)
    written_by_make_run: bool = False

    def where(self) -> str:
        """The file, for a message."""
        return str(self.path) if self.path is not None else "the config file"


@dataclass(frozen=True)
class StockctlConfig:
    """Every setting stockctl runs with, each with its source."""

    file: ConfigFile
    target: Setting[str]
    timeout: Setting[float]
    ca_file: Setting[Path | None]
    client_cert: Setting[Path | None]
    client_key: Setting[Path | None]
    plaintext: Setting[bool]
    token: Setting[str | Path | None]
    """The token itself (str), a file holding it (Path), or none."""
    signing_key: Setting[Path | None]
    empty_variables: tuple[str, ...] = ()
    """stockctl's variables that are set but empty (so count as unset)."""

    def settings(self) -> dict[str, Setting[Any]]:
        """Every setting by name, in PLACES' order."""
        return {name: getattr(self, name) for name in PLACES}

    def ways_to_set(self, name: str, *, but: str | None = None) -> str:
        """How a user gives setting `name`: its option, variables (`but` one) and config
        file key."""
        place = PLACES[name]
        ways = [*([place.option] if place.option else [])]
        ways += [variable for variable in place.variables if variable != but]
        if place.key is not None and self.file.path is not None:
            ways.append(f"{place.key} in {self.file.where()}")
        return ", ".join(ways[:-1]) + f" or {ways[-1]}" if len(ways) > 1 else ways[0]

    def fix(self, name: str, source: Source) -> str:
        """What to change when setting `name`, from `source`, is wrong."""
        match source.origin:
            case Origin.FLAG:
                return f"correct {source.name}"
            case Origin.ENV:
                return f"correct or unset {source.name}"
            case Origin.FILE:
                fix = f"correct {PLACES[name].key} in {source.name}"
                if self.file.written_by_make_run:
                    fix += ", or start `make run`, which writes that file anew"
                return fix
            case Origin.DEFAULT:
                return f"set it with {self.ways_to_set(name)}"


def config_path(environ: Mapping[str, str]) -> tuple[Path | None, Source]:
    """Which config file to read: STOCKCORE_CONFIG's, else the user's config folder's
    (XDG_CONFIG_HOME, else ~/.config); None for none."""
    named = environ.get(CONFIG_ENV, "")
    if named:
        source = Source(Origin.ENV, CONFIG_ENV)
        if named.strip().lower() == NO_FILE:
            return None, source
        return _absolute(named), source
    xdg = environ.get("XDG_CONFIG_HOME", "")
    # The XDG base directory rules ignore a relative XDG_CONFIG_HOME.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "stockcore" / "config.toml", DEFAULT
    home = environ.get("HOME", "")
    if not home:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            return None, DEFAULT
    return Path(home) / ".config" / "stockcore" / "config.toml", DEFAULT


#: The first line of a config file `make run` wrote: it writes over such a file only.
MAKE_RUN_MARK = "# Written by `make run`"


def read_config_file(path: Path | None, chosen_by: Source) -> ConfigFile:
    """The config file at `path` (none there is no error unless STOCKCORE_CONFIG named it);
    ConfigurationError when it cannot be read or holds what stockctl does not know."""
    if path is None:
        return ConfigFile(None, chosen_by)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if chosen_by.origin is Origin.ENV:
            raise ConfigurationError(
                f"the config file {path} ({chosen_by}) does not exist",
                f"create it, or unset {CONFIG_ENV} ({CONFIG_ENV}={NO_FILE}: no file)",
            ) from None
        return ConfigFile(path, chosen_by)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigurationError(
            f"cannot read the config file {path} ({reason})", "fix the file or its permissions"
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"the config file {path} is not TOML ({exc})",
            "fix it (its format: `stockctl config show --help`)",
        ) from None
    values: dict[str, str | bool] = {}
    for key, value in document.items():
        kind = FILE_KEYS.get(key)
        if kind is None:
            raise ConfigurationError(
                f"the config file {path} has an unknown key {key!r}",
                f"remove it; the keys are {', '.join(FILE_KEYS)}",
            )
        if kind is bool:
            if not isinstance(value, bool):
                raise ConfigurationError(
                    f"{key} in {path} is {value!r}", f"write {key} = true or {key} = false"
                )
            values[key] = value
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(
                f"{key} in {path} is {value!r}", f'write it as a quoted string: {key} = "..."'
            )
        if kind is Path:
            value = str(_absolute(value, path.parent))
        values[key] = value
    return ConfigFile(path, chosen_by, True, values, text.startswith(MAKE_RUN_MARK))


def _absolute(text: str, base: Path | None = None) -> Path:
    """`text` as an absolute path without `..`, taken from `base` (else the current folder)
    when relative."""
    given = Path(text).expanduser()
    return Path(os.path.normpath((base or Path.cwd()) / given))


def _flag_bool(raw: str, variable: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{variable} is {raw!r}", "set it to true or false, or unset it")


def resolve(
    flags: Mapping[str, object], environ: Mapping[str, str], file: ConfigFile
) -> StockctlConfig:
    """The settings from the command line's `flags` (by setting name, None when not
    given), then `environ`, then `file`, then the defaults. Paths given on the command line
    or in a variable are taken from the current folder."""

    def given(name: str) -> Setting[object] | None:
        value = flags.get(name)
        if value is None:
            return None
        return Setting(value, Source(Origin.FLAG, PLACES[name].option or name))

    def variable(name: str) -> Setting[str] | None:
        value = environ.get(name, "")
        return Setting(value, Source(Origin.ENV, name)) if value else None

    def in_file(key: str) -> Setting[str | bool] | None:
        if key not in file.values:
            return None
        return Setting(file.values[key], Source(Origin.FILE, file.where()))

    def path(name: str) -> Setting[Path | None]:
        place = PLACES[name]
        for found in (given(name), variable(place.variables[0])):
            if found is not None:
                return Setting(_absolute(str(found.value)), found.source)
        assert place.key is not None
        stored = in_file(place.key)
        if stored is not None:
            return Setting(Path(str(stored.value)), stored.source)
        return Setting(None, DEFAULT)

    def target() -> Setting[str]:
        for found in (given("target"), variable("STOCKCORE_TARGET"), in_file("target")):
            if found is not None:
                return Setting(str(found.value), found.source)
        return Setting(DEFAULT_TARGET, DEFAULT)

    def plaintext() -> Setting[bool]:
        if flags.get("plaintext"):
            return Setting(True, Source(Origin.FLAG, "--plaintext"))
        found = variable("STOCKCORE_PLAINTEXT")
        if found is not None:
            return Setting(_flag_bool(found.value, found.source.name), found.source)
        stored = in_file("plaintext")
        if stored is not None:
            return Setting(bool(stored.value), stored.source)
        return Setting(False, DEFAULT)

    def token() -> Setting[str | Path | None]:
        # A token file on the command line beats a token in the environment.
        named = given("token")
        if named is not None:
            return Setting(_absolute(str(named.value)), named.source)
        inline = variable("STOCKCORE_TOKEN")
        if inline is not None:
            return Setting(inline.value.strip(), inline.source)
        in_variable = variable("STOCKCORE_TOKEN_FILE")
        if in_variable is not None:
            return Setting(_absolute(in_variable.value), in_variable.source)
        stored = in_file("token_file")
        if stored is not None:
            return Setting(Path(str(stored.value)), stored.source)
        return Setting(None, DEFAULT)

    timeout = flags.get("timeout")
    if timeout is None:
        timeout_setting = Setting(DEFAULT_TIMEOUT, DEFAULT)
    else:
        assert isinstance(timeout, float | int)
        timeout_setting = Setting(float(timeout), Source(Origin.FLAG, "--timeout"))
    every_variable = {v for place in PLACES.values() for v in place.variables}
    return StockctlConfig(
        file=file,
        target=target(),
        timeout=timeout_setting,
        ca_file=path("ca_file"),
        client_cert=path("client_cert"),
        client_key=path("client_key"),
        plaintext=plaintext(),
        token=token(),
        signing_key=path("signing_key"),
        empty_variables=tuple(
            sorted(v for v in every_variable | {CONFIG_ENV} if environ.get(v) == "")
        ),
    )


def load(flags: Mapping[str, object], environ: Mapping[str, str]) -> StockctlConfig:
    """stockctl's settings from its command line's `flags`, `environ` and the config file."""
    return resolve(flags, environ, read_config_file(*config_path(environ)))


def _read(config: StockctlConfig, name: str, what: str) -> bytes | None:
    setting: Setting[Path | None] = getattr(config, name)
    if setting.value is None:
        return None
    try:
        return setting.value.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{what} {setting.value} ({setting.source}): {_reason(exc)}",
            config.fix(name, setting.source),
        ) from None


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    return (exc.strerror or type(exc).__name__).lower()


def read_token(config: StockctlConfig) -> str | None:
    """The bearer token to send, read from its file when a file holds it."""
    setting = config.token
    if not isinstance(setting.value, Path):
        return setting.value or None
    try:
        text = setting.value.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = _reason(exc) if isinstance(exc, OSError) else "not text"
        raise ConfigurationError(
            f"the token file {setting.value} ({setting.source}): {reason}",
            config.fix("token", setting.source),
        ) from None
    if not text:
        raise ConfigurationError(
            f"the token file {setting.value} ({setting.source}) is empty",
            f"write a token into it: stockctl token issue ... > {setting.value}",
        )
    return text


def credentials(config: StockctlConfig) -> Credentials:
    """What stockctl presents to the server: the files the settings name, read now;
    ConfigurationError naming the setting to fix when one cannot be read."""
    token = read_token(config)
    token_file = str(config.token.value) if isinstance(config.token.value, Path) else None
    if token is not None and not all(" " < ch <= "~" for ch in token):
        raise ConfigurationError(
            f"the token ({config.token.source}) is not printable ASCII without spaces",
            config.fix("token", config.token.source),
        )
    if config.plaintext.value:
        return Credentials(token, plaintext=True, token_file=token_file)
    cert = _read(config, "client_cert", "the client certificate")
    key = _read(config, "client_key", "the client key")
    if (cert is None) != (key is None):
        missing = "client_key" if key is None else "client_cert"
        raise ConfigurationError(
            "a client certificate needs its key, and a key its certificate",
            f"set {missing} too: {config.ways_to_set(missing)}",
        )
    return Credentials(
        token,
        root_certificates=_read(config, "ca_file", "the CA file"),
        certificate_chain=cert,
        private_key=key,
        token_file=token_file,
    )


def signing_key(config: StockctlConfig, flag: str | None = None) -> dict[str, Any]:
    """The private JWK `stockctl token issue` signs with: the `--signing-key` file when
    given (`flag`), else the configured one; ConfigurationError naming the fix."""
    setting = config.signing_key
    if flag is not None:
        setting = Setting(_absolute(flag), Source(Origin.FLAG, "--signing-key"))
    if setting.value is None:
        raise ConfigurationError(
            "no signing key to sign the token with",
            f"start `make run` (it names its development key in {config.file.where()}),"
            f" or give one with {config.ways_to_set('signing_key')}",
        )
    try:
        return load_signing_key(setting.value)
    except OSError as exc:
        raise ConfigurationError(
            f"the signing key {setting.value} ({setting.source}): {_reason(exc)}",
            config.fix("signing_key", setting.source),
        ) from None
    except ValueError:
        raise ConfigurationError(
            f"the signing key {setting.value} ({setting.source}) is not a private JWK with a kid",
            config.fix("signing_key", setting.source),
        ) from None


def _toml_string(text: str) -> str:
    escaped = []
    for ch in text:
        if ch in '"\\':
            escaped.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            escaped.append(f"\\u{ord(ch):04x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def render(values: Mapping[str, str | bool], comments: Sequence[str] = ()) -> str:
    """A config file holding `values` (keys of FILE_KEYS), after `comments` lines."""
    lines = [f"# {line}".rstrip() for line in comments]
    for key, value in values.items():
        if key not in FILE_KEYS:
            raise ValueError(f"{key!r} is not a config file key")
        if isinstance(value, bool) != (FILE_KEYS[key] is bool):
            raise ValueError(f"{key} = {value!r} is not of its kind")
        lines.append(
            f"{key} = {str(value).lower() if isinstance(value, bool) else _toml_string(value)}"
        )
    return "\n".join(lines) + "\n"


def write_config_file(path: Path, text: str) -> None:
    """Put `text` in `path` whole (a reader sees the old file or the new one), making its
    folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
