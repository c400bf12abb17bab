"""Remote adapter access: serving an adapter on a GPU that fetches it from a hosting peer.

With a ``topology`` (and ``remote_access`` on) a GPU may serve part of an adapter's traffic
without keeping the adapter: it fetches the weights from a GPU that hosts them, over the
widest path of the cluster graph. Such a *remote pair* ``(a, g)`` with source ``h``:

* needs ``h`` to host ``a`` and to reach ``g``; ``g``'s tier admits ``a``'s rank;
* puts ``rate(a, g) * bytes(a) * miss_ratio`` bytes per second on every link of the path
  (``rate(a, g)``: the adapter's request rate times the share routed to ``g``), and every
  link's planned traffic stays within ``max_link_utilization`` of its bandwidth;
* adds the fetch time (:meth:`~loraserve.profiles.CostModel.remote_fetch_ms`) to the TTFT of
  ``g``'s requests, so ``g``'s utilization stays under the limit that keeps the TTFT SLO with
  that extra wait (:meth:`~loraserve.profiles.CostModel.max_utilization_with`);
* makes ``g`` keep ``remote_slots`` adapter slots, each as large as its largest remote
  adapter, free in its adapter cache for the fetched weights.

**Miss ratio.** The planner takes the topology's ``miss_ratio`` as a constant, 1 by default:
every request of a remote pair is assumed to fetch. That is an upper bound on the traffic for
any cache and any popularity, and it keeps the traffic linear in the routed share, so the
greedy, the MILP and CP-SAT share one model and ``verify`` can check it without a cache
simulation. A GPU's LoRA cache does reuse fetched weights (the simulator models that); an
operator who measured the hit ratio can lower ``miss_ratio`` to it.

Algorithms. :func:`remote_greedy` (any size) runs two constructions and keeps the cheaper:
a top-down fill that prefers hosting where the adapter fits, then remote serving on open
GPUs, then a new replica, then a new GPU; and a *homes-then-traffic* packing that gives each
adapter one home on a fleet of one kind (balancing cache bytes and load) and spreads the
traffic its home cannot carry over the other GPUs remotely, at the fewest GPUs it succeeds
with. :class:`RemoteModel` is the exact model of small instances, one formulation emitted to
PuLP/HiGHS (``milp``) and to CP-SAT (``cpsat``, shares in multiples of ``1 / resolution``
and rows rounded so that its plans truly fit).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np
import pulp
from ortools.sat.python import cp_model

from loraserve.models import Config, GPUPlacement, PlacementPlan, SolveResult
from loraserve.models.topology import Topology
from loraserve.profiles import CostModel
from loraserve.solver._highs import quiet_banner, thread_pool
from loraserve.solver._stop import cpsat_solve, pulp_solve
from loraserve.solver.greedy import fewest_that_pack, greedy_placement, one_kind_for_all
from loraserve.solver.instance import EPS, InfeasibleError, Instance
from loraserve.solver.milp import _WarmStartHiGHS

logger = logging.getLogger(__name__)

#: A remote or replica split is taken only when it carries at least this share of what is
#: left of the adapter, or when nothing larger is possible.
MIN_SPLIT = 0.05
#: ``auto`` runs the exact models only up to this many remote options (adapter, GPU, tier,
#: source); ``milp`` and ``cpsat`` always run them.
EXACT_MAX_OPTIONS = 20_000
#: Traffic units of one adapter in the CP-SAT model.
CPSAT_RESOLUTION = 1000


# ---- the instance seen with a topology -----------------------------------------------------


class RemoteContext:
    """The placement instance plus the topology, fetch times and link capacities."""

    def __init__(self, inst: Instance) -> None:
        config = inst.config
        topo = config.network()
        if topo is None or config.topology is None:
            raise ValueError("remote access needs a config with a topology section")
        self.inst = inst
        self.config: Config = config
        self.model: CostModel = inst.cost_model
        self.topo: Topology = topo
        self.spec = config.topology
        self.slots_reserved = self.spec.remote_slots
        # Bytes per second on a path per unit of routed share of each adapter.
        rates = np.array([a.request_rate for a in config.adapters])
        self.rate_bytes = rates * inst.real_bytes * self.spec.miss_ratio
        self._limit: dict[tuple[int, int, str, str], float] = {}

    def physical(self, gpu_type: str) -> list[str]:
        """The pool's GPU ids in node order."""
        return self.topo.gpus[gpu_type]

    def fetch_ms(self, a: int, kind: int, source: str, target: str) -> float:
        """Planned fetch time of adapter ``a`` from ``source`` to ``target``."""
        adapter = self.config.adapters[a]
        bandwidth = self.topo.bandwidth(source, target)
        return self.model.remote_fetch_ms(adapter, self.inst.kinds[kind].gpu_type, bandwidth)

    def limit(self, a: int, kind: int, source: str, target: str) -> float:
        """Utilization limit of a kind-``kind`` GPU ``target`` serving ``a`` from ``source``."""
        key = (a, kind, source, target)
        found = self._limit.get(key)
        if found is None:
            k = self.inst.kinds[kind]
            if not self.topo.reachable(source, target):
                found = 0.0
            else:
                found = self.model.max_utilization_with(
                    k.gpu_type, k.tier, self.fetch_ms(a, kind, source, target))
                found = min(found, k.capacity)
            self._limit[key] = found
        return found


@dataclass
class RemoteGPU:
    """A GPU of a remote-enabled plan: hosted shares and remote shares with their sources."""

    kind: int
    name: str
    load: float = 0.0
    bytes: float = 0.0
    hosted: dict[int, float] = field(default_factory=dict)
    remote: dict[int, tuple[float, str]] = field(default_factory=dict)
    limit: float = math.inf
    reserve: float = 0.0

    def limit_or(self, capacity: float) -> float:
        """The GPU's utilization limit: its kind's ``capacity`` or lower after fetches."""
        return min(capacity, self.limit)

    def adapters(self) -> set[int]:
        """Every adapter the GPU serves."""
        return set(self.hosted) | set(self.remote)


def plan_cost(ctx: RemoteContext, gpus: list[RemoteGPU]) -> float:
    """Objective of a remote assignment: GPUs, or cost per hour when prices differ."""
    return float(sum(ctx.inst.kinds[g.kind].unit_cost for g in gpus if g.adapters()))


class _Fleet:
    """Mutable partial plan shared by the greedy constructions."""

    def __init__(self, ctx: RemoteContext) -> None:
        self.ctx = ctx
        self.inst = ctx.inst
        self.gpus: list[RemoteGPU] = []
        self.by_name: dict[str, RemoteGPU] = {}
        self.hosts: dict[int, list[str]] = {}
        self.link: dict[tuple[str, str], float] = {}
        self.free_ids = {t: list(reversed(ctx.physical(t))) for t in ctx.topo.gpus}

    # capacity ----------------------------------------------------------------------------
    def capacity(self, gpu: RemoteGPU) -> float:
        return min(self.inst.kinds[gpu.kind].capacity, gpu.limit)

    def room(self, a: int, gpu: RemoteGPU, limit: float | None = None) -> float:
        """Share of ``a``'s traffic that fits ``gpu``'s time (under ``limit`` if given)."""
        cap = self.capacity(gpu) if limit is None else min(self.capacity(gpu), limit)
        load = self.inst.load[a, gpu.kind]
        free = cap - gpu.load
        if free <= EPS:
            return 0.0
        return free / load if load > 0 else math.inf

    def can_host(self, a: int, gpu: RemoteGPU) -> bool:
        inst = self.inst
        if not inst.allowed(a, gpu.kind) or a in gpu.remote:
            return False
        if a in gpu.hosted:
            return True
        reserve = self.ctx.slots_reserved if gpu.remote else 0
        return (len(gpu.hosted) + reserve < inst.slots
                and gpu.bytes + inst.bytes[a] + reserve * gpu.reserve <= inst.cache_bytes
                and len(self.hosts.get(a, ())) < inst.max_replicas)

    def can_reserve(self, a: int, gpu: RemoteGPU) -> bool:
        """Whether ``gpu`` can keep room for fetching ``a`` beside what it hosts."""
        inst, reserve = self.inst, self.ctx.slots_reserved
        if not inst.allowed(a, gpu.kind) or a in gpu.hosted:
            return False
        largest = max(gpu.reserve, float(inst.bytes[a]))
        return (len(gpu.hosted) + reserve <= inst.slots
                and gpu.bytes + reserve * largest <= inst.cache_bytes)

    def link_room(self, a: int, source: str, target: str) -> float:
        """Share of ``a``'s traffic whose fetches fit every link of the path."""
        per_share = float(self.ctx.rate_bytes[a])
        if per_share <= 0:
            return math.inf
        topo = self.ctx.topo
        room = math.inf
        for edge in topo.edges(source, target):
            room = min(room, (topo.link_capacity(edge) - self.link.get(edge, 0.0)) / per_share)
        return max(0.0, room)

    def best_remote(self, a: int, gpu: RemoteGPU) -> tuple[float, str] | None:
        """The roomiest source for serving ``a`` remotely on ``gpu``: (room, source)."""
        if a in gpu.remote:
            source = gpu.remote[a][1]
            room = min(self.room(a, gpu), self.link_room(a, source, gpu.name))
            return (room, source) if room > EPS else None
        if not self.can_reserve(a, gpu):
            return None
        best: tuple[float, str] | None = None
        for source in self.hosts.get(a, ()):
            if source == gpu.name:
                continue
            limit = self.ctx.limit(a, gpu.kind, source, gpu.name)
            if limit <= gpu.load + EPS:
                continue
            room = min(self.room(a, gpu, limit), self.link_room(a, source, gpu.name))
            if room > EPS and (best is None or room > best[0]):
                best = (room, source)
        return best

    # changes -----------------------------------------------------------------------------
    def open(self, kind: int) -> RemoteGPU | None:
        gpu_type = self.inst.kinds[kind].gpu_type
        if not self.free_ids[gpu_type]:
            return None
        gpu = RemoteGPU(kind=kind, name=self.free_ids[gpu_type].pop())
        self.gpus.append(gpu)
        self.by_name[gpu.name] = gpu
        return gpu

    def host(self, a: int, gpu: RemoteGPU, share: float) -> None:
        if a not in gpu.hosted:
            gpu.hosted[a] = 0.0
            gpu.bytes += float(self.inst.bytes[a])
            self.hosts.setdefault(a, []).append(gpu.name)
        gpu.hosted[a] += share
        gpu.load += share * float(self.inst.load[a, gpu.kind])

    def serve_remote(self, a: int, gpu: RemoteGPU, source: str, share: float) -> None:
        old = gpu.remote.get(a, (0.0, source))[0]
        if a not in gpu.remote:
            gpu.limit = min(gpu.limit, self.ctx.limit(a, gpu.kind, source, gpu.name))
            gpu.reserve = max(gpu.reserve, float(self.inst.bytes[a]))
        gpu.remote[a] = (old + share, source)
        gpu.load += share * float(self.inst.load[a, gpu.kind])
        per_share = float(self.ctx.rate_bytes[a])
        for edge in self.ctx.topo.edges(source, gpu.name):
            self.link[edge] = self.link.get(edge, 0.0) + share * per_share

    def cheapest_kind(self, a: int) -> int | None:
        inst = self.inst
        best: tuple[float, int, int] | None = None
        for kind in inst.kinds:
            if not inst.allowed(a, kind.index) or not self.free_ids[kind.gpu_type]:
                continue
            key = (kind.unit_cost * inst.share_load(a, kind.index), kind.tier, kind.index)
            if best is None or key < best:
                best = key
        return None if best is None else best[2]


# ---- greedy --------------------------------------------------------------------------------


def _top_down(ctx: RemoteContext) -> _Fleet:
    """Highest rank first, hottest first: host, else serve remotely, else replicate or open."""
    inst = ctx.inst
    fleet = _Fleet(ctx)
    best_load = np.where(np.isfinite(inst.load), inst.load, -np.inf).max(axis=1)
    order = sorted(range(inst.num_adapters), key=lambda a: (-inst.ranks[a], -best_load[a], a))
    for a in order:
        remaining = 1.0
        while remaining > EPS:
            local = [g for g in fleet.gpus if fleet.can_host(a, g) and fleet.room(a, g) > EPS]
            whole = [g for g in local if fleet.room(a, g) >= remaining - EPS]
            if whole:
                pick = min(whole, key=lambda g: (a not in g.hosted, inst.kinds[g.kind].tier,
                                                 fleet.room(a, g)))
                fleet.host(a, pick, remaining)
                break
            if fleet.hosts.get(a):
                options = [(opt, g) for g in fleet.gpus
                           if (opt := fleet.best_remote(a, g)) is not None]
                if options:
                    (room, source), gpu = max(options, key=lambda o: (o[0][0], o[1].name))
                    if room >= min(remaining, MIN_SPLIT) - EPS:
                        share = min(remaining, room)
                        fleet.serve_remote(a, gpu, source, share)
                        remaining -= share
                        continue
            if local:
                gpu = max(local, key=lambda g: (fleet.room(a, g), g.name))
                replicas = len(fleet.hosts.get(a, ()))
                if a in gpu.hosted or replicas + 1 < inst.max_replicas:
                    share = min(remaining, fleet.room(a, gpu))
                    fleet.host(a, gpu, share)
                    remaining -= share
                    continue
            kind = fleet.cheapest_kind(a)
            fresh = fleet.open(kind) if kind is not None else None
            if fresh is None:
                raise InfeasibleError(f"the pools ran out while placing adapter "
                                      f"'{inst.config.adapters[a].id}'", "pool")
            remote = fleet.best_remote(a, fresh) if fleet.hosts.get(a) else None
            if remote is not None:
                share = min(remaining, remote[0])
                fleet.serve_remote(a, fresh, remote[1], share)
            elif fleet.can_host(a, fresh):
                share = min(remaining, fleet.room(a, fresh))
                fleet.host(a, fresh, share)
            else:
                raise InfeasibleError(f"adapter '{inst.config.adapters[a].id}' fits no new GPU",
                                      "memory")
            remaining -= share
    return fleet


def _homes_then_traffic(ctx: RemoteContext, kind: int, count: int) -> _Fleet | None:
    """One home per adapter on ``count`` kind-``kind`` GPUs, the rest of its traffic remote.

    Homes go hottest first to the GPU with the least load whose cache and slots still take
    the adapter; a home carries what its time allows; what is left is served remotely,
    hottest first, on the GPUs with the most room (their TTFT limit with the fetch, the
    path's links and room for the reserve in their cache permitting), or by another copy
    where no fetch can carry it. None when that fails.
    """
    inst = ctx.inst
    fleet = _Fleet(ctx)
    for _ in range(count):
        if fleet.open(kind) is None:
            return None
    if any(not inst.allowed(a, kind) for a in range(inst.num_adapters)):
        return None
    load = inst.load[:, kind]
    order = sorted(range(inst.num_adapters), key=lambda a: (-load[a], a))
    left = dict.fromkeys(order, 1.0)
    def fits(a: int, gpu: RemoteGPU) -> bool:
        # Homes pack the caches tightly; the GPUs that end up serving remote traffic are
        # those left with room for the reserve (the search over the count adds them).
        return (len(gpu.hosted) < inst.slots
                and gpu.bytes + inst.bytes[a] <= inst.cache_bytes)

    for a in order:
        choices = [g for g in fleet.gpus if fits(a, g)]
        if not choices:
            return None
        home = min(choices, key=lambda g: (g.load, g.bytes, g.name))
        share = min(1.0, fleet.room(a, home)) if load[a] > 0 else 1.0
        # A home always hosts (it is the source); it may carry little of the traffic.
        fleet.host(a, home, max(share, 0.0))
        left[a] -= share
    for a in order:
        remaining = left[a]
        while remaining > EPS:
            placed = _fetch_or_copy(fleet, a, remaining, MIN_SPLIT)
            if placed is None:
                return None
            remaining -= placed
    return fleet


def _fetch_or_copy(fleet: _Fleet, a: int, remaining: float, min_split: float) -> float | None:
    """Serve part of ``a``'s ``remaining`` traffic remotely, else from another copy.

    The fetch goes to the GPU with the most room for it; when that room is under
    ``min_split``, a new copy where a cache allows takes the share instead. Returns the
    share placed, or None when neither is possible.
    """
    options = [(opt, g) for g in fleet.gpus if (opt := fleet.best_remote(a, g)) is not None]
    if options:
        (room, source), gpu = max(options, key=lambda o: (o[0][0], o[1].name))
        if room >= min(remaining, min_split) - EPS:
            share = min(remaining, room)
            fleet.serve_remote(a, gpu, source, share)
            return share
    # The links or fetch times leave too little: another copy where the cache allows.
    copies = [g for g in fleet.gpus if fleet.can_host(a, g) and fleet.room(a, g) > EPS]
    if not copies:
        return None
    gpu = max(copies, key=lambda g: (fleet.room(a, g), g.name))
    share = min(remaining, fleet.room(a, gpu))
    fleet.host(a, gpu, share)
    return share


def _paired_remote(ctx: RemoteContext) -> _Fleet:
    """:func:`_homes_then_traffic` at the fewest GPUs it packs (gallop up, then bisect)."""
    inst = ctx.inst
    chosen = one_kind_for_all(inst) if math.isfinite(inst.cache_bytes) else None
    if chosen is None:
        raise InfeasibleError("homes-then-traffic needs one kind for all and a cache limit",
                              "memory")
    kind, start = chosen
    stop = kind.pool_count
    packed = fewest_that_pack(lambda count: _homes_then_traffic(ctx, kind.index, count),
                              min(stop, start), stop)
    if packed is None:
        raise InfeasibleError(f"homes-then-traffic packs no count up to the pool's {stop}", "pool")
    return packed[1]


def _fleet_of(ctx: RemoteContext, gpus: list[RemoteGPU]) -> _Fleet:
    """A fleet holding copies of ``gpus`` (hosts, link usage and free ids recomputed)."""
    fleet = _Fleet(ctx)
    used = {g.name for g in gpus}
    fleet.free_ids = {t: [i for i in ids if i not in used] for t, ids in fleet.free_ids.items()}
    for old in gpus:
        gpu = RemoteGPU(kind=old.kind, name=old.name, limit=old.limit, reserve=old.reserve)
        fleet.gpus.append(gpu)
        fleet.by_name[gpu.name] = gpu
        for a, w in old.hosted.items():
            fleet.host(a, gpu, w)
    for old in gpus:
        gpu = fleet.by_name[old.name]
        for a, (w, source) in old.remote.items():
            fleet.serve_remote(a, gpu, source, w)
    return fleet


def _place_share(fleet: _Fleet, a: int, share: float) -> bool:
    """Place ``share`` of ``a``'s traffic on the open GPUs: copies, fetches, new copies."""
    remaining = share
    while remaining > EPS:
        hosts = [fleet.by_name[n] for n in fleet.hosts.get(a, ()) if n in fleet.by_name]
        roomy = [g for g in hosts if fleet.room(a, g) > EPS]
        if roomy:
            gpu = max(roomy, key=lambda g: (fleet.room(a, g), g.name))
            take = min(remaining, fleet.room(a, gpu))
            fleet.host(a, gpu, take)
            remaining -= take
            continue
        placed = _fetch_or_copy(fleet, a, remaining, 0.0)
        if placed is None:
            return False
        remaining -= placed
    return True


#: Work budget of remote GPU elimination, in GPU visits (a count, not a clock).
ELIMINATION_WORK = 400_000


def _eliminate(ctx: RemoteContext, gpus: list[RemoteGPU],
               work: int = ELIMINATION_WORK) -> list[RemoteGPU]:
    """Empty lightly loaded GPUs into the others, serving their traffic remotely if need be.

    A victim's hosted adapters that are sources of remote pairs must keep a copy elsewhere;
    such a victim is skipped unless another GPU hosts each of them.
    """
    inst = ctx.inst
    improved = True
    while improved:
        improved = False
        order = sorted(gpus, key=lambda g: (g.load / inst.kinds[g.kind].capacity, g.bytes,
                                            g.name))
        for victim in order:
            work -= len(gpus) * (1 + len(victim.hosted) + len(victim.remote))
            if work < 0:
                return gpus
            sources = {src for g in gpus for _, (_, src) in g.remote.items()}
            needed = [a for a in victim.hosted
                      if victim.name in sources
                      and any(g.remote.get(a, (0, ""))[1] == victim.name for g in gpus)]
            if needed:
                continue
            fleet = _fleet_of(ctx, [g for g in gpus if g.name != victim.name])
            moves = [(a, w) for a, w in victim.hosted.items()]
            moves += [(a, w) for a, (w, _) in victim.remote.items()]
            moves.sort(key=lambda m: (-m[1] * float(inst.load[m[0], victim.kind]), m[0]))
            ok = True
            for a, w in moves:
                if not fleet.hosts.get(a) and not _place_share(fleet, a, 0.0):
                    ok = False
                    break
                if a not in fleet.hosts or not fleet.hosts[a]:
                    # The only copy left with the victim: a new home first.
                    homes = [g for g in fleet.gpus if fleet.can_host(a, g)]
                    if not homes:
                        ok = False
                        break
                    home = max(homes, key=lambda g: (fleet.room(a, g), g.name))
                    fleet.host(a, home, 0.0)
                if not _place_share(fleet, a, w):
                    ok = False
                    break
            if ok:
                gpus = [g for g in fleet.gpus if g.adapters()]
                improved = True
                break
    return gpus


def _convert_replicas(ctx: RemoteContext, gpus: list[RemoteGPU]) -> list[RemoteGPU]:
    """Turn extra copies of adapters into remote pairs where that frees cache bytes.

    On each GPU the copies of adapters hosted elsewhere too become fetches from another copy
    together (one reserve serves them all), when every fetch keeps the TTFT limit and the
    links; a GPU keeps its copies when that frees nothing.
    """
    inst = ctx.inst
    for name in [g.name for g in gpus]:
        fleet = _fleet_of(ctx, gpus)
        gpu = fleet.by_name[name]
        extra = [a for a in gpu.hosted if len(fleet.hosts.get(a, ())) >= 2
                 and not any(g.remote.get(a, (0.0, ""))[1] == name for g in fleet.gpus)]
        if len(extra) < 2:
            continue
        freed = sum(float(inst.bytes[a]) for a in extra)
        reserve = ctx.slots_reserved * max(float(inst.bytes[a]) for a in extra)
        if freed <= max(reserve, gpu.reserve * ctx.slots_reserved) + EPS:
            continue
        shares = {a: gpu.hosted.pop(a) for a in extra}
        for a, w in shares.items():
            gpu.bytes -= float(inst.bytes[a])
            gpu.load -= w * float(inst.load[a, gpu.kind])
            fleet.hosts[a].remove(name)
        ok = True
        for a, w in sorted(shares.items(), key=lambda kv: -kv[1]):
            option = fleet.best_remote(a, gpu)
            if option is None or option[0] < w - EPS:
                ok = False
                break
            fleet.serve_remote(a, gpu, option[1], w)
        if ok:
            gpus = [g for g in fleet.gpus if g.adapters()]
    return gpus


def _lower_tiers(ctx: RemoteContext, gpus: list[RemoteGPU]) -> None:
    """Move each GPU to the lowest tier of its type that admits and carries what it serves."""
    inst = ctx.inst
    for gpu in gpus:
        served = gpu.adapters()
        if not served:
            continue
        top = max(int(inst.ranks[a]) for a in served)
        current = inst.kinds[gpu.kind]
        options = sorted((k for k in inst.kinds
                          if k.gpu_type == current.gpu_type and top <= k.tier < current.tier),
                         key=lambda k: k.tier)
        for kind in options:
            load = sum(w * inst.load[a, kind.index] for a, w in gpu.hosted.items())
            load += sum(w * inst.load[a, kind.index] for a, (w, _) in gpu.remote.items())
            limit = min([kind.capacity] + [ctx.limit(a, kind.index, src, gpu.name)
                                           for a, (_, src) in gpu.remote.items()])
            if load <= limit + EPS:
                gpu.kind, gpu.load, gpu.limit = kind.index, float(load), limit
                break


def _from_replication(ctx: RemoteContext) -> _Fleet:
    """The replication-only greedy's plan, its GPUs given topology ids in node order."""
    inst = ctx.inst
    plan = greedy_placement(inst)
    fleet = _Fleet(ctx)
    # Hot adapters' copies next to each other: GPUs sharing adapters land on one node.
    for old in sorted(plan, key=lambda g: (inst.kinds[g.kind].gpu_type, -inst.kinds[g.kind].tier,
                                           sorted(g.shares)[:1])):
        gpu = fleet.open(old.kind)
        if gpu is None:
            raise InfeasibleError("the replication plan uses more GPUs than the pool", "pool")
        for a, w in old.shares.items():
            fleet.host(a, gpu, w)
    return fleet


def remote_greedy(ctx: RemoteContext) -> list[RemoteGPU]:
    """The cheapest of three constructions after remote GPU elimination and tier lowering.

    The constructions: the top-down fill, homes-then-traffic, and the replication-only
    greedy's plan. Elimination then empties lightly loaded GPUs into the others, serving
    what no copy has room for remotely (:func:`_eliminate`).

    Raises
    ------
    InfeasibleError
        When no construction places every adapter.
    """
    found: list[tuple[float, int, list[RemoteGPU]]] = []
    for index, construct in enumerate((_top_down, _paired_remote, _from_replication)):
        try:
            fleet = construct(ctx)
        except InfeasibleError as exc:
            logger.debug("remote construction %d: %s", index, exc)
            continue
        gpus = _convert_replicas(ctx, [g for g in fleet.gpus if g.adapters()])
        gpus = _eliminate(ctx, gpus)
        _lower_tiers(ctx, gpus)
        found.append((plan_cost(ctx, gpus), index, gpus))
    if not found:
        raise InfeasibleError("no remote-enabled construction placed every adapter", "pool")
    return min(found, key=lambda f: (f[0], f[1]))[2]


# ---- lower bound ---------------------------------------------------------------------------


def remote_lower_bound(inst: Instance) -> float:
    """A bound valid with remote access: work, bytes of one copy each, one slot each.

    Remote access removes replicas, not work: every adapter's traffic still takes its
    cheapest kind's time, every adapter is hosted at least once (its bytes and a slot), and
    a fetch only lowers a GPU's utilization limit.
    """
    costs = np.array([k.unit_cost for k in inst.kinds])
    caps = np.array([k.capacity for k in inst.kinds])
    work = float(np.min(inst.load / caps[None, :] * costs[None, :], axis=1).sum())
    cheapest = float(costs.min())
    bounds = [work, cheapest * inst.num_adapters / inst.slots]
    if math.isfinite(inst.cache_bytes):
        bounds.append(cheapest * float(inst.bytes.sum()) / inst.cache_bytes)
    value = max(bounds)
    return float(math.ceil(value - 1e-6)) if inst.uniform_cost else value


# ---- exact model ---------------------------------------------------------------------------


Row = tuple[dict[int, float], str, float, str]


class RemoteModel:
    """The exact remote-enabled placement model, emitted to HiGHS (PuLP) or CP-SAT.

    Candidates are the first ``min(pool count, floor(UB / unit_cost))`` GPUs of each pool in
    node order, each with one copy per kind of its type (at most one used). Variables, with
    ``p`` a GPU, ``k`` a kind, ``h`` a source GPU:

    * ``use[p,k]``: GPU ``p`` runs at kind ``k``;
    * ``host[a,p,k]``: it keeps adapter ``a`` (a slot and cache bytes); ``x[a,p,k]``: the
      share of ``a``'s traffic it serves from that copy;
    * ``y[a,p,k,h]``: it serves ``a`` fetched from ``h``; ``z[a,p,k,h]``: the share so served;
    * ``r[p,k]``: it serves anything remotely (and keeps the reserve for it).

    Only remote options whose fetch still leaves a positive TTFT limit exist.
    """

    def __init__(self, ctx: RemoteContext, upper_bound: float) -> None:
        self.ctx = ctx
        inst = ctx.inst
        self.names: list[str] = []
        self.binary: list[bool] = []
        self.rows: list[Row] = []
        self.cost: dict[int, float] = {}
        self.gpus: list[str] = []
        for pool in inst.config.pools:
            unit = min((k.unit_cost for k in inst.kinds if k.gpu_type == pool.gpu_type),
                       default=1.0)
            count = pool.count
            if math.isfinite(upper_bound):
                count = min(count, math.floor(upper_bound / unit + 1e-9))
            self.gpus += ctx.physical(pool.gpu_type)[:max(0, count)]
        # The candidates are the whole pools: the model's bound holds for the real problem.
        self.complete = all(len([g for g in self.gpus if g in ctx.physical(p.gpu_type)])
                            == p.count for p in inst.config.pools)
        self.type_of = {g: next(t for t, ids in ctx.topo.gpus.items() if g in ids)
                        for g in self.gpus}
        self._variables()
        self._rows()

    def _var(self, name: str, binary: bool) -> int:
        self.names.append(name)
        self.binary.append(binary)
        return len(self.names) - 1

    def _variables(self) -> None:
        ctx, inst = self.ctx, self.ctx.inst
        self.use: dict[tuple[int, int], int] = {}
        self.host: dict[tuple[int, int, int], int] = {}
        self.x: dict[tuple[int, int, int], int] = {}
        self.y: dict[tuple[int, int, int, int], int] = {}
        self.z: dict[tuple[int, int, int, int], int] = {}
        self.r: dict[tuple[int, int], int] = {}
        self.kinds_of: dict[int, list[int]] = {}
        for p, gpu in enumerate(self.gpus):
            kinds = [k.index for k in inst.kinds if k.gpu_type == self.type_of[gpu]]
            self.kinds_of[p] = kinds
            for k in kinds:
                self.use[p, k] = self._var(f"use_{p}_{k}", True)
                self.cost[self.use[p, k]] = inst.kinds[k].unit_cost
                for a in range(inst.num_adapters):
                    if inst.allowed(a, k):
                        self.host[a, p, k] = self._var(f"host_{a}_{p}_{k}", True)
                        self.x[a, p, k] = self._var(f"x_{a}_{p}_{k}", False)
        for p, gpu in enumerate(self.gpus):
            for k in self.kinds_of[p]:
                for a in range(inst.num_adapters):
                    if not inst.allowed(a, k):
                        continue
                    for h, source in enumerate(self.gpus):
                        if h == p or ctx.limit(a, k, source, gpu) <= EPS:
                            continue
                        self.y[a, p, k, h] = self._var(f"y_{a}_{p}_{k}_{h}", True)
                        self.z[a, p, k, h] = self._var(f"z_{a}_{p}_{k}_{h}", False)
                        if (p, k) not in self.r:
                            self.r[p, k] = self._var(f"r_{p}_{k}", True)

    @property
    def options(self) -> int:
        """Number of remote options ``(a, p, k, h)``."""
        return len(self.y)

    def _add(self, coefs: dict[int, float], sense: str, rhs: float, name: str) -> None:
        # Solver names allow no spaces or brackets; keys print as tuples.
        clean = "".join(ch if ch.isalnum() else "_" for ch in name)
        self.rows.append((coefs, sense, rhs, f"{clean}_{len(self.rows)}"))

    def _rows(self) -> None:
        ctx, inst = self.ctx, self.ctx.inst
        n = inst.num_adapters
        by_pk: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for a, p, k, h in self.y:
            by_pk.setdefault((p, k), []).append((a, h))
        # Each GPU runs at one kind at most.
        for p, kinds in self.kinds_of.items():
            if len(kinds) > 1:
                self._add({self.use[p, k]: 1.0 for k in kinds}, "<=", 1.0, f"one_kind_{p}")
        # All of each adapter's traffic is served somewhere, hosted or fetched.
        for a in range(n):
            coefs = {v: 1.0 for (b, _, _), v in self.x.items() if b == a}
            coefs.update({v: 1.0 for (b, _, _, _), v in self.z.items() if b == a})
            self._add(coefs, "==", 1.0, f"route_{a}")
        # Hosted traffic needs the copy; a copy needs its GPU in use.
        for key, v in self.host.items():
            self._add({self.x[key]: 1.0, v: -1.0}, "<=", 0.0, f"hosted_{key}")
            self._add({v: 1.0, self.use[key[1], key[2]]: -1.0}, "<=", 0.0, f"used_{key}")
        hosts_of: dict[tuple[int, int], list[int]] = {}
        for (a, p, _k), v in self.host.items():
            hosts_of.setdefault((a, p), []).append(v)
        for option, v in self.y.items():
            a, p, k, h = option
            # Fetched traffic needs the option chosen, and the source must host the adapter.
            self._add({self.z[option]: 1.0, v: -1.0}, "<=", 0.0, f"fetched_{option}")
            source = {u: -1.0 for u in hosts_of.get((a, h), [])}
            self._add({v: 1.0, **source}, "<=", 0.0, f"source_{option}")
            self._add({v: 1.0, self.r[p, k]: -1.0}, "<=", 0.0, f"any_remote_{option}")
        # A pair is hosted or fetched from one source, and only on a used GPU.
        for (p, k), pairs in by_pk.items():
            self._add({self.r[p, k]: 1.0, self.use[p, k]: -1.0}, "<=", 0.0, f"r_used_{p}_{k}")
            for a in {a for a, _ in pairs}:
                coefs = {self.y[a, p, k, h]: 1.0 for b, h in pairs if b == a}
                if (a, p, k) in self.host:
                    coefs[self.host[a, p, k]] = 1.0
                coefs[self.use[p, k]] = -1.0
                self._add(coefs, "<=", 0.0, f"one_mode_{a}_{p}_{k}")
        for (p, k), use in self.use.items():
            kind = inst.kinds[k]
            load: dict[int, float] = {}
            for a in range(n):
                if (a, p, k) in self.x:
                    load[self.x[a, p, k]] = float(inst.load[a, k])
            for a, h in by_pk.get((p, k), []):
                load[self.z[a, p, k, h]] = float(inst.load[a, k])
            # Load priced at the kind stays under the utilization that keeps the SLO ...
            self._add({**load, use: -kind.capacity}, "<=", 0.0, f"compute_{p}_{k}")
            # ... and under the lower limit a fetch leaves, for every option chosen.
            for a, h in by_pk.get((p, k), []):
                limit = ctx.limit(a, k, self.gpus[h], self.gpus[p])
                if limit < kind.capacity - 1e-12:
                    self._add({**load, self.y[a, p, k, h]: kind.capacity - limit,
                               use: -kind.capacity}, "<=", 0.0, f"ttft_{a}_{p}_{k}_{h}")
            hosted = {self.host[a, p, k]: 1.0 for a in range(n) if (a, p, k) in self.host}
            reserve = {self.r[p, k]: float(ctx.slots_reserved)} if (p, k) in self.r else {}
            # Hosted adapters and the reserve for fetched ones fit the slots ...
            self._add({**hosted, **reserve, use: -float(inst.slots)}, "<=", 0.0,
                      f"slots_{p}_{k}")
            if math.isfinite(inst.cache_bytes):
                gib = 2.0**30
                used = {self.host[a, p, k]: float(inst.bytes[a]) / gib
                        for a in range(n) if (a, p, k) in self.host}
                cache = inst.cache_bytes / gib
                # ... and the cache, with room for the largest fetched adapter.
                self._add({**used, use: -cache}, "<=", 0.0, f"memory_{p}_{k}")
                for a in {a for a, _ in by_pk.get((p, k), [])}:
                    extra = {self.y[a, p, k, h]: ctx.slots_reserved * float(inst.bytes[a]) / gib
                             for b, h in by_pk[(p, k)] if b == a}
                    self._add({**used, **extra, use: -cache}, "<=", 0.0,
                              f"memory_{a}_{p}_{k}")
        # An adapter is hosted on at most max_replicas GPUs.
        for a in range(n):
            hosts = {v: 1.0 for (b, _, _), v in self.host.items() if b == a}
            if len(hosts) > inst.max_replicas:
                self._add(hosts, "<=", float(inst.max_replicas), f"replicas_{a}")
        # Fetch traffic fits every link it crosses.
        per_edge: dict[tuple[str, str], dict[int, float]] = {}
        for (a, p, _k, h), v in self.z.items():
            for edge in ctx.topo.edges(self.gpus[h], self.gpus[p]):
                per_edge.setdefault(edge, {})[v] = float(ctx.rate_bytes[a])
        for edge, coefs in per_edge.items():
            capacity = ctx.topo.link_capacity(edge)
            if sum(coefs.values()) > capacity:
                scale = 1e-9  # GB/s keeps the row's numbers near 1
                self._add({v: c * scale for v, c in coefs.items()}, "<=", capacity * scale,
                          f"link_{edge[0]}_{edge[1]}")

    # ---- warm start and extraction -------------------------------------------------------
    def values_of(self, gpus: list[RemoteGPU]) -> dict[int, float] | None:
        """Variable values of an assignment; None when it uses a GPU the model lacks."""
        index = {g: p for p, g in enumerate(self.gpus)}
        values: dict[int, float] = {}
        for gpu in gpus:
            p = index.get(gpu.name)
            if p is None:
                return None
            k = gpu.kind
            values[self.use[p, k]] = 1.0
            for a, w in gpu.hosted.items():
                values[self.host[a, p, k]] = 1.0
                values[self.x[a, p, k]] = w
            for a, (w, source) in gpu.remote.items():
                h = index.get(source)
                if h is None or (a, p, k, h) not in self.y:
                    return None
                values[self.y[a, p, k, h]] = 1.0
                values[self.z[a, p, k, h]] = w
                values[self.r[p, k]] = 1.0
        return values

    def extract(self, values: list[float]) -> list[RemoteGPU]:
        """The assignment of a solution (shares below ``EPS`` dropped)."""
        inst = self.ctx.inst
        gpus: dict[tuple[int, int], RemoteGPU] = {}
        for (p, k), v in self.use.items():
            if values[v] > 0.5:
                gpus[p, k] = RemoteGPU(kind=k, name=self.gpus[p])
        for (a, p, k), v in self.host.items():
            if values[v] > 0.5 and (p, k) in gpus:
                # A copy with no traffic of its own still counts: it may be a source.
                w = max(0.0, values[self.x[a, p, k]])
                gpu = gpus[p, k]
                gpu.hosted[a] = min(1.0, w) if w > EPS else 0.0
                gpu.bytes += float(inst.bytes[a])
                gpu.load += gpu.hosted[a] * float(inst.load[a, k])
        for (a, p, k, h), v in self.z.items():
            w = values[v]
            if w > EPS and (p, k) in gpus:
                gpu = gpus[p, k]
                gpu.remote[a] = (min(1.0, w), self.gpus[h])
                gpu.load += w * float(inst.load[a, k])
        return [g for g in gpus.values() if g.adapters()]

    # ---- backends ------------------------------------------------------------------------
    def solve_milp(self, time_limit: float, start: list[RemoteGPU] | None, seed: int,
                   threads: int, integral: bool) -> tuple[list[RemoteGPU] | None, float, bool]:
        """Solve with HiGHS; return (assignment, bound, proven optimal)."""
        problem = pulp.LpProblem("loraserve_remote", pulp.LpMinimize)
        variables = [problem.add_variable(name, cat="Binary") if binary
                     else problem.add_variable(name, lowBound=0, upBound=1)
                     for name, binary in zip(self.names, self.binary, strict=True)]
        problem += pulp.lpSum(c * variables[v] for v, c in self.cost.items())
        for coefs, sense, rhs, name in self.rows:
            expr = pulp.lpSum(c * variables[v] for v, c in coefs.items())
            problem += (expr == rhs if sense == "==" else expr <= rhs, name)
        # No warm start here: handing HiGHS 1.16 a greedy solution of this model made it stop
        # at that solution's cost with a dual bound below it and an "optimal" status (a
        # 3-GPU optimum reported as 4). The greedy's cost caps the candidates instead.
        del start
        options: dict[str, Any] = {"random_seed": seed, "mip_rel_gap": 1e-6}
        if integral:
            options["mip_abs_gap"] = 1.0 - 1e-6
        solver = _WarmStartHiGHS(start={}, options=options, msg=False,
                                 timeLimit=max(0.1, time_limit), threads=threads)
        with thread_pool(threads):
            pulp_solve(problem, solver)
        highs = problem.solverModel
        status = highs.getModelStatus()
        info = highs.getInfo()
        if status == highspy.HighsModelStatus.kInfeasible:
            return None, math.inf, False
        bound = float(info.mip_dual_bound)
        if info.primal_solution_status != 2:
            return None, bound, False
        values = [float(v.value() or 0.0) for v in variables]
        return (self.extract(values), bound,
                status == highspy.HighsModelStatus.kOptimal)

    def solve_cpsat(self, time_limit: float, start: list[RemoteGPU] | None, seed: int,
                    threads: int, resolution: int = CPSAT_RESOLUTION,
                    ) -> tuple[list[RemoteGPU] | None, float, bool]:
        """Solve with CP-SAT (shares in units of ``1 / resolution``); bound is ``-inf``.

        Every ``<=`` row is scaled and its coefficients rounded up and its right side down,
        so any integer solution satisfies the real row (all variables are non-negative).
        """
        model = cp_model.CpModel()
        variables = [model.new_bool_var(name) if binary else model.new_int_var(0, resolution,
                                                                              name)
                     for name, binary in zip(self.names, self.binary, strict=True)]

        def per_unit(v: int, c: float) -> float:
            return c if self.binary[v] else c / resolution

        for coefs, sense, rhs, _name in self.rows:
            if sense == "==":
                # Route rows: shares sum to one, i.e. units to the resolution.
                model.add(sum(variables[v] for v in coefs) == resolution)
                continue
            scaled = {v: per_unit(v, c) for v, c in coefs.items()}
            largest = max([abs(c) for c in scaled.values()] + [abs(rhs), 1e-12])
            factor = 1e9 / largest
            ints = {v: math.ceil(c * factor - 1e-9) for v, c in scaled.items()}
            model.add(sum(c * variables[v] for v, c in ints.items() if c)
                      <= math.floor(rhs * factor + 1e-9))
        costs = {v: round(c * 1000) for v, c in self.cost.items()}
        model.minimize(sum(c * variables[v] for v, c in costs.items()))
        hint = self.values_of(start) if start else None
        if hint:
            for v, var in enumerate(variables):
                value = hint.get(v, 0.0)
                model.add_hint(var, round(value) if self.binary[v] else
                               round(value * resolution))
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(0.1, time_limit)
        solver.parameters.random_seed = seed
        solver.parameters.num_workers = max(1, threads)
        # As in the replication model: several workers give repeatable plans only when their
        # portfolio runs on a fixed schedule.
        solver.parameters.interleave_search = threads > 1
        status = cpsat_solve(solver, model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None, -math.inf, False
        values = [float(solver.value(var)) if self.binary[v]
                  else solver.value(var) / resolution for v, var in enumerate(variables)]
        return self.extract(values), -math.inf, False


# ---- plan ----------------------------------------------------------------------------------


def build_remote_plan(ctx: RemoteContext, gpus: list[RemoteGPU]) -> PlacementPlan:
    """Name-stable plan of a remote assignment: GPU ids are their positions in the topology."""
    inst, model = ctx.inst, ctx.model
    adapters = inst.config.adapters
    placements: list[GPUPlacement] = []
    routes: dict[str, dict[str, float]] = {a.id: {} for a in adapters}
    remote: dict[str, dict[str, str]] = {}
    for gpu in gpus:
        kind = inst.kinds[gpu.kind]
        shares = [(adapters[a], w) for a, w in gpu.hosted.items()]
        shares += [(adapters[a], w) for a, (w, _) in gpu.remote.items()]
        prediction = model.predict(kind.gpu_type, kind.tier, shares)
        fetch = max((ctx.fetch_ms(a, gpu.kind, src, gpu.name)
                     for a, (_, src) in gpu.remote.items()), default=0.0)
        placements.append(GPUPlacement(
            gpu_id=gpu.name, gpu_type=kind.gpu_type, tier=kind.tier,
            adapters=[adapters[a].id for a in gpu.hosted],
            utilization=round(prediction.utilization, 6),
            predicted_tpot_ms=round(prediction.tpot_ms, 3),
            predicted_ttft_ms=round(prediction.ttft_ms + fetch, 3),
            adapter_memory_gib=round(sum(inst.real_bytes[a] for a in gpu.hosted) / 2**30, 4),
        ))
        for a, w in gpu.hosted.items():
            if w > EPS:
                routes[adapters[a].id][gpu.name] = w
        for a, (w, src) in gpu.remote.items():
            if w > EPS:
                routes[adapters[a].id][gpu.name] = w
                remote.setdefault(adapters[a].id, {})[gpu.name] = src
    for adapter_id, split in routes.items():
        total = sum(split.values())
        routes[adapter_id] = {g: w / total for g, w in split.items()} if total > 0 else split
    plan = PlacementPlan(base_model=inst.config.base_model.name, gpus=placements, routes=routes,
                         remote=remote)
    return plan.normalized()


# ---- entry point ---------------------------------------------------------------------------


def _greedy_with_room(ctx: RemoteContext, config: Config) -> list[RemoteGPU] | None:
    """The remote greedy on pools twice as large, kept if it fits the real ones.

    The constructions open GPUs freely and elimination empties many of them again; with the
    real pool they can run out before elimination starts. The GPUs of the result are renamed
    onto the real pool's first ids in order (neighbours stay neighbours) and the plan is
    kept only if it verifies against the real topology.
    """
    pools = tuple(p.model_copy(update={"count": 2 * p.count}) for p in config.pools)
    spec = config.topology
    if spec is None:
        return None
    bigger = config.model_copy(update={
        "pools": pools, "topology": spec.model_copy(update={"nodes": None})})
    try:
        big_ctx = RemoteContext(Instance.build(bigger, ctx.model))
        found = remote_greedy(big_ctx)
    except InfeasibleError:
        return None
    names: dict[str, str] = {}
    for gpu_type in ctx.topo.gpus:
        mine = sorted((g.name for g in found
                       if ctx.inst.kinds[g.kind].gpu_type == gpu_type), key=_natural_index)
        real = ctx.physical(gpu_type)
        if len(mine) > len(real):
            return None
        names.update(zip(mine, real, strict=False))
    renamed = [RemoteGPU(kind=g.kind, name=names[g.name], load=g.load, bytes=g.bytes,
                         hosted=dict(g.hosted),
                         remote={a: (w, names[src]) for a, (w, src) in g.remote.items()},
                         limit=g.limit, reserve=g.reserve) for g in found]
    if build_remote_plan(ctx, renamed).verify(config, ctx.model):
        return None
    return renamed


def _natural_index(name: str) -> int:
    tail = name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1


def solve_remote(
    config: Config,
    solver: str,
    time_limit: float,
    seed: int,
    threads: int,
    cost_model: CostModel | None,
    replication: Callable[[Config], SolveResult],
) -> SolveResult:
    """Plan with remote access allowed (called by :func:`loraserve.solver.solve`).

    The replication-only plan (``replication``, the usual path on the config without its
    topology) and the remote greedy both run; the cheaper is kept (replication on a tie, as
    it puts nothing on the links). ``milp`` and ``cpsat``, and ``auto`` on instances with at
    most :data:`EXACT_MAX_OPTIONS` remote options, then run the exact remote model
    warm-started from the best plan.
    """
    quiet_banner()
    started = time.perf_counter()
    deadline = started + time_limit
    inst = Instance.build(config, cost_model)
    base = replication(config.without_remote())
    if not inst.kinds:
        return base
    ctx = RemoteContext(inst)
    bound = remote_lower_bound(inst)
    best_plan = base.plan if base.plan is not None else None
    best_cost = base.objective if base.objective is not None else math.inf
    name = base.solver
    gpus: list[RemoteGPU] | None = None
    message = "replication only"
    try:
        gpus = remote_greedy(ctx)
    except InfeasibleError as exc:
        logger.info("remote greedy found no plan: %s", exc)
    if gpus is None or plan_cost(ctx, gpus) > bound + 1e-9:
        roomy = _greedy_with_room(ctx, config)
        if roomy is not None and (gpus is None or plan_cost(ctx, roomy) < plan_cost(ctx, gpus)):
            gpus = roomy
    if gpus is not None and plan_cost(ctx, gpus) < best_cost - 1e-9:
        best_cost, name, message = plan_cost(ctx, gpus), "remote-greedy", "remote greedy"
        best_plan = build_remote_plan(ctx, gpus)
    proven = best_plan is not None and best_cost <= bound + 1e-9
    exact_bound = -math.inf
    candidates = sum(min(p.count, best_cost) for p in config.pools)
    estimate = inst.num_adapters * candidates * candidates * max(1, len(config.serving.tiers))
    small = estimate <= EXACT_MAX_OPTIONS
    if not proven and (solver in ("milp", "cpsat") or (solver == "auto" and small)):
        model = RemoteModel(ctx, best_cost)
        if solver != "auto" or model.options <= EXACT_MAX_OPTIONS:
            backend = "cpsat" if solver == "cpsat" else "milp"
            remaining = max(0.5, deadline - time.perf_counter())
            start = gpus if gpus is not None and plan_cost(ctx, gpus) <= best_cost else None
            if backend == "milp":
                found, exact_bound, optimal = model.solve_milp(
                    remaining, start, seed, threads, inst.uniform_cost)
            else:
                found, exact_bound, optimal = model.solve_cpsat(remaining, start, seed, threads)
            if not model.complete:
                exact_bound = -math.inf  # candidates cut to the first GPUs: no valid bound
            if found:
                _lower_tiers(ctx, found)
                cost = plan_cost(ctx, found)
                if cost < best_cost - 1e-9:
                    best_cost, name = cost, backend
                    best_plan = build_remote_plan(ctx, found)
                    message = f"remote {backend}"
            proven = proven or (optimal and model.complete)
            if math.isfinite(exact_bound):
                bound = max(bound, math.ceil(exact_bound - 1e-6) if inst.uniform_cost
                            else exact_bound)
    seconds = time.perf_counter() - started
    if best_plan is None:
        return SolveResult(status=base.status if base.status == "infeasible" else "unknown",
                           lower_bound=bound, seconds=seconds, solver=name,
                           message=f"no plan with or without remote access; {base.message}",
                           binding=base.binding)
    problems = best_plan.verify(config, inst.cost_model)
    if problems:
        raise RuntimeError(f"{name} produced a plan that fails verify: {problems[0]}")
    bound = min(bound, best_cost)
    proven = proven or best_cost <= bound + 1e-9
    pairs = len(best_plan.remote_pairs())
    return SolveResult(
        status="optimal" if proven else "feasible",
        plan=best_plan,
        objective=round(best_cost, 6),
        lower_bound=round(bound, 6),
        gap=0.0 if best_cost <= 0 else max(0.0, (best_cost - bound) / best_cost),
        seconds=seconds,
        solver=name,
        binding=base.binding,
        message=f"{message}: {pairs} remote pairs; replication only: "
                f"{base.objective if base.objective is not None else base.status}",
    )
