"""Lower bounds on the fewest GPUs (or least cost), and infeasibility diagnosis.

The **tier-count bound** relaxes the placement to integer GPU counts ``n_k`` per kind (GPUs of
one type and tier are interchangeable) and lets traffic flow fractionally:

* every adapter class (one per rank) sends its prefill and decode tokens to kinds whose tier
  admits it (relaxed: prefill and decode may go to different kinds);
* the busy time sent to kind ``k`` fits in ``capacity[k] * n_k``;
* nested slot cover: for every rank ``r``, GPUs of tier >= ``r`` hold at least
  ``sum(min_replicas[a] for rank(a) >= r)`` adapter slots;
* nested cache cover, likewise in bytes, when the adapter cache is limited: on one GPU,
  adapters of rank >= ``r`` fill at most the largest sum of their sizes that fits the cache
  (three 1.25 GiB adapters leave 1 GiB of a 4.75 GiB cache to smaller ranks);
* pools: GPUs of one type do not exceed its count.

Any plan gives a feasible point of this model, so its optimum is a valid lower bound. It is
small (ranks x kinds) and HiGHS solves it in milliseconds.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import pulp

from loraserve.solver._stop import pulp_solve
from loraserve.solver.instance import Instance

logger = logging.getLogger(__name__)

#: Most distinct byte totals :func:`fullest_bytes` enumerates before giving up.
_SUMS = 20_000

#: GPUs are seen with this much more cache than they have, the plan check's tolerance.
_ROOM = 1.0 + 2e-6


@dataclass(frozen=True)
class Bound:
    """A lower bound and the constraint family that sets it."""

    value: float
    feasible: bool
    binding: str
    message: str
    counts: dict[int, int]


def _tokens_by_rank(inst: Instance) -> dict[int, tuple[float, float]]:
    totals: dict[int, tuple[float, float]] = {}
    for adapter in inst.config.adapters:
        prefill, decode = totals.get(adapter.rank, (0.0, 0.0))
        totals[adapter.rank] = (prefill + adapter.request_rate * adapter.prompt_tokens,
                                decode + adapter.request_rate * adapter.output_tokens)
    return totals


@functools.lru_cache(maxsize=256)
def fullest_bytes(sizes: tuple[int, ...], limit: float) -> float:
    """The largest sum of ``sizes`` (each used any number of times) that is ``<= limit``.

    A cache holds whole adapters, so adapters of these sizes fill at most this much of it.
    Returns ``limit`` (always valid) when it is infinite or when the reachable sums grow past
    :data:`_SUMS`.
    """
    if not math.isfinite(limit) or not sizes:
        return limit
    reach = {0}
    frontier = {0}
    while frontier:
        grown = {t + s for t in frontier for s in sizes if t + s <= limit} - reach
        reach |= grown
        frontier = grown
        if len(reach) > _SUMS:
            return limit
    return float(max(reach))


def tier_count_bound(
    inst: Instance,
    time_limit: float = 10.0,
    families: frozenset[str] = frozenset({"load", "slots", "memory", "pool"}),
) -> Bound:
    """Solve the tier-count relaxation; see the module docstring.

    Parameters
    ----------
    inst : Instance
    time_limit : float
        Seconds for HiGHS.
    families : frozenset of str
        Constraint families to include (dropping some gives the bound each one alone sets).
    """
    model = pulp.LpProblem("tier_count_bound", pulp.LpMinimize)
    kinds = inst.kinds
    ranks = sorted({int(r) for r in inst.ranks})
    tokens = _tokens_by_rank(inst)
    # n[k]: GPUs of kind k (integer).
    n = {k.index: model.add_variable(f"n_{k.index}", lowBound=0, cat="Integer") for k in kinds}
    # pf[r, k], dc[r, k]: prefill / decode token rate of rank-r adapters served on kind k.
    pf: dict[tuple[int, int], pulp.LpVariable] = {}
    dc: dict[tuple[int, int], pulp.LpVariable] = {}
    for r in ranks:
        for k in kinds:
            if k.tier >= r:
                pf[r, k.index] = model.add_variable(f"pf_{r}_{k.index}", lowBound=0)
                dc[r, k.index] = model.add_variable(f"dc_{r}_{k.index}", lowBound=0)
    model += pulp.lpSum(k.unit_cost * n[k.index] for k in kinds)
    if "load" in families:
        for r in ranks:
            prefill, decode = tokens[r]
            model += (pulp.lpSum(v for (rr, _), v in pf.items() if rr == r) == prefill,
                      f"route_prefill_{r}")
            model += (pulp.lpSum(v for (rr, _), v in dc.items() if rr == r) == decode,
                      f"route_decode_{r}")
        for k in kinds:
            cap = inst.cost_model.capacity(k.gpu_type, k.tier)
            busy = pulp.lpSum(
                pf[r, k.index] / cap.prefill_tokens_per_s + dc[r, k.index] / cap.decode_tokens_per_s
                for r in ranks if (r, k.index) in pf
            )
            model += (busy <= k.capacity * n[k.index], f"load_{k.index}")
    replicas = [inst.min_replicas(a) for a in range(inst.num_adapters)]
    for r in ranks:
        admits = pulp.lpSum(n[k.index] for k in kinds if k.tier >= r)
        members = [a for a in range(inst.num_adapters) if inst.ranks[a] >= r]
        if "slots" in families:
            model += (admits * inst.slots >= sum(replicas[a] for a in members), f"slots_{r}")
        if "memory" in families and math.isfinite(inst.cache_bytes):
            need = sum(replicas[a] * inst.bytes[a] for a in members)
            sizes = tuple(sorted({int(inst.bytes[a]) for a in members}))
            fill = fullest_bytes(sizes, inst.cache_bytes * _ROOM)
            model += (admits * fill >= need, f"memory_{r}")
    if "pool" in families:
        for gpu_type in {k.gpu_type for k in kinds}:
            pool = inst.config.pool(gpu_type).count
            model += (pulp.lpSum(n[k.index] for k in kinds if k.gpu_type == gpu_type) <= pool,
                      f"pool_{gpu_type}")
    solver = pulp.HiGHS(msg=False, timeLimit=time_limit, threads=1)
    pulp_solve(model, solver)
    status = pulp.LpStatus[model.status]
    if status != "Optimal":
        return Bound(value=math.inf, feasible=False, binding="", message=status, counts={})
    counts = {k: round(v.value() or 0.0) for k, v in n.items()}
    value = float(pulp.value(model.objective) or 0.0)
    if model.sol_status != 1:
        # Stopped at the time limit: fall back to HiGHS's dual bound, which is still valid.
        info = model.solverModel.getInfo()
        value = float(info.mip_dual_bound)
    return Bound(value=value, feasible=True, binding="", message="", counts=counts)


def lower_bound(inst: Instance, time_limit: float = 10.0) -> Bound:
    """The tier-count bound, with the constraint family that sets it.

    ``binding`` is the family whose removal lowers the bound (``load``, ``slots`` or
    ``memory``); ``load`` when none alone does.
    """
    full = tier_count_bound(inst, time_limit)
    if not full.feasible:
        return full
    binding = "load"
    # Without an adapter-cache limit the memory family adds no constraint: no probe needed.
    probes = ("slots", "memory") if math.isfinite(inst.cache_bytes) else ("slots",)
    for family in probes:
        reduced = tier_count_bound(
            inst, time_limit, frozenset({"load", "slots", "memory", "pool"} - {family})
        )
        if reduced.feasible and reduced.value < full.value - 1e-6:
            binding = family
            break
    binding = family_name(inst, binding)
    unit = "GPUs" if inst.uniform_cost else "per hour"
    message = f"tier-count bound {full.value:g} {unit} (set by {binding})"
    return Bound(value=full.value, feasible=True, binding=binding, message=message,
                 counts=full.counts)


def family_name(inst: Instance, row: str) -> str:
    """The per-GPU family behind one of the bound's rows, as users see it named.

    ``load`` is the traffic row (``compute`` or ``tpot_tail``, whichever sets most of the
    demand), ``memory`` the hosting row (``memory``, ``batch_slots`` or both).
    """
    if row == "load":
        return inst.load_family()
    if row == "memory" and inst.hosting_families:
        return "+".join(inst.hosting_families)
    return row


def diagnose_infeasible(inst: Instance, time_limit: float = 10.0) -> tuple[str, str]:
    """Say which constraint family makes the pools too small, and by how much.

    Returns
    -------
    (message, binding)
    """
    unlimited = tier_count_bound(inst, time_limit, frozenset({"load", "slots", "memory"}))
    if not unlimited.feasible:
        return ("no plan exists even with unlimited GPUs; check the adapters' ranks against "
                "serving.tiers", "tier")
    pools = {p.gpu_type: p.count for p in inst.config.pools}
    # Report, per rank threshold, what each family alone needs on tiers that admit it.
    worst: tuple[float, str, str] = (0.0, "", "pool")
    ranks = sorted({int(r) for r in inst.ranks})
    for family in ("load", "slots", "memory"):
        alone = tier_count_bound(inst, time_limit, frozenset({family}))
        if not alone.feasible:
            continue
        for r in ranks:
            need = sum(c for k, c in alone.counts.items() if inst.kinds[k].tier >= r)
            types = {k.gpu_type for k in inst.kinds if k.tier >= r}
            have = sum(pools[t] for t in types)
            short = need - have
            if short > worst[0]:
                what = {"load": f"demand ({family_name(inst, 'load')})",
                        "slots": "adapter slots",
                        "memory": family_name(inst, "memory").replace("batch_slots",
                                                                      "busy LoRA batch slots")
                        .replace("memory", "adapter memory")}
                text = (f"{what[family]} of adapters with rank >= {r} needs at least {need} GPUs "
                        f"of tier >= {r}; the pools hold {have} (short by {short})")
                worst = (short, text, family)
    if worst[1]:
        return worst[1], family_name(inst, worst[2])
    total_need = sum(unlimited.counts.values())
    have = sum(pools.values())
    if total_need > have:
        return (f"load, slots and memory together need at least {total_need} GPUs; the pools "
                f"hold {have} (short by {total_need - have})", "pool")
    # The aggregate bound fits: what does not is whole adapters on whole GPUs, so there is no
    # honest GPU count to name, only that the pools are too small for an assignment.
    return (f"the pools hold {have} GPUs, as many as load, slots and memory need in aggregate "
            f"({total_need}), but no assignment of whole adapters to them keeps every GPU's "
            "slots, memory and SLO limit; add GPUs to the pools", "pool")
