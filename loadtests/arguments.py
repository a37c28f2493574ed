"""Types of the load tools' numeric options (argparse `type=`): a value out of range is a
usage error where the command line is read (exit 2, naming the option), never a traceback or
a hang minutes into a run, after the stack was started."""

from __future__ import annotations

import argparse
import math


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _real(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1: a count of callers, processes, rounds, SKUs."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0: a count that may be none."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0: a duration, a rate, a scale."""
    value = _real(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0: a delay or a wait that may be none."""
    value = _real(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def share(text: str) -> float:
    """A fraction from 0 to 1."""
    value = _real(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text!r}")
    return value


def caller_counts(text: str) -> list[int]:
    """Comma-separated caller counts, each >= 1: `16,64,128`."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated whole numbers of at least 1, got {text!r}"
        )
    return counts
