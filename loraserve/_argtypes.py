"""Argument types shared by the command-line front ends: one wording for one mistake."""

from __future__ import annotations

import argparse
import math


def positive(text: str) -> float:
    """A finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def count(text: str) -> int:
    """A whole number, 0 or more."""
    return _whole(text, 0, "0 or more")


def at_least_one(text: str) -> int:
    """A whole number, 1 or more."""
    return _whole(text, 1, "at least 1")


def seed(text: str) -> int:
    """A random seed: a whole number from 0 to 2**31 - 1 (what every solver accepts)."""
    value = _whole(text, 0, "0 or more")
    if value > 2**31 - 1:
        raise argparse.ArgumentTypeError(f"must be below 2**31, got {text}")
    return value


def finite(text: str) -> float:
    """A finite number (any sign)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative(text: str) -> float:
    """A finite number, 0 or more."""
    value = finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _whole(text: str, least: int, wording: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {wording}, got {text}")
    return value
