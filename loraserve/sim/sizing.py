"""Check a plan in simulation and, where GPUs miss the SLO, tighten their families and re-solve.

``loraserve plan --simulate`` runs this. The planner's families are fitted against the
simulator, so a plan usually meets the SLO as it is; where it does not, the GPUs that miss
say which family was too loose for their adapters:

* p99 TPOT over the SLO: ``tpot_tail``, by the ratio of the simulated tail to the SLO;
* TTFT over the SLO with more adapters busy than ``max_loras`` allows: ``batch_slots``;
* TTFT over the SLO otherwise: ``compute`` (the GPU queues).

Those adapters' rows in that family are raised by the factor
(:class:`~loraserve.solver.instance.Tightening`), and the config is solved again. Nothing
else changes: no global rate scaling, other adapters keep their rows. The loop stops at the
first plan that meets the SLO, or after ``rounds`` attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from loraserve.models import Config, PlacementPlan
from loraserve.sim.experiments import Scenario
from loraserve.sim.policies import deployment_from_plan
from loraserve.sim.results import SimResult
from loraserve.solver import solve
from loraserve.solver.api import SolverName
from loraserve.solver.instance import Tightening

logger = logging.getLogger(__name__)

#: Smallest factor a missed family is raised by: enough to move a GPU's fill.
MIN_STEP = 1.05
#: Largest step in one round: one noisy tail should not empty a GPU.
MAX_STEP = 1.5


@dataclass
class Round:
    """One simulation of a plan and what it tightened."""

    gpus: int
    attainment: float
    meets_slo: bool
    missed: dict[str, int] = field(default_factory=dict)
    worst: str = ""


@dataclass
class Sizing:
    """The outcome: the plan kept (None when no round met the SLO) and every round."""

    plan: PlacementPlan | None
    rounds: list[Round]
    tighten: dict[str, Tightening]


def worst_gpus(gpus: pd.DataFrame, config: Config, shown: int = 3) -> str:
    """One line on the GPUs with the lowest share of requests within the SLO, and why."""
    worst = gpus.sort_values("slo_attainment").head(shown)
    slo, limit = config.slo, config.serving.max_loras
    parts = []
    for row in worst.to_dict("records"):
        ttft, tpot = float(row["ttft_tail_ms"]), float(row["tpot_tail_ms"])
        busy = float(row["expected_busy_adapters"])
        causes = []
        if ttft > slo.ttft_ms:
            causes.append(f"p{slo.percentile:g} TTFT {ttft / 1e3:.1f} s")
        if tpot > slo.tpot_ms:
            causes.append(f"p{slo.percentile:g} TPOT {tpot:.0f} ms")
        if busy > limit:
            causes.append(f"{busy:.1f} busy adapters for {limit} slots")
        causes.append(f"load {float(row['load']):.0%}")
        parts.append(f"{row['gpu_id']} {float(row['slo_attainment']):.1%} "
                     f"({', '.join(causes)})")
    return "worst GPUs in simulation: " + "; ".join(parts)



def _family_of(row: Mapping[Any, Any], config: Config,
               slot_family: bool) -> tuple[str, float]:
    """The family that explains one GPU's miss, and the factor to raise it by."""
    slo = config.slo
    tpot, ttft = float(row["tpot_tail_ms"]), float(row["ttft_tail_ms"])
    busy = float(row.get("expected_busy_adapters", 0.0) or 0.0)
    if tpot > slo.tpot_ms and config.serving.slo_families:
        return "tpot_tail", tpot / slo.tpot_ms
    if ttft > slo.ttft_ms and slot_family and busy > 0.75 * config.serving.max_loras:
        return "batch_slots", busy / (0.75 * config.serving.max_loras)
    return "compute", max(ttft / slo.ttft_ms, tpot / slo.tpot_ms) ** 0.5


def tightened(result: SimResult, plan: PlacementPlan, config: Config,
              tighten: dict[str, Tightening], slot_family: bool) -> dict[str, int]:
    """Raise, in place, the rows of the adapters on GPUs that missed; count GPUs per family."""
    gpus: pd.DataFrame = result.gpus
    target = config.slo.percentile / 100.0
    by_id = {g.gpu_id: g for g in plan.gpus}
    missed: dict[str, int] = {}
    for row in gpus.to_dict("records"):
        if not float(row["slo_attainment"]) < target:
            continue
        family, factor = _family_of(row, config, slot_family)
        step = min(MAX_STEP, max(MIN_STEP, factor))
        missed[family] = missed.get(family, 0) + 1
        for adapter_id in by_id[str(row["gpu_id"])].adapters:
            old = tighten.get(adapter_id, Tightening())
            values = {"compute": old.compute, "tpot_tail": old.tpot_tail,
                      "batch_slots": old.batch_slots}
            values[family] *= step
            tighten[adapter_id] = Tightening(**values)
    return missed


def size_by_simulation(scenario: Scenario, plan: PlacementPlan, solver: SolverName = "auto",
                       time_limit: float = 10.0, rounds: int = 6) -> Sizing:
    """Simulate ``plan``; while it misses the SLO, tighten the missing GPUs' families and re-solve.

    Parameters
    ----------
    scenario : Scenario
        The config and its traffic (rate scale 1 only).
    plan : PlacementPlan
        The planner's plan for ``scenario.config``.
    solver, time_limit : str, float
        How each re-solve runs.
    rounds : int
        Most simulations (the first plan's included).
    """
    config = scenario.config
    slot_family = scenario.cost_model.slot_family_binds()
    tighten: dict[str, Tightening] = {}
    history: list[Round] = []
    current: PlacementPlan | None = plan
    for _ in range(rounds):
        assert current is not None
        result = scenario.simulate(deployment_from_plan(current, config, policy="loraserve"))
        attainment = float(result.summary["slo_attainment"])
        if result.meets_slo:
            history.append(Round(current.num_gpus, attainment, True))
            return Sizing(current, history, tighten)
        missed = tightened(result, current, config, tighten, slot_family)
        history.append(Round(current.num_gpus, attainment, False, missed,
                             worst_gpus(result.gpus, config)))
        logger.info("plan of %d GPUs misses the SLO (%.2f%%); tightening %s", current.num_gpus,
                    100 * attainment, missed)
        solved = solve(config, solver=solver, time_limit=time_limit, seed=scenario.seed,
                       cost_model=scenario.cost_model, tighten=tighten)
        if solved.plan is None:
            return Sizing(None, history, tighten)
        current = solved.plan
    return Sizing(None, history, tighten)
