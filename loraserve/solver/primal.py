"""A primal heuristic from the configuration LP: price-and-branch, then repair.

Column generation (:mod:`loraserve.solver.colgen`) leaves a set of GPU configurations
(*patterns*: a kind, hosted adapters, traffic shares), each feasible on its own. The
**restricted master as an integer program** chooses how many GPUs to open with each
pattern, on HiGHS::

    minimize    sum_p unit_cost[k_p] * n_p                 n_p integer >= 0
    subject to  sum_p share[a, p] * n_p >= 1              every adapter's traffic covered
                sum_{p hosting a} n_p <= max_replicas     (when adapters may split)
                sum_{p of type t} n_p <= pool_count[t]

The columns of a known plan are added, so the plan itself is a feasible point (given to
HiGHS as its start) and the program can only do better. Its solution covers some adapters
more than once; the **repair** drops over-covered shares (smallest first while the rest
still covers the adapter) and scales the rest to exactly one. The patterns were priced
with a hair more room than a GPU has (``colgen._ROOM``, the plan check's tolerance), so a
GPU still over its traffic or hosting row gives back its smallest shares, and those are
placed again where there is room (:meth:`loraserve.solver.greedy._State.place`, opening a
GPU if needed). The result is checked like any plan and handed to LNS.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence

import highspy
import numpy as np

from loraserve.solver._stop import highs_run
from loraserve.solver.colgen import Pattern, _new_highs
from loraserve.solver.greedy import OpenGPU, _lower_tiers, _State, plan_cost
from loraserve.solver.instance import EPS, Instance
from loraserve.solver.paper_greedy import validity

logger = logging.getLogger(__name__)


def _patterns_of(gpus: Sequence[OpenGPU]) -> list[Pattern]:
    out: list[Pattern] = []
    for gpu in gpus:
        items = sorted((a, w) for a, w in gpu.shares.items() if w > EPS)
        if items:
            out.append(Pattern(gpu.kind, np.array([a for a, _ in items], dtype=np.int64),
                               np.array([w for _, w in items])))
    return out


def _key(p: Pattern) -> tuple[int, tuple[int, ...], tuple[float, ...]]:
    return (p.kind, tuple(p.adapters.tolist()), tuple(np.round(p.shares, 12).tolist()))


def restricted_master_plan(inst: Instance, patterns: Sequence[Pattern],
                           start: Sequence[OpenGPU] | None, time_limit: float,
                           seed: int = 0) -> list[OpenGPU] | None:
    """The best combination of ``patterns`` (and ``start``'s GPUs), repaired into a plan.

    Returns None when HiGHS finds no integer point in ``time_limit`` or the repair fails.
    """
    began = time.perf_counter()
    columns = list(patterns) + (_patterns_of(start) if start else [])
    unique: dict[tuple[int, tuple[int, ...], tuple[float, ...]], Pattern] = {}
    for p in columns:
        unique.setdefault(_key(p), p)
    columns = list(unique.values())
    if not columns:
        return None
    n = inst.num_adapters
    types = sorted({k.gpu_type for k in inst.kinds})
    split = inst.max_replicas > 1
    # Rows: cover per adapter, then (with splitting) hosts per adapter, then pools.
    host_row = n if split else -1
    pool_row = {t: (2 * n if split else n) + i for i, t in enumerate(types)}
    rows = (2 * n if split else n) + len(types)
    lower = np.concatenate([np.ones(n), np.full(rows - n, -highspy.kHighsInf)])
    upper = np.concatenate([np.full(n, highspy.kHighsInf),
                            np.full(n if split else 0, float(inst.max_replicas)),
                            np.array([float(inst.config.pool(t).count) for t in types])])
    highs = _new_highs()
    highs.setOptionValue("time_limit", max(0.1, time_limit))
    highs.setOptionValue("mip_rel_gap", 1e-6)
    highs.setOptionValue("random_seed", seed)
    highs.addRows(rows, lower, upper, 0, np.zeros(0, dtype=np.int32),
                  np.zeros(0, dtype=np.int32), np.zeros(0))
    starts: list[int] = []
    index: list[np.ndarray] = []
    value: list[np.ndarray] = []
    nnz = 0
    for p in columns:
        entries = [p.adapters, np.array([pool_row[inst.kinds[p.kind].gpu_type]])]
        values = [np.minimum(1.0, p.shares), np.ones(1)]
        if split:
            entries.append(p.adapters + host_row)
            values.append(np.ones(len(p.adapters)))
        starts.append(nnz)
        index.append(np.concatenate(entries).astype(np.int32))
        value.append(np.concatenate(values))
        nnz += len(index[-1])
    m = len(columns)
    costs = np.array([inst.kinds[p.kind].unit_cost for p in columns])
    bound = np.array([float(inst.config.pool(inst.kinds[p.kind].gpu_type).count)
                      for p in columns])
    highs.addCols(m, costs, np.zeros(m), bound, nnz, np.array(starts, dtype=np.int32),
                  np.concatenate(index), np.concatenate(value))
    highs.changeColsIntegrality(m, np.arange(m, dtype=np.int32),
                                np.full(m, highspy.HighsVarType.kInteger))
    if start:
        # The known plan as HiGHS's start: one GPU per start column.
        known = Counter(_key(p) for p in _patterns_of(start))
        solution = highspy.HighsSolution()
        solution.col_value = [float(known.get(key, 0)) for key in unique]
        highs.setSolution(solution)
    highs_run(highs)
    info = highs.getInfo()
    if info.primal_solution_status != 2:  # kSolutionStatusFeasible
        logger.info("restricted master: no integer point (%s)", highs.getModelStatus())
        return None
    counts = np.rint(np.array(highs.getSolution().col_value)).astype(np.int64)
    logger.info("restricted master: %d columns, value %g in %.2f s", m,
                float(costs @ counts), time.perf_counter() - began)
    return repair(inst, [p for p, c in zip(columns, counts.tolist(), strict=True)
                         for _ in range(max(0, c))])


def repair(inst: Instance, chosen: Sequence[Pattern]) -> list[OpenGPU] | None:
    """Open one GPU per chosen pattern and make it a valid plan, or None."""
    gpus = [OpenGPU(kind=p.kind, shares={int(a): float(min(1.0, w))
                                         for a, w in zip(p.adapters, p.shares, strict=True)})
            for p in chosen]
    hosts: dict[int, list[int]] = {}
    for g, gpu in enumerate(gpus):
        for a in gpu.shares:
            hosts.setdefault(a, []).append(g)
    # Over-covered adapters: drop the smallest shares while the rest still covers, then
    # scale what is left to exactly the adapter's traffic.
    for a, where in hosts.items():
        total = sum(gpus[g].shares[a] for g in where)
        for g in sorted(where, key=lambda g: gpus[g].shares[a]):
            if total - gpus[g].shares[a] >= 1.0 - 1e-12:
                total -= gpus[g].shares.pop(a)
        scale = 1.0 / total if total > 0 else 0.0
        for g in where:
            if a in gpus[g].shares:
                gpus[g].shares[a] *= scale
    deficit: dict[int, float] = {a: 1.0 for a in range(inst.num_adapters) if a not in hosts}
    for gpu in gpus:
        kind = inst.kinds[gpu.kind]
        gpu.load = sum(w * float(inst.load[a, gpu.kind]) for a, w in gpu.shares.items())
        gpu.bytes = sum(float(inst.bytes[a]) for a in gpu.shares)
        # Patterns saw a hair more room than the GPU has: give back the smallest shares.
        while gpu.shares and (gpu.load > kind.capacity or gpu.bytes > inst.cache_bytes):
            a = min(gpu.shares, key=lambda x: gpu.shares[x] * float(inst.load[x, gpu.kind]))
            w = gpu.shares.pop(a)
            gpu.load -= w * float(inst.load[a, gpu.kind])
            gpu.bytes -= float(inst.bytes[a])
            deficit[a] = deficit.get(a, 0.0) + w
    state = _State(inst, [g for g in gpus if g.shares])
    for a, need in sorted(deficit.items(), key=lambda kv: -kv[1]):
        if state.place(a, need, allow_open=True) > EPS:
            return None
    _lower_tiers(state)
    plan = [g for g in state.gpus if g.shares]
    problems = validity(inst, plan)
    if problems:
        logger.info("restricted master: the repaired plan is invalid (%s)", problems[0])
        return None
    logger.info("restricted master: repaired plan %g", plan_cost(inst, plan))
    return plan


def price_and_branch(inst: Instance, patterns: Sequence[Pattern],
                     start: Sequence[OpenGPU], time_limit: float,
                     seed: int = 0) -> list[OpenGPU] | None:
    """A plan cheaper than ``start`` from the configuration LP's patterns, or None."""
    if not patterns or time_limit <= 0.05 or not math.isfinite(time_limit):
        return None
    plan = restricted_master_plan(inst, patterns, start, time_limit, seed)
    if plan is None or plan_cost(inst, plan) >= plan_cost(inst, list(start)) - 1e-9:
        return None
    return plan
