"""Plans that change during a run: static, periodic, drift-triggered re-planning, on demand.

Adapter popularity drifts (:class:`~loraserve.sim.workload.Drift`, or any trace); this module
replays such traffic against fleets whose plan changes over time, so the cost of following
the drift (bytes migrated, cold loads) and of not following it (SLO misses) can be compared.

Strategies (:data:`STRATEGIES`); every plan-based one starts from the same plan, made from
scratch for the request rates observed in the first interval:

* ``static``: that plan, kept for the whole run;
* ``periodic``: at the start of every interval, a plan made from scratch for the rates
  observed in the previous interval (what a cron job re-planning blindly does);
* ``drift``: :class:`~loraserve.drift.DriftController` (the loop body of ``loraserve
  watch``) fed, every ``observe_s`` seconds, with the per-adapter request counters the
  router would have exported by then; its re-plans are incremental and committed at once;
* ``oracle-scratch``: at the start of every interval, a plan made from scratch for the
  rates of that same interval (hindsight: no real controller can do this; an upper bound on
  what re-planning from scratch can give);
* ``vllm-default``: :func:`~loraserve.sim.policies.deploy`'s on-demand fleet (every GPU at
  the largest rank, adapters loaded on demand, least-outstanding routing), on a fixed
  number of GPUs.

A scratch plan is relabelled onto the plan it replaces (:func:`~loraserve.models.migration.
relabel`, the LoRAServe paper's renaming), so its migration moves only what its new
placement needs. Each change of plan counts :func:`~loraserve.models.migration.
plan_migration`'s ``bytes_moved``.

How the changing plans are simulated: the worker list is the union of every plan's GPUs; a
GPU whose tier or type changes between consecutive plans, or that comes back after it left
the plan, is a new worker (a restart: cold caches). Each request is routed by the weights of
the plan in force at its arrival; a request already on a GPU finishes there (drain). Workers
of the first plan start warm (its adapters in their caches, as a deployed plan would); an
adapter newly placed on a running GPU, and every adapter of a GPU started later, is loaded
on its first request there (a cold load from disk, then the host-to-GPU copy), which is how
the engine charges a migration's cost to the traffic.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loraserve._argtypes import positive as _positive
from loraserve.drift import Counters, DriftController, DriftPolicy, with_rates
from loraserve.drift.options import add_policy_arguments, policy_from_args
from loraserve.models import Config, ConfigError, PlacementPlan, load_config
from loraserve.models.io import check_outputs, write_atomic
from loraserve.models.migration import plan_migration, relabel
from loraserve.profiles import CostModel
from loraserve.sim.engine import SimOptions, Worker, run, weighted_routes
from loraserve.sim.experiments import parse_names, save_figure
from loraserve.sim.policies import deploy, deployment_from_plan
from loraserve.sim.results import SimResult
from loraserve.sim.workload import (
    Drift,
    Requests,
    fit_token_means,
    generate_requests,
    requests_from_trace,
)
from loraserve.solver import solve
from loraserve.solver.api import SOLVERS, SolverName

logger = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("static", "periodic", "drift", "oracle-scratch", "vllm-default")

#: Columns of :attr:`DynamicResult.intervals`.
INTERVAL_COLUMNS: tuple[str, ...] = (
    "strategy", "interval", "start_s", "end_s", "requests", "slo_attainment", "ttft_p99_ms",
    "gpus", "replans", "loads", "bytes_moved",
)
#: Columns of :attr:`DynamicResult.summary`.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "strategy", "requests", "slo_attainment", "meets_slo", "ttft_p50_ms", "ttft_p99_ms",
    "tpot_p99_ms", "gpu_hours", "mean_gpus", "peak_gpus", "replans", "replan_failures",
    "loads", "bytes_moved", "cold_loads", "workers", "plan_s", "sim_s",
)


def default_drift_policy(interval_s: float) -> DriftPolicy:
    """The drift policy :func:`compare_dynamic` uses unless given one.

    ``loraserve watch``'s defaults, except a half-life of half an interval: the watcher's
    300 s is for a fleet that re-plans every few minutes at most; here the newest interval
    should weigh about as much in the estimate (three quarters) as it does in a periodic
    re-plan (all), so that the two react to a shift equally fast.
    """
    return DriftPolicy(half_life_s=interval_s / 2)


@dataclass(frozen=True)
class DynamicOptions:
    """Settings of a dynamic comparison.

    Attributes
    ----------
    interval_s : float
        Length of an interval: periodic and oracle re-planning happen at its boundaries,
        and the tables report per interval.
    plan_headroom : float
        Every plan-based strategy plans for this many times the observed rates (the drift
        controller reads counters scaled by it): the margin between the planner's
        utilization limit and what meets the SLO in simulation, the same for all. The
        default, 1.25, is about the quickstart's: its plan packs 14 GPUs, the simulator
        needs 18 to meet the SLO (docs/simulator.md).
    observe_s : float or None
        How often the drift controller reads the counters (default: a quarter of an
        interval). Reading is cheap; only re-plans move adapters.
    drift_policy : DriftPolicy or None
        The drift controller's policy (default :func:`default_drift_policy`).
    solver : str
        Algorithm of the from-scratch plans (:func:`loraserve.solve`'s ``solver``).
    time_limit : float
        Seconds for each solve.
    seed : int
        Seeds the solvers and the routing draws.
    vllm_gpus : int or None
        Fleet size of ``vllm-default`` (default: the most GPUs any plan-based strategy
        used at any time, or its own sizing when none ran).
    sim : SimOptions
        Engine settings (cold-load cost, drain).
    """

    interval_s: float = 60.0
    plan_headroom: float = 1.25
    observe_s: float | None = None
    drift_policy: DriftPolicy | None = None
    solver: SolverName = "greedy"
    time_limit: float = 10.0
    seed: int = 0
    vllm_gpus: int | None = None
    sim: SimOptions = field(default_factory=SimOptions)

    def __post_init__(self) -> None:
        if not (self.interval_s > 0 and math.isfinite(self.interval_s)):
            raise ConfigError(f"interval must be a positive number of seconds, got "
                              f"{self.interval_s!r}")
        if not (self.plan_headroom > 0 and math.isfinite(self.plan_headroom)):
            raise ConfigError(f"plan headroom must be a positive factor, got "
                              f"{self.plan_headroom!r}")
        if self.observe_s is not None and not (self.observe_s > 0
                                               and math.isfinite(self.observe_s)):
            raise ConfigError(f"observe interval must be a positive number of seconds, got "
                              f"{self.observe_s!r}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(SOLVERS)}, not "
                              f"{self.solver!r}")
        if not self.time_limit > 0:
            raise ConfigError(f"time limit must be positive, got {self.time_limit!r}")
        if self.vllm_gpus is not None and self.vllm_gpus < 1:
            raise ConfigError(f"vllm-default needs at least 1 GPU, got {self.vllm_gpus}")

    @property
    def policy(self) -> DriftPolicy:
        """The drift controller's policy."""
        return self.drift_policy or default_drift_policy(self.interval_s)

    @property
    def observe_every(self) -> float:
        """Seconds between the drift controller's readings."""
        return self.observe_s if self.observe_s is not None else self.interval_s / 4


@dataclass(frozen=True)
class Replan:
    """A plan put in force at ``time`` (the first one, at 0, is the initial deployment).

    Attributes
    ----------
    time : float
        Seconds from the start; requests arriving from then on are routed by ``plan``.
    plan : PlacementPlan
    trigger : str
        ``initial``, ``periodic``, ``oracle``, or the drift controller's ``slo`` / ``saving``.
    reason : str
    loads, bytes_moved, tier_changes : int
        Of :func:`~loraserve.models.migration.plan_migration` from the previous plan (0 for
        the initial one).
    """

    time: float
    plan: PlacementPlan
    trigger: str
    reason: str
    loads: int = 0
    bytes_moved: int = 0
    tier_changes: int = 0


@dataclass
class Timeline:
    """One strategy's plans over the run, and (for ``drift``) every decision it took."""

    strategy: str
    replans: list[Replan]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    plan_s: float = 0.0

    def gpus_at(self, t: float) -> int:
        """GPUs of the plan in force at ``t``."""
        current = self.replans[0].plan.num_gpus
        for replan in self.replans:
            if replan.time > t:
                break
            current = replan.plan.num_gpus
        return current


@dataclass
class DynamicResult:
    """Strategies side by side on one drifting stream.

    Attributes
    ----------
    intervals : pandas.DataFrame
        One row per (strategy, interval) (:data:`INTERVAL_COLUMNS`): SLO attainment and p99
        TTFT of the requests arriving in it, mean GPUs in use (time-weighted), re-plans put
        in force in it and their adapter loads and bytes.
    summary : pandas.DataFrame
        One row per strategy (:data:`SUMMARY_COLUMNS`): overall attainment, GPU-hours over
        the arrival window, total bytes migrated, latency percentiles, engine cold loads,
        seconds spent planning and simulating; ``replan_failures`` counts the drift
        controller's triggers whose re-plan found no plan (the old plan stayed).
    timelines : dict
        Each plan-based strategy's :class:`Timeline`.
    runs : dict
        Each strategy's :class:`~loraserve.sim.results.SimResult`.
    interval_s : float
    """

    intervals: pd.DataFrame
    summary: pd.DataFrame
    timelines: dict[str, Timeline]
    runs: dict[str, SimResult]
    interval_s: float

    @property
    def decisions(self) -> pd.DataFrame:
        """The drift controller's decisions (time, action, trigger, worst utilization, reason)."""
        timeline = self.timelines.get("drift")
        return pd.DataFrame(timeline.decisions if timeline is not None else [],
                            columns=["time", "action", "trigger", "worst_utilization",
                                     "saving", "reason"])


# ---------------------------------------------------------------------------------------------
# Observed traffic


def counts_between(requests: Requests, n_adapters: int, lo: float, hi: float) -> np.ndarray:
    """Requests per adapter arriving in ``[lo, hi)``."""
    i0, i1 = np.searchsorted(requests.arrival, [lo, hi], side="left")
    return np.bincount(requests.adapter[int(i0):int(i1)], minlength=n_adapters)


def observed_rates(requests: Requests, config: Config, lo: float, hi: float) -> dict[str, float]:
    """Each adapter's request rate in ``[lo, hi)`` as the router would have counted it."""
    counts = counts_between(requests, len(config.adapters), lo, hi)
    span = max(hi - lo, 1e-9)
    return {a.id: float(counts[k]) / span for k, a in enumerate(config.adapters)}


def counters_at(requests: Requests, config: Config, t: float) -> Counters:
    """The router's cumulative per-adapter request counters at ``t`` (arrivals before it).

    Request counts only, so the drift controller keeps the config's token means.
    """
    counts = counts_between(requests, len(config.adapters), 0.0, t)
    return Counters(time=t, requests={a.id: float(counts[k])
                                      for k, a in enumerate(config.adapters)},
                    prompt_tokens={}, output_tokens={})


def _boundaries(duration: float, step: float) -> list[float]:
    """``0, step, 2 step, ...`` below ``duration``."""
    count = max(1, math.ceil(duration / step - 1e-9))
    return [k * step for k in range(count)]


# ---------------------------------------------------------------------------------------------
# Plans over time


def _scratch(config: Config, rates: dict[str, float], options: DynamicOptions,
             previous: PlacementPlan | None) -> tuple[PlacementPlan | None, str]:
    planning = with_rates(config, {a: options.plan_headroom * r for a, r in rates.items()})
    result = solve(planning, solver=options.solver, time_limit=options.time_limit,
                   seed=options.seed)
    if result.plan is None:
        return None, result.message
    plan = result.plan if previous is None else relabel(result.plan, previous, planning)
    return plan, f"{result.solver}: {plan.num_gpus} GPUs"


def _replan(previous: PlacementPlan, plan: PlacementPlan, config: Config, t: float,
            trigger: str, reason: str) -> Replan:
    migration = plan_migration(previous, plan, config)
    return Replan(t, plan, trigger, reason, migration.loads, migration.bytes_moved,
                  migration.tier_changes)


def initial_plan(config: Config, requests: Requests, options: DynamicOptions) -> PlacementPlan:
    """The plan every plan-based strategy starts with: for the first interval's rates.

    Raises
    ------
    ConfigError
        When the solver finds no plan for them.
    """
    end = min(options.interval_s, requests.duration)
    plan, message = _scratch(config, observed_rates(requests, config, 0.0, end), options, None)
    if plan is None:
        raise ConfigError(f"no plan for the first interval's traffic: {message}; give the "
                          "pools more GPUs or lower the rate")
    return plan


def plan_timeline(strategy: str, config: Config, requests: Requests,
                  options: DynamicOptions, start: PlacementPlan | None = None) -> Timeline:
    """The plans ``strategy`` puts in force over ``requests``' window.

    Parameters
    ----------
    strategy : str
        A plan-based strategy: ``static``, ``periodic``, ``drift`` or ``oracle-scratch``.
    config : Config
        Adapters (their rates are replaced by the observed ones), pools, serving, SLO.
    requests : Requests
        The traffic; only its arrivals and adapters are read (what a router counts).
    options : DynamicOptions
    start : PlacementPlan, optional
        The initial plan (default :func:`initial_plan`).

    Returns
    -------
    Timeline
    """
    if strategy not in STRATEGIES or strategy == "vllm-default":
        raise ConfigError(f"unknown plan-based strategy '{strategy}'; use static, periodic, "
                          "drift or oracle-scratch")
    started = time.perf_counter()
    plan = start or initial_plan(config, requests, options)
    replans = [Replan(0.0, plan, "initial", "first interval's rates")]
    timeline = Timeline(strategy, replans)
    interval, duration = options.interval_s, requests.duration
    if strategy in ("periodic", "oracle-scratch"):
        for t in _boundaries(duration, interval)[1:]:
            lo, hi = (t - interval, t) if strategy == "periodic" else (t, min(t + interval,
                                                                             duration))
            new, message = _scratch(config, observed_rates(requests, config, lo, hi), options,
                                    plan)
            if new is None:
                logger.warning("%s at %.0f s: no plan (%s); keeping the running one",
                               strategy, t, message)
                continue
            trigger = "periodic" if strategy == "periodic" else "oracle"
            replans.append(_replan(plan, new, config, t, trigger, message))
            plan = new
    elif strategy == "drift":
        # Plans carry the same headroom as the other strategies' (the policy's margin).
        policy = replace(options.policy, margin=options.plan_headroom)
        controller = DriftController(config, plan, policy)
        step = options.observe_every
        for t in _boundaries(duration, step):
            decision = controller.step(counters_at(requests, config, t))
            timeline.decisions.append({
                "time": t, "action": decision.action, "trigger": decision.trigger,
                "worst_utilization": max(decision.utilization.values(), default=math.nan),
                "saving": decision.saving, "reason": decision.reason})
            if decision.action != "replan" or decision.plan is None:
                continue
            controller.commit(decision)
            migration = decision.migration or plan_migration(plan, decision.plan, config)
            replans.append(Replan(t, decision.plan, decision.trigger, decision.reason,
                                  migration.loads, migration.bytes_moved,
                                  migration.tier_changes))
            plan = decision.plan
    timeline.plan_s = time.perf_counter() - started
    logger.info("%s: %d re-plans in %.1f s", strategy, len(replans) - 1, timeline.plan_s)
    return timeline


# ---------------------------------------------------------------------------------------------
# Simulation


def fleet_for(timeline: Timeline, config: Config, requests: Requests,
              seed: int = 0) -> tuple[list[Worker], np.ndarray]:
    """Workers (the union of the plans' GPUs) and each request's worker.

    See the module notes for when a GPU becomes a new worker. Requests are routed by the
    weights of the plan in force at their arrival (seeded draws).

    Raises
    ------
    ConfigError
        When a plan leaves an adapter that has requests without a route.
    """
    index = {a.id: i for i, a in enumerate(config.adapters)}
    first = deployment_from_plan(timeline.replans[0].plan, config)
    workers: list[Worker] = list(first.workers)
    running: dict[str, tuple[int, str, int]] = {
        w.gpu_id: (k, w.gpu_type, w.tier) for k, w in enumerate(workers)}
    routes = np.zeros(len(requests), dtype=np.int64)
    rng = np.random.default_rng(seed)
    ends = [r.time for r in timeline.replans[1:]] + [math.inf]
    for replan, end in zip(timeline.replans, ends, strict=True):
        plan = replan.plan
        if replan.trigger != "initial":
            following: dict[str, tuple[int, str, int]] = {}
            for gpu in plan.gpus:
                old = running.get(gpu.gpu_id)
                if old is not None and old[1:] == (gpu.gpu_type, gpu.tier):
                    following[gpu.gpu_id] = old
                else:
                    workers.append(Worker(f"{gpu.gpu_id}@{replan.time:g}s", gpu.gpu_type,
                                          gpu.tier))
                    following[gpu.gpu_id] = (len(workers) - 1, gpu.gpu_type, gpu.tier)
            running = following
        weights: list[list[tuple[int, float]]] = [[] for _ in config.adapters]
        for adapter_id, split in plan.routes.items():
            if adapter_id not in index:
                continue
            for gpu_id, weight in split.items():
                if weight > 0:
                    weights[index[adapter_id]].append((running[gpu_id][0], float(weight)))
        lo, hi = (int(i) for i in np.searchsorted(requests.arrival, [replan.time, end]))
        if hi > lo:
            part = Requests(requests.arrival[lo:hi], requests.adapter[lo:hi],
                            requests.prompt_tokens[lo:hi], requests.output_tokens[lo:hi],
                            requests.duration)
            routes[lo:hi] = weighted_routes(part, weights, rng)
    return workers, routes


def simulate_timeline(timeline: Timeline, config: Config, requests: Requests,
                      options: DynamicOptions, cost_model: CostModel | None = None,
                      progress: Callable[[float], None] | None = None) -> SimResult:
    """Simulate the fleet that follows ``timeline``'s plans over ``requests``."""
    workers, routes = fleet_for(timeline, config, requests, options.seed)
    model = cost_model or CostModel.from_config(config)
    result = run(config, workers, requests, routes, options.sim, model, progress)
    return SimResult(timeline.strategy, config, result, model)


def _gpu_seconds(timeline: Timeline | None, fixed: int, lo: float, hi: float) -> float:
    """Integral of the GPUs in use over ``[lo, hi)``."""
    if timeline is None:
        return fixed * (hi - lo)
    total = 0.0
    replans = timeline.replans
    for k, replan in enumerate(replans):
        start = max(lo, replan.time)
        end = min(hi, replans[k + 1].time if k + 1 < len(replans) else math.inf)
        if end > start:
            total += replan.plan.num_gpus * (end - start)
    return total


def _p99(values: np.ndarray) -> float:
    if values.size == 0:
        return math.nan
    values = np.where(np.isnan(values), np.inf, values)
    return float(np.percentile(values, 99, method="higher"))


def _tables(strategy: str, sim: SimResult, timeline: Timeline | None, fixed: int,
            interval: float, duration: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    table = sim.requests
    arrival = table["arrival_s"].to_numpy()
    ok = table["slo_ok"].to_numpy(dtype=bool)
    ttft = table["ttft_ms"].to_numpy(dtype=float)
    replans = timeline.replans[1:] if timeline is not None else []
    rows = []
    for k, lo in enumerate(_boundaries(duration, interval)):
        hi = min(lo + interval, duration)
        mine = (arrival >= lo) & (arrival < hi)
        these = [r for r in replans if lo <= r.time < hi]
        rows.append({
            "strategy": strategy, "interval": k, "start_s": lo, "end_s": hi,
            "requests": int(mine.sum()),
            "slo_attainment": float(ok[mine].mean()) if mine.any() else math.nan,
            "ttft_p99_ms": _p99(ttft[mine]),
            "gpus": _gpu_seconds(timeline, fixed, lo, hi) / max(hi - lo, 1e-9),
            "replans": len(these),
            "loads": sum(r.loads for r in these),
            "bytes_moved": sum(r.bytes_moved for r in these),
        })
    s = sim.summary
    gpu_s = _gpu_seconds(timeline, fixed, 0.0, duration)
    peak = max(r.plan.num_gpus for r in timeline.replans) if timeline is not None else fixed
    summary = {
        "strategy": strategy, "requests": s["requests"], "slo_attainment": s["slo_attainment"],
        "meets_slo": s["meets_slo"], "ttft_p50_ms": s["ttft_p50_ms"],
        "ttft_p99_ms": s["ttft_p99_ms"], "tpot_p99_ms": s["tpot_p99_ms"],
        "gpu_hours": gpu_s / 3600.0, "mean_gpus": gpu_s / max(duration, 1e-9),
        "peak_gpus": peak, "replans": len(replans),
        # A trigger that fired but found no plan: the fleet kept running the old one.
        "replan_failures": sum(1 for d in timeline.decisions
                               if d["action"] == "keep" and d["trigger"] != "none")
        if timeline is not None else 0,
        "loads": sum(r.loads for r in replans),
        "bytes_moved": sum(r.bytes_moved for r in replans), "cold_loads": s["cold_loads"],
        "workers": len(sim.run.workers),
        "plan_s": timeline.plan_s if timeline is not None else 0.0, "sim_s": s["wall_s"],
    }
    return rows, summary


def parse_strategies(names: Sequence[str]) -> list[str]:
    """Strategy names, split on commas and spaces, checked, duplicates dropped.

    Raises
    ------
    ConfigError
        For an unknown name, or none at all.
    """
    return parse_names(names, STRATEGIES, "--strategies", "strategy")


def compare_dynamic(config: Config, requests: Requests, strategies: Sequence[str] = STRATEGIES,
                    options: DynamicOptions | None = None,
                    on_progress: Callable[[str], None] | None = None) -> DynamicResult:
    """Run ``strategies`` over one (drifting) request stream and tabulate them.

    Parameters
    ----------
    config : Config
        Adapters (``requests.adapter`` indexes them), pools, serving limits, SLO. Their
        configured rates are used only by ``vllm-default``'s warm start; every plan is made
        for observed rates.
    requests : Requests
        The traffic, for example ``generate_requests(config, 1800, drift=Drift(300, 0.25))``.
    strategies : sequence of str
        Names from :data:`STRATEGIES`.
    options : DynamicOptions, optional
    on_progress : callable, optional
        Told one line per stage.

    Returns
    -------
    DynamicResult
    """
    options = options or DynamicOptions()
    chosen = parse_strategies(strategies)
    if not len(requests):
        raise ConfigError("the traffic has no requests; give a longer duration or a rate")
    if options.interval_s >= requests.duration:
        raise ConfigError(f"interval {options.interval_s:g} s is not shorter than the traffic "
                          f"({requests.duration:g} s); give a shorter --interval or a longer "
                          "--duration")

    def say(line: str) -> None:
        if on_progress is not None:
            on_progress(line)

    model = CostModel.from_config(config)
    timelines: dict[str, Timeline] = {}
    planned = [s for s in chosen if s != "vllm-default"]
    if planned:
        start = initial_plan(config, requests, options)
        for strategy in planned:
            say(f"{strategy}: planning")
            timelines[strategy] = plan_timeline(strategy, config, requests, options, start)
    runs: dict[str, SimResult] = {}
    rows: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    fixed = options.vllm_gpus
    if fixed is None and timelines:
        fixed = max(r.plan.num_gpus for t in timelines.values() for r in t.replans)
    for strategy in chosen:
        say(f"{strategy}: simulating {len(requests)} requests")
        timeline = timelines.get(strategy)
        if timeline is None:
            deployment = deploy("vllm-default", config, fixed, cost_model=model)
            fixed = deployment.num_gpus
            result = run(config, deployment.workers, requests, None, options.sim, model)
            sim = SimResult(strategy, config, result, model)
        else:
            sim = simulate_timeline(timeline, config, requests, options, model)
        runs[strategy] = sim
        part, summary = _tables(strategy, sim, timeline, fixed or 0, options.interval_s,
                                requests.duration)
        rows += part
        summaries[strategy] = summary
    return DynamicResult(
        intervals=pd.DataFrame(rows, columns=list(INTERVAL_COLUMNS)),
        summary=pd.DataFrame([summaries[s] for s in chosen], columns=list(SUMMARY_COLUMNS)),
        timelines=timelines, runs=runs, interval_s=options.interval_s)


def plot_dynamic(result: DynamicResult, path: str | Path, title: str = "") -> None:
    """Draw SLO attainment per interval and GPUs in use over time, per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = result.intervals
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.8), sharex=True)
    for k, (strategy, group) in enumerate(frame.groupby("strategy", sort=False)):
        mid = (group["start_s"] + group["end_s"]) / 2 / 60
        line = top.plot(mid, 100 * group["slo_attainment"], marker=".", label=strategy)
        color = line[0].get_color()
        timeline = result.timelines.get(str(strategy))
        end = float(group["end_s"].max())
        if timeline is None:
            gpus = float(group["gpus"].iloc[0])
            bottom.plot([0, end / 60], [gpus, gpus], color=color, label=strategy)
            continue
        times = [r.time for r in timeline.replans] + [end]
        counts = [r.plan.num_gpus for r in timeline.replans]
        bottom.step([t / 60 for t in times], counts + counts[-1:], where="post", color=color,
                    label=strategy)
        # One strip of ticks per strategy above 100 %: when it put a new plan in force.
        moved = [r.time / 60 for r in timeline.replans[1:] if r.loads or r.tier_changes]
        top.scatter(moved, [102.0 + 2.5 * k] * len(moved), color=color, marker="|", s=60)
    top.set_ylabel("SLO attainment (%)")
    top.set_title("per interval; ticks above: re-plans that moved adapters", fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="lower left")
    bottom.set_xlabel("time (min)")
    bottom.set_ylabel("GPUs in use")
    bottom.yaxis.get_major_locator().set_params(integer=True)
    bottom.grid(alpha=0.3)
    if title:
        fig.suptitle(textwrap.fill(title, 100), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# ``loraserve compare --dynamic`` (command-line front end; writes to stdout and stderr)

#: Seconds of generated traffic for ``compare --dynamic`` without ``--trace`` or ``--duration``.
DEFAULT_DYNAMIC_DURATION_S = 1200.0


def add_dynamic_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--dynamic`` and its options to the ``compare`` subparser."""
    group = parser.add_argument_group(
        "over time (--dynamic)",
        "compare strategies that change the plan as popularity drifts (docs/dynamic.md)")
    group.add_argument("--dynamic", action="store_true",
                       help="static plan vs periodic vs drift-triggered re-planning vs "
                            "vllm-default on drifting traffic, over time")
    group.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                       metavar="STRATEGY",
                       help=f"strategies (default all: {', '.join(STRATEGIES)})")
    group.add_argument("--interval", type=_positive, default=60.0, metavar="S",
                       help="re-planning period of periodic and oracle-scratch, and the "
                            "tables' interval (default 60)")
    group.add_argument("--observe", type=_positive, metavar="S",
                       help="seconds between the drift controller's counter readings "
                            "(default a quarter of --interval)")
    group.add_argument("--drift-every", type=_positive, default=300.0, metavar="S",
                       help="popularity epoch of the traffic (default 300)")
    group.add_argument("--drift-fraction", type=float, default=0.25, metavar="F",
                       help="share of adapters that swap popularity at each epoch, in (0, 1] "
                            "(default 0.25)")
    group.add_argument("--plan-headroom", type=_positive, default=1.25, metavar="X",
                       help="every plan is made for X times the observed rates (default 1.25)")
    add_policy_arguments(group, None, "default half of --interval", prefix="drift policy: ")
    group.add_argument("--solver", choices=SOLVERS, default="greedy",
                       help="solver of the from-scratch plans (default greedy)")
    group.add_argument("--intervals-csv", metavar="FILE",
                       help="write the per-interval table (--csv writes the summary)")


def _dynamic_options(args: argparse.Namespace) -> DynamicOptions:
    from loraserve.sim.cli import _options

    half_life = args.half_life if args.half_life is not None else args.interval / 2
    policy = policy_from_args(args, half_life, time_limit=args.time_limit)
    return DynamicOptions(interval_s=args.interval, plan_headroom=args.plan_headroom,
                          observe_s=args.observe, drift_policy=policy, solver=args.solver,
                          time_limit=args.time_limit, seed=args.seed, vllm_gpus=args.gpus,
                          sim=_options(args))


def _dynamic_traffic(args: argparse.Namespace, config: Config) -> tuple[Config, Requests, str]:
    """The config to plan with, the drifting traffic, and a line describing it."""
    if not 0 < args.drift_fraction <= 1:
        raise ConfigError(f"--drift-fraction must be in (0, 1], got {args.drift_fraction:g}")
    drift = Drift(args.drift_every, args.drift_fraction)
    told = (f"drift: every {args.drift_every:g} s {args.drift_fraction:.0%} of the adapters "
            "swap popularity")
    if args.trace:
        from loraserve.sim.cli import load_trace

        requests = requests_from_trace(load_trace(args), config, seed=args.seed,
                                       rate_scale=args.rate_scale, drift=drift)
        # Price each adapter with its requests' token counts (the trace's, not the config's).
        planned = fit_token_means(config.scaled(requests.rate / config.total_request_rate),
                                  requests)
        return planned, requests, (f"trace {Path(args.trace).name}: {len(requests)} requests "
                                   f"over {requests.duration:.0f} s ({requests.rate:.1f} "
                                   f"req/s); {told}")
    duration = args.duration if args.duration is not None else DEFAULT_DYNAMIC_DURATION_S
    scale = args.rate_scale if args.rate_scale is not None else 1.0
    requests = generate_requests(config, duration, seed=args.seed, arrival=args.arrival,
                                 cv=args.cv, token_sigma=args.token_sigma, rate_scale=scale,
                                 drift=drift)
    planned = config.scaled(scale) if scale != 1.0 else config
    return planned, requests, (f"generated: {len(requests)} requests over {duration:g} s "
                               f"({requests.rate:.1f} req/s, {args.arrival}, seed "
                               f"{args.seed}); {told}")


def cmd_compare_dynamic(args: argparse.Namespace) -> int:
    """``loraserve compare --dynamic``: print the strategies' table and the per-interval view."""
    from loraserve.sim.cli import _fmt_table, _ms, _out, _pct, _slo_line, _Status, _text

    config = load_config(args.config)
    check_outputs({"--csv": args.csv, "--intervals-csv": args.intervals_csv,
                   "--plot": args.plot}, {"config": args.config, "--trace": args.trace})
    strategies = parse_strategies(args.strategies)
    options = _dynamic_options(args)
    planned, requests, described = _dynamic_traffic(args, config)
    status = _Status(args.progress or (sys.stderr.isatty() and not args.quiet))
    result = compare_dynamic(planned, requests, strategies, options, on_progress=status.line)
    status.done()
    _out(f"{args.config}: {len(config.adapters)} adapters; {described}")
    _out(_slo_line(planned))
    table = result.summary.astype(object)
    table["gib_moved"] = result.summary["bytes_moved"] / 2**30

    def gib(value: Any) -> str:
        return f"{value:.2f}"

    def gpus(value: Any) -> str:
        return f"{value:.1f}"

    _out(_fmt_table(table, [
        ("strategy", "strategy", _text), ("slo_attainment", "SLO att.", _pct),
        ("ttft_p50_ms", "p50 TTFT", _ms), ("ttft_p99_ms", "p99 TTFT", _ms),
        ("tpot_p99_ms", "p99 TPOT", _ms), ("gpu_hours", "GPU-h", gib),
        ("mean_gpus", "mean GPUs", gpus), ("peak_gpus", "peak", _text),
        ("replans", "re-plans", _text), ("replan_failures", "failed", _text),
        ("loads", "loads", _text),
        ("gib_moved", "GiB moved", gib), ("cold_loads", "cold loads", _text)]))
    policy = options.policy
    fixed = result.summary.set_index("strategy")["peak_gpus"].get("vllm-default")
    _out(f"plans for {options.plan_headroom:g}x the observed rates; periodic and oracle-scratch "
         f"re-plan from scratch ({options.solver}) every {options.interval_s:g} s, from the "
         f"previous / the same interval's rates; drift reads the counters every "
         f"{options.observe_every:g} s (half-life {policy.half_life_s:g} s, headroom "
         f"{policy.headroom:g}, min saving {policy.min_saving:g}, patience {policy.patience}, "
         f"cooldown {policy.cooldown_s:g} s, max moves "
         f"{'none' if policy.max_moves is None else policy.max_moves})"
         + (f"; vllm-default on {fixed} GPUs" if fixed is not None else ""))
    view = result.intervals
    wide = pd.DataFrame({"t": view.groupby("interval")["start_s"].first() / 60})
    columns: list[tuple[str, str, Callable[[Any], str]]] = [
        ("t", "minute", lambda v: f"{v:g}")]
    for strategy in strategies:
        mine = view[view["strategy"] == strategy].set_index("interval")
        wide[strategy] = [f"{100 * a:.1f}/{g:.0f}" if not math.isnan(a) else f"-/{g:.0f}"
                          for a, g in zip(mine["slo_attainment"], mine["gpus"], strict=True)]
        columns.append((strategy, strategy, _text))
    _out("per interval: SLO attainment (%) / GPUs")
    _out(_fmt_table(wide.reset_index(drop=True), columns))
    if args.csv:
        write_atomic(args.csv, result.summary.to_csv(index=False))
        _out(f"summary written to {args.csv}")
    if args.intervals_csv:
        write_atomic(args.intervals_csv, result.intervals.to_csv(index=False))
        _out(f"per-interval table written to {args.intervals_csv}")
    if args.plot:
        plot_dynamic(result, args.plot, title=f"{Path(args.config).name}: {described}")
        _out(f"plot written to {args.plot}")
    return 0
