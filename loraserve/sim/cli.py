"""The simulator's subcommands (``simulate``, ``compare``, ``capacity``)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add the simulator's subcommands to the ``loraserve`` parser's ``sub``."""
    del sub  # filled in by the simulator work (issue 4)


