"""stockctl's command line: what it parses into, what it rejects, and its exit statuses."""

from __future__ import annotations

import argparse
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.cli import (
    AdjustStock,
    Commit,
    ExitCode,
    GetReservation,
    GetStock,
    GlobalOptions,
    Release,
    Reserve,
    SetLine,
    parse_args,
    parse_line,
)
from clients.errors import (
    FieldViolation,
    PreconditionViolation,
    Shortage,
    StatusCode,
    make_error,
)
from clients.failures import call_failure, exit_code_for
from clients.stockctl_config import DEFAULT, ConfigFile, credentials, resolve

NO_FILE = ConfigFile(None, DEFAULT)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)
    assert raised.value.code == ExitCode.USAGE
    return capsys.readouterr().err


def test_sku_qty_parses_into_a_pair() -> None:
    assert parse_line("ABC-1=3") == ("ABC-1", 3)


@given(
    sku=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}", fullmatch=True),
    quantity=st.integers(min_value=1, max_value=1_000_000),
)
def test_any_valid_sku_and_quantity_round_trip(sku: str, quantity: int) -> None:
    assert parse_line(f"{sku}={quantity}") == (sku, quantity)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("ABC-1", "not SKU=QTY"),
        ("=3", "no SKU"),
        ("ABC-1=", "must be an integer"),
        ("ABC-1=two", "must be an integer"),
        ("ABC-1=1.5", "must be an integer"),
        ("ABC-1=0", "at least 1"),
        ("ABC-1=-2", "at least 1"),
    ],
)
def test_malformed_sku_qty_is_rejected_with_a_reason(text: str, complaint: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=complaint):
        parse_line(text)


def test_malformed_sku_qty_on_the_command_line_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _usage_error(["reserve", "r-1", "A=1", "B"], capsys)

    assert "'B' is not SKU=QTY" in err


def test_global_options_left_out_are_none_for_the_settings_to_fill() -> None:
    options, _ = parse_args(["commit", "r-1"])

    assert options == GlobalOptions()
    assert set(options.flags().values()) == {None}


def test_the_target_option_is_a_flag_of_the_settings() -> None:
    options, _ = parse_args(["--target", "a:1", "commit", "r-1"])

    assert options.target == "a:1" and options.flags()["target"] == "a:1"


def test_global_options_may_come_before_or_after_the_command() -> None:
    before, _ = parse_args(["--json", "--timeout", "2.5", "--token-file", "t", "release", "r-1"])
    after, _ = parse_args(["release", "r-1", "--json", "--timeout", "2.5", "--token-file", "t"])

    assert before == after == GlobalOptions(json=True, timeout=2.5, token_file="t")


def test_global_options_after_a_nested_command_keep_unset_ones_unset() -> None:
    options, _ = parse_args(["--plaintext", "stock", "get", "A", "--json"])

    assert options == GlobalOptions(json=True, plaintext=True)


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_timeout_must_be_a_positive_number(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "--timeout" in _usage_error(["--timeout", timeout, "commit", "r-1"], capsys)


def test_the_caller_cannot_name_itself(capsys: pytest.CaptureFixture[str]) -> None:
    # Who calls is what the token proves; there is no option to assert a name.
    assert "unrecognized arguments: --caller" in _usage_error(
        ["commit", "r-1", "--caller", "ops"], capsys
    )


def test_options_override_the_environment_s_credentials(tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    options, _ = parse_args(["--token-file", str(token_file), "commit", "r-1"])

    environ = {"STOCKCORE_TOKEN": "from-env", "STOCKCORE_PLAINTEXT": "1"}
    presented = credentials(resolve(options.flags(), environ, NO_FILE))

    assert presented.token == "from-file" and presented.plaintext


def test_plaintext_must_be_asked_for() -> None:
    options, _ = parse_args(["commit", "r-1"])

    assert not credentials(resolve(options.flags(), {"STOCKCORE_CA_FILE": ""}, NO_FILE)).plaintext


def test_stock_get_collects_every_sku_in_order() -> None:
    _, command = parse_args(["stock", "get", "B", "A", "B"])

    assert command == GetStock(skus=("B", "A", "B"))


def test_stock_get_needs_a_sku(capsys: pytest.CaptureFixture[str]) -> None:
    assert "SKU" in _usage_error(["stock", "get"], capsys)


def test_stock_adjust_by_negative_delta() -> None:
    _, command = parse_args(
        ["stock", "adjust", "A", "--delta", "-5", "--reason", "shrinkage", "--key", "k-1"]
    )

    assert command == AdjustStock(
        sku="A", delta=-5, on_hand=None, reason="shrinkage", idempotency_key="k-1"
    )


def test_stock_adjust_set_counts_on_hand() -> None:
    _, command = parse_args(
        ["stock", "adjust", "A", "--set", "0", "--reason", "count", "--key", "k"]
    )

    assert isinstance(command, AdjustStock)
    assert (command.delta, command.on_hand) == (None, 0)


def test_stock_adjust_without_key_gets_a_fresh_uuid_each_time() -> None:
    argv = ["stock", "adjust", "A", "--delta", "3", "--reason", "restock"]
    _, first = parse_args(argv)
    _, second = parse_args(argv)

    assert isinstance(first, AdjustStock)
    assert isinstance(second, AdjustStock)
    assert uuid.UUID(first.idempotency_key).version == 4
    assert first.idempotency_key != second.idempotency_key


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ([], "one of the arguments --delta --set is required"),
        (["--delta", "1", "--set", "2"], "not allowed with argument"),
        (["--delta", "0"], "a delta of 0 changes nothing"),
        (["--set", "-1"], "must be at least 0"),
        (["--delta", "x"], "not an integer"),
    ],
)
def test_stock_adjust_needs_exactly_one_sensible_change(
    change: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(["stock", "adjust", "A", *change, "--reason", "r"], capsys)

    assert complaint in err


def test_stock_adjust_needs_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--reason" in _usage_error(["stock", "adjust", "A", "--delta", "1"], capsys)


def test_reserve_keeps_lines_in_order_with_duplicates_and_ttl() -> None:
    _, command = parse_args(["reserve", "order-7", "A=2", "B=1", "A=3", "--ttl", "90"])

    assert command == Reserve(
        reservation_id="order-7", lines=(("A", 2), ("B", 1), ("A", 3)), ttl=90.0
    )


def test_reserve_without_ttl_leaves_it_to_the_server() -> None:
    _, command = parse_args(["reserve", "order-7", "A=2"])

    assert isinstance(command, Reserve)
    assert command.ttl is None


def test_reserve_needs_at_least_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert "SKU=QTY" in _usage_error(["reserve", "order-7"], capsys)


def test_set_line_sets_one_line_and_zero_removes_it() -> None:
    _, grown = parse_args(["set-line", "cart-1", "A=3", "--ttl", "600", "--change-id", "c-1"])
    _, removed = parse_args(["set-line", "cart-1", "A=0"])

    assert grown == SetLine("cart-1", "A", 3, 600.0, "c-1")
    assert isinstance(removed, SetLine) and (removed.sku, removed.quantity) == ("A", 0)
    assert uuid.UUID(removed.change_id)  # a new change id unless one is named


def test_set_line_refuses_a_negative_quantity(capsys: pytest.CaptureFixture[str]) -> None:
    assert "at least 1" in _usage_error(["set-line", "cart-1", "A=-1"], capsys)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["commit", "r-1"], Commit("r-1")),
        (["release", "r-1"], Release("r-1")),
        (["reservation", "get", "r-1"], GetReservation("r-1")),
    ],
)
def test_reservation_commands_carry_the_id(
    argv: list[str], expected: Commit | Release | GetReservation
) -> None:
    assert parse_args(argv)[1] == expected


@pytest.mark.parametrize("argv", [[], ["stock"], ["reservation"], ["frobnicate"]])
def test_missing_or_unknown_command_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert "usage:" in _usage_error(argv, capsys)


@pytest.mark.parametrize(
    ("code", "violations", "expected"),
    [
        (StatusCode.NOT_FOUND, [], ExitCode.NOT_FOUND),
        (StatusCode.FAILED_PRECONDITION, [], ExitCode.FAILED_PRECONDITION),
        (
            StatusCode.FAILED_PRECONDITION,
            [PreconditionViolation("INSUFFICIENT_STOCK", "A", "available 1, requested 2")],
            ExitCode.FAILED_PRECONDITION,
        ),
        (StatusCode.INVALID_ARGUMENT, [], ExitCode.USAGE),
        (StatusCode.UNAUTHENTICATED, [], ExitCode.NOT_ALLOWED),
        (StatusCode.PERMISSION_DENIED, [], ExitCode.NOT_ALLOWED),
        (StatusCode.UNAVAILABLE, [], ExitCode.UNAVAILABLE),
        (StatusCode.DEADLINE_EXCEEDED, [], ExitCode.UNAVAILABLE),
        (StatusCode.RESOURCE_EXHAUSTED, [], ExitCode.UNAVAILABLE),
        (StatusCode.ALREADY_EXISTS, [], ExitCode.ERROR),
        (StatusCode.INTERNAL, [], ExitCode.ERROR),
    ],
)
def test_each_kind_of_failure_has_its_exit_status(
    code: StatusCode, violations: list[PreconditionViolation], expected: ExitCode
) -> None:
    error = make_error(code, "failed", precondition_violations=violations)

    assert exit_code_for(error) == expected


def test_error_text_names_code_message_shortages_and_fields() -> None:
    error = make_error(
        StatusCode.FAILED_PRECONDITION,
        "insufficient stock",
        precondition_violations=[
            PreconditionViolation("INSUFFICIENT_STOCK", "A", "available 3, requested 5")
        ],
        stock_shortages=[Shortage("A", 3, 5)],
        field_violations=[FieldViolation("lines[1].sku", "unknown")],
    )

    failure = call_failure(error, resolve({}, {}, NO_FILE))

    assert failure.text().splitlines() == [
        "stockctl: FAILED_PRECONDITION: insufficient stock",
        "  short A: available 3",
        "  invalid lines[1].sku: unknown",
    ]
    assert json.loads(failure.json()) == {
        "error": {
            "code": "FAILED_PRECONDITION",
            "message": "insufficient stock",
            "shortages": {"A": 3},
            "field_violations": [{"field": "lines[1].sku", "description": "unknown"}],
        }
    }
