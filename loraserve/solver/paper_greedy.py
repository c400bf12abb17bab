"""The LoRAServe paper's placement heuristic (arXiv 2511.22880), as a named baseline.

This is a **reconstruction from the paper's prose description**, not a port of its code
(none is public). Given a fleet of ``N`` GPUs it

1. groups adapters by rank and measures each group's demand ``D_r``: its total load, in GPUs
   at full capacity, at the lowest usable tier that admits rank ``r``;
2. gives every group a GPU budget ``B_r`` proportional to ``D_r`` (largest-remainder, or
   Hamilton, apportionment; every non-empty group gets at least one GPU), the budgets
   summing to ``N``; a group's GPUs run at the group's tier;
3. packs each group's adapters, hottest first, next-fit onto the group's GPUs, splitting an
   adapter's traffic where it does not fit;
4. places leftovers (traffic beyond a group's budget) highest rank first on the
   least-utilized GPU whose tier admits them, again splitting at capacity; what fits nowhere
   stays, overloaded, on the least-utilized admitting GPU.

The paper's packing ignores **adapter slots** (vLLM's ``max_cpu_loras``) and **adapter
memory**, and it does not cap replicas; :func:`validity` checks all of them afterwards, so
:func:`loraserve_greedy_min` reports the fleet size at which the paper's plan happens to be
valid. The paper's relabelling step (matching the new plan's GPUs to the previous plan's, to
limit adapter moves) is done at the plan level by ``loraserve.models.migration.relabel``, not
here.

Mixed GPU types
    The paper assumes one GPU type. Here each rank group ranks the GPU types by what its
    traffic would cost on each type's lowest admitting tier (``unit_cost * D_r``, i.e. the best
    capacity per cost for that group's own token mix) and measures ``D_r`` on the best one;
    its budget GPUs take that kind while the type's pool lasts, then the next type's.

Fill level
    ``fill="capacity"`` (the default: the description this reconstruction follows) fills
    each group GPU to capacity, literally next-fit: surplus budget GPUs stay idle, and extra
    GPUs never relieve slots or memory, because the same GPUs fill the same way.
    ``fill="utilization"`` fills each group GPU to the group's utilization
    ``min(1, D_r / B_r)`` of capacity, spreading the group's load evenly over its budget as a
    latency-balancing server would; the last GPU of a group may go up to capacity so
    rounding never creates leftovers. Spreading relieves slots as ``N`` grows but splits hot
    adapters over more GPUs (replicas).

Why slots are ignored
    The paper's system reaches non-resident adapters over GPUDirect RDMA (its abstract says
    so), so presumably a GPU's adapter set is not capped there the way vLLM's
    ``max_cpu_loras`` caps it here. Hottest-first next-fit piles a group's long cold tail
    onto its last GPU, so with a slot limit the plan is often invalid at every ``N``.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from loraserve.solver.greedy import OpenGPU
from loraserve.solver.instance import EPS, InfeasibleError, Instance

logger = logging.getLogger(__name__)

Fill = Literal["capacity", "utilization"]

#: Slack on each GPU's capacity when judging validity (matches the solvers' share noise).
CAPACITY_SLACK = 1e-9
#: Routing weights of one adapter must sum to 1 within this.
ROUTING_SLACK = 1e-6
#: Order in which a violated family is named as the reason a fleet size fails.
FAMILIES = ("slots", "batch_slots", "memory+batch_slots", "memory", "replicas", "compute",
            "pool", "tier", "routing")


@dataclass(frozen=True)
class RankGroup:
    """Adapters of one rank, the kinds its GPUs may take and its demand.

    Attributes
    ----------
    rank : int
        The group's rank.
    members : numpy.ndarray
        Adapter indices, hottest first (load on ``kinds[0]``, ties by index).
    kinds : tuple of int
        One candidate kind per GPU type (that type's lowest usable tier >= ``rank``), best
        (cheapest for this group's traffic) first.
    demand : float
        GPUs of ``kinds[0]`` the group's traffic fills at capacity: ``D_r``.
    """

    rank: int
    members: np.ndarray
    kinds: tuple[int, ...]
    demand: float


def rank_groups(inst: Instance) -> list[RankGroup]:
    """Group adapters by rank, highest rank first, with candidate kinds and demand ``D_r``.

    Raises
    ------
    InfeasibleError
        When some rank has no usable tier that admits it.
    """
    groups: list[RankGroup] = []
    types = list(dict.fromkeys(k.gpu_type for k in inst.kinds))
    for rank in sorted({int(r) for r in inst.ranks}, reverse=True):
        members = np.flatnonzero(inst.ranks == rank)
        # Per type, the lowest usable tier that admits the rank (skipping unusable tiers is
        # implicit: inst.kinds lists usable ones only).
        options: list[tuple[float, int, int, float]] = []
        for gpu_type in types:
            admitting = [k for k in inst.kinds if k.gpu_type == gpu_type and k.tier >= rank]
            if not admitting:
                continue
            kind = min(admitting, key=lambda k: k.tier)
            demand = float(inst.load[members, kind.index].sum()) / kind.capacity
            options.append((kind.unit_cost * demand, kind.tier, kind.index, demand))
        if not options:
            raise InfeasibleError(f"no usable tier admits rank {rank}", "tier")
        options.sort()
        best = options[0][2]
        loads = inst.load[members, best]
        order = np.lexsort((members, -loads))
        groups.append(RankGroup(rank=rank, members=members[order],
                                kinds=tuple(o[2] for o in options), demand=options[0][3]))
    return groups


def apportion(demands: Sequence[float], seats: int) -> list[int]:
    """Split ``seats`` GPUs over groups in proportion to ``demands`` (Hamilton's method).

    Each group gets the integer part of its quota ``seats * d / sum(d)``, at least one, and
    the seats left go to the largest remainders (earlier groups first on ties). Where the
    minimum of one overshoots, seats are taken back from the groups whose last seat is least
    earned. With fewer seats than groups, the first ``seats`` groups get one each: callers
    list groups highest rank first, whose GPUs admit every lower rank's leftovers.

    Parameters
    ----------
    demands : sequence of float
        Non-negative demand per group.
    seats : int
        GPUs to hand out.

    Returns
    -------
    list of int
        Budget per group, summing to ``seats``.
    """
    count = len(demands)
    if seats < count:
        return [1 if i < seats else 0 for i in range(count)]
    total = math.fsum(demands)
    quotas = ([seats * d / total for d in demands] if total > 0
              else [seats / count] * count)
    alloc = [max(1, math.floor(q)) for q in quotas]
    diff = seats - sum(alloc)
    while diff > 0:
        # A remainder is what a group earned beyond its seats; lifted groups have negative ones.
        order = sorted(range(count), key=lambda i: (-(quotas[i] - alloc[i]), i))
        for i in order[:diff]:
            alloc[i] += 1
        diff = seats - sum(alloc)
    while diff < 0:
        # Only the minimum of one overshoots; take back the least-earned last seat.
        donors = [i for i in range(count) if alloc[i] > 1]
        i = min(donors, key=lambda i: (quotas[i] - (alloc[i] - 1), -i))
        alloc[i] -= 1
        diff += 1
    return alloc


def rank_budgets(inst: Instance, num_gpus: int) -> dict[int, int]:
    """GPU budget per rank for a fleet of ``num_gpus``: :func:`apportion` of ``D_r``."""
    groups = rank_groups(inst)
    return dict(zip((g.rank for g in groups),
                    apportion([g.demand for g in groups], num_gpus), strict=True))


@dataclass
class _Prepared:
    """What every fleet size reuses: groups, loads as Python lists (fast scalar access)."""

    inst: Instance
    groups: list[RankGroup]
    rows: list[list[float]]
    capacity: list[float]
    pool: dict[str, int]

    @classmethod
    def of(cls, inst: Instance) -> _Prepared:
        pool = {k.gpu_type: k.pool_count for k in inst.kinds}
        return cls(inst=inst, groups=rank_groups(inst), rows=inst.load.tolist(),
                   capacity=[k.capacity for k in inst.kinds], pool=pool)


@dataclass
class _Packing:
    """A fleet as flat arrays: kind and load per GPU, (adapter, GPU, share) triples."""

    kind: list[int]
    load: list[float]
    adapters: list[int] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)

    def add(self, a: int, g: int, share: float, load: float) -> None:
        self.adapters.append(a)
        self.gpus.append(g)
        self.shares.append(share)
        self.load[g] += share * load


def _budget_kinds(prep: _Prepared, budgets: list[int]) -> list[list[int]]:
    """Kind of each budget GPU, group by group: best type while its pool lasts."""
    left = dict(prep.pool)
    kinds: list[list[int]] = []
    for group, budget in zip(prep.groups, budgets, strict=True):
        chosen: list[int] = []
        for k in group.kinds:
            gpu_type = prep.inst.kinds[k].gpu_type
            take = min(budget - len(chosen), left[gpu_type])
            chosen += [k] * take
            left[gpu_type] -= take
        # Pools exhausted: overcommit the best type and let validity report the pool.
        chosen += [group.kinds[0]] * (budget - len(chosen))
        kinds.append(chosen)
    return kinds


def _pack(prep: _Prepared, num_gpus: int, fill: Fill) -> _Packing:
    rows, capacity = prep.rows, prep.capacity
    budgets = apportion([g.demand for g in prep.groups], num_gpus)
    group_kinds = _budget_kinds(prep, budgets)
    packing = _Packing(kind=[k for ks in group_kinds for k in ks], load=[0.0] * num_gpus)
    leftovers: list[tuple[int, float]] = []
    start = 0
    for group, budget, kinds in zip(prep.groups, budgets, group_kinds, strict=True):
        end = start + budget
        target = min(1.0, group.demand / budget) if fill == "utilization" and budget else 1.0
        # Last GPU of the group may fill to capacity: rounding must not create leftovers.
        level = [capacity[k] * target for k in kinds]
        if level:
            level[-1] = capacity[kinds[-1]]
        pos = start
        for a in group.members.tolist():
            row = rows[a]
            remaining = 1.0
            while remaining > EPS:
                if pos >= end:
                    leftovers.append((a, remaining))
                    break
                load = row[packing.kind[pos]]
                room = ((level[pos - start] - packing.load[pos]) / load if load > 0
                        else math.inf)
                if room >= remaining:
                    packing.add(a, pos, remaining, load)
                    break
                if room > EPS:
                    packing.add(a, pos, room, load)
                    remaining -= room
                pos += 1
        start = end
    if leftovers:
        _place_leftovers(prep, packing, leftovers)
    return packing


def _place_leftovers(prep: _Prepared, packing: _Packing,
                     leftovers: list[tuple[int, float]]) -> None:
    """Highest rank first, onto the least-utilized admitting GPU, splitting at capacity.

    One heap per tier keyed by utilization: a rank's admitting GPUs are the union of the
    heaps of tiers >= rank, so the least utilized is the best of a few heap tops. Each pop
    either finishes an adapter or fills a GPU, so the step is O((A + N) log N).
    """
    inst, rows, capacity = prep.inst, prep.rows, prep.capacity
    tier_of = [inst.kinds[k].tier for k in packing.kind]
    heaps: dict[int, list[tuple[float, int]]] = {}
    for g, k in enumerate(packing.kind):
        heaps.setdefault(tier_of[g], []).append((packing.load[g] / capacity[k], g))
    for heap in heaps.values():
        heapq.heapify(heap)
    # Leftovers arrive group by group (highest rank first, hottest first); keep that order.
    for a, share in sorted(leftovers, key=lambda item: -int(inst.ranks[item[0]])):
        rank = int(inst.ranks[a])
        row = rows[a]
        remaining = share
        while remaining > EPS:
            admitting = [t for t in heaps if t >= rank and heaps[t]]
            if not admitting:
                # Unreachable: apportion gives the highest ranks GPUs first.
                raise InfeasibleError(f"no GPU admits rank {rank}", "tier")
            tier = min(admitting, key=lambda t: heaps[t][0])
            _, g = heapq.heappop(heaps[tier])
            k = packing.kind[g]
            load = row[k]
            room = (capacity[k] - packing.load[g]) / load if load > 0 else math.inf
            # The least-utilized admitting GPU is full only if all are: overload it.
            take = remaining if room >= remaining or room <= EPS else room
            packing.add(a, g, take, load)
            remaining -= take
            heapq.heappush(heaps[tier], (packing.load[g] / capacity[k], g))


def _check(inst: Instance, packing: _Packing) -> list[str]:
    """Validity of a packing, vectorised; one message per violated family."""
    problems: list[str] = []
    n = len(packing.kind)
    a = np.asarray(packing.adapters, dtype=np.int64)
    g = np.asarray(packing.gpus, dtype=np.int64)
    s = np.asarray(packing.shares, dtype=float)
    kind = np.asarray(packing.kind, dtype=np.int64)
    caps = np.array([k.capacity for k in inst.kinds])
    tiers = np.array([k.tier for k in inst.kinds])
    admitted = inst.ranks[a] <= tiers[kind[g]]
    bad_tier = int(np.count_nonzero(~admitted))
    if bad_tier:
        problems.append(f"tier: {bad_tier} placements put an adapter above its GPU's tier")
    # Recompute loads from the shares rather than trusting the running totals; placements
    # above the tier are reported as such, not as infinite load.
    load = np.bincount(g[admitted],
                       weights=s[admitted] * inst.load[a[admitted], kind[g[admitted]]],
                       minlength=n)
    over = load - caps[kind]
    hot = np.flatnonzero(~(over <= CAPACITY_SLACK))
    if len(hot):
        worst = int(hot[np.argmax(over[hot])])
        problems.append(f"compute: {len(hot)} GPUs exceed their capacity (worst: GPU {worst} "
                        f"at {load[worst]:.3f} of {caps[kind[worst]]:.3f})")
    routed = np.bincount(a, weights=s, minlength=inst.num_adapters)
    off = np.flatnonzero(np.abs(routed - 1.0) > ROUTING_SLACK)
    if len(off):
        problems.append(f"routing: {len(off)} adapters' shares do not sum to 1 "
                        f"(e.g. adapter {int(off[0])}: {routed[off[0]]:.6f})")
    pairs = np.unique(a * max(n, 1) + g)
    pa, pg = pairs // max(n, 1), pairs % max(n, 1)
    slots = np.bincount(pg, minlength=n)
    full = np.flatnonzero(slots > inst.slots)
    if len(full):
        worst = int(full[np.argmax(slots[full])])
        problems.append(f"slots: {len(full)} GPUs host more than {inst.slots} adapters "
                        f"(worst: GPU {worst} hosts {int(slots[worst])})")
    if math.isfinite(inst.cache_bytes):
        used = np.bincount(pg, weights=inst.bytes[pa], minlength=n)
        heavy = np.flatnonzero(used > inst.cache_bytes)
        if len(heavy):
            worst = int(heavy[np.argmax(used[heavy])])
            if inst.hosting_families == ("batch_slots",):
                problems.append(f"batch_slots: {len(heavy)} GPUs host more busy adapters than "
                                f"max_loras allows (worst: GPU {worst} at "
                                f"{used[worst] / inst.cache_bytes:.0%} of its limit)")
            else:
                problems.append(f"{'+'.join(inst.hosting_families) or 'memory'}: "
                                f"{len(heavy)} GPUs exceed the adapter cache (worst: GPU "
                                f"{worst} at {used[worst] / inst.cache_bytes:.0%} of it)")
    replicas = np.bincount(pa, minlength=inst.num_adapters)
    spread = np.flatnonzero(replicas > inst.max_replicas)
    if len(spread):
        worst = int(spread[np.argmax(replicas[spread])])
        problems.append(f"replicas: {len(spread)} adapters exceed max_replicas "
                        f"{inst.max_replicas} (worst: adapter {worst} on "
                        f"{int(replicas[worst])} GPUs)")
    used_types: dict[str, int] = {}
    for k in packing.kind:
        used_types[inst.kinds[k].gpu_type] = used_types.get(inst.kinds[k].gpu_type, 0) + 1
    for gpu_type, used_count in used_types.items():
        pool = inst.config.pool(gpu_type).count
        if used_count > pool:
            problems.append(f"pool: {used_count} {gpu_type} GPUs; the pool holds {pool}")
    return problems


def validity(inst: Instance, gpus: Sequence[OpenGPU]) -> list[str]:
    """Everything that makes an assignment invalid; empty when it is valid.

    Checks what :meth:`PlacementPlan.verify` checks, on the assignment itself: each GPU's
    load within ``capacity + 1e-9``, tier >= rank, adapters per GPU within ``inst.slots``,
    adapter bytes within ``inst.cache_bytes``, GPUs per adapter within
    ``inst.max_replicas``, GPUs per type within the pool, and shares summing to 1 per
    adapter. Loads are recomputed from the shares.

    Returns
    -------
    list of str
        One message per violated family, each starting with the family's name and a colon
        (``compute``, ``slots``, ``memory``, ``replicas``, ``pool``, ``tier``, ``routing``).
    """
    packing = _Packing(kind=[gpu.kind for gpu in gpus], load=[0.0] * len(gpus))
    for g, gpu in enumerate(gpus):
        for a, share in gpu.shares.items():
            packing.adapters.append(a)
            packing.gpus.append(g)
            packing.shares.append(share)
    return _check(inst, packing)


def _materialize(inst: Instance, packing: _Packing) -> list[OpenGPU]:
    gpus = [OpenGPU(kind=k) for k in packing.kind]
    for a, g, share in zip(packing.adapters, packing.gpus, packing.shares, strict=True):
        gpu = gpus[g]
        if a not in gpu.shares:
            gpu.shares[a] = 0.0
            gpu.bytes += float(inst.bytes[a])
        gpu.shares[a] += share
        gpu.load += share * float(inst.load[a, gpu.kind])
    return gpus


def loraserve_greedy(inst: Instance, num_gpus: int, fill: Fill = "capacity") -> list[OpenGPU]:
    """The LoRAServe paper's placement on a fleet of exactly ``num_gpus`` GPUs.

    A reconstruction from the paper's description (see the module docstring): per-rank
    budgets by Hamilton apportionment of demand, next-fit packing with splitting inside each
    rank group, leftovers to the least-utilized admitting GPU. Like the paper it ignores
    adapter slots, adapter memory and the replica cap; the result may violate them, and it
    overloads GPUs when ``num_gpus`` is too small. Check it with :func:`validity`. Relabelling
    against a previous plan is left to ``loraserve.models.migration.relabel``.

    Parameters
    ----------
    inst : Instance
    num_gpus : int
        Fleet size ``N``; every one of the ``N`` GPUs is returned, idle ones included.
    fill : {"capacity", "utilization"}
        How full next-fit packs a group's GPUs: to capacity (the paper) or to the group's
        utilization ``D_r / B_r`` (balanced); see the module docstring.

    Returns
    -------
    list of OpenGPU
        ``N`` GPUs, grouped by rank group (highest rank first); shares are fractions of each
        adapter's traffic, summing to 1 per adapter.
    """
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be at least 1, got {num_gpus}")
    prep = _Prepared.of(inst)
    return _materialize(inst, _pack(prep, num_gpus, fill))


def loraserve_greedy_min(inst: Instance, start: int | None = None,
                         fill: Fill = "capacity") -> tuple[list[OpenGPU], int]:
    """The smallest fleet on which :func:`loraserve_greedy` returns a valid plan.

    Tries ``start``, ``start + 1``, ``start + 2``, ``start + 4``, ... (capped at the pool
    size) until the plan passes :func:`validity`, then bisects between the last invalid and
    the first valid size. Validity need not be monotone in ``N`` (apportionment is not), so
    the result is the smallest valid size the search met, not necessarily the smallest that
    exists; sizes below ``start`` are never tried.

    Parameters
    ----------
    inst : Instance
    start : int, optional
        First fleet size to try; the caller's lower bound. Defaults to the total load in GPUs
        (each adapter on its best kind), rounded up.
    fill : {"capacity", "utilization"}
        See :func:`loraserve_greedy`.

    Returns
    -------
    (list of OpenGPU, int)
        The plan's GPUs (idle ones included) and the fleet size.

    Raises
    ------
    InfeasibleError
        When no fleet size up to the pool size gives a valid plan. ``binding`` names the
        family that still fails at the pool size; the paper's algorithm ignores slots and
        memory while packing, so ``slots`` or ``memory`` there means more GPUs would not
        have helped it, although another placement may exist.
    """
    inst.adapter_checks()
    prep = _Prepared.of(inst)
    pool = sum(prep.pool.values())
    if start is None:
        best = (inst.load / np.array(prep.capacity)).min(axis=1)
        start = math.ceil(float(best.sum()) - 1e-9)
    low = max(1, start)
    if low > pool:
        raise InfeasibleError(f"the lower bound of {low} GPUs exceeds the pools' {pool}", "pool")

    def attempt(n: int) -> tuple[_Packing, list[str]]:
        packing = _pack(prep, n, fill)
        problems = _check(inst, packing)
        logger.debug("loraserve-greedy on %d GPUs: %s", n, "; ".join(problems) or "valid")
        return packing, problems

    invalid = low - 1
    step = 0
    n = low
    while True:
        packing, problems = attempt(n)
        if not problems:
            break
        invalid = n
        if n >= pool:
            families = [p.split(":", 1)[0] for p in problems]
            binding = next(f for f in FAMILIES if f in families)
            ignored = (" (the paper's algorithm ignores adapter slots, LoRA batch slots and "
                       "adapter memory while packing)"
                       if binding in {"slots", "memory", "batch_slots", "memory+batch_slots"}
                       else "")
            raise InfeasibleError(
                f"the LoRAServe greedy finds no valid plan on up to {pool} GPUs{ignored}; "
                f"at {pool} GPUs: {'; '.join(problems)}", binding)
        n = min(pool, n + max(1, step))
        step = max(1, 2 * step)
    valid, best_packing = n, packing
    # Bisect (invalid, valid): keep the smallest valid size met.
    while valid - invalid > 1:
        mid = (invalid + valid) // 2
        packing, problems = attempt(mid)
        if problems:
            invalid = mid
        else:
            valid, best_packing = mid, packing
    logger.info("loraserve-greedy: %d GPUs (search started at %d)", valid, low)
    return _materialize(inst, best_packing), valid
