"""Checks a plan read from a file must pass before a command acts on it.

``verify`` reports every violation; the commands that *use* a plan (``simulate``, ``apply``,
``route``, ``plan --current``) refuse one that cannot mean what it says, with one line, so
that a hand-edited share of ``1.5``, a NaN, a rank-128 adapter on a tier-8 GPU or another
config's plan is not simulated, applied or re-planned as if it were sound.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from loraserve.models.io import ConfigError, clip

if TYPE_CHECKING:
    from loraserve.models.config import Config
    from loraserve.models.plan import PlacementPlan

#: Violation families that make a plan meaningless or undeployable, whatever the traffic.
#: The performance families (compute, TTFT, links, ...) are what simulation is there to
#: test, so a plan that breaks only those is still simulated.
STRUCTURAL = frozenset({"routing", "tier", "unknown", "pool", "remote", "replicas", "slots",
                        "memory"})
#: Tolerance on a split's sum, as :meth:`PlacementPlan.verify` uses.
_SUM_TOLERANCE = 1e-6


def self_problems(plan: PlacementPlan) -> list[str]:
    """What is wrong with ``plan`` on its own, without a config (empty when nothing).

    Every routed GPU is one of the plan's GPUs and hosts the adapter (or fetches it over a
    remote pair); every share is a number in (0, 1]; every adapter's shares sum to 1.
    """
    problems: list[str] = []
    gpus = {g.gpu_id: set(g.adapters) for g in plan.gpus}
    for adapter_id, split in plan.routes.items():
        name = clip(adapter_id)
        bad = [(g, w) for g, w in split.items() if not (math.isfinite(w) and 0 <= w <= 1)]
        if bad:
            gpu_id, weight = bad[0]
            problems.append(f"routes[{name}]: share {weight} on {clip(gpu_id)} is not a "
                            "number between 0 and 1")
            continue
        total = sum(split.values())
        if split and abs(total - 1.0) > _SUM_TOLERANCE:
            problems.append(f"routes[{name}]: shares sum to {total:.6g}, not 1")
        remote = plan.remote.get(adapter_id, {})
        for gpu_id, weight in split.items():
            if weight <= 0:
                continue
            if gpu_id not in gpus:
                problems.append(f"routes[{name}]: GPU {clip(gpu_id)} is not one of the "
                                "plan's GPUs")
            elif adapter_id not in gpus[gpu_id] and gpu_id not in remote:
                problems.append(f"routes[{name}]: routed to {clip(gpu_id)}, which neither "
                                "hosts it nor fetches it remotely")
    return problems


def check_plan(plan: PlacementPlan, source: str, config: Config | None = None,
               config_source: str = "the config") -> None:
    """Raise :class:`ConfigError` (one line) when ``plan`` is not sound enough to act on.

    Parameters
    ----------
    plan : PlacementPlan
    source : str
        The plan's file, for the message.
    config : Config, optional
        When given, the plan must also pass :meth:`PlacementPlan.verify` in every
        :data:`STRUCTURAL` family.
    config_source : str
        The config's file, for the message.
    """
    problems = self_problems(plan)
    if problems:
        more = f" ({len(problems)} problems)" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: {problems[0]}{more}; fix the plan or plan again")
    if config is None:
        return
    violations = [v for v in plan.verify(config) if v.constraint in STRUCTURAL]
    if violations:
        more = f" and {len(violations) - 1} more" if len(violations) > 1 else ""
        raise ConfigError(f"{source}: not a plan for {config_source}: {violations[0]}{more}; "
                          f"`loraserve verify {config_source} {source}` lists them")


def check_current(plan: PlacementPlan, config: Config, source: str, force: bool) -> None:
    """Refuse a ``--current`` plan that is unsound or evidently made for another config.

    A re-plan keeps what runs and retires what the config no longer lists, so another
    config's plan would retire every adapter. The plan must share at least half its
    adapters with the config (unless ``force``) and be for the same base model.
    """
    check_plan(plan, source)
    if plan.base_model != config.base_model.name:
        raise ConfigError(f"--current {source}: the plan is for base model "
                          f"{clip(plan.base_model)}, the config for "
                          f"{clip(config.base_model.name)}")
    planned = set(plan.routes) | {a for g in plan.gpus for a in g.adapters}
    if not planned or force:
        return
    shared = len(planned & {a.id for a in config.adapters})
    if 2 * shared < len(planned):
        raise ConfigError(f"--current {source}: only {shared} of its {len(planned)} adapters "
                          "are in the config, so the re-plan would retire the rest; is it "
                          "this fleet's plan? (--force to re-plan anyway)")
