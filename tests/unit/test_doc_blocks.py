"""The docs' code blocks as the docs test takes them (tests/doc_blocks.py): every block of
every user-facing doc is run, shown or marked, and what a mark claims holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import doc_blocks
from tests.conftest import ROOT
from tests.doc_blocks import (
    DEFAULT_PORTS,
    Block,
    Kind,
    UnknownPort,
    assigned,
    blocks,
    make_calls,
    on_stack_ports,
    problems,
    shell_commands,
    stack_variables,
    user_docs,
)

MAKEFILE = (ROOT / "Makefile").read_text()


@pytest.fixture(scope="module")
def make_help() -> str:
    """What `make help` prints in the checkout."""
    return doc_blocks.make_help(ROOT)


def doc(tmp_path: Path, text: str) -> list[Block]:
    path = tmp_path / "GUIDE.md"
    path.write_text(text)
    return blocks(path, tmp_path)


def test_every_block_of_every_user_doc_is_run_shown_or_marked_truly(make_help: str) -> None:
    docs = user_docs(ROOT)
    found = [block for path in docs for block in blocks(path, ROOT)]

    assert docs[0].name == "README.md" and ROOT / "docs" / "order-status.md" in docs
    assert [p for block in found for p in problems(block, make_help, MAKEFILE, ROOT)] == []
    # The walk-through is run, not only shown.
    run = [b for b in found if b.doc == "README.md" and b.kind in {Kind.SHELL, Kind.PYTHON}]
    assert len(run) >= 4 and {b.kind for b in run} == {Kind.SHELL, Kind.PYTHON}
    assert all(name.startswith("STOCKCORE_") for name in stack_variables(found))


def test_a_command_goes_on_while_a_quote_or_a_backslash_carries_it_over() -> None:
    block = Block(
        "GUIDE.md",
        10,
        "sh",
        "# a comment line\n"
        'curl -d \'{"a": 1,\n'
        '  "b": 2}\'\n'
        "\n"
        "echo one \\\n"
        "  two   # a comment\n"
        "until true; do sleep 1; done\n",
    )

    commands = shell_commands(block)

    assert [(c.line, c.text) for c in commands] == [
        (11, 'curl -d \'{"a": 1,\n  "b": 2}\''),
        (14, "echo one \\\n  two   # a comment"),
        (16, "until true; do sleep 1; done"),
    ]


def test_a_console_block_runs_its_prompted_lines_only() -> None:
    block = Block("GUIDE.md", 3, "console", "$ stockctl --version\nstockctl 0.1.0\n$ ls\n")

    assert [(c.line, c.text) for c in shell_commands(block)] == [
        (3, "stockctl --version"),
        (5, "ls"),
    ]


def test_a_trailing_comment_saying_until_ctrl_c_marks_a_command_that_runs_until_interrupted() -> (
    None
):
    block = Block(
        "GUIDE.md",
        1,
        "sh",
        "stockctl order watch   # live events until Ctrl-C\n"
        "stockctl order get o-1  # until Ctrl-C comes, nothing else\n"
        "echo 'until Ctrl-C'\n",
    )

    assert [c.until_interrupted for c in shell_commands(block)] == [True, True, False]


def test_an_assignment_at_a_commands_start_is_what_it_must_leave_set() -> None:
    block = Block("GUIDE.md", 1, "sh", 'export T=$(mint)\nH="x: $T"\ncurl "a?b=c"\n')

    assert [assigned(c) for c in shell_commands(block)] == [["T"], ["H"], []]


def test_blocks_are_taken_by_language_or_mark(tmp_path: Path) -> None:
    found = doc(
        tmp_path,
        "# Guide\n\n```sh\nls\n```\n\n```python\nprint(1)\n```\n\n```json\n{}\n```\n\n"
        "<!-- not run: an example of output -->\n\n```sh\nrm -rf /\n```\n\n"
        "```\ntree\n```\n\n~~~ruby\nputs 1\n~~~\n",
    )

    assert [(b.line, b.language, b.kind) for b in found] == [
        (4, "sh", Kind.SHELL),
        (8, "python", Kind.PYTHON),
        (12, "json", Kind.SHOWN),
        (18, "sh", Kind.NOT_RUN),
        (22, "", Kind.UNKNOWN),
        (26, "ruby", Kind.UNKNOWN),
    ]
    assert found[3].not_run == "an example of output"


def test_an_unclassified_block_is_a_problem_that_says_how_to_mark_it(
    tmp_path: Path, make_help: str
) -> None:
    [tree] = doc(tmp_path, "Text.\n\n```\ntree\n```\n")

    [problem] = problems(tree, make_help, MAKEFILE, tmp_path)

    assert problem.startswith("GUIDE.md:4: a ``` block without a language")
    assert "`<!-- not run: why -->`" in problem


def test_an_indented_command_is_found_but_a_list_items_paragraph_is_not(
    tmp_path: Path, make_help: str
) -> None:
    found = doc(
        tmp_path,
        "Regenerate it with\n\n    make proto\n\n"
        "1. a list item\n   continued\n\n    still the item's\n",
    )

    assert [(b.line, b.language, b.code) for b in found] == [(3, "(indented)", "make proto\n")]
    assert "an indented code block" in problems(found[0], make_help, MAKEFILE, tmp_path)[0]


def test_make_in_a_block_that_is_run_is_a_problem(tmp_path: Path, make_help: str) -> None:
    [block] = doc(tmp_path, "```sh\nmake load-day DURATION=10\n```\n")

    [problem] = problems(block, make_help, MAKEFILE, tmp_path)

    assert "`make load-day` in a block that is run" in problem


def test_what_a_not_run_mark_claims_is_checked(tmp_path: Path, make_help: str) -> None:
    [block] = doc(
        tmp_path,
        "<!-- not run: covered by tests/e2e/test_nothing.py -->\n"
        "```sh\nmake load-week DURATION=10 COLOUR=red\nSTOCKCORE_NO_SUCH=1 make run\n```\n",
    )

    assert problems(block, make_help, MAKEFILE, ROOT) == [
        "GUIDE.md:3: the mark names tests/e2e/test_nothing.py, which does not exist",
        "GUIDE.md:3: `make load-week` is not a target `make help` lists",
        "GUIDE.md:3: make variable COLOUR is read nowhere",
        "GUIDE.md:3: STOCKCORE_NO_SUCH is read by no program",
    ]


def test_the_stack_starts_with_what_the_docs_make_run_lines_set(tmp_path: Path) -> None:
    found = doc(
        tmp_path,
        "<!-- not run: the stack -->\n```sh\nSTOCKCORE_STEP_MAX_ATTEMPTS=1 make run\n```\n"
        "<!-- not run: a load run -->\n```sh\nSTOCKCORE_X=2 make load-day\n```\n"
        "```sh\nSTOCKCORE_Y=3 stockctl --version\n```\n",
    )

    assert stack_variables(found) == {"STOCKCORE_STEP_MAX_ATTEMPTS": "1"}
    assert [c.targets for c in make_calls(found[0])] == [("run",)]
    other = doc(
        tmp_path, "<!-- not run: x -->\n```sh\nSTOCKCORE_STEP_MAX_ATTEMPTS=2 make run\n```\n"
    )
    with pytest.raises(ValueError, match="STOCKCORE_STEP_MAX_ATTEMPTS=2"):
        stack_variables([*found, *other])


def test_default_ports_on_loopback_become_the_stacks_and_unknown_ones_are_refused() -> None:
    ports = {name: 40000 + n for n, name in enumerate(DEFAULT_PORTS)}

    code = (
        "curl localhost:8080/v1/stock 127.0.0.1:50051 [::1]:58081 example.com:8080 :9464\n"
        'InventoryClient("127.0.0.1:50051")'
    )
    assert on_stack_ports(code, ports) == (
        f"curl localhost:{ports['gateway']}/v1/stock 127.0.0.1:{ports['gRPC']}"
        f" [::1]:{ports['primary carrier']} example.com:8080 :9464\n"
        f'InventoryClient("127.0.0.1:{ports["gRPC"]}")'
    )
    with pytest.raises(UnknownPort, match="localhost:8081 is no service"):
        on_stack_ports("curl localhost:8081/", ports)
