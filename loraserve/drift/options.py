"""The drift policy's command-line options.

``loraserve watch`` and ``loraserve compare --dynamic`` share them, so both spell, default
and check them the same way.
"""

from __future__ import annotations

import argparse
from typing import Any

from loraserve._argtypes import count, finite, positive
from loraserve.drift.controller import DriftPolicy
from loraserve.models import ConfigError

#: DriftPolicy's fields and the options that set them.
POLICY_FLAGS = {"half_life_s": "--half-life", "headroom": "--headroom",
                "min_saving": "--min-saving", "patience": "--patience",
                "cooldown_s": "--cooldown", "max_moves": "--max-moves",
                "time_limit": "--time-limit", "margin": "--margin"}


def add_policy_arguments(group: Any, half_life_default: float | None, half_life_help: str,
                         prefix: str = "") -> None:
    """Add the policy's options to ``group`` (a parser or an argument group).

    They are ``--half-life``, ``--headroom``, ``--min-saving``, ``--patience``,
    ``--cooldown`` and ``--max-moves``; ``prefix`` starts every help text (for example
    ``"drift policy: "``).
    """
    defaults = DriftPolicy()
    group.add_argument("--half-life", type=positive, default=half_life_default, metavar="S",
                       help=f"{prefix}EWMA half-life of the rate estimates ({half_life_help})")
    group.add_argument("--headroom", type=finite, default=defaults.headroom,
                       help=f"{prefix}re-plan at once above this share of a GPU's SLO limit "
                            f"(default {defaults.headroom:g})")
    group.add_argument("--min-saving", type=finite, default=defaults.min_saving, metavar="N",
                       help=f"{prefix}GPUs (or cost/h) a re-plan must save (default "
                            f"{defaults.min_saving:g})")
    group.add_argument("--patience", type=int, default=defaults.patience, metavar="N",
                       help=f"{prefix}readings a saving must persist (default "
                            f"{defaults.patience})")
    group.add_argument("--cooldown", type=finite, default=defaults.cooldown_s, metavar="S",
                       help=f"{prefix}least seconds between saving-driven re-plans (default "
                            f"{defaults.cooldown_s:g})")
    group.add_argument("--max-moves", type=count, default=None, metavar="N",
                       help=f"{prefix}most adapter loads per re-plan (default no cap)")


def policy_from_args(args: argparse.Namespace, half_life_s: float,
                     **extra: Any) -> DriftPolicy:
    """The policy the options of :func:`add_policy_arguments` (and ``extra``) describe.

    Raises
    ------
    ConfigError
        One line naming the option to change, not the policy's field.
    """
    try:
        return DriftPolicy(half_life_s=half_life_s, headroom=args.headroom,
                           min_saving=args.min_saving, patience=args.patience,
                           cooldown_s=args.cooldown, max_moves=args.max_moves, **extra)
    except ValueError as exc:
        text = str(exc).removeprefix("drift policy: ")
        for name, flag in POLICY_FLAGS.items():
            if text.startswith(f"{name} "):
                text = f"{flag}{text[len(name):]}"
        raise ConfigError(text) from None
