"""Constructive placement: top-down fill by rank, then tier lowering and GPU elimination.

Adapters are placed highest rank first and, within a rank, hottest first. Each adapter goes
to an open GPU whose tier admits it, preferring the lowest such tier (less padding) and the
tightest fit; when none can take all of its remaining traffic it fills the roomiest one and
splits, or opens a GPU of the most cost-effective kind at its own rank. Slots, adapter cache
bytes, replicas and pool sizes are respected throughout. Afterwards every GPU drops to the
lowest usable tier that admits what it hosts, and lightly loaded GPUs are emptied into the
others where everything still fits.

Where the adapter cache binds, grouping by rank strands compute: top-tier GPUs whose caches
hold a few cold high-rank adapters sit idle while hot low-rank traffic needs GPUs of its own.
A further construction pairs adapters across ranks by busy time per byte instead
(:func:`_pack_paired`); on the memory-bound trace instances of ``benchmarks/binding.py`` it
takes 1,000 adapters from 79 GPUs to 75 against a bound of 72.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from loraserve.solver.instance import EPS, InfeasibleError, Instance, Kind

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: A split onto an open GPU is taken only if it carries at least this share of what remains;
#: smaller splits cost a slot for little traffic.
MIN_SPLIT = 0.1


@dataclass
class OpenGPU:
    """A GPU in a partial plan: its kind, load and traffic shares per adapter.

    ``name`` is the id of the running GPU this one continues when re-planning from a current
    plan; fresh GPUs have none and get ids when the plan is built.
    """

    kind: int
    load: float = 0.0
    bytes: float = 0.0
    shares: dict[int, float] = field(default_factory=dict)
    name: str | None = None

    def copy(self) -> OpenGPU:
        """An independent copy (trial moves must not touch the plan they start from)."""
        return OpenGPU(self.kind, self.load, self.bytes, dict(self.shares), self.name)


def plan_cost(inst: Instance, gpus: list[OpenGPU]) -> float:
    """Objective value of an assignment: GPUs, or cost per hour when prices differ."""
    return float(sum(inst.kinds[g.kind].unit_cost for g in gpus))


class _State:
    def __init__(self, inst: Instance, gpus: list[OpenGPU] | None = None) -> None:
        self.inst = inst
        self.gpus: list[OpenGPU] = gpus if gpus is not None else []
        self.pool_left = {p.gpu_type: p.count for p in inst.config.pools}
        self.hosts: dict[int, set[int]] = {}
        for g, gpu in enumerate(self.gpus):
            self.pool_left[inst.kinds[gpu.kind].gpu_type] -= 1
            for a in gpu.shares:
                self.hosts.setdefault(a, set()).add(g)

    def free(self, g: int) -> float:
        gpu = self.gpus[g]
        return self.inst.kinds[gpu.kind].capacity - gpu.load

    def room(self, g: int, a: int) -> float:
        """Share of adapter ``a``'s traffic that still fits on GPU ``g``."""
        load = self.inst.load[a, self.gpus[g].kind]
        return self.free(g) / load if load > 0 else (math.inf if self.free(g) > EPS else 0.0)

    def can_host(self, a: int, g: int) -> bool:
        inst, gpu = self.inst, self.gpus[g]
        if not inst.allowed(a, gpu.kind):
            return False
        if a in gpu.shares:
            return True
        return (len(gpu.shares) < inst.slots
                and gpu.bytes + inst.bytes[a] <= inst.cache_bytes
                and len(self.hosts.get(a, ())) < inst.max_replicas)

    def add(self, a: int, g: int, share: float) -> None:
        gpu = self.gpus[g]
        if a not in gpu.shares:
            gpu.shares[a] = 0.0
            gpu.bytes += self.inst.bytes[a]
            self.hosts.setdefault(a, set()).add(g)
        gpu.shares[a] += share
        gpu.load += share * self.inst.load[a, gpu.kind]

    def open(self, a: int) -> int | None:
        """Open the kind that serves ``a``'s work cheapest per unit of capacity."""
        inst = self.inst
        best: tuple[float, int, int] | None = None
        for kind in inst.kinds:
            if not inst.allowed(a, kind.index) or self.pool_left[kind.gpu_type] <= 0:
                continue
            score = kind.unit_cost * inst.share_load(a, kind.index)
            key = (score, kind.tier, kind.index)
            if best is None or key < best:
                best = key
        if best is None:
            return None
        kind_index = best[2]
        self.pool_left[inst.kinds[kind_index].gpu_type] -= 1
        self.gpus.append(OpenGPU(kind=kind_index))
        return len(self.gpus) - 1

    def place(self, a: int, remaining: float, allow_open: bool) -> float:
        """Place ``remaining`` of ``a``'s traffic; return what could not be placed."""
        inst = self.inst
        while remaining > EPS:
            candidates = [g for g in range(len(self.gpus))
                          if self.free(g) > EPS and self.can_host(a, g)]
            whole = [g for g in candidates
                     if remaining * inst.load[a, self.gpus[g].kind] <= self.free(g) + EPS]
            if whole:
                g = min(whole, key=lambda g: (
                    a not in self.gpus[g].shares,
                    inst.kinds[self.gpus[g].kind].tier,
                    self.free(g) - remaining * inst.load[a, self.gpus[g].kind],
                ))
                self.add(a, g, remaining)
                return 0.0
            replicas_left = inst.max_replicas - len(self.hosts.get(a, ()))
            roomiest = max(candidates, default=None,
                           key=lambda g: self.room(g, a))
            if roomiest is not None:
                fits = self.room(roomiest, a)
                existing = a in self.gpus[roomiest].shares
                worth = fits >= MIN_SPLIT * remaining or existing or not allow_open
                if worth and (replicas_left > 1 or existing):
                    share = min(remaining, fits)
                    self.add(a, roomiest, share)
                    remaining -= share
                    continue
            if not allow_open or replicas_left <= 0:
                return remaining
            g_new = self.open(a)
            if g_new is None:
                return remaining
            fits = self.room(g_new, a)
            share = min(remaining, fits)
            self.add(a, g_new, share)
            remaining -= share
        return 0.0


def _lower_tiers(state: _State) -> None:
    inst = state.inst
    for gpu in state.gpus:
        if not gpu.shares:
            continue
        top = max(int(inst.ranks[a]) for a in gpu.shares)
        current = inst.kinds[gpu.kind]
        options = [k for k in inst.kinds
                   if k.gpu_type == current.gpu_type and top <= k.tier < current.tier]
        for kind in sorted(options, key=lambda k: k.tier):
            load = sum(w * inst.load[a, kind.index] for a, w in gpu.shares.items())
            if load <= kind.capacity + EPS:
                gpu.kind, gpu.load = kind.index, load
                break


#: Work budget of GPU elimination, in GPU visits (about two seconds on one core). A count,
#: not a clock, so that a plan does not depend on the machine's speed.
ELIMINATION_WORK = 1_000_000


def _eliminate(state: _State, max_passes: int = 10, work: int = ELIMINATION_WORK) -> _State:
    """Empty lightly loaded GPUs into the others when everything still fits.

    GPUs are tried least utilized first; a trial visits every GPU once per adapter it moves,
    so with thousands of GPUs the search stops when ``work`` visits are spent.
    """
    for _ in range(max_passes):
        improved = False
        kinds = state.inst.kinds
        order = sorted(range(len(state.gpus)),
                       key=lambda g: state.gpus[g].load / kinds[state.gpus[g].kind].capacity)
        for victim in order:
            gone = state.gpus[victim]
            work -= len(state.gpus) * (1 + len(gone.shares))
            if work < 0:
                return state
            trial = _State(state.inst,
                           [g.copy() for i, g in enumerate(state.gpus) if i != victim])
            ok = True
            for a, share in sorted(gone.shares.items(), key=lambda kv: -state.inst.ranks[kv[0]]):
                if trial.place(a, share, allow_open=False) > EPS:
                    ok = False
                    break
            if ok:
                state = _State(state.inst, trial.gpus)
                improved = True
                break
        if not improved:
            break
    return state


def _pack_spread(state: _State, members: list[int], gpus: list[int]) -> bool:
    """Worst-fit with splitting: each adapter goes to the roomiest GPU with a free slot.

    Spreading (rather than filling GPUs one by one) keeps capacity next to free slots, so
    the long tail of cold adapters finds room after the hot ones are placed. The candidate
    GPUs' free capacity, slots and bytes are kept in arrays: with thousands of adapters and
    hundreds of GPUs a per-GPU Python scan for every adapter dominates the run time.
    """
    inst = state.inst
    index = np.array(gpus, dtype=np.int64)
    kind = np.array([state.gpus[g].kind for g in gpus], dtype=np.int64)
    capacity = np.array([inst.kinds[k].capacity for k in kind])
    free = capacity - np.array([state.gpus[g].load for g in gpus])
    used_slots = np.array([len(state.gpus[g].shares) for g in gpus])
    used_bytes = np.array([state.gpus[g].bytes for g in gpus])
    for a in members:
        loads = inst.load[a, kind]
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(loads > 0, free / loads, np.where(free > EPS, np.inf, 0.0))
        hosted = np.array([a in state.gpus[g].shares for g in gpus], dtype=bool) \
            if a in state.hosts else np.zeros(len(gpus), dtype=bool)
        open_slot = ((used_slots < inst.slots)
                     & (used_bytes + inst.bytes[a] <= inst.cache_bytes))
        remaining = 1.0
        while remaining > EPS:
            replicas = len(state.hosts.get(a, ()))
            ok = np.isfinite(loads) & (room > EPS) & (
                hosted | (open_slot & (replicas < inst.max_replicas)))
            if not ok.any():
                return False
            pick = int(np.argmax(np.where(ok, room, -1.0)))
            g = int(index[pick])
            fits = float(room[pick])
            if fits < remaining and replicas + 1 >= inst.max_replicas and not hosted[pick]:
                return False
            share = min(remaining, fits)
            if not hosted[pick]:
                used_slots[pick] += 1
                used_bytes[pick] += inst.bytes[a]
                hosted[pick] = True
            state.add(a, g, share)
            free[pick] -= share * loads[pick]
            room[pick] = free[pick] / loads[pick] if loads[pick] > 0 else 0.0
            remaining -= share
    return True


def _pack_balanced(state: _State, members: list[int], new: list[int], old: list[int]) -> bool:
    """Pack so that every new GPU runs out of slots and time together; split only to fill.

    Cold adapters first take the spare slots of older, higher-tier GPUs (they cost those GPUs
    little time). Each new GPU then takes its share of the remaining adapters by count from
    the cold end and fills its time from the hot end, splitting at most the one adapter that
    crosses its capacity (next-fit with splitting: fewer splits than GPUs). Where slots bind,
    filling GPUs by load alone strands slots behind hot adapters; this keeps both in use.
    """
    inst = state.inst
    left = {a: 1.0 for a in members}
    if old:
        # Arrays over the old GPUs: a Python scan per cold adapter is too slow at 10,000.
        index = np.array(old, dtype=np.int64)
        kind = np.array([state.gpus[g].kind for g in old], dtype=np.int64)
        free = np.array([state.free(g) for g in old])
        open_slots = np.array([inst.slots - len(state.gpus[g].shares) for g in old])
        used_bytes = np.array([state.gpus[g].bytes for g in old])
        coldest = sorted(members, key=lambda a: (float(np.min(inst.load[a, kind])), a))
        for a in coldest:
            if open_slots.max() <= 0:
                break
            loads = inst.load[a, kind]
            ok = (np.isfinite(loads) & (open_slots > 0) & (free >= loads - EPS)
                  & (used_bytes + inst.bytes[a] <= inst.cache_bytes))
            if not ok.any():
                continue
            most = np.where(ok, open_slots, -1)
            pick = int(np.argmax(np.where(most == most.max(), free, -np.inf)))
            state.add(a, int(index[pick]), 1.0)
            free[pick] -= loads[pick]
            open_slots[pick] -= 1
            used_bytes[pick] += inst.bytes[a]
            del left[a]
    if not left:
        return True
    if not new:
        return False
    new_kind = state.gpus[new[0]].kind
    order = sorted(left, key=lambda a: (-float(inst.load[a, new_kind]), a))
    front, back = 0, len(order) - 1
    for j, g in enumerate(new):
        if front > back:
            break
        count = back - front + 1
        cold = min(inst.slots - 1, max(0, math.ceil(count / (len(new) - j)) - 1))
        # Cold adapters from the back, whole, while they fit beside at least a sliver of hot.
        while cold > 0 and back > front:
            a = order[back]
            if not state.can_host(a, g) or state.room(g, a) < 1.0 + EPS:
                break
            state.add(a, g, left.pop(a))
            back -= 1
            cold -= 1
        # Hot adapters from the front until the GPU's time or slots run out.
        while front <= back and state.free(g) > EPS and state.can_host(order[front], g):
            a = order[front]
            share = min(left[a], state.room(g, a))
            state.add(a, g, share)
            left[a] -= share
            if left[a] > EPS:
                if len(state.hosts[a]) >= inst.max_replicas:
                    return False
                break
            del left[a]
            front += 1
        # Time left over (the hot end ran out): more cold adapters while slots remain.
        while back >= front and back in range(len(order)) and order[back] in left:
            a = order[back]
            if not state.can_host(a, g) or state.room(g, a) < left[a] - EPS:
                break
            state.add(a, g, left.pop(a))
            back -= 1
    return not left


def _open_and_spread(state: _State, kind: Kind, members: list[int], old: list[int],
                     spare_slots: int, spare_load: float, packer: str) -> _State | None:
    """Open the fewest kind-``kind`` GPUs that let ``members`` pack by spreading, or None."""
    inst = state.inst
    need_load = sum(inst.load[a, kind.index] for a in members) / kind.capacity
    start = max(0, math.ceil(need_load - spare_load - 1e-9),
                math.ceil((len(members) - spare_slots) / inst.slots))
    # Beyond one GPU per replica an adapter could need, more GPUs cannot help.
    stop = min(state.pool_left[kind.gpu_type],
               start + sum(max(1, inst.min_replicas(a)) for a in members))

    def attempt(extra: int) -> _State | None:
        trial = _State(inst, [g.copy() for g in state.gpus])
        trial.gpus += [OpenGPU(kind=kind.index) for _ in range(extra)]
        trial.pool_left[kind.gpu_type] -= extra
        new = list(range(len(state.gpus), len(trial.gpus)))
        packed = (_pack_balanced(trial, members, new, old) if packer == "balanced"
                  else _pack_spread(trial, members, new + old))
        return trial if packed else None

    # Gallop up from the group's bound, then bisect back: where slots bind the right count
    # can sit hundreds above the bound, and each attempt packs the whole group.
    low, step, extra = start - 1, 1, start
    found: _State | None = None
    while extra <= stop:
        found = attempt(extra)
        if found is not None:
            break
        low, extra, step = extra, extra + step, 2 * step
    if found is None:
        return None
    high = extra
    while high - low > 1:
        mid = (low + high) // 2
        trial = attempt(mid)
        if trial is not None:
            high, found = mid, trial
        else:
            low = mid
    return found


#: Cold adapters looked at from the back of the density order when the coldest does not
#: fit a GPU's remaining cache.
_PAIR_SCAN = 200


def _pack_paired(inst: Instance, kind: Kind, count: int) -> _State | None:
    """Pack every adapter onto ``count`` GPUs of ``kind``, pairing dense with sparse ones.

    Where the adapter cache binds, a GPU must end up with its cache nearly full *and* its
    time within capacity, so byte-heavy cold adapters have to share GPUs with hot ones.
    Adapters are ordered by busy time per byte. Each GPU in turn takes from the dense end
    while its time is below ``ratio`` times its cache fill (``ratio``: the remaining busy
    time over the remaining bytes, both as fractions of a GPU), splitting a hot adapter at
    that line, and from the sparse end otherwise; the line keeps time free on every GPU for
    the cold adapters that fill its cache. What is left at the end is placed by splitting
    over any GPU with room. Returns None when that fails.
    """
    cap, cache = kind.capacity, inst.cache_bytes
    load = inst.load[:, kind.index]
    members = [a for a in range(inst.num_adapters) if np.isfinite(load[a])]
    if len(members) < inst.num_adapters:
        return None
    order = deque(sorted(members, key=lambda a: (-load[a] / inst.bytes[a], a)))
    left = dict.fromkeys(members, 1.0)
    time_left = float(load.sum()) / cap
    bytes_left = float(inst.bytes.sum()) / cache
    state = _State(inst, [OpenGPU(kind=kind.index) for _ in range(count)])

    def take(g: int, a: int, share: float) -> None:
        nonlocal time_left, bytes_left
        state.add(a, g, share)
        left[a] -= share
        time_left -= share * load[a] / cap
        if left[a] <= EPS:
            bytes_left -= inst.bytes[a] / cache
        else:
            bytes_left += inst.bytes[a] / cache  # its rest needs another replica

    for g, gpu in enumerate(state.gpus):
        if not order:
            break
        ratio = time_left / max(bytes_left, EPS)
        while order and len(gpu.shares) < inst.slots:
            hot = not gpu.shares or gpu.load / cap < ratio * gpu.bytes / cache
            placed = False
            for end in ((0, -1) if hot else (-1, 0)):
                a = order[end]
                if gpu.bytes + inst.bytes[a] > cache or gpu.load >= cap - EPS:
                    continue
                room = (cap - gpu.load) / load[a] if load[a] > 0 else math.inf
                if end == 0:
                    # Hot adapters stop at the ratio line: the rest of the time is for the
                    # cold adapters that fill the cache.
                    line = (min(1.0, ratio) * cap - gpu.load) / load[a] if load[a] > 0 \
                        else math.inf
                    share = min(left[a], room, line)
                    if share <= EPS:
                        continue
                elif room < left[a] - EPS:
                    continue
                else:
                    share = left[a]
                take(g, a, share)
                if left[a] <= EPS:
                    order.popleft() if end == 0 else order.pop()
                placed = True
                break
            if placed:
                continue
            # Neither end fits: a colder adapter that fits the cache still left here.
            found = None
            for i in range(len(order) - 1, max(-1, len(order) - 1 - _PAIR_SCAN), -1):
                a = order[i]
                if (gpu.bytes + inst.bytes[a] <= cache
                        and left[a] * load[a] <= cap - gpu.load + EPS):
                    found = i
                    break
            if found is None:
                break
            a = order[found]
            take(g, a, left[a])
            del order[found]
    while order:
        a = order[0]
        if state.place(a, left[a], allow_open=False) > EPS:
            return None
        order.popleft()
    return state


def fewest_that_pack(attempt: Callable[[int], _T | None], start: int,
                     stop: int) -> tuple[int, _T] | None:
    """The smallest GPU count in ``[start, stop]`` at which ``attempt`` packs, and its packing.

    Gallops up from ``start`` (the step doubling, never past ``stop``), then bisects back
    between the last count that failed and the first that packed: where slots or bytes
    bind, the count can sit far above the bound it starts from, and each attempt packs
    everything. Packing is taken to be monotone in the count.

    Parameters
    ----------
    attempt : callable
        Packs on the given number of GPUs; None when it does not fit.
    start, stop : int
        A lower bound on the count, and the most GPUs there are.

    Returns
    -------
    tuple or None
        ``(count, packing)``; None when not even ``stop`` GPUs pack.
    """
    low, step, count = start - 1, 1, min(start, stop)
    found: _T | None = None
    while count > low:
        found = attempt(count)
        if found is not None:
            break
        low, count, step = count, min(stop, count + step), 2 * step
    if found is None:
        return None
    high = count
    while high - low > 1:
        mid = (low + high) // 2
        trial = attempt(mid)
        if trial is not None:
            high, found = mid, trial
        else:
            low = mid
    return high, found


def one_kind_for_all(inst: Instance) -> tuple[Kind, int] | None:
    """The kind that serves every adapter at least cost, and a lower bound on its GPU count.

    The kind is the cheapest per unit of the whole work among those whose tier admits the
    highest rank; the bound is the largest of what the work, the cache bytes and the slots
    need. None when no kind admits the highest rank.
    """
    top = int(inst.ranks.max())
    kinds = [k for k in inst.kinds if k.tier >= top]
    if not kinds:
        return None
    kind = min(kinds, key=lambda k: (k.unit_cost / k.capacity * float(inst.load[:, k.index].sum()),
                                      k.tier))
    start = max(1, math.ceil(float(inst.load[:, kind.index].sum()) / kind.capacity - 1e-9),
                math.ceil(float(inst.bytes.sum()) / inst.cache_bytes - 1e-9),
                math.ceil(inst.num_adapters / inst.slots))
    return kind, start


def _paired(inst: Instance) -> _State:
    """Pair dense with sparse adapters on GPUs of one kind (see :func:`_pack_paired`).

    The kind is :func:`one_kind_for_all`'s; the GPU count is :func:`fewest_that_pack`'s.
    """
    if not math.isfinite(inst.cache_bytes):
        raise InfeasibleError("pairing balances cache bytes; there is no cache limit", "memory")
    chosen = one_kind_for_all(inst)
    if chosen is None:
        raise InfeasibleError(f"no GPU kind admits rank {int(inst.ranks.max())}", "tier")
    kind, start = chosen
    stop = kind.pool_count
    packed = fewest_that_pack(lambda count: _pack_paired(inst, kind, count), start, stop)
    if packed is None:
        raise InfeasibleError(f"pairing packs no count of GPUs up to the pool's {stop}", "pool")
    return packed[1]


def _budgeted(inst: Instance, packer: str = "spread") -> _State:
    """Open GPUs per rank group, highest rank first, as few as packing by spreading allows.

    Each group first gets the group's own lower bound on new GPUs (its load and its slot
    count, net of what earlier, higher-tier GPUs have left), then one more at a time until
    spreading packs it.
    """
    state = _State(inst)
    best_load = np.where(np.isfinite(inst.load), inst.load, -np.inf).max(axis=1)
    for rank in sorted({int(r) for r in inst.ranks}, reverse=True):
        members = sorted((a for a in range(inst.num_adapters) if inst.ranks[a] == rank),
                         key=lambda a: (-best_load[a], a))
        kinds = [k for k in inst.kinds if k.tier >= rank]
        # Cheapest kind for the group's work first; a kind the replica cap rules out for a
        # hot adapter fails to pack and the next one is tried.
        kinds.sort(key=lambda k: (k.unit_cost / k.capacity * float(
            sum(inst.load[a, k.index] for a in members)), k.tier))
        old = [g for g in range(len(state.gpus)) if inst.allowed(members[0], state.gpus[g].kind)]
        spare_slots = sum(inst.slots - len(state.gpus[g].shares) for g in old)
        spare_load = sum(max(0.0, state.free(g)) for g in old)
        packed = None
        for kind in kinds:
            packed = _open_and_spread(state, kind, members, old, spare_slots, spare_load,
                                      packer)
            if packed is not None:
                break
        if packed is None:
            raise InfeasibleError(f"no GPU count packs the rank-{rank} adapters", "pool")
        state = packed
    return state


def greedy_placement(inst: Instance, improve: bool = True,
                     target: float | None = None) -> list[OpenGPU]:
    """Place every adapter; return the open GPUs.

    Up to four constructions run: budgeted spreading and balanced packing per rank group,
    top-down fill and, where the adapter cache is limited, pairing dense with sparse
    adapters on GPUs of one kind (:func:`_pack_paired`). Each gets tier lowering; the
    cheapest is kept and improved by GPU elimination.

    Parameters
    ----------
    inst : Instance
    improve : bool
        Run tier lowering and GPU elimination after construction.
    target : float, optional
        A lower bound on the cost: a plan that reaches it is optimal, so the remaining
        constructions and improvements are skipped.

    Raises
    ------
    InfeasibleError
        When the pools run out before every adapter is placed.
    """
    inst.adapter_checks()
    goal = -math.inf if target is None else target + 1e-9
    constructions: list[tuple[str, Callable[[Instance], _State]]] = [
        ("spread", _budgeted),
        ("balanced", lambda i: _budgeted(i, packer="balanced")),
        ("fill", _fill),
    ]
    if math.isfinite(inst.cache_bytes):
        constructions.append(("paired", _paired))
    results: list[tuple[float, int, _State]] = []
    for name, construct in constructions:
        try:
            state = construct(inst)
        except InfeasibleError:
            continue
        # A packer may leave an opened GPU empty; it is not part of the plan.
        state = _State(inst, [g for g in state.gpus if g.shares])
        _lower_tiers(state)
        cost = plan_cost(inst, state.gpus)
        logger.debug("greedy %s construction: %g", name, cost)
        results.append((cost, len(results), state))
        if cost <= goal:
            break
    if not results:
        raise InfeasibleError("the pools ran out before every adapter was placed", "pool")
    cost, _, state = min(results, key=lambda r: (r[0], r[1]))
    if improve and cost > goal:
        state = _eliminate(state)
        _lower_tiers(state)
    return [g for g in state.gpus if g.shares]


def _fill(inst: Instance) -> _State:
    """Top-down fill: highest rank first, hottest first, tightest fit, split when needed."""
    state = _State(inst)
    best_load = np.where(np.isfinite(inst.load), inst.load, -np.inf).max(axis=1)
    order = sorted(range(inst.num_adapters), key=lambda a: (-inst.ranks[a], -best_load[a], a))
    for a in order:
        left = state.place(a, 1.0, allow_open=True)
        if left > EPS:
            raise InfeasibleError(
                f"the pools ran out while placing adapter '{inst.config.adapters[a].id}'",
                "pool",
            )
    return state
