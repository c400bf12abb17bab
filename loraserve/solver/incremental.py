"""Incremental re-planning: carry a changed workload on the running plan with few moves.

Re-planning from scratch answers "how few GPUs", but applying its plan reloads most adapters,
because nothing ties its GPU numbering or its choice among equal packings to what is
running. Here the running plan is the starting point and every change is paid for:

1. **Keep**: each running GPU keeps its id, type, tier and loaded adapters (adapters that left
   the config are dropped; a tier the config no longer offers moves to the lowest usable tier
   that admits what it hosts, which restarts that worker).
2. **Re-route** (free): an LP on HiGHS spreads each adapter's new traffic over the replicas it
   already has, within every GPU's SLO capacity, minimizing the GPU time left unserved. An
   adapter already at ``max_replicas`` is served first: nothing it leaves could be placed,
   so other adapters make room for it on its GPUs.
   If a re-placement still dead-ends, :func:`loraserve.solve` falls back to the from-scratch
   plan renamed onto the running GPUs.
3. **Load** (paid): unserved traffic and new adapters are placed by the greedy's placement
   rule (a GPU that already hosts the adapter, else the lowest admitting tier with the
   tightest fit, else a new GPU), so each needed replica is one adapter load.
4. **Consolidate** (paid, optional): while the plan costs more than a from-scratch greedy
   plan and the move budget allows, the least utilized GPUs are emptied into the others,
   preferring GPUs that already host each adapter.

Zero-weight replicas are unloaded at the end. Migration cost counts adapter loads (and
their bytes) and tier changes; a ``max_moves`` cap bounds the loads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pulp

from loraserve.models import PlacementPlan
from loraserve.solver._stop import pulp_solve
from loraserve.solver.greedy import OpenGPU, _State, plan_cost
from loraserve.solver.instance import EPS, InfeasibleError, Instance

logger = logging.getLogger(__name__)

#: Least utilized GPUs tried per consolidation pass.
CONSOLIDATE_VICTIMS = 16
#: How much more an unserved share of an adapter at ``max_replicas`` weighs in re-routing.
STUCK_WEIGHT = 1000.0


@dataclass
class IncrementalOutcome:
    """The re-planned GPUs and what reaching them costs.

    Attributes
    ----------
    gpus : list of OpenGPU
        The new assignment; running GPUs keep their ``name``.
    loads : int
        New (adapter, GPU) replicas, each an adapter load.
    bytes_loaded : float
        Bytes of those loads.
    tier_changes : int
        Running GPUs whose tier changes (each restarts a worker).
    dropped : list of str
        Running GPUs no longer in the plan.
    """

    gpus: list[OpenGPU]
    loads: int
    bytes_loaded: float
    tier_changes: int
    dropped: list[str]


def _running(inst: Instance, current: PlacementPlan) -> tuple[list[OpenGPU], list[str]]:
    """The current plan as open GPUs with their hosted adapters (shares still zero)."""
    index = {a.id: i for i, a in enumerate(inst.config.adapters)}
    pool_left = {p.gpu_type: p.count for p in inst.config.pools}
    gpus: list[OpenGPU] = []
    dropped: list[str] = []
    # Busiest GPUs first, so that a shrunken pool drops the least useful ones.
    for placement in sorted(current.gpus, key=lambda g: (-len(g.adapters), g.gpu_id)):
        hosted = sorted(index[a] for a in placement.adapters if a in index)
        if placement.gpu_type not in pool_left or pool_left[placement.gpu_type] <= 0:
            dropped.append(placement.gpu_id)
            continue
        top = max((int(inst.ranks[a]) for a in hosted), default=0)
        options = sorted((k for k in inst.kinds if k.gpu_type == placement.gpu_type
                          and k.tier >= top), key=lambda k: (k.tier != placement.tier, k.tier))
        if not options:
            dropped.append(placement.gpu_id)
            continue
        kind = options[0]
        pool_left[placement.gpu_type] -= 1
        gpu = OpenGPU(kind=kind.index, name=placement.gpu_id)
        # Slots or adapter memory may have shrunk in the config: keep what still fits,
        # hottest first; the rest is placed again like unserved traffic.
        for a in sorted(hosted, key=lambda a: -float(inst.load[a, kind.index])):
            if len(gpu.shares) < inst.slots and gpu.bytes + inst.bytes[a] <= inst.cache_bytes:
                gpu.shares[a] = 0.0
                gpu.bytes += float(inst.bytes[a])
        gpus.append(gpu)
    return gpus, dropped


def _pool_sizes(inst: Instance) -> str:
    return ", ".join(f"{p.gpu_type} {p.count}" for p in inst.config.pools)


def _route(inst: Instance, gpus: list[OpenGPU]) -> np.ndarray:
    """Spread traffic over existing replicas; return each adapter's unserved share."""
    unserved = np.ones(inst.num_adapters)
    pairs = [(a, g) for g, gpu in enumerate(gpus) for a in gpu.shares]
    if not pairs:
        return unserved
    best = np.where(np.isfinite(inst.load), inst.load, np.inf).min(axis=1)
    model = pulp.LpProblem("reroute", pulp.LpMinimize)
    x = {(a, g): model.add_variable(f"x_{a}_{g}", lowBound=0, upBound=1) for a, g in pairs}
    hosted = sorted({a for a, _ in pairs})
    u = {a: model.add_variable(f"u_{a}", lowBound=0, upBound=1) for a in hosted}
    # Unserved GPU time (use what runs to the full), plus its bytes: each left-out adapter
    # costs a load of its weights, so the excess of one hot adapter should go out before a
    # dozen cold ones. The byte term is scaled to 0.3 of the time term on average; on the
    # benchmark 0.01 made 2.5x the loads and 0.3 to 3 gave the same plans.
    weight = float(np.mean(best[hosted])) / max(float(np.mean(inst.real_bytes[hosted])), 1.0)
    by_adapter: dict[int, list[int]] = {}
    by_gpu: dict[int, list[int]] = {}
    for a, g in pairs:
        by_adapter.setdefault(a, []).append(g)
        by_gpu.setdefault(g, []).append(a)
    # An adapter at max_replicas can take no new replica: what its replicas do not carry
    # cannot be placed at all, so it goes first and other adapters make room for it.
    stuck = {a for a, gs in by_adapter.items() if len(gs) >= inst.max_replicas}
    model += pulp.lpSum((float(best[a]) + 0.3 * weight * float(inst.real_bytes[a]))
                        * (STUCK_WEIGHT if a in stuck else 1.0) * u[a] for a in hosted)
    for a, gs in by_adapter.items():
        model += (pulp.lpSum(x[a, g] for g in gs) + u[a] == 1, f"route_{a}")
    for g, adapters in by_gpu.items():
        k = gpus[g].kind
        model += (pulp.lpSum(float(inst.load[a, k]) * x[a, g] for a in adapters)
                  <= inst.kinds[k].capacity, f"compute_{g}")
    pulp_solve(model, pulp.HiGHS(msg=False, threads=1))
    if pulp.LpStatus[model.status] != "Optimal":
        raise RuntimeError(f"re-routing LP ended {pulp.LpStatus[model.status]}")
    for (a, g), var in x.items():
        w = float(var.value() or 0.0)
        gpu = gpus[g]
        gpu.shares[a] = w if w > EPS else 0.0
        gpu.load += gpu.shares[a] * float(inst.load[a, gpu.kind])
    for a in hosted:
        unserved[a] = max(0.0, float(u[a].value() or 0.0))
    return unserved


def _load_cost(inst: Instance, gpus: list[OpenGPU],
               original: set[tuple[str, int]]) -> tuple[int, float]:
    loads, moved = 0, 0.0
    for gpu in gpus:
        for a, w in gpu.shares.items():
            if w > EPS and (gpu.name is None or (gpu.name, a) not in original):
                loads += 1
                moved += float(inst.real_bytes[a])
    return loads, moved


def _consolidate(state: _State, original: set[tuple[str, int]], target: float,
                 max_loads: int | None) -> _State:
    """Empty the least utilized GPUs while the plan costs more than ``target``."""
    inst = state.inst
    while plan_cost(inst, state.gpus) > target + 1e-9:
        loads_now, _ = _load_cost(inst, state.gpus, original)
        order = sorted(range(len(state.gpus)), key=lambda g: (
            state.gpus[g].load / inst.kinds[state.gpus[g].kind].capacity, g))
        accepted: _State | None = None
        best_extra = math.inf
        for victim in order[:CONSOLIDATE_VICTIMS]:
            gone = state.gpus[victim]
            trial = _State(inst, [g.copy() for i, g in enumerate(state.gpus) if i != victim])
            if any(trial.place(a, w, allow_open=False) > EPS
                   for a, w in sorted(gone.shares.items(), key=lambda kv: -inst.ranks[kv[0]])
                   if w > EPS):
                continue
            extra = _load_cost(inst, trial.gpus, original)[0] - loads_now
            if max_loads is not None and loads_now + extra > max_loads:
                continue
            # Of the GPUs that can go, free the one whose traffic moves with fewest loads.
            if extra < best_extra:
                accepted, best_extra = trial, extra
                if extra == 0:
                    break
        if accepted is None:
            break
        state = _State(inst, accepted.gpus)
    return state


def incremental_placement(inst: Instance, current: PlacementPlan, target: float,
                          max_moves: int | None = None) -> IncrementalOutcome:
    """Re-plan ``inst`` starting from ``current``; see the module docstring.

    Parameters
    ----------
    inst : Instance
        The changed workload.
    current : PlacementPlan
        The running plan.
    target : float
        Cost of a from-scratch plan: consolidation stops once the plan is this cheap.
    max_moves : int, optional
        Most adapter loads allowed.

    Raises
    ------
    InfeasibleError
        When the new traffic cannot be carried, or not within ``max_moves`` loads (binding
        ``moves``).
    """
    inst.adapter_checks()
    gpus, dropped = _running(inst, current)
    # What is loaded now and stays loaded; a GPU whose tier changes restarts and reloads all.
    original = {(g.name, a) for g in gpus if g.name is not None
                and inst.kinds[g.kind].tier == current.gpu(g.name).tier for a in g.shares}
    unserved = _route(inst, gpus)
    state = _State(inst, gpus)
    order = sorted(np.flatnonzero(unserved > 1e-7),
                   key=lambda a: (-inst.ranks[a], -float(np.nanmax(
                       np.where(np.isfinite(inst.load[a]), inst.load[a], np.nan))), a))
    for a in order:
        left = state.place(int(a), float(unserved[a]), allow_open=True)
        if left > EPS:
            # The amount: how much of the adapter's traffic found no room, on how many GPUs.
            unplaced = len(order) - list(order).index(a)
            raise InfeasibleError(
                f"the pools ran out while re-placing adapter '{inst.config.adapters[a].id}': "
                f"{left:.0%} of its traffic and {unplaced - 1} more adapter(s) found no room "
                f"on the {len(state.gpus)} GPU(s) the pools hold "
                f"({_pool_sizes(inst)}); grow the pools or plan from scratch", "pool")
    loads, _ = _load_cost(inst, state.gpus, original)
    if max_moves is not None and loads > max_moves:
        raise InfeasibleError(
            f"carrying the new rates needs {loads} adapter loads; max_moves is {max_moves} "
            f"(short by {loads - max_moves})", "moves")
    state = _consolidate(state, original, target, max_moves)
    kept: list[OpenGPU] = []
    for gpu in state.gpus:
        # Replicas left without traffic are unloaded: they hold a slot and bytes for nothing.
        gpu.shares = {a: w for a, w in gpu.shares.items() if w > EPS}
        gpu.bytes = float(sum(inst.bytes[a] for a in gpu.shares))
        if gpu.shares:
            kept.append(gpu)
    names = {g.name for g in kept}
    dropped += [p.gpu_id for p in current.gpus
                if p.gpu_id not in names and p.gpu_id not in dropped]
    loads, moved = _load_cost(inst, kept, original)
    changed = sum(1 for g in kept if g.name is not None
                  and inst.kinds[g.kind].tier != current.gpu(g.name).tier)
    logger.info("incremental: %d GPUs, %d loads (%.2f GiB), %d tier changes, %d dropped",
                len(kept), loads, moved / 2**30, changed, len(dropped))
    return IncrementalOutcome(gpus=kept, loads=loads, bytes_loaded=moved, tier_changes=changed,
                              dropped=sorted(dropped))
