"""The profiler's subcommand (``profile``)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add the profiler's subcommand to the ``loraserve`` parser's ``sub``."""
    del sub  # filled in by the profiler work (issue 5)
