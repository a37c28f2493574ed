"""The terminal session the docs test runs the docs' commands in (tests/doc_session.py):
what a command sets is there for the next, a command that hangs is stopped with what it
started, one that runs until Ctrl-C is interrupted once it printed, Python blocks run as an
asyncio REPL takes them, and curl fails on an HTTP error."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doc_blocks import Block, Command, shell_commands
from tests.doc_session import Session


@pytest.fixture
def session(tmp_path: Path) -> Session:
    """A session in a folder of its own, with a short timeout."""
    folder = tmp_path / "work"
    folder.mkdir()
    return Session(folder, {"PATH": "/usr/bin:/bin"}, tmp_path / "session", timeout_s=2.0)


def run_all(session: Session, code: str) -> list[tuple[str | None, str]]:
    block = Block("GUIDE.md", 1, "sh", code)
    found = []
    for command in shell_commands(block):
        done = session.run(command, f"GUIDE.md:{command.line}", command.text)
        found.append((done.problem, done.stdout))
    return found


def test_variables_and_the_folder_a_command_sets_are_there_for_the_next(
    session: Session,
) -> None:
    found = run_all(
        session,
        'export TOKEN=$(echo abc)\nH="Bearer $TOKEN"\nmkdir sub && cd sub\n'
        'echo "$H $(basename "$PWD")"\nbash -c \'echo "$TOKEN"\'\n',
    )

    assert found[-2:] == [(None, "Bearer abc sub\n"), (None, "abc\n")]


def test_a_variable_left_empty_or_a_failing_command_is_a_problem(session: Session) -> None:
    assert run_all(session, "export TOKEN=$(false)\n") == [("left TOKEN empty", "")]
    assert run_all(session, "ls /no/such/folder\n")[0][0] == "exited with status 2"


def running(stat: Path) -> bool:
    """Whether the process of a /proc/PID/stat file runs (a zombie does not)."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_command_that_hangs_is_stopped_with_what_it_started(
    session: Session, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    [(problem, _)] = run_all(session, f"sleep 60 & echo $! > {pid_file}; sleep 30\n")

    assert problem == "still running after 2 s (stopped)"
    # The background child was in the command's process group: stopped too.
    child = Path(f"/proc/{pid_file.read_text().strip()}/stat")
    deadline = time.monotonic() + 10
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child)


def test_a_command_that_runs_until_ctrl_c_is_interrupted_once_it_printed(
    session: Session,
) -> None:
    found = run_all(
        session,
        "while true; do echo tick; sleep 0.1; done   # ticks until Ctrl-C\n"
        "echo once   # until Ctrl-C, it says\n"
        "sleep 30    # until Ctrl-C\n",
    )

    assert found[0][0] is None and found[0][1].startswith("tick\n")
    assert found[1][0] == (
        "ended with status 0 by itself, though the doc says it runs until Ctrl-C"
    )
    assert found[2][0] == "printed nothing in 2 s"


def test_a_python_block_runs_top_level_await_with_the_sessions_variables(
    session: Session,
) -> None:
    run_all(session, "export GREETING=hello\n")
    code = (
        "import asyncio, os\n"
        "async with asyncio.timeout(5):\n"
        "    await asyncio.sleep(0)\n"
        'print(os.environ["GREETING"], os.environ["EXTRA"])\n'
    )
    session.python_env = {"EXTRA": "there"}

    done = session.run_python(Block("GUIDE.md", 40, "python", code), code)

    assert (done.problem, done.stdout) == (None, "hello there\n")
    failing = session.run_python(
        Block("GUIDE.md", 40, "python", "x = 1\n1 / 0\n"), "x = 1\n1 / 0\n"
    )
    assert failing.problem == "exited with status 1"
    assert 'File "GUIDE.md", line 41' in failing.stderr


@pytest.fixture
def http_404() -> Iterator[str]:
    """An HTTP server on loopback that answers every GET 404 with a body."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"code": 5}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_curl_fails_on_an_http_error_and_shows_its_body(session: Session, http_404: str) -> None:
    done = session.run(
        Command(f"curl -s {http_404}/v1/x", 1), "GUIDE.md:1", f"curl -s {http_404}/v1/x"
    )

    assert done.problem == "exited with status 22"
    assert done.stdout == '{"code": 5}'
