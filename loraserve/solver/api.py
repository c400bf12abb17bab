"""One entry point for every placement algorithm: :func:`solve`."""

from __future__ import annotations

import logging
import math
import time
from typing import Literal

from loraserve.models import Config, SolveResult
from loraserve.profiles import CostModel
from loraserve.solver._highs import quiet_banner
from loraserve.solver.bounds import Bound, diagnose_infeasible, lower_bound
from loraserve.solver.build import build_plan
from loraserve.solver.greedy import OpenGPU, _lower_tiers, _State, greedy_placement, plan_cost
from loraserve.solver.instance import InfeasibleError, Instance
from loraserve.solver.milp import PlacementMILP

logger = logging.getLogger(__name__)

SolverName = Literal["auto", "milp", "greedy"]
SOLVERS: tuple[str, ...] = ("auto", "milp", "greedy")

#: ``auto`` runs the MILP when it has at most this many (adapter, candidate GPU) pairs.
AUTO_MILP_PAIRS = 40_000


def _gap(objective: float, bound: float) -> float:
    if objective <= 0:
        return 0.0
    return max(0.0, (objective - bound) / objective)


def _round_bound(inst: Instance, value: float) -> float:
    # With one price the objective counts GPUs, so any bound rounds up to a whole GPU.
    if inst.uniform_cost and math.isfinite(value):
        return float(math.ceil(value - 1e-6))
    return value


def _infeasible(message: str, binding: str, solver: str, started: float) -> SolveResult:
    logger.info("infeasible: %s", message)
    return SolveResult(status="infeasible", lower_bound=math.inf, seconds=time.perf_counter()
                       - started, solver=solver, message=message, binding=binding)


def solve(
    config: Config,
    solver: SolverName = "auto",
    time_limit: float = 30.0,
    seed: int = 0,
    threads: int = 1,
    cost_model: CostModel | None = None,
) -> SolveResult:
    """Plan where every adapter lives and how its traffic splits.

    Parameters
    ----------
    config : Config
        Validated inputs.
    solver : {"auto", "milp", "greedy"}
        ``greedy``: the constructive heuristic with tier lowering and GPU elimination.
        ``milp``: the exact model on HiGHS, warm-started from the greedy plan, stopped at
        ``time_limit`` with the best plan found. ``auto``: the MILP when the model is small
        enough to help within the time limit, else the greedy.
    time_limit : float
        Seconds for the whole solve; the best plan found by then is returned with its gap.
    seed, threads : int
        HiGHS's random seed and thread count; fixed values give repeatable results.
    cost_model : CostModel, optional
        A prebuilt cost model (profiles already loaded).

    Returns
    -------
    SolveResult
        Never ``None``: infeasibility is a status whose message names the binding constraint.
        The input is not modified.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
    quiet_banner()
    started = time.perf_counter()
    deadline = started + time_limit
    inst = Instance.build(config, cost_model)
    if not inst.kinds:
        reasons = "; ".join(cap.reason for cap in inst.cost_model.capacity_table())
        return _infeasible(f"no GPU type can run any tier: {reasons}", "tier", solver, started)
    try:
        inst.adapter_checks()
    except InfeasibleError as exc:
        return _infeasible(str(exc), exc.binding, solver, started)
    bound: Bound = lower_bound(inst, time_limit=max(1.0, time_limit / 4))
    if not bound.feasible:
        message, binding = diagnose_infeasible(inst)
        return _infeasible(message, binding, solver, started)
    best_bound = _round_bound(inst, bound.value)

    incumbent: list[OpenGPU] | None
    try:
        incumbent = greedy_placement(inst)
    except InfeasibleError as exc:
        logger.info("greedy found no plan: %s", exc)
        incumbent = None
    name = "greedy"
    upper = plan_cost(inst, incumbent) if incumbent else math.inf
    proven = incumbent is not None and upper <= best_bound + 1e-9

    use_milp = solver == "milp" or (
        solver == "auto"
        and inst.num_adapters * sum(min(k.pool_count, upper / k.unit_cost) for k in inst.kinds)
        <= AUTO_MILP_PAIRS
    )
    if use_milp and not proven:
        name = "milp"
        milp = PlacementMILP(inst, upper_bound=upper, lower_bound=best_bound)
        remaining = deadline - time.perf_counter()
        if remaining < 0.5:
            logger.warning("building the MILP used the time limit (%d pairs); HiGHS gets "
                           "0.5 s to improve the greedy plan", len(milp.pairs))
        outcome = milp.solve(time_limit=max(0.5, remaining), start=incumbent, seed=seed,
                             threads=threads, integral=inst.uniform_cost)
        logger.info("milp: %d variables, bound %.3f, optimal=%s", outcome.variables,
                    outcome.bound, outcome.proven_optimal)
        if outcome.infeasible and incumbent is None:
            message, binding = diagnose_infeasible(inst)
            return _infeasible(message, binding, name, started)
        if outcome.gpus is not None:
            state = _State(inst, outcome.gpus)
            _lower_tiers(state)
            cost = plan_cost(inst, state.gpus)
            if cost < upper - 1e-9 or incumbent is None:
                incumbent, upper = state.gpus, cost
        if math.isfinite(outcome.bound):
            best_bound = max(best_bound, _round_bound(inst, outcome.bound))
        proven = outcome.proven_optimal and incumbent is not None
    seconds = time.perf_counter() - started
    if incumbent is None:
        return SolveResult(status="unknown", lower_bound=best_bound, seconds=seconds,
                           solver=name, binding=bound.binding,
                           message=f"no plan found in {time_limit:g} s; {bound.message}")
    plan = build_plan(inst, incumbent)
    problems = plan.verify(config, inst.cost_model)
    if problems:
        # A solver bug, not a user error: say so loudly rather than hand out a bad plan.
        raise RuntimeError(f"{name} produced a plan that fails verify: {problems[0]}")
    proven = proven or upper <= best_bound + 1e-9
    # Prices summed in floating point: keep the figures readable.
    upper, best_bound = round(upper, 6), round(best_bound, 6)
    return SolveResult(
        status="optimal" if proven else "feasible",
        plan=plan,
        objective=upper,
        lower_bound=min(best_bound, upper),
        gap=_gap(upper, min(best_bound, upper)),
        seconds=seconds,
        solver=name,
        binding=bound.binding,
        message=bound.message,
    )
