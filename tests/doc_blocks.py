"""The code blocks of the user-facing docs (README.md and the other Markdown files at the top
of the repository and in docs/), how each is meant to be taken, and what the docs test
(tests/e2e/test_docs.py) runs of them.

A fenced block is taken by its language:

- `sh`, `bash`, `shell` and `console` blocks are commands a user runs: every command in
  them is run (in a `console` block, the lines after `$ `). A command whose trailing comment
  says `until Ctrl-C` runs until interrupted: it must print before it is interrupted.
- `python` blocks are run as a script; top-level `await` and `async with` are allowed, as
  in an asyncio REPL.
- `json`, `yaml`, `toml`, `text` and `mermaid` blocks show data, output or a drawing.
- Any block may be marked as not run by a comment on the line before its fence,
  `<!-- not run: why -->`: an illustration, or commands the suite runs elsewhere (`make`
  targets are run in short modes by tests/e2e/test_make_targets.py). What such a block
  claims is checked where that is cheap: each `make` target it names is one `make help`
  lists, each variable it passes to make is one the Makefile reads, each STOCKCORE_*
  variable it sets is one a program reads, each file its reason names exists.
- Any other block (no language, another language, an indented block) is a mistake: the
  test cannot tell whether a user is meant to run it.

Commands are run as written, from the repository root, with one change: an address on
loopback with one of the default ports (`127.0.0.1:50051`, `localhost:8080`,
`localhost:58081` ...) names the test stack's port for the same service instead.
"""

from __future__ import annotations

import enum
import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from devstack.config import DevSettings
from fulfilment.config import FulfilmentSettings
from gateway.config import GatewaySettings
from payments.config import PaymentsSettings
from payments.reconciler.config import ReconcilerSettings
from refunds.config import RefundSettings
from server.config import Settings

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
PYTHON_LANGUAGES = frozenset({"python", "py"})
SHOWN_LANGUAGES = frozenset({"json", "yaml", "yml", "toml", "text", "mermaid"})

NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")
"""The mark of a block that is not run, on the line before its fence."""

UNTIL_INTERRUPTED = re.compile(r"\s#\s.*\buntil Ctrl-C\b")
"""A command's trailing comment saying that it runs until interrupted."""

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")
_ASSIGNMENT = re.compile(r"^(?:export\s+)?(?P<name>[A-Za-z_]\w*)=")
_LOOPBACK = re.compile(r"(?<![\w.-])(?P<host>localhost|127\.0\.0\.1|\[::1\]):(?P<port>\d{1,5})\b")


class Kind(enum.Enum):
    """How a block is taken."""

    SHELL = "shell commands, run"
    PYTHON = "a Python script, run"
    SHOWN = "data, output or a drawing, shown"
    NOT_RUN = "marked as not run"
    UNKNOWN = "unclassified"


@dataclass(frozen=True)
class Block:
    """One code block of a doc."""

    doc: str
    """The doc's path from the repository root."""
    line: int
    """The line of its first line of code, from 1."""
    language: str
    """Its fence's language; empty for none, `(indented)` for an indented block."""
    code: str
    not_run: str | None = None
    """The reason of its `<!-- not run: ... -->` mark, if it has one."""

    @property
    def where(self) -> str:
        """doc:line, as an editor opens it."""
        return f"{self.doc}:{self.line}"

    @property
    def kind(self) -> Kind:
        """How it is taken (see the module's notes)."""
        if self.not_run is not None:
            return Kind.NOT_RUN
        if self.language in SHELL_LANGUAGES:
            return Kind.SHELL
        if self.language in PYTHON_LANGUAGES:
            return Kind.PYTHON
        if self.language in SHOWN_LANGUAGES:
            return Kind.SHOWN
        return Kind.UNKNOWN


@dataclass(frozen=True)
class Command:
    """One shell command of a block, as written (it may span lines)."""

    text: str
    line: int
    until_interrupted: bool = False


def user_docs(root: Path) -> list[Path]:
    """The user-facing docs: README.md first, the other Markdown files at the top, then
    docs/*.md."""
    top = sorted(root.glob("*.md"), key=lambda p: (p.name != "README.md", p.name))
    return [*top, *sorted((root / "docs").glob("*.md"))]


def blocks(path: Path, root: Path) -> list[Block]:
    """Every code block of the Markdown file at `path`, in order."""
    doc = str(path.relative_to(root))
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opened = _FENCE.match(lines[i])
        if opened is not None:
            fence = opened["fence"]
            closing = re.compile(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$")
            end = i + 1
            while end < len(lines) and not closing.match(lines[end]):
                end += 1
            code = "\n".join(lines[i + 1 : end])
            found.append(
                Block(
                    doc,
                    i + 2,
                    opened["info"].strip().split(" ")[0].lower(),
                    code + "\n" if code else "",
                    _mark_before(lines, i),
                )
            )
            i = end + 1
            continue
        if _opens_indented_block(lines, i):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            code = "\n".join(line[4:] for line in lines[i:end]).strip("\n")
            found.append(Block(doc, i + 1, "(indented)", code + "\n", _mark_before(lines, i)))
            i = end
            continue
        i += 1
    return found


def _mark_before(lines: list[str], index: int) -> str | None:
    before = index - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    if before < 0:
        return None
    mark = NOT_RUN.match(lines[before].strip())
    return None if mark is None else mark["reason"]


def _opens_indented_block(lines: list[str], index: int) -> bool:
    """Whether line `index` starts an indented code block: indented by four spaces or more
    after a blank line, below a paragraph that is no list item (whose own paragraphs are
    indented)."""
    if index == 0 or lines[index - 1].strip() or not lines[index].startswith("    "):
        return False
    if not lines[index].strip():
        return False
    before = index - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    if before < 0:
        return True
    previous = lines[before]
    return not previous.startswith(" ") and not _LIST_ITEM.match(previous)


def shell_commands(block: Block) -> list[Command]:
    """The block's commands, each complete as the shell reads it (a quoted string or a
    backslash may carry it over several lines), without comment-only lines; in a `console`
    block, the lines after `$ `."""
    lines = block.code.splitlines()
    if block.language == "console":
        return [
            Command(line[2:], block.line + n, _until_interrupted(line))
            for n, line in enumerate(lines)
            if line.startswith("$ ")
        ]
    commands: list[Command] = []
    pending: list[str] = []
    first = 0
    for n, line in enumerate(lines):
        if not pending:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            first = n
        pending.append(line)
        text = "\n".join(pending)
        if line.endswith("\\") or not _complete(text):
            continue
        commands.append(Command(text, block.line + first, _until_interrupted(line)))
        pending = []
    if pending:
        commands.append(Command("\n".join(pending), block.line + first))
    return commands


def _complete(text: str) -> bool:
    """Whether bash reads `text` as complete commands (no open quote, loop or brace)."""
    checked = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    return checked.returncode == 0


def _until_interrupted(line: str) -> bool:
    return UNTIL_INTERRUPTED.search(line) is not None


def assigned(command: Command) -> list[str]:
    """The shell variables a command sets (`NAME=...` or `export NAME=...` at its start):
    each must hold something once it ran."""
    found = _ASSIGNMENT.match(command.text.strip())
    return [] if found is None else [found["name"]]


@dataclass(frozen=True)
class MakeCall:
    """A `make` command: the variables set before it, its targets and its make variables."""

    environment: dict[str, str]
    targets: tuple[str, ...]
    variables: tuple[str, ...]


def make_calls(block: Block) -> list[MakeCall]:
    """The block's `make ...` commands (none when it holds other commands)."""
    found = []
    for command in shell_commands(block):
        words = shlex.split(command.text, comments=True)
        environment: dict[str, str] = {}
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            environment[name] = value
        if not words or words[0] != "make":
            continue
        rest = [w for w in words[1:] if not w.startswith("-")]
        found.append(
            MakeCall(
                environment,
                tuple(w for w in rest if "=" not in w),
                tuple(w.partition("=")[0] for w in rest if "=" in w),
            )
        )
    return found


def stack_variables(docs: Iterable[Block]) -> dict[str, str]:
    """The STOCKCORE_* variables the docs' `make run` commands set: the test stack starts
    with them. ValueError when two set one differently."""
    chosen: dict[str, str] = {}
    for block in docs:
        if block.kind is not Kind.NOT_RUN or block.language not in SHELL_LANGUAGES:
            continue
        for call in make_calls(block):
            if "run" not in call.targets:
                continue
            for name, value in call.environment.items():
                if chosen.setdefault(name, value) != value:
                    raise ValueError(
                        f"{block.where}: {name}={value}, but another `make run` sets"
                        f" {name}={chosen[name]}"
                    )
    return chosen


def program_variables() -> frozenset[str]:
    """Every STOCKCORE_* variable a program `make run` starts reads."""
    return frozenset(
        name
        for settings in (
            Settings,
            FulfilmentSettings,
            GatewaySettings,
            PaymentsSettings,
            ReconcilerSettings,
            RefundSettings,
            DevSettings,
        )
        for name in settings.VARIABLES
    )


def make_help(root: Path) -> str:
    """What `make help` prints in the checkout at `root`."""
    return subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def problems(block: Block, make_help: str, makefile: str, root: Path) -> list[str]:
    """What is wrong with a block as the docs test takes it (nothing: it is fine)."""
    kind = block.kind
    if kind is Kind.UNKNOWN:
        what = (
            "an indented code block"
            if block.language == "(indented)"
            else f"a ```{block.language} block"
            if block.language
            else "a ``` block without a language"
        )
        return [
            f"{block.where}: {what}, which the docs test cannot classify: fence it with"
            f" {', '.join(sorted(SHELL_LANGUAGES | PYTHON_LANGUAGES))} (run),"
            f" {', '.join(sorted(SHOWN_LANGUAGES))} (shown), or put"
            " `<!-- not run: why -->` on the line before it"
        ]
    found = []
    if kind is Kind.SHELL:
        for call in make_calls(block):
            found.append(
                f"{block.where}: `make {' '.join(call.targets)}` in a block that is run:"
                " make targets are run by tests/e2e/test_make_targets.py, so put"
                " `<!-- not run: why -->` before the block"
            )
    if kind is Kind.NOT_RUN:
        found += _false_claims(block, make_help, makefile, root)
    return found


def _false_claims(block: Block, make_help: str, makefile: str, root: Path) -> list[str]:
    """What a not-run block says that is not so, where that is cheap to tell."""
    found = []
    for name in re.findall(r"[\w./-]+\.(?:py|md|sql|toml|yml)\b", block.not_run or ""):
        if not (root / name).exists():
            found.append(f"{block.where}: the mark names {name}, which does not exist")
    if block.language not in SHELL_LANGUAGES:
        return found
    known = program_variables()
    for call in make_calls(block):
        for target in call.targets:
            if not re.search(rf"(?<![\w-]){re.escape(target)}(?![\w-])", make_help):
                found.append(f"{block.where}: `make {target}` is not a target `make help` lists")
        for variable in call.variables:
            if not re.search(rf"\b{re.escape(variable)}\b", makefile):
                found.append(f"{block.where}: make variable {variable} is read nowhere")
        for variable in call.environment:
            if variable.startswith("STOCKCORE_") and variable not in known:
                found.append(f"{block.where}: {variable} is read by no program")
    return found


DEFAULT_PORTS: Mapping[str, int] = {
    "gRPC": Settings.grpc_port,
    "server metrics": Settings.metrics_port,
    "gateway": GatewaySettings.gateway_port,
    "gateway stats": GatewaySettings.gateway_stats_port,
    "warehouse": DevSettings.dev_warehouse_port,
    "primary carrier": DevSettings.dev_primary_carrier_port,
    "fallback carrier": DevSettings.dev_fallback_carrier_port,
    "worker metrics": FulfilmentSettings.fulfil_metrics_port,
    "payment provider": DevSettings.dev_payments_port,
    "webhook receiver": PaymentsSettings.webhook_port,
    "webhook receiver metrics": PaymentsSettings.webhook_metrics_port,
    "reconciler metrics": ReconcilerSettings.reconcile_metrics_port,
    "refund sender metrics": RefundSettings.refund_metrics_port,
    "Prometheus": DevSettings.dev_prometheus_port,
    "PostgreSQL": DevSettings.dev_pg_port,
    "Redis": DevSettings.dev_redis_port,
}
"""Each service's port under `make run`, as the docs name it."""


class UnknownPort(ValueError):
    """A command names a port on loopback that is no service's default."""


def on_stack_ports(code: str, ports: Mapping[str, int]) -> str:
    """`code` with every loopback address at a service's default port (DEFAULT_PORTS)
    naming that service's port in `ports` instead; UnknownPort for a loopback port that is
    no service's."""
    by_default = {DEFAULT_PORTS[name]: port for name, port in ports.items()}

    def swap(found: re.Match[str]) -> str:
        port = int(found["port"])
        if port not in by_default:
            known = ", ".join(f"{p} ({n})" for n, p in DEFAULT_PORTS.items())
            raise UnknownPort(
                f"{found[0]} is no service of `make run`'s stack; its ports are {known}"
            )
        return f"{found['host']}:{by_default[port]}"

    return _LOOPBACK.sub(swap, code)
