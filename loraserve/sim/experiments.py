"""Experiments over the simulator: GPUs needed, max sustainable rate, comparisons, capacity.

A :class:`Scenario` is one config with its traffic at any rate scale. On it:

* :func:`gpus_needed`: the fewest GPUs on which a policy's fleet meets the SLO (searched:
  galloping from the policy's own fleet size, upwards by at most a quarter a probe, then
  bisecting);
* :func:`max_rate`: the highest request rate a policy's fleet of a fixed size sustains under
  the SLO (the traffic and the plan both scaled; galloping by 1.5x, then bisecting to
  :data:`RATE_TOLERANCE`);
* :func:`compare`: both, plus latency percentiles and SLO attainment at the nominal load on
  a fixed fleet, for several policies side by side;
* :func:`capacity`: GPUs needed against request rate.

"Meets the SLO" is :attr:`SimResult.meets_slo`: at least ``slo.percentile`` percent of the
requests meet both the TTFT and the TPOT target. Attainment is close to, but not strictly,
monotone in the fleet size and the rate, so the searches return the boundary they find, and
every run they make is kept (``points``) for the plots.
"""

from __future__ import annotations

import io
import logging
import math
import multiprocessing as mp
import signal
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from loraserve.models import Config, ConfigError, PlacementPlan
from loraserve.models.io import one_line, write_atomic
from loraserve.profiles import CostModel
from loraserve.sim.engine import SimOptions, run
from loraserve.sim.policies import Deployment, deploy
from loraserve.sim.results import SimResult
from loraserve.sim.workload import Requests

logger = logging.getLogger(__name__)

#: The max-rate search stops when the bracket is this tight (relative).
RATE_TOLERANCE = 0.05
#: Largest and smallest rate scales the max-rate search tries.
MAX_RATE_SCALE, MIN_RATE_SCALE = 64.0, 1 / 64
#: The GPU-count search gives up above this multiple of its starting fleet size.
MAX_GPU_FACTOR = 8
#: Growth of the GPU-count search's upward probes.
UP_FACTOR = 1.25

#: Simulations (and request streams) a scenario keeps for reuse (a search's run at the
#: fixed fleet size is the fixed-size run); each holds a few arrays per request.
KEEP_RESULTS = 6

#: Receives (policy, what, gpus, rate scale, result or None) after every run.
RunCallback = Callable[[str, str, int, float, SimResult | None], None]


@dataclass
class Scenario:
    """One config and its traffic, at any rate scale.

    Parameters
    ----------
    config : Config
        Adapters with the rates the plans are made for (rate scale 1).
    requests_at : callable
        ``requests_at(scale)``: the traffic at ``scale`` times the nominal rate.
    options : SimOptions
    time_limit : float
        Seconds for each ``loraserve`` solve.
    seed : int
        Seed of the solvers.
    on_run : callable, optional
        Told about every simulation (for progress).
    stop_early : bool
        Stop a search's run as soon as it has missed the SLO (the fixed-load runs of
        :func:`compare` always run to the end).
    """

    config: Config
    requests_at: Callable[[float], Requests]
    options: SimOptions = field(default_factory=SimOptions)
    time_limit: float = 10.0
    seed: int = 0
    on_run: RunCallback | None = None
    stop_early: bool = True
    cost_model: CostModel = field(init=False)
    _requests: OrderedDict[float, Requests] = field(default_factory=OrderedDict, init=False,
                                                    repr=False)
    _deployments: dict[tuple[str, int | None, float], Deployment | None] = field(
        default_factory=dict, init=False, repr=False)
    _plans: dict[float, dict[tuple[str, int, float, bool], PlacementPlan | None]] = field(
        default_factory=dict, init=False, repr=False)
    _results: OrderedDict[tuple[str, int | None, float], tuple[SimResult, bool]] = field(
        default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.cost_model = CostModel.from_config(self.config)

    def requests(self, scale: float = 1.0) -> Requests:
        """The traffic at ``scale`` (the last few are cached)."""
        key = round(scale, 9)
        if key in self._requests:
            self._requests.move_to_end(key)
        else:
            self._requests[key] = self.requests_at(scale)
            while len(self._requests) > KEEP_RESULTS:
                self._requests.popitem(last=False)
        return self._requests[key]

    def deployment(self, policy: str, gpus: int | None, scale: float = 1.0) -> Deployment | None:
        """The policy's fleet for the traffic at ``scale`` (cached); None when it has no plan."""
        key = (policy, gpus, round(scale, 9))
        if key not in self._deployments:
            config = self.config if scale == 1.0 else self.config.scaled(scale)
            try:
                found: Deployment | None = deploy(
                    policy, config, gpus, cost_model=self.cost_model,
                    time_limit=self.time_limit, seed=self.seed,
                    plans=self._plans.setdefault(key[2], {}))
            except ConfigError as exc:
                logger.info("%s: %s", policy, exc)
                found = None
            self._deployments[key] = found
        return self._deployments[key]

    def simulate(self, deployment: Deployment, scale: float = 1.0,
                 progress: Callable[[float], None] | None = None,
                 stop_early: bool = False) -> SimResult:
        """Run ``deployment`` on the traffic at ``scale``.

        With ``stop_early`` the run ends as soon as it can no longer meet the SLO (a search
        only needs the verdict); its latencies then describe the requests served so far.
        """
        options = self.options
        if stop_early and self.stop_early and not options.stop_on_slo_failure:
            options = replace(options, stop_on_slo_failure=True)
        result = run(self.config, deployment.workers, self.requests(scale), deployment.routes,
                     options, self.cost_model, progress)
        return SimResult(deployment.policy, self.config, result, self.cost_model,
                         deployment.plan)

    def at_scale(self, scale: float) -> Scenario:
        """The same scenario with ``scale`` times the traffic as its nominal rate."""
        if scale == 1.0:
            return self
        base = self.requests_at
        return Scenario(self.config.scaled(scale), lambda s: base(s * scale), self.options,
                        self.time_limit, self.seed, self.on_run, self.stop_early)

    def evaluate(self, policy: str, gpus: int | None, scale: float = 1.0,
                 what: str = "run") -> SimResult | None:
        """Deploy ``policy`` on ``gpus`` GPUs for the traffic at ``scale`` and simulate it."""
        deployment = self.deployment(policy, gpus, scale)
        searching = what in ("gpus", "rate")
        key = (policy, gpus, round(scale, 9))
        cached = self._results.get(key)
        # A run that went to the end answers any question; one stopped early only a search's.
        if cached is not None and (searching or not cached[1] or not cached[0].run.stopped):
            self._results.move_to_end(key)
            return cached[0]
        result = None if deployment is None else self.simulate(deployment, scale,
                                                               stop_early=searching)
        if result is not None:
            self._results[key] = (result, searching and self.stop_early)
            while len(self._results) > KEEP_RESULTS:
                self._results.popitem(last=False)
        if self.on_run is not None:
            size = deployment.num_gpus if deployment is not None else (gpus or 0)
            self.on_run(policy, what, size, scale, result)
        return result


def _point(policy: str, gpus: int, scale: float, rate: float,
           result: SimResult | None) -> dict[str, Any]:
    summary = result.summary if result is not None else {}
    return {
        "policy": policy,
        "gpus": gpus,
        "rate_scale": scale,
        "request_rate": rate,
        "planned": result is not None,
        "slo_attainment": summary.get("slo_attainment", math.nan),
        "meets_slo": bool(summary.get("meets_slo", False)),
        "stopped": bool(summary.get("stopped", False)),
        "ttft_p99_ms": summary.get("ttft_p99_ms", math.nan),
        "tpot_p99_ms": summary.get("tpot_p99_ms", math.nan),
    }


@dataclass
class Search:
    """The outcome of a search and every run it made."""

    value: float | None
    points: list[dict[str, Any]]


def gpus_needed(scenario: Scenario, policy: str, start: int | None = None,
                max_gpus: int | None = None) -> Search:
    """The fewest GPUs on which ``policy`` meets the SLO at the nominal rate.

    Parameters
    ----------
    scenario : Scenario
    policy : str
    start : int, optional
        First fleet size tried; the policy's own choice when omitted.
    max_gpus : int, optional
        Give up above this (default :data:`MAX_GPU_FACTOR` times ``start``).

    Returns
    -------
    Search
        ``value`` is the GPU count, or None when no size up to ``max_gpus`` meets the SLO.
    """
    points: list[dict[str, Any]] = []
    rate = scenario.config.total_request_rate
    if start is None:
        own = scenario.deployment(policy, None)
        start = own.num_gpus if own is not None else 1
    limit = max_gpus or MAX_GPU_FACTOR * max(1, start)
    verdicts: dict[int, bool] = {}

    def ok(n: int) -> bool:
        if n < 1:
            return False
        if n not in verdicts:
            result = scenario.evaluate(policy, n, what="gpus")
            points.append(_point(policy, n, 1.0, rate, result))
            verdicts[n] = result is not None and result.meets_slo
        return verdicts[n]

    if ok(start):
        high, low, step = start, start - 1, 1
        while low >= 1 and ok(low):
            high, step = low, 2 * step
            low = high - step
        low = max(low, 0)
    else:
        # Upwards, a fleet that misses the SLO is cheap to try (its run stops at the first
        # percentile's worth of misses) and one that meets it costs a whole run: gallop, but
        # by at most a quarter a probe, so the bracket the bisection then pays for is narrow.
        low, step = start, 1
        high = start + 1
        while not ok(high):
            if high >= limit:
                return Search(None, points)
            low, step = high, 2 * step
            high = min(limit, start + step, max(high + 1, math.ceil(high * UP_FACTOR)))
    while high - low > 1:
        # A third of the way up, not half: probes below the boundary mostly stop early,
        # probes at or above it always run to the end.
        mid = low + max(1, (high - low) // 3)
        if ok(mid):
            high = mid
        else:
            low = mid
    return Search(float(high), points)


def max_rate(scenario: Scenario, policy: str, gpus: int) -> Search:
    """The highest request rate ``policy`` sustains on ``gpus`` GPUs under the SLO.

    Returns
    -------
    Search
        ``value`` in requests per second (the lower end of the final bracket), 0 when even
        :data:`MIN_RATE_SCALE` of the traffic misses the SLO, None when the policy found
        no plan at any rate tried.
    """
    points: list[dict[str, Any]] = []
    nominal = scenario.config.total_request_rate
    verdicts: dict[float, bool] = {}

    def ok(scale: float) -> bool:
        if scale not in verdicts:
            result = scenario.evaluate(policy, gpus, scale, what="rate")
            points.append(_point(policy, gpus, scale, scale * nominal, result))
            verdicts[scale] = result is not None and result.meets_slo
        return verdicts[scale]

    if ok(1.0):
        low, high = 1.0, 1.5
        while ok(high):
            if high >= MAX_RATE_SCALE:
                return Search(high * nominal, points)
            low, high = high, min(MAX_RATE_SCALE, high * 1.5)
    else:
        low, high = 1 / 1.5, 1.0
        while not ok(low):
            if low <= MIN_RATE_SCALE:
                planned = any(p["planned"] for p in points)
                return Search(0.0 if planned else None, points)
            low, high = max(MIN_RATE_SCALE, low / 1.5), low
    while high / low > 1 + RATE_TOLERANCE:
        mid = math.sqrt(low * high)
        if ok(mid):
            low = mid
        else:
            high = mid
    return Search(low * nominal, points)


#: Columns of :attr:`Comparison.table`.
COMPARE_COLUMNS: tuple[str, ...] = (
    "policy", "gpus_needed", "max_rate_rps", "gpus", "ttft_p50_ms", "ttft_p99_ms",
    "tpot_p50_ms", "tpot_p99_ms", "slo_attainment", "throughput_rps", "has_plan",
)


@dataclass
class Comparison:
    """Policies side by side on one scenario.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per policy (:data:`COMPARE_COLUMNS`): GPUs needed to meet the SLO at the
        nominal rate, the max sustainable rate on ``gpus`` GPUs, and latency percentiles,
        SLO attainment and throughput at the nominal rate on ``gpus`` GPUs; ``has_plan`` is
        False for a policy that found no plan in any run (its figures are blank).
    gpus : int
        The fixed fleet size.
    points : pandas.DataFrame
        Every run the searches made (policy, gpus, rate, attainment, p99 latencies).
    runs : dict
        The fixed-load run of each policy that has a plan.
    """

    table: pd.DataFrame
    gpus: int
    points: pd.DataFrame
    runs: dict[str, SimResult]


def compare(scenario: Scenario, policies: Sequence[str], gpus: int | None = None,
            searches: bool = True, jobs: int = 1) -> Comparison:
    """Run ``policies`` on the scenario and tabulate them.

    Parameters
    ----------
    scenario : Scenario
    policies : sequence of str
    gpus : int, optional
        Fleet size for the fixed-size figures. By default the GPUs ``loraserve`` needs to
        meet the SLO in simulation (with ``searches``), else the GPUs its plan uses; when
        ``loraserve`` is not compared or has no plan, the first policy that has one.
    searches : bool
        Also search the GPUs needed and the max sustainable rate (most of the work).
    jobs : int
        Policies simulated at once, each in its own process (forked, so the traffic is
        shared, not copied). The table is the same as with one job; only the order of the
        progress reports changes. Where processes cannot be forked, one job.
    """
    order = sorted(policies, key=lambda p: p != "loraserve")
    needed: dict[str, Search] = {}
    parts: dict[str, _Part] = {}
    if jobs > 1 and len(order) > 1 and "fork" in mp.get_all_start_methods():
        needed, parts, decided = _compare_forked(scenario, order, gpus, searches, jobs)
        if decided:
            gpus = decided
    points: list[dict[str, Any]] = [pt for p in order if p in needed for pt in needed[p].points]
    if gpus is None:
        for name in order:
            if searches:
                if name not in needed:
                    needed[name] = gpus_needed(scenario, name)
                    points += needed[name].points
                if needed[name].value is not None:
                    gpus = int(needed[name].value or 0)
                    break
            own = scenario.deployment(name, None)
            if own is not None:
                gpus = own.num_gpus
                break
        if gpus is None:
            raise ConfigError("no policy finds a plan for this config; give --gpus")
    rows: dict[str, dict[str, Any]] = {}
    runs: dict[str, SimResult] = {}
    # Each policy's runs together, loraserve's first: a search's run at the fixed size is
    # then still kept when the fixed-size run asks for it.
    for policy in order:
        if searches and policy not in needed:
            needed[policy] = gpus_needed(scenario, policy)
            points += needed[policy].points
        part = parts.get(policy) or _fixed_part(scenario, policy, gpus, searches)
        points += part.points
        row = part.row
        if searches:
            row["gpus_needed"] = needed[policy].value
        if part.run is not None:
            runs[policy] = part.run
        row["has_plan"] = any(p["planned"] for p in points if p["policy"] == policy)
        rows[policy] = row
    table = pd.DataFrame([rows[p] for p in policies]).reindex(columns=list(COMPARE_COLUMNS))
    return Comparison(table, gpus, pd.DataFrame(points), runs)


@dataclass
class _Part:
    """One policy's figures on the fixed fleet: its table row, runs and the fixed-load run."""

    row: dict[str, Any]
    points: list[dict[str, Any]]
    run: SimResult | None


def _fixed_part(scenario: Scenario, policy: str, gpus: int, searches: bool) -> _Part:
    points: list[dict[str, Any]] = []
    result = scenario.evaluate(policy, gpus, what="fixed")
    points.append(_point(policy, gpus, 1.0, scenario.config.total_request_rate, result))
    row: dict[str, Any] = {"policy": policy, "gpus": gpus}
    if result is not None:
        summary = result.summary
        row.update({k: summary[k] for k in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms",
                                              "tpot_p99_ms", "slo_attainment",
                                              "throughput_rps")})
    if searches:
        rate = max_rate(scenario, policy, gpus)
        row["max_rate_rps"] = rate.value
        points += rate.points
    return _Part(row, points, result)


#: What forked workers of :func:`_compare_forked` read: set before the pool forks them.
_FORKED: dict[str, Any] = {}


def _compare_forked(scenario: Scenario, order: Sequence[str], gpus: int | None,
                    searches: bool, jobs: int,
                    ) -> tuple[dict[str, Search], dict[str, _Part], int | None]:
    """Each policy's search and fixed-fleet figures in its own process.

    The fixed fleet size comes from the first policy of ``order`` (loraserve's GPUs needed):
    its task publishes the size and the others wait for it, which cannot deadlock because
    that task is submitted first. When it yields no size, the caller finishes sequentially
    with the remaining fall-backs.
    """
    ctx = mp.get_context("fork")
    decided = ctx.Value("i", gpus or 0)
    ready = ctx.Event()
    if gpus is not None:
        ready.set()
    _FORKED.update(scenario=scenario, searches=searches, decider=order[0], decided=decided,
                   ready=ready)
    needed: dict[str, Search] = {}
    parts: dict[str, _Part] = {}
    workers = min(jobs, len(order))
    logger.info("compare: %d policies in %d processes", len(order), workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                               initializer=_leave_signals_to_parent)
    try:
        futures = {policy: pool.submit(_forked_task, policy) for policy in order}
        for policy, future in futures.items():
            search, part = future.result()
            if search is not None:
                needed[policy] = search
            if part is not None:
                parts[policy] = part
    except BaseException:
        # Interrupted (or a worker failed): the other workers' simulations are not wanted,
        # and waiting for them would hold Ctrl-C up for minutes.
        pool.shutdown(wait=False, cancel_futures=True)
        for child in mp.active_children():
            child.terminate()
        raise
    else:
        pool.shutdown()
    finally:
        _FORKED.clear()
    return needed, parts, decided.value or None


def _leave_signals_to_parent() -> None:
    """In a forked worker: Ctrl-C is the parent's to handle (it ends the workers)."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _forked_task(policy: str) -> tuple[Search | None, _Part | None]:
    scenario: Scenario = _FORKED["scenario"]
    searches: bool = _FORKED["searches"]
    decided = _FORKED["decided"]
    ready = _FORKED["ready"]
    search = gpus_needed(scenario, policy) if searches else None
    if policy == _FORKED["decider"] and not ready.is_set():
        size = 0
        if search is not None and search.value is not None:
            size = int(search.value)
        else:
            own = scenario.deployment(policy, None)
            size = own.num_gpus if own is not None else 0
        decided.value = size
        ready.set()
    ready.wait()
    if not decided.value:
        return search, None
    return search, _fixed_part(scenario, policy, int(decided.value), searches)


def capacity(scenario: Scenario, policies: Sequence[str],
             scales: Sequence[float]) -> pd.DataFrame:
    """GPUs needed against request rate.

    Returns
    -------
    pandas.DataFrame
        One row per (rate, policy): ``request_rate``, ``rate_scale``, ``policy``,
        ``planned_gpus`` (the policy's own fleet for that rate, before simulation) and
        ``gpus_needed`` (the fewest GPUs that meet the SLO in simulation; blank when none up
        to the search's limit does).
    """
    rows: list[dict[str, Any]] = []
    for scale in scales:
        sub = scenario.at_scale(scale)
        for policy in policies:
            own = sub.deployment(policy, None)
            needed = gpus_needed(sub, policy)
            rows.append({"request_rate": sub.config.total_request_rate, "rate_scale": scale,
                         "policy": policy,
                         "planned_gpus": own.num_gpus if own is not None else None,
                         "gpus_needed": needed.value})
    return pd.DataFrame(rows)



def parse_names(items: Sequence[str], known: Sequence[str], option: str,
                what: str) -> list[str]:
    """Names from ``items`` (each split on commas and spaces), checked, duplicates dropped.

    Raises
    ------
    ConfigError
        One line naming ``option`` for an unknown name, or when none is given.
    """
    chosen: list[str] = []
    for item in items:
        for name in item.replace(",", " ").split():
            if name not in known:
                raise ConfigError(f"{option}: unknown {what} '{name}'; use {', '.join(known)}")
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise ConfigError(f"{option}: name at least one of {', '.join(known)}")
    return chosen


def save_figure(fig: Any, path: str | Path) -> None:
    """Save atomically (a failed write leaves an older picture intact), then close ``fig``."""
    import matplotlib.pyplot as plt

    path = Path(path)
    image = io.BytesIO()
    try:
        # Drawn in memory, then written like every other output (models.io.write_atomic).
        fig.savefig(image, dpi=110, format=path.suffix.lstrip(".").lower() or "png")
    except ValueError as exc:
        raise ConfigError(f"{path}: cannot draw the plot ({one_line(exc)}); end the name "
                          "in .png, .svg or .pdf") from None
    finally:
        plt.close(fig)
    write_atomic(path, image.getvalue())


def plot_comparison(comparison: Comparison, path: str | Path, title: str = "") -> None:
    """Draw SLO attainment against GPUs and p99 TTFT against request rate, per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = comparison.points
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy, group in points.groupby("policy", sort=False):
        by_gpus = group[group["rate_scale"] == 1.0].drop_duplicates("gpus").sort_values("gpus")
        by_gpus = by_gpus[by_gpus["planned"]]
        line = left.plot(by_gpus["gpus"], 100 * by_gpus["slo_attainment"], label=policy)
        color = line[0].get_color()
        by_rate = group[group["gpus"] == comparison.gpus].drop_duplicates("rate_scale")
        by_rate = by_rate[by_rate["planned"]].sort_values("request_rate")
        ttft = by_rate["ttft_p99_ms"].clip(upper=1e6)
        right.plot(by_rate["request_rate"], ttft, color=color, label=policy)
        # Runs a search stopped once they missed the SLO are crosses: their figures cover
        # the requests served until then.
        for axis, frame, x, y in ((left, by_gpus, "gpus", 100 * by_gpus["slo_attainment"]),
                                  (right, by_rate, "request_rate", ttft)):
            stopped = frame["stopped"].to_numpy(dtype=bool)
            axis.scatter(frame[x][~stopped], y[~stopped], color=color, marker="o")
            axis.scatter(frame[x][stopped], y[stopped], color=color, marker="x")
    left.set_xlabel("GPUs")
    left.set_ylabel("SLO attainment (%)")
    stopped_any = bool(points["stopped"].any()) if "stopped" in points else False
    left.set_title("at the nominal request rate" + (" (x: run stopped early)"
                                                    if stopped_any else ""))
    left.grid(alpha=0.3)
    right.set_xlabel("request rate (req/s)")
    right.set_ylabel("p99 TTFT (ms)")
    right.set_yscale("log")
    right.set_title(f"on {comparison.gpus} GPUs")
    right.grid(alpha=0.3)
    left.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_capacity(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Draw GPUs needed (simulated) and planned against request rate, per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for policy, group in table.groupby("policy", sort=False):
        group = group.sort_values("request_rate")
        line = axis.plot(group["request_rate"], group["gpus_needed"], marker="o",
                         label=f"{policy} (simulated)")
        axis.plot(group["request_rate"], group["planned_gpus"], linestyle="--",
                  color=line[0].get_color(), label=f"{policy} (planned)")
    axis.set_xlabel("request rate (req/s)")
    axis.set_ylabel("GPUs to meet the SLO")
    axis.grid(alpha=0.3)
    axis.legend()
    if title:
        axis.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
