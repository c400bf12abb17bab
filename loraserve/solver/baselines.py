"""Baselines to compare loraserve's plans against, counted the way the LoRAServe paper does.

* :func:`rank_agnostic_placement`: a dLoRA-like placement that ignores ranks. Every GPU runs
  at the tier of the largest rank present, so every adapter pays the padding of the largest
  one; adapters are packed load-balanced (hottest first onto the least-loaded GPU) on the
  fewest GPUs that pack. It respects the same limits as every loraserve plan (slots, adapter
  cache bytes, replica cap, pools), so the GPU counts compare like for like.
* :func:`paper_greedy_first_valid`: the LoRAServe paper's heuristic
  (:func:`~loraserve.solver.paper_greedy.loraserve_greedy`) counted at the first fleet size,
  scanning upward one by one, at which its plan is valid (issue 10). Unlike
  :func:`~loraserve.solver.paper_greedy.loraserve_greedy_min` it does not gallop and bisect,
  so the count it reports is the first valid size, never a larger one the search happened
  to meet first.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from loraserve.solver.greedy import OpenGPU, fewest_that_pack
from loraserve.solver.instance import EPS, InfeasibleError, Instance, Kind
from loraserve.solver.paper_greedy import Fill, loraserve_greedy, validity

logger = logging.getLogger(__name__)


def _agnostic_kinds(inst: Instance) -> list[Kind]:
    """Per GPU type, the lowest usable tier that admits the largest rank; cheapest work first.

    With one GPU type (the paper's setting) this is one tier for the whole fleet. A type on
    which no tier admits the largest rank takes no part: a rank-agnostic server cannot use it.
    """
    top = int(inst.ranks.max())
    chosen: dict[str, Kind] = {}
    for kind in inst.kinds:
        if kind.tier < top:
            continue
        held = chosen.get(kind.gpu_type)
        if held is None or kind.tier < held.tier:
            chosen[kind.gpu_type] = kind
    if not chosen:
        raise InfeasibleError(f"no usable tier admits rank {top}", "tier")
    # Open the type whose GPUs serve the whole workload cheapest first, as loraserve's greedy
    # does for a rank group; ties go to the lower tier.
    return sorted(chosen.values(), key=lambda k: (
        k.unit_cost / k.capacity * float(inst.load[:, k.index].sum()), k.tier, k.index))


def _fleet(kinds: list[Kind], n: int) -> list[int]:
    """Kind of each of ``n`` GPUs: the first kind while its pool lasts, then the next."""
    fleet: list[int] = []
    for kind in kinds:
        fleet += [kind.index] * min(kind.pool_count, n - len(fleet))
    return fleet


def _pack_balanced(inst: Instance, fleet: list[int], order: list[int]) -> list[OpenGPU] | None:
    """Hottest first onto the least-utilized GPU that can host it, splitting at capacity.

    Returns None when some adapter cannot be placed: no GPU with a free slot, cache room and
    capacity left, or its replica cap reached with traffic still unplaced.
    """
    n = len(fleet)
    kind = np.array(fleet, dtype=np.int64)
    capacity = np.array([inst.kinds[k].capacity for k in fleet])
    load = np.zeros(n)
    slots = np.zeros(n, dtype=np.int64)
    used_bytes = np.zeros(n)
    gpus = [OpenGPU(kind=k) for k in fleet]
    for a in order:
        loads = inst.load[a, kind]
        size = float(inst.bytes[a])
        # A GPU already hosting ``a`` was filled to capacity by it: never a candidate again.
        open_gpu = (slots < inst.slots) & (used_bytes + size <= inst.cache_bytes)
        remaining, replicas = 1.0, 0
        while remaining > EPS:
            free = capacity - load
            ok = open_gpu & (free > EPS)
            if not ok.any():
                return None
            g = int(np.argmin(np.where(ok, load / capacity, np.inf)))
            fits = float(free[g] / loads[g]) if loads[g] > 0 else math.inf
            if fits < remaining and replicas + 1 >= inst.max_replicas:
                return None
            share = min(remaining, fits)
            gpu = gpus[g]
            gpu.shares[a] = share
            gpu.bytes += size
            gpu.load += share * float(loads[g])
            load[g] += share * loads[g]
            slots[g] += 1
            used_bytes[g] += size
            open_gpu[g] = False
            remaining -= share
            replicas += 1
    return gpus


def rank_agnostic_placement(inst: Instance) -> list[OpenGPU]:
    """The dLoRA-like rank-agnostic baseline on the fewest GPUs it packs onto.

    Every GPU runs at one tier: the lowest usable tier admitting the largest rank present
    (per GPU type when pools differ), as a server that ignores ranks must. Adapters go hottest
    first (by load at that tier) onto the least-utilized GPU that has a free slot and cache
    room, splitting at capacity onto the next least-utilized one; replicas are capped at
    ``max_replicas``. The GPU count is searched by galloping up from the largest of the
    simple bounds (total load over capacity, adapters over slots, bytes over the adapter
    cache) and bisecting back to the smallest count that packed. Packing need not be monotone
    in the count, so this is the smallest count the search met.

    Parameters
    ----------
    inst : Instance

    Returns
    -------
    list of OpenGPU
        The used GPUs, all at the one tier, with traffic shares summing to 1 per adapter.

    Raises
    ------
    InfeasibleError
        When an adapter can be served by no plan (see :meth:`Instance.adapter_checks`), no
        tier admits the largest rank, an adapter needs more replicas at that tier than
        ``max_replicas`` allows, or no count up to the pools' size packs.
    """
    inst.adapter_checks()
    kinds = _agnostic_kinds(inst)
    best = kinds[0]
    share_load = inst.load[:, best.index] / best.capacity
    need = int(np.ceil(share_load.max() - 1e-9))
    if need > inst.max_replicas:
        a = int(np.argmax(share_load))
        raise InfeasibleError(
            f"rank-agnostic: adapter '{inst.config.adapters[a].id}' needs {need} replicas at "
            f"tier {best.tier}; serving.max_replicas is {inst.max_replicas}", "replicas")
    pool = sum(k.pool_count for k in kinds)
    start = max(1, math.ceil(float(share_load.sum()) - 1e-9),
                math.ceil(inst.num_adapters / inst.slots))
    if math.isfinite(inst.cache_bytes):
        start = max(start, math.ceil(float(inst.bytes.sum()) / inst.cache_bytes - 1e-9))
    if start > pool:
        raise InfeasibleError(
            f"rank-agnostic: needs at least {start} GPUs at tier {best.tier}; the pools hold "
            f"{pool} (short by {start - pool})", "pool")
    order = sorted(range(inst.num_adapters), key=lambda a: (-float(share_load[a]), a))

    def attempt(n: int) -> list[OpenGPU] | None:
        return _pack_balanced(inst, _fleet(kinds, n), order)

    packed = fewest_that_pack(attempt, start, pool)
    if packed is None:
        raise InfeasibleError(
            f"rank-agnostic: no packing at tier {best.tier} on up to {pool} GPUs", "pool")
    high, found = packed
    logger.info("rank-agnostic: %d GPUs at tier %d (search started at %d)", high, best.tier,
                start)
    return [g for g in found if g.shares]


def paper_greedy_first_valid(
    inst: Instance, start: int, fill: Fill = "capacity", stop: int | None = None
) -> tuple[list[OpenGPU], int] | None:
    """The LoRAServe paper's heuristic at the first fleet size where its plan is valid.

    Tries :func:`~loraserve.solver.paper_greedy.loraserve_greedy` on ``start``,
    ``start + 1``, ... GPUs, one by one, and returns the first plan that
    :func:`~loraserve.solver.paper_greedy.validity` accepts. Validity is not monotone in the
    fleet size (apportionment is not), which is why the scan does not skip sizes.

    Parameters
    ----------
    inst : Instance
    start : int
        First fleet size to try, typically the lower bound (values below 1 are raised to 1).
    fill : {"capacity", "utilization"}
        The heuristic's fill level; see :func:`~loraserve.solver.paper_greedy.loraserve_greedy`.
        ``capacity`` is the paper's.
    stop : int, optional
        Last fleet size to try; the total pool size when omitted (and never beyond it).

    Returns
    -------
    (list of OpenGPU, int) or None
        The plan's GPUs, idle ones included (the paper provisions all ``N``), and ``N``; None
        when no size from ``start`` to ``stop`` gives a valid plan.
    """
    pool = sum(p.count for p in inst.config.pools)
    last = pool if stop is None else min(stop, pool)
    for n in range(max(1, start), last + 1):
        gpus = loraserve_greedy(inst, n, fill=fill)
        problems = validity(inst, gpus)
        if not problems:
            logger.info("paper greedy (%s fill): first valid at %d GPUs (scan from %d)",
                        fill, n, start)
            return gpus, n
        logger.debug("paper greedy on %d GPUs: %s", n, "; ".join(problems))
    logger.info("paper greedy (%s fill): no valid plan on %d to %d GPUs", fill, start, last)
    return None
