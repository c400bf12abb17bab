"""Whole adapters: bin packing by best-fit decreasing, then a pool search re-packed by CP-SAT.

Where adapters cannot split (``max_replicas == 1``) placement is vector bin packing: every
adapter goes whole to one GPU whose tier admits it, within the GPU's traffic row (time),
its slots (one per hosted adapter) and its hosting row (adapter memory and the folded
``batch_slots`` weights, :mod:`loraserve.solver.instance`). Plans that split where they must
are also plans of this kind once each hot adapter is cut into fixed *pieces* (an adapter
whose traffic takes ``s > 1`` GPUs on its best kind becomes ``floor(s)`` pieces that fill a
GPU each and one piece of the rest), so the
method also serves instances where most adapters are small and need not split.

**Construction.** Best-fit decreasing: items highest rank first, then by their weight (below),
each into the open GPU that admits it and is left with the least room, else onto a new GPU
of the kind that carries it cheapest.

**Pool search** (the *consistent neighbourhood* idea of the bin-packing literature, with
CP-SAT as the neighbourhood solver). With a plan of ``m`` GPUs in hand, the least filled GPU
is emptied and its items go to a *pool* of unplaced items: the search now holds ``m - 1``
GPUs and tries to empty the pool. Each step takes a few GPUs (the least filled and some at
random) together with pool items and asks CP-SAT, on a small work budget, for the packing of
those items onto those GPUs that leaves the least *weight* in the pool; an item's weight is
its lightest share of a GPU's time plus its share of the slots and of the hosting row, so a
fuller GPU, in every row at once, is a better one. The pool never gets heavier; CP-SAT's
choice among equally good packings moves the search along plateaus. After each step the
pool's items are tried on every GPU (best fit); when the pool is empty the plan has ``m - 1``
GPUs and the next GPU is emptied. The search stops at the lower bound or the time limit,
and returns the best complete plan.

On Falkenauer's triplet instances (three items fill each bin exactly) and on instances cut
from a known plan, ``benchmarks/known_optimum.py`` reports what it reaches.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from ortools.sat.python import cp_model

from loraserve.solver._stop import cpsat_solve
from loraserve.solver.greedy import OpenGPU, _lower_tiers, _State, plan_cost
from loraserve.solver.instance import EPS, InfeasibleError, Instance

logger = logging.getLogger(__name__)

#: Integer units of one GPU's traffic row and of one item's weight in the CP-SAT steps.
CAPACITY_UNITS = 10**9
WEIGHT_UNITS = 10**6
#: A hair of a capacity unit: loads that sum to capacity exactly stay feasible.
_ROUND_SLACK = 1e-6
#: GPUs per neighbourhood, pool items per GPU of it, and CP-SAT's work per step.
NEIGHBOURHOOD = 5
POOL_PER_GPU = 3
STEP_WORK = 0.1
#: Share of steps that are perturbed, and by how much (weights jittered by up to this
#: fraction; the pool may get this much of a GPU's weight heavier).
PERTURB = 0.3
NOISE = 0.05


@dataclass
class _Items:
    """What is packed: an adapter, or a fixed piece of a hot one's traffic."""

    adapter: np.ndarray  # adapter of each item
    fraction: np.ndarray  # share of the adapter's traffic the item carries
    share: np.ndarray  # items x kinds: part of a GPU's traffic row it takes (inf: barred)
    host: np.ndarray  # weight on the hosting row
    weight: np.ndarray  # scalar size: lightest share + slot share + hosting share

    @property
    def count(self) -> int:
        return len(self.adapter)


def items_of(inst: Instance) -> _Items:
    """Every adapter as one item; a hot one as pieces of one full GPU each and the rest."""
    capacity = np.array([k.capacity for k in inst.kinds])
    share = inst.load / capacity[None, :]
    lightest = np.where(np.isfinite(share), share, np.inf).min(axis=1)
    adapters: list[int] = []
    fractions: list[float] = []
    for a in range(inst.num_adapters):
        whole = float(lightest[a])
        if whole <= 1.0 + 1e-9:
            adapters.append(a)
            fractions.append(1.0)
            continue
        # A hot adapter: full GPUs of it on its best kind, and the rest as one more piece.
        full = math.floor(whole + 1e-9)
        rest = 1.0 - full / whole
        cut = [1.0 / whole] * full + ([rest] if rest > 1e-9 else [])
        adapters += [a] * len(cut)
        fractions += cut
    adapter = np.array(adapters, dtype=np.int64)
    fraction = np.array(fractions)
    item_share = share[adapter] * fraction[:, None]
    host = inst.bytes[adapter].astype(float)
    weight = np.where(np.isfinite(item_share), item_share, np.inf).min(axis=1) + 1.0 / inst.slots
    if math.isfinite(inst.cache_bytes):
        weight = weight + host / inst.cache_bytes
    return _Items(adapter, fraction, item_share, host, weight)


@dataclass
class _Bin:
    kind: int
    items: set[int] = field(default_factory=set)
    load: float = 0.0  # share of the traffic row used
    host: float = 0.0

    def fits(self, items: _Items, i: int, slots: int, cache: float) -> bool:
        s = items.share[i, self.kind]
        return bool(np.isfinite(s) and self.load + s <= 1.0 + EPS
                    and len(self.items) < slots and self.host + items.host[i] <= cache)

    def add(self, items: _Items, i: int) -> None:
        self.items.add(i)
        self.load += float(items.share[i, self.kind])
        self.host += float(items.host[i])

    def remove(self, items: _Items, i: int) -> None:
        self.items.discard(i)
        self.load -= float(items.share[i, self.kind])
        self.host -= float(items.host[i])

    def room(self, items: _Items, slots: int, cache: float) -> float:
        """Unused share of the bin in the weight's terms (smaller: fuller)."""
        used = sum(float(items.weight[i]) for i in self.items)
        total = 1.0 + 1.0 + (1.0 if math.isfinite(cache) else 0.0)
        return total - used


class _Packing:
    """Bins, the unplaced pool and the checks that keep every bin feasible."""

    def __init__(self, inst: Instance, items: _Items) -> None:
        self.inst = inst
        self.items = items
        self.bins: list[_Bin] = []
        self.pool: set[int] = set()
        self.pool_left = {p.gpu_type: p.count for p in inst.config.pools}

    def fits(self, b: int, i: int) -> bool:
        return self.bins[b].fits(self.items, i, self.inst.slots, self.inst.cache_bytes)

    def best_fit(self, i: int) -> int | None:
        """The admitting bin left with the least room after ``i`` (by the traffic row)."""
        best: tuple[float, int] | None = None
        for b, bin_ in enumerate(self.bins):
            if self.fits(b, i):
                left = 1.0 - bin_.load - float(self.items.share[i, bin_.kind])
                if best is None or left < best[0]:
                    best = (left, b)
        return None if best is None else best[1]

    def open_for(self, i: int) -> int | None:
        """A new bin of the kind that carries item ``i`` cheapest."""
        inst = self.inst
        best: tuple[float, int, int] | None = None
        for kind in inst.kinds:
            s = self.items.share[i, kind.index]
            if not np.isfinite(s) or s > 1.0 + EPS or self.pool_left[kind.gpu_type] <= 0:
                continue
            key = (kind.unit_cost * float(s), kind.tier, kind.index)
            if best is None or key < best:
                best = key
        if best is None:
            return None
        self.pool_left[inst.kinds[best[2]].gpu_type] -= 1
        self.bins.append(_Bin(best[2]))
        return len(self.bins) - 1

    def cost(self) -> float:
        return float(sum(self.inst.kinds[b.kind].unit_cost for b in self.bins))

    def insert_pool(self) -> None:
        """Best-fit the pool's items into the bins, heaviest first."""
        for i in sorted(self.pool, key=lambda i: -float(self.items.weight[i])):
            b = self.best_fit(i)
            if b is not None:
                self.bins[b].add(self.items, i)
                self.pool.discard(i)

    def empty_bin(self, b: int) -> None:
        """Move bin ``b``'s items to the pool and drop the bin."""
        bin_ = self.bins.pop(b)
        self.pool |= bin_.items
        self.pool_left[self.inst.kinds[bin_.kind].gpu_type] += 1

    def gpus(self) -> list[OpenGPU]:
        """The bins as a plan (pieces of one adapter on one GPU merged)."""
        inst, items = self.inst, self.items
        out: list[OpenGPU] = []
        for bin_ in self.bins:
            if not bin_.items:
                continue
            gpu = OpenGPU(kind=bin_.kind)
            for i in sorted(bin_.items):
                a = int(items.adapter[i])
                if a not in gpu.shares:
                    gpu.shares[a] = 0.0
                    gpu.bytes += float(inst.bytes[a])
                gpu.shares[a] += float(items.fraction[i])
            gpu.load = float(sum(w * inst.load[a, bin_.kind] for a, w in gpu.shares.items()))
            out.append(gpu)
        state = _State(inst, out)
        _lower_tiers(state)
        return state.gpus


def best_fit_decreasing(inst: Instance, items: _Items | None = None) -> _Packing:
    """Highest rank first, heaviest first, each item into the tightest admitting bin."""
    items = items or items_of(inst)
    packing = _Packing(inst, items)
    order = sorted(range(items.count), key=lambda i: (-int(inst.ranks[items.adapter[i]]),
                                                      -float(items.weight[i]), i))
    for i in order:
        b = packing.best_fit(i)
        if b is None:
            b = packing.open_for(i)
        if b is None:
            raise InfeasibleError("the pools ran out in best-fit decreasing", "pool")
        packing.bins[b].add(items, i)
    return packing


def _from_plan(inst: Instance, items: _Items, gpus: list[OpenGPU]) -> _Packing | None:
    """``gpus`` as a packing of ``items`` when it places every adapter whole (else None)."""
    if any(w < 1.0 - 1e-9 for gpu in gpus for w in gpu.shares.values()):
        return None
    first = {int(a): i for i, a in reversed(list(enumerate(items.adapter.tolist())))}
    if len(first) != items.count:
        return None  # some adapter was cut into pieces: the plan does not match them
    packing = _Packing(inst, items)
    for gpu in gpus:
        packing.bins.append(_Bin(gpu.kind))
        packing.pool_left[inst.kinds[gpu.kind].gpu_type] -= 1
        for a in gpu.shares:
            packing.bins[-1].add(items, first[a])
    return packing


class _Step:
    """One neighbourhood: re-pack some bins' items and pool items onto those bins."""

    def __init__(self, packing: _Packing, chosen: list[int], extra: list[int],
                 noise: dict[int, float] | None = None) -> None:
        self.packing = packing
        self.chosen = chosen
        inst, items = packing.inst, packing.items
        self.members = sorted({i for b in chosen for i in packing.bins[b].items} | set(extra))
        model = cp_model.CpModel()
        self.model = model
        cache = inst.cache_bytes
        # x[i, b]: item i goes to chosen bin b (else it stays in, or goes to, the pool).
        self.x: dict[tuple[int, int], cp_model.IntVar] = {}
        for i in self.members:
            for b in chosen:
                s = items.share[i, packing.bins[b].kind]
                if np.isfinite(s) and s <= 1.0 + EPS:
                    self.x[i, b] = model.new_bool_var("")
        for i in self.members:
            options = [self.x[i, b] for b in chosen if (i, b) in self.x]
            # Each item goes to one bin at most.
            if len(options) > 1:
                model.add_at_most_one(options)
        for b in chosen:
            kind = packing.bins[b].kind
            placed = [(i, self.x[i, b]) for i in self.members if (i, b) in self.x]
            # The traffic row, in whole capacity units rounded up: a packing CP-SAT accepts
            # fits.
            units = [math.ceil(float(items.share[i, kind]) * CAPACITY_UNITS - _ROUND_SLACK)
                     for i, _ in placed]
            model.add(cp_model.LinearExpr.weighted_sum([v for _, v in placed], units)
                      <= CAPACITY_UNITS)
            # Slots: one per hosted item.
            if len(placed) > inst.slots:
                model.add(cp_model.LinearExpr.sum([v for _, v in placed]) <= inst.slots)
            # The hosting row (adapter memory, batch slots), when it is limited.
            if math.isfinite(cache):
                need = [math.ceil(float(items.host[i])) for i, _ in placed]
                if sum(need) > cache:
                    model.add(cp_model.LinearExpr.weighted_sum([v for _, v in placed], need)
                              <= math.floor(cache))
        self.weights = {i: round(float(items.weight[i]) * WEIGHT_UNITS) for i in self.members}
        packed = cp_model.LinearExpr.weighted_sum(list(self.x.values()),
                                                  [self.weights[i] for i, _ in self.x])
        now = sum(self.weights[i] for b in chosen for i in packing.bins[b].items)
        if noise:
            # A perturbed step: the weights are jittered and the pool may get a little
            # heavier, so the search leaves a packing no exact step improves.
            model.add(packed >= now - round(NOISE * WEIGHT_UNITS))
            jittered = [round(self.weights[i] * (1.0 + noise.get(i, 0.0))) for i, _ in self.x]
            model.maximize(cp_model.LinearExpr.weighted_sum(list(self.x.values()), jittered))
        else:
            # The pool does not get heavier: at least what the chosen bins hold now.
            model.add(packed >= now)
            model.maximize(packed)
        for (i, b), var in self.x.items():
            model.add_hint(var, i in packing.bins[b].items)

    def solve(self, seed: int, time_limit: float, work: float) -> bool:
        """Solve and apply; whether the pool got lighter."""
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = seed
        solver.parameters.max_time_in_seconds = max(0.01, time_limit)
        solver.parameters.max_deterministic_time = work
        status = cpsat_solve(solver, self.model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return False
        packing, items = self.packing, self.packing.items
        before = sum(self.weights[i] for b in self.chosen for i in packing.bins[b].items)
        for b in self.chosen:
            for i in list(packing.bins[b].items):
                packing.bins[b].remove(items, i)
                packing.pool.add(i)
            packing.bins[b].load = packing.bins[b].host = 0.0  # no drift from removals
        after = 0
        for (i, b), var in self.x.items():
            if solver.boolean_value(var):
                packing.bins[b].add(items, i)
                packing.pool.discard(i)
                after += self.weights[i]
        return after > before


def improve_whole(
    inst: Instance,
    target: float,
    time_limit: float,
    start: list[OpenGPU] | None = None,
    seed: int = 0,
    report: Callable[[float], None] | None = None,
) -> list[OpenGPU] | None:
    """Pack ``inst``'s items on as few GPUs as the time allows; see the module notes.

    Parameters
    ----------
    inst : Instance
    target : float
        A lower bound: a plan that costs it ends the search.
    time_limit : float
        Seconds.
    start : list of OpenGPU, optional
        A plan of whole adapters to start from when it beats best-fit decreasing.
    seed : int
        Seeds the neighbourhoods; with the same wall-clock cut-off, repeatable.
    report : callable, optional
        Receives the cost of every better complete plan.

    Returns
    -------
    list of OpenGPU or None
        The best complete plan, or None when best-fit decreasing runs out of pools.
    """
    deadline = time.perf_counter() + time_limit
    rng = random.Random(seed)
    items = items_of(inst)
    try:
        packing = best_fit_decreasing(inst, items)
    except InfeasibleError as exc:
        logger.info("binpack: %s", exc)
        return None
    if start is not None:
        other = _from_plan(inst, items, start)
        if other is not None and other.cost() < packing.cost() - 1e-9:
            packing = other
    best = packing.gpus()
    best_cost = plan_cost(inst, best)
    logger.info("binpack: best-fit decreasing %g (target %g)", best_cost, target)
    steps = 0
    slots, cache = inst.slots, inst.cache_bytes
    while best_cost > target + 1e-9 and time.perf_counter() < deadline - 0.05:
        if not packing.pool:
            # A complete plan: keep it, then aim one GPU lower.
            gpus = packing.gpus()
            cost = plan_cost(inst, gpus)
            if cost < best_cost - 1e-9:
                best, best_cost = gpus, cost
                logger.info("binpack step %d: %g (target %g)", steps, cost, target)
                if report is not None:
                    report(cost)
                if cost <= target + 1e-9:
                    break
            if len(packing.bins) <= 1:
                break
            emptiest = min(range(len(packing.bins)),
                           key=lambda b: (-packing.bins[b].room(items, slots, cache), b))
            packing.empty_bin(emptiest)
            packing.insert_pool()
            continue
        steps += 1
        order = sorted(range(len(packing.bins)),
                       key=lambda b: -packing.bins[b].room(items, slots, cache))
        size = min(NEIGHBOURHOOD, len(order))
        roomy = order[: max(size, len(order) // 4)]
        chosen = set(rng.sample(roomy, min(len(roomy), max(1, size // 2))))
        others = [b for b in range(len(packing.bins)) if b not in chosen]
        chosen |= set(rng.sample(others, min(len(others), size - len(chosen))))
        pool = sorted(packing.pool)
        extra = pool if len(pool) <= POOL_PER_GPU * size else rng.sample(
            pool, POOL_PER_GPU * size)
        noise = None
        if rng.random() < PERTURB:
            noise = {i: rng.uniform(-NOISE, NOISE)
                     for i in {*extra, *(i for b in chosen for i in packing.bins[b].items)}}
        step = _Step(packing, sorted(chosen), extra, noise)
        step.solve(seed + steps, deadline - time.perf_counter(), STEP_WORK)
        packing.insert_pool()
    logger.info("binpack: %d steps, cost %g (target %g)", steps, best_cost, target)
    return best
