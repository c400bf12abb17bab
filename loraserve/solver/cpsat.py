"""The placement model on OR-Tools' CP-SAT, warm-started from the greedy plan.

It has the same candidates and constraint families as :class:`~loraserve.solver.milp.
PlacementMILP`: kind ``k = (gpu_type, tier)`` offers ``min(pool count, floor(UB /
unit_cost))`` interchangeable candidates, used in index order; every adapter's traffic is
routed, traffic needs a host and a host needs a used GPU, and each used GPU respects compute
capacity at its kind, adapter slots and (when finite) the adapter cache; adapters have at
most ``max_replicas`` hosts and pools are not exceeded.

CP-SAT only knows integers, so the model is a *restriction* of the continuous problem:

* **Traffic.** An adapter's traffic is ``resolution`` units; a share is ``units /
  resolution``. With ``max_replicas == 1`` no adapter can split, the share equals the host
  literal and no share variable is created.
* **Compute.** Every GPU's capacity is :data:`CAPACITY_UNITS` integer units (exactly, so
  nothing is lost on that side). A share unit's load is rounded *up* to whole capacity
  units, so any solution CP-SAT accepts fits the real capacity: loads are over-stated by
  less than one capacity unit per share unit, i.e. by at most ``resolution /
  CAPACITY_UNITS`` (``1e-6`` at the default resolution) of capacity per hosted adapter when
  adapters split, and ``1 / CAPACITY_UNITS`` (``1e-9``) when they cannot.
* **Memory.** Adapter bytes round up and the cache size down; both are whole bytes already.
* **Hosting.** A hosted adapter carries at least one traffic unit (a host without traffic
  can be dropped at no cost, so no optimum is lost), and a pair whose GPU cannot carry one
  unit (without splitting: the whole adapter) is not created.
* **Cost.** Unit costs are multiplied by the smallest power of ten up to ``10**6`` that makes
  every price whole (1 for GPU counts; 10 for prices such as 1.2 per hour). Prices with
  more decimals are floored at ``10**6``, which keeps CP-SAT's bound valid but makes its
  optimum approximate, so such a solve never claims optimality.

Because the model is a restriction, its optimum can exceed the continuous optimum and
CP-SAT's bound is a bound on the *restricted* problem. The returned ``bound`` is therefore:

* CP-SAT's best bound when no adapter can split (``max_replicas == 1``) and costs are exact:
  the two problems then differ only by the rounding of loads, at most ``slots x 1e-9`` of a
  GPU's capacity, well inside the plan check's tolerance (``1e-6``) and HiGHS's own;
* ``-inf`` otherwise: a plan that needs a share finer than ``1 / resolution`` (or a GPU
  filled to within ``1e-6`` per adapter) is invisible to CP-SAT, so its bound says nothing
  about the real problem.

``proven_optimal`` follows: CP-SAT's status is OPTIMAL and the bound is exact, or the plan
meets the caller's ``lower_bound`` (a bound on the real problem). Likewise ``infeasible`` is
reported only when the restriction is exact; otherwise an infeasible discretisation returns
no plan and an unknown outcome.

Determinism: CP-SAT repeats its result for a fixed seed only when the search is not cut by
wall-clock time. One worker is deterministic; several race unless ``interleave_search`` is
set, which this class does whenever ``threads > 1`` (the portfolio, LNS included, then runs
on a fixed schedule). A solve that stops on ``time_limit`` returns whatever was found by
then; pass ``deterministic_time`` (CP-SAT's work units, close to seconds) with a generous
``time_limit`` for a repeatable run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
from ortools.sat.python import cp_model

from loraserve.solver._stop import cpsat_solve
from loraserve.solver.greedy import OpenGPU
from loraserve.solver.instance import EPS, Instance
from loraserve.solver.milp import MILPOutcome

logger = logging.getLogger(__name__)

#: Integer units of one GPU's compute capacity.
CAPACITY_UNITS = 10**9

#: Default number of integer units an adapter's traffic is split into.
DEFAULT_RESOLUTION = 1000

#: Largest power of ten tried to make unit costs whole.
_MAX_COST_SCALE = 10**6

#: Loads a hair above a whole number of capacity units are floating-point noise, not load:
#: rounding them up would lose exact packings (loads that sum to capacity). The slack is a
#: millionth of a capacity unit, ``1e-15`` of a GPU.
_ROUND_SLACK = 1e-6

#: ``progress(objective, bound, seconds)``: called on every improving solution.
Progress = Callable[[float, float, float], None]


def _cost_scale(costs: list[float]) -> tuple[int, bool]:
    """Smallest power of ten that makes every cost whole, and whether one does."""
    scale = 1
    while scale <= _MAX_COST_SCALE:
        if all(abs(c * scale - round(c * scale)) <= 1e-9 * max(1.0, c * scale) for c in costs):
            return scale, True
        scale *= 10
    return _MAX_COST_SCALE, False


class _Progress(cp_model.CpSolverSolutionCallback):
    """Reports each improving solution's objective, the bound and the elapsed seconds."""

    def __init__(self, report: Progress, scale: int, exact: bool) -> None:
        super().__init__()
        self._report = report
        self._scale = scale
        self._exact = exact

    def on_solution_callback(self) -> None:
        bound = self.best_objective_bound / self._scale if self._exact else -math.inf
        self._report(self.objective_value / self._scale, bound, self.wall_time)


class PlacementCPSAT:
    """The per-GPU placement model on CP-SAT; each constraint family is one builder.

    Parameters
    ----------
    inst : Instance
    upper_bound : float
        Cost of a known plan; sizes the candidate set (``inf``: whole pools).
    lower_bound : float
        A valid bound on the real problem, added as a cut on the objective so that CP-SAT
        stops as soon as a plan meets it.
    resolution : int
        Integer units of each adapter's traffic when adapters may split; shares are
        multiples of ``1 / resolution``. Ignored when ``max_replicas == 1``.

    Attributes
    ----------
    model : cp_model.CpModel
    candidates : list of (int, int)
        ``(kind, index within kind)`` of every candidate GPU ``g``.
    pair_a, pair_g : numpy.ndarray
        Adapter and candidate of every pair ``p`` that may host (only pairs whose GPU can
        carry at least one traffic unit exist).
    pair_load, pair_max : numpy.ndarray
        Capacity units one traffic unit of pair ``p`` takes (of :data:`CAPACITY_UNITS`), and
        the most units its GPU can carry.
    by_adapter, by_gpu : dict of int to list of int
        Pairs of each adapter and of each candidate.
    units : int
        Traffic units of one adapter: ``resolution``, or 1 without splitting.
    exact : bool
        Whether CP-SAT's bound and infeasibility hold for the real problem.
    """

    def __init__(self, inst: Instance, upper_bound: float, lower_bound: float,
                 resolution: int = DEFAULT_RESOLUTION) -> None:
        if resolution < 1:
            raise ValueError(f"resolution must be at least 1, not {resolution}")
        self.inst = inst
        self.lower_bound = lower_bound
        self.split = inst.max_replicas > 1
        # Integer units of one adapter's whole traffic.
        self.units = resolution if self.split else 1
        self.model = cp_model.CpModel()
        self.candidates: list[tuple[int, int]] = []  # (kind, index within kind)
        for kind in inst.kinds:
            limit = kind.pool_count
            if math.isfinite(upper_bound):
                limit = min(limit, math.floor(upper_bound / kind.unit_cost + 1e-9))
            self.candidates += [(kind.index, j) for j in range(max(0, limit))]
        self.cost_scale, self.cost_exact = _cost_scale([k.unit_cost for k in inst.kinds])
        # The bound speaks for the real problem only when the model restricts nothing but
        # load rounding (far below every tolerance).
        self.exact = not self.split and self.cost_exact
        self._pairs()
        self._variables()
        self._objective(lower_bound)
        self._route_every_adapter()
        self._share_needs_host()
        self._compute_capacity()
        self._adapter_slots()
        self._adapter_cache()
        self._replica_cap()
        self._pool_sizes()
        self._symmetry_breaking()

    # Variables -----------------------------------------------------------------------------
    def _pairs(self) -> None:
        inst = self.inst
        capacity = np.array([k.capacity for k in inst.kinds])
        finite = np.isfinite(inst.load)
        # Share of a GPU's capacity that the adapter's whole traffic takes (0 where barred).
        frac = np.where(finite, inst.load, 0.0) / capacity[None, :]
        # Capacity units one traffic unit takes, rounded up so that solutions truly fit.
        unit_load = np.maximum(
            0.0, np.ceil(frac * CAPACITY_UNITS / self.units - _ROUND_SLACK)).astype(np.int64)
        # Most traffic units of an adapter one GPU can carry; pairs that cannot carry one
        # unit (or, without splitting, the whole adapter) are left out.
        fit = np.where(unit_load > 0, CAPACITY_UNITS // np.maximum(unit_load, 1), self.units)
        max_units = np.where(finite, np.minimum(fit, self.units), 0)
        pair_a: list[int] = []
        pair_g: list[int] = []
        for g, (k, _) in enumerate(self.candidates):
            adapters = np.flatnonzero(max_units[:, k] >= 1).tolist()
            pair_a += adapters
            pair_g += [g] * len(adapters)
        self.pair_a = np.array(pair_a, dtype=np.int64)
        self.pair_g = np.array(pair_g, dtype=np.int64)
        pair_k = np.array([k for k, _ in self.candidates], dtype=np.int64)[self.pair_g]
        self.pair_load = unit_load[self.pair_a, pair_k]
        self.pair_max = max_units[self.pair_a, pair_k]
        self.by_adapter: dict[int, list[int]] = {a: [] for a in range(inst.num_adapters)}
        self.by_gpu: dict[int, list[int]] = {g: [] for g in range(len(self.candidates))}
        for p, (a, g) in enumerate(zip(pair_a, pair_g, strict=True)):
            self.by_adapter[a].append(p)
            self.by_gpu[g].append(p)

    def _variables(self) -> None:
        new_bool = self.model.new_bool_var
        # use[g]: candidate GPU g is in the plan.
        self.use = [new_bool(f"use_{g}") for g in range(len(self.candidates))]
        # host[p]: pair p's GPU keeps its adapter loaded (takes a slot and cache bytes).
        self.host = [new_bool("") for _ in range(len(self.pair_a))]
        # share[p]: traffic units of pair p's adapter routed to its GPU; without splitting
        # the share is the host literal itself.
        new_int = self.model.new_int_var
        self.share = ([new_int(0, int(m), "") for m in self.pair_max.tolist()]
                      if self.split else list(self.host))

    @property
    def variables(self) -> int:
        """Number of model variables."""
        return len(self.use) + len(self.host) + (len(self.share) if self.split else 0)

    def _kind(self, g: int) -> int:
        return self.candidates[g][0]

    def _objective(self, lower_bound: float) -> None:
        scale = self.cost_scale
        self.cost = [math.floor(self.inst.kinds[k].unit_cost * scale + 1e-6)
                     for k, _ in self.candidates]
        objective = cp_model.LinearExpr.weighted_sum(self.use, self.cost)
        self.model.minimize(objective)
        if self.cost_exact and math.isfinite(lower_bound) and lower_bound > 0:
            # A valid bound as a cut: CP-SAT stops as soon as a plan meets it.
            self.model.add(objective >= math.ceil(lower_bound * scale - 1e-6))

    # Constraints ---------------------------------------------------------------------------
    def _route_every_adapter(self) -> None:
        # All of each adapter's traffic is routed somewhere.
        for ps in self.by_adapter.values():
            if not ps:
                # No candidate can carry this adapter: an empty clause makes that explicit.
                self.model.add_bool_or([])
            elif self.split:
                self.model.add(cp_model.LinearExpr.sum([self.share[p] for p in ps]) == self.units)
            else:
                self.model.add_exactly_one(self.host[p] for p in ps)

    def _share_needs_host(self) -> None:
        # Traffic goes only where the adapter is hosted, hosting only on a used GPU. A host
        # also carries at least one unit: a hosted adapter without traffic could be dropped
        # at no cost, so this loses no optimum and removes many equivalent solutions.
        model, use, host = self.model, self.use, self.host
        if self.split:
            for p, m in enumerate(self.pair_max.tolist()):
                model.add(self.share[p] <= m * host[p])
                model.add(self.share[p] >= host[p])
        for p, g in enumerate(self.pair_g.tolist()):
            model.add_implication(host[p], use[g])

    def _compute_capacity(self) -> None:
        # Load priced at the GPU's kind stays under the utilization that keeps the SLO.
        for g, ps in self.by_gpu.items():
            if not ps:
                continue
            coefficients = self.pair_load[ps].tolist()
            if sum(c * int(m) for c, m in zip(coefficients, self.pair_max[ps].tolist(),
                                              strict=True)) <= CAPACITY_UNITS:
                continue  # everything that may go here fits: the row cannot bind
            load = cp_model.LinearExpr.weighted_sum([self.share[p] for p in ps], coefficients)
            self.model.add(load <= CAPACITY_UNITS * self.use[g])

    def _adapter_slots(self) -> None:
        # A GPU hosts at most max_cpu_loras adapters.
        slots = self.inst.slots
        for g, ps in self.by_gpu.items():
            if len(ps) > slots:
                hosted = cp_model.LinearExpr.sum([self.host[p] for p in ps])
                self.model.add(hosted <= slots * self.use[g])

    def _adapter_cache(self) -> None:
        # Hosted adapters' weights fit the worker's adapter cache, when it is limited.
        if not math.isfinite(self.inst.cache_bytes):
            return
        cache = math.floor(self.inst.cache_bytes)
        sizes = np.ceil(self.inst.bytes).astype(np.int64)
        for g, ps in self.by_gpu.items():
            need = sizes[self.pair_a[ps]].tolist()
            if sum(need) <= cache:
                continue
            used = cp_model.LinearExpr.weighted_sum([self.host[p] for p in ps], need)
            self.model.add(used <= cache * self.use[g])

    def _replica_cap(self) -> None:
        # An adapter is hosted on at most max_replicas GPUs (routing already says one when
        # it cannot split).
        if not self.split:
            return
        for ps in self.by_adapter.values():
            if len(ps) > self.inst.max_replicas:
                hosts = cp_model.LinearExpr.sum([self.host[p] for p in ps])
                self.model.add(hosts <= self.inst.max_replicas)

    def _pool_sizes(self) -> None:
        # GPUs of one type do not exceed the pool.
        for pool in self.inst.config.pools:
            members = [self.use[g] for g in range(len(self.candidates))
                       if self.inst.kinds[self._kind(g)].gpu_type == pool.gpu_type]
            if len(members) > pool.count:
                self.model.add(cp_model.LinearExpr.sum(members) <= pool.count)

    def _symmetry_breaking(self) -> None:
        # Candidates of one kind are interchangeable: use them in index order.
        for g in range(1, len(self.candidates)):
            if self.candidates[g][0] == self.candidates[g - 1][0]:
                self.model.add_implication(self.use[g], self.use[g - 1])

    # Warm start ----------------------------------------------------------------------------
    def hint_values(self, gpus: list[OpenGPU]) -> tuple[list[int], list[int], list[int]] | None:
        """Express an assignment as ``(use, host, share)`` values, or None if it cannot be.

        Greedy GPUs take the first candidates of their kind. Shares become traffic units,
        rounded down and then topped up to ``resolution`` per adapter on the host with the
        most room left, so the hint respects the rounded capacities wherever it can. Without
        splitting, ``share`` repeats ``host``.
        """
        next_index: dict[int, int] = {}
        slot_of = {(k, j): g for g, (k, j) in enumerate(self.candidates)}
        pair_of = {(a, g): p for p, (a, g) in
                   enumerate(zip(self.pair_a.tolist(), self.pair_g.tolist(), strict=True))}
        use = [0] * len(self.candidates)
        placed: dict[int, list[tuple[int, float]]] = {}
        for gpu in gpus:
            j = next_index.get(gpu.kind, 0)
            next_index[gpu.kind] = j + 1
            g = slot_of.get((gpu.kind, j))
            if g is None:
                return None  # more GPUs of this kind than candidates
            use[g] = 1
            for a, w in gpu.shares.items():
                p = pair_of.get((a, g))
                if p is not None and w > EPS:
                    placed.setdefault(a, []).append((p, w))
        units = [0] * len(self.pair_a)
        if not self.split:
            for items in placed.values():
                units[max(items, key=lambda pw: pw[1])[0]] = 1
            return use, units, list(units)
        self._round_shares(placed, units)
        return use, [int(u > 0) for u in units], units

    def _round_shares(self, placed: dict[int, list[tuple[int, float]]],
                      units: list[int]) -> None:
        """Turn fractional shares into units that sum to ``resolution`` per adapter."""
        load = [0] * len(self.candidates)
        unit_load: list[int] = self.pair_load.tolist()
        most: list[int] = self.pair_max.tolist()
        gpu_of: list[int] = self.pair_g.tolist()
        for items in placed.values():
            for p, w in items:
                units[p] = min(most[p], math.floor(w * self.units + 1e-9))
                load[gpu_of[p]] += unit_load[p] * units[p]

        def room(p: int) -> int:
            # Units of pair p's adapter that still fit its GPU.
            free = CAPACITY_UNITS - load[gpu_of[p]]
            fits = free // unit_load[p] if unit_load[p] > 0 else most[p]
            return max(0, min(most[p] - units[p], fits))

        for items in placed.values():
            missing = self.units - sum(units[p] for p, _ in items)
            while missing > 0:
                p = max((p for p, _ in items), key=room)
                take = min(missing, room(p))
                if take <= 0:
                    # Nothing fits any more: overfill (an infeasible hint still guides).
                    p = max((p for p, _ in items), key=lambda p: most[p] - units[p])
                    take = min(missing, most[p] - units[p])
                    if take <= 0:
                        break
                units[p] += take
                load[gpu_of[p]] += unit_load[p] * take
                missing -= take

    def set_hint(self, gpus: list[OpenGPU]) -> bool:
        """Hint every variable from an assignment; return whether it could be expressed.

        Replaces any earlier hint. See :meth:`hint_values`.
        """
        # clear_hints does the same but is untyped.
        self.model.proto.clear_solution_hint()
        values = self.hint_values(gpus)
        if values is None:
            logger.debug("cpsat: the start uses more GPUs than the candidates; no hint")
            return False
        use, host, share = values
        variables = self.use + self.host + (self.share if self.split else [])
        numbers = use + host + (share if self.split else [])
        # One bulk write: add_hint per variable costs seconds on large models.
        hint = self.model.proto.solution_hint
        hint.vars.extend([v.index for v in variables])
        hint.values.extend(numbers)
        return True

    # Solving -------------------------------------------------------------------------------
    def solve(self, time_limit: float, start: list[OpenGPU] | None, seed: int, threads: int,
              integral: bool, progress: Progress | None = None,
              deterministic_time: float | None = None) -> MILPOutcome:
        """Run CP-SAT; return the best assignment found and, when valid, its bound.

        Parameters
        ----------
        time_limit : float
            Wall-clock seconds; a solve cut by it is not repeatable.
        start : list of OpenGPU, optional
            A plan to hint (usually the greedy's); without one an earlier hint stays.
        seed, threads : int
            CP-SAT's random seed and worker count.
        integral : bool
            Objective values are whole numbers in the caller's units: a gap below one is
            already optimal.
        progress : callable, optional
            ``progress(objective, bound, seconds)`` on every improving solution; ``bound`` is
            ``-inf`` when CP-SAT's bound is not valid for the real problem.
        deterministic_time : float, optional
            CP-SAT's deterministic work limit; with it (and a time limit that does not bind)
            the same seed and thread count give the same result.

        Returns
        -------
        MILPOutcome
            ``bound`` is ``-inf`` unless exact (see the module notes), ``inf`` if infeasible.
        """
        if start:
            self.set_hint(start)
        solver = cp_model.CpSolver()
        params = solver.parameters
        params.max_time_in_seconds = max(0.1, time_limit)
        if deterministic_time is not None:
            params.max_deterministic_time = deterministic_time
        params.random_seed = seed
        params.num_workers = max(1, threads)
        # Several workers race unless their portfolio runs on a fixed schedule. One worker
        # is deterministic by itself, and interleaving would starve it: its slices go to the
        # heavy LP subsolvers first (on a 100-adapter model the improving plan came after
        # 11 s instead of 1 s).
        params.interleave_search = threads > 1
        # Repeated presolve rounds (probing, clique merging) cost seconds on a few thousand
        # pairs and gained nothing measurable: one round halves the time to the first
        # solution on 300 adapters.
        params.max_presolve_iterations = 1
        params.log_search_progress = False
        if integral and self.cost_scale > 1:
            # Whole objective values are ``cost_scale`` scaled units apart.
            params.absolute_gap_limit = self.cost_scale * (1.0 - 1e-6)
        callback = _Progress(progress, self.cost_scale, self.exact) if progress else None
        status = cpsat_solve(solver, self.model, callback)
        logger.debug("cpsat: %s in %.2f s (%d variables)", solver.status_name(status),
                     solver.wall_time, self.variables)
        if status == cp_model.MODEL_INVALID:
            raise RuntimeError(f"CP-SAT rejected the model: {self.model.validate()}")
        if status == cp_model.INFEASIBLE:
            if self.exact:
                return MILPOutcome(None, math.inf, False, True, self.variables)
            logger.info("cpsat: the discretised model is infeasible; the real one may not be")
            return MILPOutcome(None, -math.inf, False, False, self.variables)
        bound = solver.best_objective_bound / self.cost_scale if self.exact else -math.inf
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return MILPOutcome(None, bound, False, False, self.variables)
        objective = solver.objective_value / self.cost_scale
        meets_bound = (self.cost_exact and math.isfinite(self.lower_bound)
                       and objective <= self.lower_bound + 1e-9)
        optimal = (status == cp_model.OPTIMAL and self.exact) or meets_bound
        values = list(solver.response_proto.solution)
        return MILPOutcome(self._extract(values), bound, optimal, False, self.variables)

    def _extract(self, values: list[int]) -> list[OpenGPU]:
        inst = self.inst
        used = [values[v.index] for v in self.use]
        amounts = [values[v.index] for v in self.share]
        adapter_of = self.pair_a.tolist()
        gpus: list[OpenGPU] = []
        for g, ps in self.by_gpu.items():
            if used[g] < 1:
                continue
            k = self._kind(g)
            gpu = OpenGPU(kind=k)
            for p in ps:
                if amounts[p] <= 0:
                    continue
                a = adapter_of[p]
                w = amounts[p] / self.units
                gpu.shares[a] = min(1.0, w)
                gpu.load += w * float(inst.load[a, k])
                gpu.bytes += float(inst.bytes[a])
            if gpu.shares:
                gpus.append(gpu)
        return gpus
