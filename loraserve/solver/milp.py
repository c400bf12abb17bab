"""Exact placement MILP (PuLP on HiGHS), warm-started from the greedy plan.

Candidate GPUs are grouped by kind ``k = (gpu_type, tier)``: kind ``k`` offers
``min(pool count, floor(UB / unit_cost))`` interchangeable candidates, where ``UB`` is the
greedy plan's cost (no optimal plan uses more), and candidates of one kind are used in index
order to break their symmetry.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import highspy
import pulp

from loraserve.solver._highs import thread_pool
from loraserve.solver._stop import pulp_solve
from loraserve.solver.greedy import OpenGPU
from loraserve.solver.instance import EPS, Instance

logger = logging.getLogger(__name__)


@dataclass
class MILPOutcome:
    """What the MILP returned: an assignment (if any), HiGHS's bound and status."""

    gpus: list[OpenGPU] | None
    bound: float
    proven_optimal: bool
    infeasible: bool
    variables: int


class _WarmStartHiGHS(pulp.HiGHS):  # type: ignore[misc]
    """PuLP's HiGHS interface plus a starting solution handed to HiGHS before it runs."""

    def __init__(self, start: dict[str, float], options: dict[str, Any],
                 progress: Callable[[float, float], None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._start = start
        self._options = options
        self._progress = progress

    def buildSolverModel(self, lp: pulp.LpProblem) -> None:  # noqa: N802 (PuLP's name)
        super().buildSolverModel(lp)
        for key, value in self._options.items():
            lp.solverModel.setOptionValue(key, value)
        if self._progress is not None:
            report = self._progress

            def on_event(event: Any) -> None:
                report(float(event.data_out.mip_primal_bound),
                       float(event.data_out.mip_dual_bound))

            # Improvements as they happen, plus HiGHS's periodic log lines for the bound.
            lp.solverModel.cbMipImprovingSolution.subscribe(on_event)
            lp.solverModel.cbMipLogging.subscribe(on_event)
        if not self._start:
            return
        values = [0.0] * len(lp.variables())
        for var in lp.variables():
            values[var.index] = self._start.get(var.name, 0.0)
        solution = highspy.HighsSolution()
        solution.col_value = values
        solution.value_valid = True
        lp.solverModel.setSolution(solution)


class PlacementMILP:
    """The per-GPU placement model; each constraint family is one named builder.

    Parameters
    ----------
    inst : Instance
    upper_bound : float
        Cost of a known plan; sizes the candidate set.
    lower_bound : float
        A valid bound, added as a cut.
    """

    def __init__(self, inst: Instance, upper_bound: float, lower_bound: float) -> None:
        self.inst = inst
        self.model = pulp.LpProblem("loraserve_placement", pulp.LpMinimize)
        self.candidates: list[tuple[int, int]] = []  # (kind, index within kind)
        for kind in inst.kinds:
            limit = kind.pool_count
            if math.isfinite(upper_bound):
                limit = min(limit, math.floor(upper_bound / kind.unit_cost + 1e-9))
            self.candidates += [(kind.index, j) for j in range(limit)]
        self.pairs = [
            (a, g) for a in range(inst.num_adapters)
            for g, (k, _) in enumerate(self.candidates) if inst.allowed(a, k)
        ]
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
    def _variables(self) -> None:
        # use[g] = 1 when candidate GPU g is in the plan.
        self.use = {g: self.model.add_variable(f"use_{g}", cat="Binary")
                    for g in range(len(self.candidates))}
        # host[a, g] = 1 when GPU g keeps adapter a loaded (takes a slot and cache bytes).
        self.host = {(a, g): self.model.add_variable(f"host_{a}_{g}", cat="Binary")
                     for a, g in self.pairs}
        # share[a, g]: fraction of adapter a's requests routed to GPU g.
        self.share = {(a, g): self.model.add_variable(f"share_{a}_{g}", lowBound=0, upBound=1)
                      for a, g in self.pairs}
        self.by_adapter: dict[int, list[int]] = {}
        self.by_gpu: dict[int, list[int]] = {}
        for a, g in self.pairs:
            self.by_adapter.setdefault(a, []).append(g)
            self.by_gpu.setdefault(g, []).append(a)

    def _kind(self, g: int) -> int:
        return self.candidates[g][0]

    def _objective(self, lower_bound: float) -> None:
        cost = pulp.lpSum(self.inst.kinds[self._kind(g)].unit_cost * u for g, u in self.use.items())
        self.model += cost
        if lower_bound > 0:
            # A valid bound as a cut: HiGHS can stop as soon as the incumbent meets it.
            self.model += (cost >= lower_bound, "bound_cut")

    # Constraints ---------------------------------------------------------------------------
    def _route_every_adapter(self) -> None:
        # All of each adapter's traffic is routed somewhere.
        for a, gs in self.by_adapter.items():
            self.model += (pulp.lpSum(self.share[a, g] for g in gs) == 1, f"route_{a}")

    def _share_needs_host(self) -> None:
        # Traffic goes only where the adapter is hosted, and hosting only on a used GPU.
        for a, g in self.pairs:
            self.model += (self.share[a, g] <= self.host[a, g], f"hosted_{a}_{g}")
            self.model += (self.host[a, g] <= self.use[g], f"used_{a}_{g}")

    def _compute_capacity(self) -> None:
        # Load priced at the GPU's tier stays under the utilization that keeps the SLO.
        for g, adapters in self.by_gpu.items():
            k = self._kind(g)
            load = pulp.lpSum(float(self.inst.load[a, k]) * self.share[a, g] for a in adapters)
            self.model += (load <= self.inst.kinds[k].capacity * self.use[g], f"compute_{g}")

    def _adapter_slots(self) -> None:
        # A GPU hosts at most max_cpu_loras adapters.
        for g, adapters in self.by_gpu.items():
            self.model += (pulp.lpSum(self.host[a, g] for a in adapters)
                           <= self.inst.slots * self.use[g], f"slots_{g}")

    def _adapter_cache(self) -> None:
        # Hosted adapters' weights fit the worker's adapter cache, when it is limited.
        if not math.isfinite(self.inst.cache_bytes):
            return
        scale = 2.0**30
        for g, adapters in self.by_gpu.items():
            used = pulp.lpSum(float(self.inst.bytes[a] / scale) * self.host[a, g] for a in adapters)
            self.model += (used <= self.inst.cache_bytes / scale * self.use[g], f"memory_{g}")

    def _replica_cap(self) -> None:
        # An adapter is hosted on at most max_replicas GPUs.
        for a, gs in self.by_adapter.items():
            if len(gs) > self.inst.max_replicas:
                self.model += (pulp.lpSum(self.host[a, g] for g in gs) <= self.inst.max_replicas,
                               f"replicas_{a}")

    def _pool_sizes(self) -> None:
        # GPUs of one type do not exceed the pool.
        for pool in self.inst.config.pools:
            members = [g for g in self.use if self.inst.kinds[self._kind(g)].gpu_type
                       == pool.gpu_type]
            if len(members) > pool.count:
                self.model += (pulp.lpSum(self.use[g] for g in members) <= pool.count,
                               f"pool_{pool.gpu_type}")

    def _symmetry_breaking(self) -> None:
        # Candidates of one kind are interchangeable: use them in index order.
        for g in range(1, len(self.candidates)):
            if self.candidates[g][0] == self.candidates[g - 1][0]:
                self.model += (self.use[g] <= self.use[g - 1], f"order_{g}")

    # Solving -------------------------------------------------------------------------------
    def start_from(self, gpus: list[OpenGPU]) -> dict[str, float]:
        """Express an assignment as variable values (greedy GPUs take the first candidates)."""
        next_index: dict[int, int] = {}
        slot_of = {(k, j): g for g, (k, j) in enumerate(self.candidates)}
        start: dict[str, float] = {}
        for gpu in gpus:
            j = next_index.get(gpu.kind, 0)
            next_index[gpu.kind] = j + 1
            g = slot_of.get((gpu.kind, j))
            if g is None:
                return {}
            start[self.use[g].name] = 1.0
            for a, w in gpu.shares.items():
                start[self.host[a, g].name] = 1.0
                start[self.share[a, g].name] = w
        return start

    def solve(self, time_limit: float, start: list[OpenGPU] | None, seed: int,
              threads: int, integral: bool,
              progress: Callable[[float, float], None] | None = None) -> MILPOutcome:
        """Run HiGHS; return the best assignment found and its dual bound.

        ``progress`` receives (incumbent, bound) on every improving solution and on HiGHS's
        periodic log lines.
        """
        options: dict[str, Any] = {"random_seed": seed, "mip_rel_gap": 1e-6}
        if integral:
            # Objective values are whole GPU counts: a gap below 1 is already optimal.
            options["mip_abs_gap"] = 1.0 - 1e-6
        solver = _WarmStartHiGHS(
            start=self.start_from(start) if start else {}, options=options, progress=progress,
            msg=False, timeLimit=max(0.1, time_limit), threads=threads,
        )
        with thread_pool(threads):
            pulp_solve(self.model, solver)
        highs = self.model.solverModel
        model_status = highs.getModelStatus()
        info = highs.getInfo()
        n_vars = len(self.use) + len(self.host) + len(self.share)
        if model_status == highspy.HighsModelStatus.kInfeasible:
            return MILPOutcome(None, math.inf, False, True, n_vars)
        bound = float(info.mip_dual_bound)
        optimal = model_status == highspy.HighsModelStatus.kOptimal
        if info.primal_solution_status != 2:  # 2: feasible
            return MILPOutcome(None, bound, False, False, n_vars)
        return MILPOutcome(self._extract(), bound, optimal, False, n_vars)

    def _extract(self) -> list[OpenGPU]:
        gpus: list[OpenGPU] = []
        for g, use in self.use.items():
            if (use.value() or 0.0) < 0.5:
                continue
            k = self._kind(g)
            gpu = OpenGPU(kind=k)
            for a in self.by_gpu.get(g, []):
                w = float(self.share[a, g].value() or 0.0)
                if w > EPS:
                    gpu.shares[a] = min(1.0, w)
                    gpu.load += w * float(self.inst.load[a, k])
                    gpu.bytes += float(self.inst.bytes[a])
            if gpu.shares:
                gpus.append(gpu)
        return gpus
