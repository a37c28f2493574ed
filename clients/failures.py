"""What stockctl says when a command fails: one line on stderr that names the fix (the
file, variable or command), and an exit status per kind of failure."""

from __future__ import annotations

import dataclasses
import enum
import json
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clients import reachability
from clients.commands import rfc3339
from clients.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StockcoreError,
    Unauthenticated,
    Unavailable,
)
from clients.stockctl_config import ConfigurationError, StockctlConfig
from clients.token_cli import SUBJECT_EXAMPLE, issue_command
from clients.tokens import read_claims

# ErrorInfo reasons of the server's refusals (server/auth/tokens.py, server/rpc/access.py).
TOKEN_MISSING = "TOKEN_MISSING"
TOKEN_EXPIRED = "TOKEN_EXPIRED"
TOKEN_INVALID = "TOKEN_INVALID"
SCOPE_MISSING = "SCOPE_MISSING"


class ExitCode(enum.IntEnum):
    """Process exit statuses, distinct per kind of failure so scripts can branch on them."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    FAILED_PRECONDITION = 4
    NOT_ALLOWED = 5
    CONFIGURATION = 6
    UNAVAILABLE = 7
    INTERRUPTED = 130


#: What each exit status means, as `stockctl --help` and the README list them.
EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.ERROR: "the call failed otherwise (the server's answer is printed)",
    ExitCode.USAGE: "the command line is wrong, or the server found an argument invalid",
    ExitCode.NOT_FOUND: "what the command names is not there",
    ExitCode.FAILED_PRECONDITION: "refused in the current state (short stock, a paid order ...)",
    ExitCode.NOT_ALLOWED: "no token, an expired or unaccepted one, or a scope it lacks",
    ExitCode.CONFIGURATION: "a file the settings name is missing or unreadable, the config"
    " file is malformed, or the server's certificate is not one the settings trust",
    ExitCode.UNAVAILABLE: "the server could not be reached or could not answer now: try again",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_statuses_text() -> str:
    """The exit statuses as lines for `--help`."""
    return "\n".join(
        textwrap.fill(
            EXIT_MEANINGS[code],
            width=79,
            initial_indent=f"  {code.value:>3}  ",
            subsequent_indent=" " * 7,
        )
        for code in ExitCode
    )


@dataclass(frozen=True)
class Failure:
    """A failed command as stockctl reports it."""

    exit_code: ExitCode
    kind: str
    """The gRPC status code's name, or CONFIGURATION or UNREACHABLE."""
    problem: str
    fix: str = ""
    details: tuple[str, ...] = ()
    """Figures the server sent (short SKUs, invalid fields), a line each."""
    error: StockcoreError | None = None

    def text(self) -> str:
        """For stderr: one line (then the figures, if any)."""
        line = f"stockctl: {self.kind}: {self.problem}" + (f": {self.fix}" if self.fix else "")
        return "\n".join([line, *self.details])

    def json(self) -> str:
        """For stderr under --json."""
        body: dict[str, object] = {"code": self.kind, "message": self.problem}
        if self.fix:
            body["fix"] = self.fix
        if self.error is not None and self.error.shortages:
            body["shortages"] = self.error.shortages
        if self.error is not None and self.error.field_violations:
            body["field_violations"] = [
                {"field": v.field, "description": v.description}
                for v in self.error.field_violations
            ]
        return json.dumps({"error": body})


def exit_code_for(error: StockcoreError) -> ExitCode:
    """The exit status for a call the server (or the channel) failed."""
    if isinstance(error, NotFound):
        return ExitCode.NOT_FOUND
    if isinstance(error, FailedPrecondition):
        return ExitCode.FAILED_PRECONDITION
    if isinstance(error, Unauthenticated | PermissionDenied):
        return ExitCode.NOT_ALLOWED
    # The server judged the command's own arguments invalid: a usage error found later.
    if isinstance(error, InvalidArgument):
        return ExitCode.USAGE
    if isinstance(error, Unavailable | DeadlineExceeded | ResourceExhausted):
        return ExitCode.UNAVAILABLE
    return ExitCode.ERROR


def configuration_failure(problem: ConfigurationError) -> Failure:
    """A setting stockctl cannot run with."""
    return Failure(ExitCode.CONFIGURATION, "CONFIGURATION", problem.problem, problem.fix)


#: Looks into why a target could not be reached (clients/reachability.py; a stand-in in tests).
Check = Callable[[str, reachability.Tls | None, float], reachability.Finding | None]


def call_failure(
    error: StockcoreError,
    config: StockctlConfig,
    *,
    prog: str = "stockctl",
    check: Check = reachability.check,
) -> Failure:
    """A failed call, with the fix when the failure says one: for a call that got no
    answer, why the server could not be reached (connecting again to find out)."""
    details = tuple(f"  short {sku}: available {n}" for sku, n in error.shortages.items()) + tuple(
        f"  invalid {v.field}: {v.description}" for v in error.field_violations
    )
    plain = Failure(exit_code_for(error), error.code.name, error.message, "", details, error)
    reason = error.error_info.reason if error.error_info is not None else None
    if isinstance(error, Unauthenticated):
        return _unauthenticated(plain, reason, config, prog)
    if isinstance(error, PermissionDenied) and reason == SCOPE_MISSING:
        assert error.error_info is not None
        needed = error.error_info.metadata.get("required_scope")
        claims = _claims(config)
        if needed and claims is not None:
            renew = issue_command(claims, prog, add_scope=needed)
            return _with_fix(plain, f"issue a token with it: {_renewal(config, renew)}")
    if isinstance(error, Unavailable | DeadlineExceeded) and error.error_info is None:
        return _unreached(plain, config, check)
    return plain


def _with_fix(failure: Failure, fix: str, problem: str | None = None) -> Failure:
    return dataclasses.replace(failure, fix=fix, problem=problem or failure.problem)


def _claims(config: StockctlConfig) -> dict[str, object] | None:
    value = config.token.value
    try:
        text = value.read_text().strip() if isinstance(value, Path) else value
    except OSError:
        return None
    return read_claims(text) if text else None


def _renewal(config: StockctlConfig, command: str) -> str:
    """How to put a fresh token where stockctl reads it, with `command`."""
    setting = config.token
    if isinstance(setting.value, Path):
        return f"{command} > {setting.value}"
    return f"export STOCKCORE_TOKEN=$({command})"


def _unauthenticated(
    plain: Failure, reason: str | None, config: StockctlConfig, prog: str
) -> Failure:
    setting = config.token
    claims = _claims(config)
    if reason == TOKEN_MISSING or setting.value is None:
        empty = "STOCKCORE_TOKEN" in config.empty_variables
        problem = (
            "STOCKCORE_TOKEN is empty, so no token was sent (did `token issue` fail?)"
            if empty
            else "no token was sent"
        )
        mint = f"{prog} token issue --sub {SUBJECT_EXAMPLE} --scopes all"
        return _with_fix(
            plain,
            f"export STOCKCORE_TOKEN=$({mint}), or name a file holding one with"
            f" {config.ways_to_set('token', but='STOCKCORE_TOKEN')}",
            problem=problem,
        )
    renew = _renewal(config, issue_command(claims or {}, prog))
    if reason == TOKEN_EXPIRED:
        expires = claims.get("exp") if claims is not None else None
        when = (
            f" at {rfc3339(datetime.fromtimestamp(expires, UTC))}"
            if isinstance(expires, int)
            else ""
        )
        return _with_fix(
            plain, f"renew it: {renew}", problem=f"the token ({setting.source}) expired{when}"
        )
    if reason == TOKEN_INVALID:
        return _with_fix(
            plain,
            f"issue one with a key the server trusts: {renew}",
            problem=f"the server does not accept the token ({setting.source}): {plain.problem}",
        )
    return plain


def _unreached(plain: Failure, config: StockctlConfig, check: Check) -> Failure:
    target = config.target
    tls = (
        None
        if config.plaintext.value
        else reachability.Tls(
            config.ca_file.value, config.client_cert.value, config.client_key.value
        )
    )
    found = check(target.value, tls, min(config.timeout.value, 3.0))
    if found is None:
        return plain
    Problem = reachability.Problem
    where = f"{target.value} ({target.source})"
    trust = (
        f"the CA in {config.ca_file.value} ({config.ca_file.source})"
        if config.ca_file.value is not None
        else "any of the system's CAs (no CA file is set)"
    )
    if found.problem in (Problem.UNRESOLVED, Problem.REFUSED, Problem.UNREACHABLE):
        return Failure(
            ExitCode.UNAVAILABLE,
            "UNREACHABLE",
            f"cannot reach {where}: {found.detail}",
            f"start the server (`make run` starts one), or name its address with"
            f" {config.ways_to_set('target')}",
        )
    if found.problem is Problem.UNTRUSTED:
        return Failure(
            ExitCode.CONFIGURATION,
            "CONFIGURATION",
            f"the certificate of {where} is not signed by {trust}: {found.detail}",
            f"name the CA that signed it with {config.ways_to_set('ca_file')}",
        )
    if found.problem is Problem.WRONG_NAME:
        return Failure(
            ExitCode.CONFIGURATION,
            "CONFIGURATION",
            f"the certificate of {where} does not name that host ({found.detail})",
            f"reach it by a name its certificate holds, with {config.ways_to_set('target')}",
        )
    if found.problem is Problem.NOT_TLS:
        return Failure(
            ExitCode.CONFIGURATION,
            "CONFIGURATION",
            f"{where} does not speak TLS",
            f"if it was started with STOCKCORE_PLAINTEXT=true, call it with"
            f" {config.ways_to_set('plaintext')}",
        )
    if found.problem is Problem.SPEAKS_TLS:
        return Failure(
            ExitCode.CONFIGURATION,
            "CONFIGURATION",
            f"{where} speaks TLS, and plaintext is set ({config.plaintext.source})",
            config.fix("plaintext", config.plaintext.source),
        )
    return Failure(
        ExitCode.CONFIGURATION,
        "CONFIGURATION",
        f"{where} refused the TLS handshake ({found.detail})",
        "if it requires a client certificate, name one with"
        f" {config.ways_to_set('client_cert')}, and its key likewise (client_key)",
    )
