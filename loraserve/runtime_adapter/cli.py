"""The runtime's subcommands (``apply``, ``route``)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add the runtime's subcommands to the ``loraserve`` parser's ``sub``."""
    del sub  # filled in by the runtime work (issue 7)
