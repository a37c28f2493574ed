"""Child processes started with no Python code between fork and exec, that die with the
thread that started them (the kernel's parent-death signal), and stopped in order.

The starting process may have gRPC, asyncio and driver threads, and running Python in a
child forked from it can crash (CPython's docs say so for `preexec_fn`). Credentials and the
parent-death signal are set by util-linux `setpriv`, which the child execs first; a new
session comes from `subprocess`'s own C code. Without `preexec_fn`, `user=` or `group=`,
CPython starts the child with vfork, so no fork handler of any library runs either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True, slots=True)
class RunAs:
    """An unprivileged account a child switches to before it execs its program."""

    uid: int
    gid: int


def _setpriv() -> str | None:
    return shutil.which("setpriv")


def child_argv(
    argv: Sequence[str], death_signal: signal.Signals, run_as: RunAs | None = None
) -> list[str]:
    """`argv` prefixed so that the child takes `run_as`'s credentials and gets
    `death_signal` when the thread that started it exits.

    Linux sends the parent-death signal when the *thread* that started the child exits,
    so children that must outlive a call are started from the main thread."""
    setpriv = _setpriv()
    if setpriv is None:
        if run_as is not None:
            raise RuntimeError(
                "setpriv (util-linux) is needed to start servers as an unprivileged user: "
                "install util-linux, or run as that user"
            )
        # Without setpriv (not Linux), children do not die with their starter; they are
        # still stopped by the starter's own shutdown.
        return list(argv)
    prefix = [setpriv, "--pdeathsig", death_signal.name]
    if run_as is not None:
        # setpriv applies the death signal after the credential change, which clears it.
        prefix += ["--reuid", str(run_as.uid), "--regid", str(run_as.gid), "--clear-groups"]
    return [*prefix, "--", *argv]


def spawn(
    argv: Sequence[str],
    *,
    death_signal: signal.Signals,
    run_as: RunAs | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own that dies with the calling thread (see
    `child_argv`), with no Python code run in the child."""
    return subprocess.Popen(
        child_argv(argv, death_signal, run_as),
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


def kill_child(proc: subprocess.Popen[bytes] | None, *, tree: bool = False) -> None:
    """SIGKILL `proc` (and with `tree`, every process it started) and reap it; with
    `tree`, return once they are all gone."""
    if proc is None:
        return
    doomed = descendants(proc.pid) if tree else []
    proc.kill()
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while doomed and time.monotonic() < deadline:
        doomed = [pid for pid in doomed if _alive(pid)]
        time.sleep(0.01)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (PostgreSQL's backends put themselves in sessions of
    their own, so a process group does not find them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields follow the last ")".
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, waiting to be reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_with(proc: subprocess.Popen[bytes] | None, sig: int, grace: float) -> None:
    """Send `sig`, wait up to `grace` seconds, then SIGKILL."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_child(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a child started with `spawn`: SIGTERM, then SIGKILL after `grace` seconds."""
    stop_with(proc, signal.SIGTERM, grace)


Probe = Callable[[], bool]


def failed_start(proc: subprocess.Popen[bytes], log: Path) -> RuntimeError:
    return RuntimeError(f"server exited with {proc.returncode}; see {log}:\n{tail(log)}")


def wait_until(
    ready: Probe, proc: subprocess.Popen[bytes], log: Path, timeout: float, what: str
) -> None:
    """Block until `ready()` holds; fail at once if `proc` exits, or after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise failed_start(proc, log)
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {timeout}s; see {log}:\n{tail(log)}")


async def await_until(
    ready: Probe, proc: subprocess.Popen[bytes], log: Path, timeout: float, what: str
) -> None:
    """`wait_until` for a running event loop: each probe runs in a thread, the waits
    between probes are the loop's own, so other tasks keep running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.poll() is not None:
            raise failed_start(proc, log)
        if await asyncio.to_thread(ready):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {timeout}s; see {log}:\n{tail(log)}")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
