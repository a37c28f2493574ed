"""A user's terminal session, in which the docs test (tests/e2e/test_docs.py) runs the docs'
commands one after the other, as a user pastes them: from one folder, with one
environment, and the variables a command sets (`export TOKEN=...`, `H=...`) kept for the
commands after it, in the doc's later blocks too.

Each command runs in a fresh `bash -c` that first reads the session's state (its variables
and folder) from a file and writes it back after the command, so a command that hangs or
is interrupted is stopped with everything it started (its own process group) without
losing the session. Python blocks run in the same environment, with the project's Python.
curl is made to fail on an HTTP error (a `.curlrc` with `fail-with-body`): a user sees an
error body for what it is, and so must the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.doc_blocks import Block, Command, assigned

# A Python block is compiled as an asyncio REPL would take it: top-level `await` and
# `async with` run in an event loop. Its lines keep the doc's numbers in a traceback.
_PYTHON_RUNNER = """
import ast, asyncio, inspect, sys
path, origin, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
source = "\\n" * (first - 1) + open(path).read()
code = compile(source, origin, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
scope = {"__name__": "__main__"}
if code.co_flags & inspect.CO_COROUTINE:
    asyncio.run(eval(code, scope))
else:
    exec(code, scope)
"""

_SETTLE_S = 1.0
# How long a command may take to end once sent Ctrl-C.
_CTRL_C_S = 10.0
"""How long a command that runs until Ctrl-C is given, once it printed, to show that it
does not end by itself."""

_INTERRUPTED = {130, -signal.SIGINT}
"""How a command ended by Ctrl-C exits: 130 by its own handler, or killed by SIGINT."""


@dataclass(frozen=True)
class Ran:
    """What one command (or Python block) did."""

    where: str
    written: str
    """As the doc has it."""
    ran: str
    """As it ran (the stack's ports in place of the defaults)."""
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    problem: str | None = None
    """What went wrong (None: it did what the doc says)."""

    def report(self) -> str:
        """Where, what, and how it ended, for a failure message."""
        lines = [f"{self.where}: {self.problem}", f"  as written: {self.written}"]
        if self.ran != self.written:
            lines.append(f"  as run:     {self.ran}")
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            tail = text.strip().splitlines()[-15:]
            if tail:
                lines.append(f"  {name}:")
                lines += [f"    {line}" for line in tail]
        return "\n".join(lines)


@dataclass
class Session:
    """One terminal session: its folder, environment and state file."""

    cwd: Path
    env: dict[str, str]
    home: Path
    """A folder of the session's own: its state file and curl's settings."""
    timeout_s: float = 60.0
    """The longest a command may take (one that runs until Ctrl-C: before it prints)."""
    python_env: dict[str, str] = field(default_factory=dict)
    """Variables Python blocks get besides the session's."""
    _names: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._state.write_text(f"cd {shlex.quote(str(self.cwd))}\n")
        (self.home / ".curlrc").write_text("fail-with-body\nshow-error\n")
        self.env = {**self.env, "CURL_HOME": str(self.home)}
        self.env.pop("BASH_ENV", None)

    @property
    def _state(self) -> Path:
        return self.home / "state.sh"

    def _script(self, body: str) -> str:
        """`body` between reading the session's state and writing it back."""
        # Every name that may have been set so far; those unset are skipped.
        names = " ".join(sorted(self._names))
        state = shlex.quote(str(self._state))
        keep = f"declare -p {names} 2>/dev/null; " if names else ""
        return (
            f". {state}\n{body}\n__doc_status=$?\n"
            f"{{ {keep}printf 'cd %q\\n' \"$PWD\"; }} > {state}.new && mv {state}.new {state}\n"
            "exit $__doc_status\n"
        )

    def run(self, command: Command, where: str, ran: str) -> Ran:
        """Run a command to its end (or, if the doc says it runs until Ctrl-C, until it
        printed); `ran` is its text as run. A variable it sets must hold something after."""
        assigns = assigned(command)
        self._names.update(assigns)
        self._names.update(re.findall(r"(?<![\w-])([A-Za-z_]\w*)=", ran))
        if command.until_interrupted:
            return self._until_interrupted(command, where, ran)
        started = time.monotonic()
        code, out, err, timed_out = self._bash(self._script(ran), self.env)
        seconds = time.monotonic() - started
        problem = None
        if timed_out:
            problem = f"still running after {self.timeout_s:g} s (stopped)"
        elif code != 0:
            problem = f"exited with status {code}"
        else:
            empty = [name for name in assigns if not self.value(name)]
            if empty:
                problem = f"left {', '.join(empty)} empty"
        return Ran(where, command.text, ran, code, out, err, seconds, problem)

    def run_python(self, block: Block, source: str) -> Ran:
        """Run a Python block as a script with the session's environment."""
        path = self.home / f"block-{block.line}.py"
        path.write_text(source)
        argv = (sys.executable, "-c", _PYTHON_RUNNER, str(path), block.doc, str(block.line))
        started = time.monotonic()
        code, out, err, timed_out = self._bash(
            self._script(" ".join(map(shlex.quote, argv))), {**self.env, **self.python_env}
        )
        problem = (
            f"still running after {self.timeout_s:g} s (stopped)"
            if timed_out
            else None
            if code == 0
            else f"exited with status {code}"
        )
        seconds = time.monotonic() - started
        return Ran(block.where, block.code, source, code, out, err, seconds, problem)

    def value(self, name: str) -> str:
        """A session variable's value now (empty when unset)."""
        script = f'. {shlex.quote(str(self._state))}\nprintf %s "${{{name}:-}}"'
        done = subprocess.run(
            ["bash", "-c", script], env=self.env, capture_output=True, text=True, check=False
        )
        return done.stdout

    def _bash(self, script: str, env: dict[str, str]) -> tuple[int | None, str, str, bool]:
        """Run `script` in bash in a process group of its own; stopped with everything it
        started if it outlives the timeout. Its status (None if stopped), output and
        whether it was stopped."""
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=self.timeout_s)
            return proc.returncode, out, err, False
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return None, out, err, True

    def _until_interrupted(self, command: Command, where: str, ran: str) -> Ran:
        """Run a command the doc says runs until Ctrl-C: once it has printed a line, send
        the interrupt a terminal sends (SIGINT to its process group); it must end by it."""
        started = time.monotonic()
        # No state written after it: its status is the command's own, and a command that
        # ended by itself is not taken for one that Ctrl-C ended.
        proc = subprocess.Popen(
            ["bash", "-c", f". {shlex.quote(str(self._state))}\n{ran}\n"],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        out, err = bytearray(), bytearray()
        problem: str | None = None
        with selectors.DefaultSelector() as streams:
            streams.register(proc.stdout, selectors.EVENT_READ, out)
            streams.register(proc.stderr, selectors.EVENT_READ, err)
            deadline = started + self.timeout_s
            while b"\n" not in out and proc.poll() is None and time.monotonic() < deadline:
                _read_ready(streams, min(0.2, max(0.0, deadline - time.monotonic())))
            if b"\n" not in out and proc.poll() is None:
                problem = f"printed nothing in {self.timeout_s:g} s"
            # A command that printed and then ends by itself has ended within this much; a
            # command that follows something is still running.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_SETTLE_S)
            if proc.returncode is not None:
                problem = problem or (
                    f"ended with status {proc.returncode} by itself, though the doc says it"
                    " runs until Ctrl-C"
                )
            _kill_group(proc.pid, signal.SIGINT)
            try:
                # Ends at once when it works; the margin is for a machine stalled a moment
                # under the whole suite. (A suite that inherited SIGINT ignored made every
                # command ignore it too: tests/conftest.py restores it.)
                proc.wait(_CTRL_C_S)
            except subprocess.TimeoutExpired:
                problem = problem or f"did not end within {_CTRL_C_S:g} s of Ctrl-C"
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            while _read_ready(streams, 0.0):
                pass
        proc.stdout.close()
        proc.stderr.close()
        if problem is None and proc.returncode not in _INTERRUPTED:
            problem = (
                f"ended with status {proc.returncode}, not by Ctrl-C, though the doc says it"
                " runs until Ctrl-C"
            )
        return Ran(
            where,
            command.text,
            ran,
            proc.returncode,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
            time.monotonic() - started,
            problem,
        )


def _read_ready(streams: selectors.BaseSelector, timeout: float) -> bool:
    """Read what the streams hold now (waiting up to `timeout`); whether anything came."""
    got = False
    for key, _ in streams.select(timeout):
        chunk = os.read(key.fd, 65536)
        if chunk:
            key.data.extend(chunk)
            got = True
        else:
            streams.unregister(key.fileobj)
    return got


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
