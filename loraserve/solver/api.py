"""One entry point for every placement algorithm: :func:`solve`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Literal

from loraserve.models import Config, PlacementPlan, SolveResult
from loraserve.models.migration import migration_cost, relabel
from loraserve.profiles import CostModel
from loraserve.solver._highs import quiet_banner
from loraserve.solver.binpack import improve_whole
from loraserve.solver.bounds import Bound, diagnose_infeasible, lower_bound
from loraserve.solver.build import build_plan
from loraserve.solver.colgen import colgen_bound
from loraserve.solver.cpsat import PlacementCPSAT
from loraserve.solver.greedy import OpenGPU, _lower_tiers, _State, greedy_placement, plan_cost
from loraserve.solver.incremental import incremental_placement
from loraserve.solver.instance import InfeasibleError, Instance, Tightening
from loraserve.solver.lns import improve_by_lns
from loraserve.solver.milp import MILPOutcome, PlacementMILP
from loraserve.solver.paper_greedy import loraserve_greedy_min
from loraserve.solver.primal import price_and_branch
from loraserve.solver.progress import ProgressCallback, Reporter

logger = logging.getLogger(__name__)

SolverName = Literal["auto", "milp", "cpsat", "lns", "greedy", "loraserve-greedy"]
SOLVERS: tuple[str, ...] = ("auto", "milp", "cpsat", "lns", "greedy", "loraserve-greedy")

#: ``auto`` runs an exact model when it has at most this many (adapter, candidate GPU) pairs;
#: beyond it, building the model alone eats the time limit and the greedy plan is returned.
AUTO_EXACT_PAIRS = 40_000
#: ... and when at least this many seconds of the time limit are left after the heuristics.
AUTO_MIN_SECONDS = 1.0
#: Share of the time left that the configuration-LP bound gets where it runs.
COLGEN_SHARE = 1 / 3
#: Share of the time left after it that the restricted master (price-and-branch) may use.
PRIMAL_SHARE = 1 / 4
#: Adapters (pieces of hot ones included) up to which the bin-packing search runs.
BINPACK_ITEMS = 4000
#: Share of unsplit adapters (fitting one GPU) from which bin packing runs with splits on.
SMALL_SHARE = 0.9


def _whole_share(inst: Instance, exact_follows: bool) -> float:
    """Share of the time left that ``auto`` gives the bin-packing search (0: none)."""
    fits_one = sum(1 for a in range(inst.num_adapters) if inst.min_replicas(a) <= 1)
    items = sum(max(1, inst.min_replicas(a)) for a in range(inst.num_adapters))
    if items > BINPACK_ITEMS:
        return 0.0
    if inst.max_replicas == 1:
        # Whole adapters: the search is the method; the exact model, if small, gets half.
        return 0.5 if exact_follows else 0.8
    if fits_one >= SMALL_SHARE * inst.num_adapters:
        return 0.25
    return 0.0


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


def _pairs(inst: Instance, upper: float) -> float:
    return inst.num_adapters * sum(min(k.pool_count, upper / k.unit_cost) for k in inst.kinds)


def _exact_backend(inst: Instance, solver: str) -> str | None:
    """Which exact model to run after the heuristics, if any."""
    if solver in ("milp", "cpsat"):
        return solver
    if solver != "auto":
        return None
    # CP-SAT finds and confirms plans faster on the benchmarks, but with splittable traffic
    # its integer model is a restriction and gives no bound; with several prices the MILP's
    # LP bound is what proves a cost optimal, so it runs there.
    if inst.uniform_cost or inst.max_replicas == 1:
        return "cpsat"
    return "milp"


def solve(
    config: Config,
    solver: SolverName = "auto",
    time_limit: float = 30.0,
    seed: int = 0,
    threads: int = 1,
    cost_model: CostModel | None = None,
    current: PlacementPlan | None = None,
    max_moves: int | None = None,
    progress: ProgressCallback | None = None,
    tighten: Mapping[str, Tightening] | None = None,
) -> SolveResult:
    """Plan where every adapter lives and how its traffic splits.

    Parameters
    ----------
    config : Config
        Validated inputs.
    solver : {"auto", "milp", "cpsat", "lns", "greedy", "loraserve-greedy"}
        With a ``topology`` whose ``remote_access`` is on (and no ``current``), every solver
        but ``loraserve-greedy`` also plans remote pairs (:mod:`loraserve.solver.remote`):
        the replication-only plan and the remote greedy compete, and ``milp``, ``cpsat``
        and ``auto`` (on small instances) run the exact remote model; half the time limit
        goes to the replication-only solve.
        ``greedy``: loraserve's constructive heuristic with tier lowering and GPU elimination.
        ``loraserve-greedy``: the LoRAServe paper's heuristic (per-rank budgets, fractional
        packing), at the fewest GPUs where its plan is valid. ``milp`` (HiGHS) and ``cpsat``
        (OR-Tools CP-SAT): exact models warm-started from the better heuristic plan, stopped
        at ``time_limit`` with the best plan found. ``lns``: the heuristics, then
        large-neighbourhood search (free a few GPUs, re-pack them with CP-SAT) until the
        time limit or the bound. ``auto``: the heuristics; where slots or memory bind, LNS
        for the time limit (half of it when an exact model follows); then an exact model
        when the plan is not proven optimal and the model is small enough to help.
    time_limit : float
        Seconds for the whole solve; the best plan found by then is returned with its gap.
    seed, threads : int
        Random seed and thread count of the exact solvers; fixed values with ``threads=1``
        give repeatable results.
    cost_model : CostModel, optional
        A prebuilt cost model (profiles already loaded).
    current : PlacementPlan, optional
        The running plan. When given, the solve is an incremental re-plan that keeps GPUs,
        tiers and loaded adapters where it can (see :mod:`loraserve.solver.incremental`);
        the result's message counts the adapter loads and tier changes it needs.
    max_moves : int, optional
        With ``current``: the most adapter loads the re-plan may need.
    progress : callable, optional
        Receives a :class:`~loraserve.solver.progress.Progress` (incumbent, bound, elapsed)
        on every improvement and about once a second during exact solves.
    tighten : mapping, optional
        Adapter id to :class:`~loraserve.solver.instance.Tightening`: stricter rows for
        those adapters (``plan --simulate`` passes the ones whose GPUs missed the SLO).

    Returns
    -------
    SolveResult
        Never ``None``: infeasibility is a status whose message names the binding constraint.
        The input is not modified.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
    if max_moves is not None and current is None:
        raise ValueError("max_moves applies to a re-plan: pass current= as well")
    if config.remote_enabled and current is None and solver != "loraserve-greedy":
        # Imported here: the remote module imports this one's helpers' modules, and plans
        # without a topology must not pay for it.
        from loraserve.solver.remote import solve_remote

        share = 0.5 if solver in ("auto", "milp", "cpsat", "lns") else 1.0

        def replication(plain: Config) -> SolveResult:
            return solve(plain, solver=solver, time_limit=time_limit * share, seed=seed,
                         threads=threads, cost_model=cost_model, progress=progress,
                         tighten=tighten)

        return solve_remote(config, solver, time_limit, seed, threads, cost_model,
                            replication)
    quiet_banner()
    started = time.perf_counter()
    deadline = started + time_limit
    report = Reporter(progress, started)
    inst = Instance.build(config, cost_model, tighten)
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
    message = bound.message

    incumbent: list[OpenGPU] | None = None
    name: str = solver
    from_scratch = False
    if current is not None and solver != "loraserve-greedy":
        name = "incremental"
        try:
            scratch = greedy_placement(inst, target=best_bound)
        except InfeasibleError as exc:
            return _infeasible(str(exc), exc.binding, name, started)
        try:
            outcome = incremental_placement(inst, current, plan_cost(inst, scratch), max_moves)
            incumbent = outcome.gpus
            message = f"from scratch: {plan_cost(inst, scratch):g}; {bound.message}"
        except InfeasibleError as exc:
            if exc.binding == "moves":
                return _infeasible(str(exc), exc.binding, name, started)
            # The running plan's replicas can be a dead end (an adapter at max_replicas on
            # full GPUs) where a fresh packing is not: take the from-scratch plan, renamed
            # below to overlap the running one, and let max_moves judge its loads.
            logger.info("incremental re-plan failed (%s); using the from-scratch plan", exc)
            incumbent, from_scratch = scratch, True
            message = (f"the running plan could not carry the new rates ({exc}); re-planned "
                       f"from scratch, GPUs renamed to overlap it; {bound.message}")
    elif solver == "loraserve-greedy":
        try:
            incumbent = _paper_plan(inst, best_bound)
        except InfeasibleError as exc:
            # The heuristic failing proves nothing about the instance: not "infeasible".
            return SolveResult(status="unknown", lower_bound=best_bound, solver=name,
                               seconds=time.perf_counter() - started, binding=exc.binding,
                               message=str(exc))
    else:
        incumbent, name = _heuristics(inst, best_bound)
    upper = plan_cost(inst, incumbent) if incumbent else math.inf
    report(name, upper, best_bound)
    proven = incumbent is not None and upper <= best_bound + 1e-9

    improving = incumbent is not None and current is None
    exact_follows = (current is None and _exact_backend(inst, solver) is not None
                     and _pairs(inst, upper) <= AUTO_EXACT_PAIRS)
    share = _whole_share(inst, exact_follows) if solver == "auto" else 0.0
    if improving and not proven and share > 0 and incumbent is not None:
        # Whole adapters (or mostly small ones): bin packing with a pool search.
        budget = (deadline - time.perf_counter()) * share
        packed = improve_whole(inst, best_bound, budget, start=incumbent, seed=seed,
                               report=lambda cost: report("binpack", cost, best_bound))
        if packed is not None and plan_cost(inst, packed) < upper - 1e-9:
            incumbent, upper, name = packed, plan_cost(inst, packed), "binpack"
        proven = upper <= best_bound + 1e-9

    hosting = set(bound.binding.split("+")) & {"memory", "batch_slots"}
    colgen_runs = ((solver in ("auto", "lns") and not hosting)
                   or (solver in ("milp", "cpsat") and bound.binding == "slots"))
    if improving and incumbent is not None and not proven and colgen_runs:
        # The configuration LP ties each GPU's slots and time together; for auto and lns,
        # whichever family sets the tier-count bound (the exact solvers keep it for where
        # slots bind and leave the rest of the time to their model); a third of the time
        # goes to it. Not where the hosting
        # row (memory, batch slots) sets the bound: there its pricing is a two-constraint
        # knapsack that did not converge in 120 s on the 1,000-adapter trace instance (bound
        # 60 against the tier-count bound's 72), so the time goes to LNS (docs/bounds.md).
        budget = (deadline - time.perf_counter()) * COLGEN_SHARE
        logger.info("colgen: started (%.1f s)", budget)
        strong = colgen_bound(inst, upper_bound=upper, start=incumbent, time_limit=budget)
        logger.info("colgen: %s", strong.message)
        if strong.value > best_bound + 1e-9:
            best_bound = _round_bound(inst, strong.value)
            message = (f"configuration-LP bound {best_bound:g} (set by {bound.binding}; "
                       f"tier-count bound {bound.value:g})")
        proven = upper <= best_bound + 1e-9
        report(name, upper, best_bound)
        if not proven and solver in ("auto", "lns"):
            # Price-and-branch: the LP's columns as an integer program, then repaired.
            budget = (deadline - time.perf_counter()) * PRIMAL_SHARE
            primal = price_and_branch(inst, strong.patterns, incumbent, budget, seed=seed)
            if primal is not None:
                incumbent, upper, name = primal, plan_cost(inst, primal), "colgen-primal"
                report(name, upper, best_bound)
            proven = upper <= best_bound + 1e-9

    if improving and incumbent is not None and not proven and solver in ("auto", "lns"):
        # Whatever family sets the bound, LNS spends the time left (half of it when an
        # exact model follows).
        budget = deadline - time.perf_counter()
        if solver == "auto" and exact_follows:
            budget /= 2  # leave the exact model the other half
        logger.info("lns: started (%.1f s)", budget)
        improved = improve_by_lns(inst, incumbent, best_bound, budget, seed=seed,
                                  report=lambda cost, _: report("lns", cost, best_bound))
        if plan_cost(inst, improved) < upper - 1e-9:
            incumbent, upper, name = improved, plan_cost(inst, improved), "lns"
        proven = upper <= best_bound + 1e-9

    backend = None if current is not None else _exact_backend(inst, solver)
    if backend is not None and solver == "auto":
        if _pairs(inst, upper) > AUTO_EXACT_PAIRS:
            logger.info("auto: %d pairs is too many for an exact model; keeping the %s plan",
                        _pairs(inst, upper), name)
            backend = None
        elif deadline - time.perf_counter() < AUTO_MIN_SECONDS:
            logger.info("auto: under %g s left; keeping the %s plan", AUTO_MIN_SECONDS, name)
            backend = None
    if backend is not None and not proven:
        name = backend
        exact = _run_exact(inst, backend, upper, best_bound, incumbent, deadline, seed,
                           threads, report)
        if exact.infeasible and incumbent is None:
            message, binding = diagnose_infeasible(inst)
            return _infeasible(message, binding, name, started)
        if exact.gpus is not None:
            state = _State(inst, exact.gpus)
            _lower_tiers(state)
            cost = plan_cost(inst, state.gpus)
            if cost < upper - 1e-9 or incumbent is None:
                incumbent, upper = state.gpus, cost
        if math.isfinite(exact.bound):
            best_bound = max(best_bound, _round_bound(inst, exact.bound))
        proven = exact.proven_optimal and incumbent is not None
        report(name, upper, best_bound)
    if (solver == "auto" and improving and incumbent is not None and not proven
            and deadline - time.perf_counter() > AUTO_MIN_SECONDS):
        # The exact model stopped without proving the plan (its restriction solved, or its
        # bound not valid with splitting): LNS spends what is left.
        improved = improve_by_lns(inst, incumbent, best_bound, deadline - time.perf_counter(),
                                  seed=seed + 1,
                                  report=lambda cost, _: report("lns", cost, best_bound))
        if plan_cost(inst, improved) < upper - 1e-9:
            incumbent, upper, name = improved, plan_cost(inst, improved), "lns"
        proven = upper <= best_bound + 1e-9
    seconds = time.perf_counter() - started
    if incumbent is None:
        # Say how long it really searched: heuristics that give up take milliseconds, and
        # "in 30 s" read as if the time limit had been used.
        hint = ("" if backend is not None else
                "; an exact solver (--solver milp) decides whether a plan exists")
        return SolveResult(status="unknown", lower_bound=best_bound, seconds=seconds,
                           solver=name, binding=bound.binding,
                           message=f"no plan found by {name} in {seconds:.2f} s (limit "
                                   f"{time_limit:g} s){hint}; {bound.message}")
    plan = build_plan(inst, incumbent)
    if current is not None:
        if name == "loraserve-greedy" or from_scratch:
            # A from-scratch plan (the paper's way, or the fall-back above): rename its GPUs
            # to overlap the running plan.
            plan = relabel(plan, current, config)
        moves = migration_cost(current, plan, config)
        if max_moves is not None and moves["loads"] > max_moves:
            return _infeasible(
                f"the plan needs {moves['loads']} adapter loads; max_moves is {max_moves} "
                f"(short by {moves['loads'] - max_moves})", "moves", name, started)
        message = (f"{moves['loads']} adapter loads ({moves['bytes_to_load'] / 2**30:.2f} GiB), "
                   f"{moves['tier_changes']} tier changes, {moves['gpus_started']} GPUs started, "
                   f"{moves['gpus_stopped']} stopped; {message}")
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
        message=message,
    )


def _heuristics(inst: Instance, target: float) -> tuple[list[OpenGPU] | None, str]:
    """The cheaper of loraserve's greedy and the paper's heuristic (the warm start)."""
    found: list[tuple[float, int, str, list[OpenGPU]]] = []
    try:
        logger.info("greedy: started")
        gpus = greedy_placement(inst, target=target)
        found.append((plan_cost(inst, gpus), 0, "greedy", gpus))
    except InfeasibleError as exc:
        logger.info("greedy found no plan: %s", exc)
    if not found or found[0][0] > target + 1e-9:
        try:
            gpus = _paper_plan(inst, target)
            found.append((plan_cost(inst, gpus), 1, "loraserve-greedy", gpus))
        except InfeasibleError as exc:
            logger.info("loraserve-greedy found no plan: %s", exc)
    if not found:
        return None, "greedy"
    best = min(found)
    return best[3], best[2]


def _paper_plan(inst: Instance, bound: float) -> list[OpenGPU]:
    """The paper's heuristic at its smallest valid fleet size.

    Its literal fill (each GPU to capacity, hottest first) leaves a rank group's cold tail on
    one GPU, beyond any slot limit, at every fleet size; when that makes it infeasible, the
    even fill (each GPU to the group's mean load) is tried before giving up.
    """
    try:
        gpus, _ = loraserve_greedy_min(inst, start=math.ceil(bound - 1e-9))
    except InfeasibleError as exc:
        if exc.binding != "slots":
            raise
        gpus, _ = loraserve_greedy_min(inst, start=math.ceil(bound - 1e-9), fill="utilization")
    return [g for g in gpus if g.shares]


def _run_exact(inst: Instance, backend: str, upper: float, bound: float,
               start: list[OpenGPU] | None, deadline: float, seed: int, threads: int,
               report: Reporter) -> MILPOutcome:
    def on_progress(incumbent: float, best: float) -> None:
        report(backend, incumbent, best)

    logger.info("%s: started", backend)
    model: PlacementMILP | PlacementCPSAT
    if backend == "cpsat":
        model = PlacementCPSAT(inst, upper_bound=upper, lower_bound=bound)
    else:
        model = PlacementMILP(inst, upper_bound=upper, lower_bound=bound)
    remaining = deadline - time.perf_counter()
    if remaining < 0.5:
        logger.warning("building the %s model used the time limit; it gets 0.5 s to improve "
                       "the heuristic plan", backend)
    if isinstance(model, PlacementCPSAT):
        outcome = model.solve(time_limit=max(0.5, remaining), start=start, seed=seed,
                              threads=threads, integral=inst.uniform_cost,
                              progress=lambda inc, best, _elapsed: on_progress(inc, best))
    else:
        outcome = model.solve(time_limit=max(0.5, remaining), start=start, seed=seed,
                              threads=threads, integral=inst.uniform_cost, progress=on_progress)
    logger.info("%s: %d variables, bound %.3f, optimal=%s", backend, outcome.variables,
                outcome.bound, outcome.proven_optimal)
    return outcome
