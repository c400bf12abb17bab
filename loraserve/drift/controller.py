"""Observe, decide, act: keep a plan matched to drifting traffic.

:class:`DriftController` is the loop body a user calls from their own controller (a cron
job, a Kubernetes operator's reconcile loop, ``loraserve watch``, the simulator): give it the
per-adapter counters of one scrape, get a :class:`Decision` back; when the decision is to
re-plan it carries the new plan and the make-before-break :class:`MigrationPlan`, and the
caller applies it, then calls :meth:`DriftController.commit`.

When to re-plan:

* **SLO** (immediately): the running plan, priced at the smoothed rates, puts some GPU above
  ``headroom`` times its tier's utilization limit (the limit is where the predicted TTFT
  percentile meets the SLO, see :mod:`loraserve.profiles.capacity`).
* **Saving** (with hysteresis): a from-scratch plan at the smoothed rates would use at least
  ``min_saving`` fewer GPUs (or that much less cost per hour) on ``patience`` consecutive
  observations, and the last re-plan is at least ``cooldown_s`` old. The re-plan is kept only
  if the incremental plan really saves ``min_saving``; otherwise the fleet stays as it is.

Either way the re-plan is incremental (:func:`loraserve.solve` with ``current=``): running
GPUs keep their adapters, only what must move moves, at most ``max_moves`` loads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from loraserve.drift.estimator import Counters, RateEstimator
from loraserve.models import Config
from loraserve.models.migration import MigrationPlan, plan_migration
from loraserve.models.plan import PlacementPlan
from loraserve.profiles.capacity import CostModel

logger = logging.getLogger(__name__)

Trigger = Literal["none", "slo", "saving"]


@dataclass(frozen=True)
class DriftPolicy:
    """When the controller re-plans; see the module notes.

    Attributes
    ----------
    half_life_s : float
        EWMA half-life of the rate estimates (seconds).
    headroom : float
        Re-plan at once when a GPU's predicted load exceeds this share of its limit.
    min_saving : float
        GPUs (or cost per hour with mixed prices) a re-plan must save to be worth moving.
    patience : int
        Consecutive observations the saving must persist.
    cooldown_s : float
        Least time between saving-driven re-plans.
    max_moves : int or None
        Most adapter loads one re-plan may take.
    time_limit : float
        Seconds for each solve.
    margin : float
        Plan and guard for this many times the smoothed rates. The planner's model can be
        optimistic (``loraserve plan --simulate`` measures by how much), and right after a
        shift the smoothed rate is still rising; a margin above 1 keeps a re-plan from
        landing at the limit. The SLO trigger then fires when the real load reaches
        ``headroom / margin`` of a GPU's limit.
    """

    half_life_s: float = 300.0
    headroom: float = 1.0
    min_saving: float = 1.0
    patience: int = 3
    cooldown_s: float = 600.0
    max_moves: int | None = None
    time_limit: float = 10.0
    margin: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            ("half_life_s", self.half_life_s > 0, "a positive number of seconds"),
            ("headroom", 0 < self.headroom <= 2, "a share of the limit in (0, 2]"),
            ("min_saving", self.min_saving > 0, "a positive number of GPUs"),
            ("patience", self.patience >= 1, "at least 1"),
            ("cooldown_s", self.cooldown_s >= 0, "zero or more seconds"),
            ("max_moves", self.max_moves is None or self.max_moves >= 0, "zero or more"),
            ("time_limit", self.time_limit > 0, "a positive number of seconds"),
            ("margin", 0 < self.margin <= 10, "a factor in (0, 10]"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"drift policy: {name} must be {want}, not "
                                 f"{getattr(self, name)!r}")


@dataclass
class Decision:
    """What one observation led to.

    Attributes
    ----------
    time : float
        The observation's time.
    action : {"keep", "replan"}
    trigger : {"none", "slo", "saving"}
    reason : str
        One line, logged and shown by ``loraserve watch``.
    utilization : dict of str to float
        Each running GPU's predicted load at the smoothed rates, as a share of its limit.
    config : Config
        The config with the smoothed rates and token means.
    saving : float
        GPUs (or cost per hour) a from-scratch plan would save now (0 when not computed).
    plan : PlacementPlan or None
        The new plan (``replan`` only).
    migration : MigrationPlan or None
        Steps from the running plan to ``plan`` (``replan`` only).
    """

    time: float
    action: Literal["keep", "replan"]
    trigger: Trigger
    reason: str
    utilization: dict[str, float]
    config: Config
    saving: float = 0.0
    plan: PlacementPlan | None = None
    migration: MigrationPlan | None = None


@dataclass
class DriftMetrics:
    """Prometheus metrics of the loop, in their own registry (serve or push as you like)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.decisions = Counter("loraserve_drift_decisions", "Observations decided on",
                                 ["action", "trigger"], registry=r)
        self.replans = Counter("loraserve_replans", "Re-plans committed", ["trigger"],
                               registry=r)
        self.adapters_moved = Counter("loraserve_adapters_moved",
                                      "Adapter loads of committed migrations", registry=r)
        self.bytes_moved = Counter("loraserve_bytes_moved",
                                   "Adapter bytes loaded by committed migrations", registry=r)
        self.utilization = Gauge("loraserve_predicted_utilization",
                                 "Predicted load of a GPU as a share of its SLO limit",
                                 ["gpu_id"], registry=r)
        self.gpus = Gauge("loraserve_plan_gpus", "GPUs in the running plan", registry=r)


def predicted_utilization(plan: PlacementPlan, config: Config,
                          cost_model: CostModel | None = None) -> dict[str, float]:
    """Each GPU's fill under ``config``'s rates: its tightest family's value over its limit.

    The families are the planner's per-GPU ones (``compute`` against the TTFT utilization
    limit, ``tpot_tail``, ``batch_slots``; :meth:`CostModel.family_checks`), so the guard
    fires on what the planner would refuse. Adapters of the plan missing from ``config``
    count as idle; 1.0 is the limit.
    """
    model = cost_model or CostModel.from_config(config)
    shares = plan.gpu_shares(config)
    fill = {}
    for gpu in plan.gpus:
        checks = model.family_checks(gpu.gpu_type, gpu.tier, shares[gpu.gpu_id])
        fill[gpu.gpu_id] = max((c.used / c.limit if c.limit > 0 else math.inf
                                for c in checks), default=0.0)
    return fill


def with_rates(config: Config, rates: dict[str, float],
               tokens: dict[str, tuple[float, float]] | None = None) -> Config:
    """``config`` with each adapter's rate (and token means, where given) replaced.

    Adapters missing from ``rates`` keep their configured values.
    """
    tokens = tokens or {}
    adapters = []
    for adapter in config.adapters:
        update: dict[str, float] = {}
        if adapter.id in rates:
            update["request_rate"] = max(0.0, float(rates[adapter.id]))
        if adapter.id in tokens:
            update["prompt_tokens"], update["output_tokens"] = tokens[adapter.id]
        adapters.append(adapter.model_copy(update=update) if update else adapter)
    return config.with_adapters(adapters)


class DriftController:
    """The observe-decide-act step around a running plan; see the module notes.

    Parameters
    ----------
    config : Config
        The fleet's inputs; adapter rates are replaced by the observed ones.
    plan : PlacementPlan
        The plan the fleet runs now.
    policy : DriftPolicy
    metrics : DriftMetrics, optional
        Where to export the loop's metrics; a fresh registry when omitted.
    """

    def __init__(self, config: Config, plan: PlacementPlan, policy: DriftPolicy | None = None,
                 metrics: DriftMetrics | None = None) -> None:
        self.config = config
        self.plan = plan
        self.policy = policy or DriftPolicy()
        self.metrics = metrics or DriftMetrics()
        self.estimator = RateEstimator(self.policy.half_life_s)
        self._streak = 0
        self._last_replan = -math.inf
        self._gauged: set[str] = set()  # GPUs with a utilization series
        self._unknown: set[str] = set()
        self.metrics.gpus.set(plan.num_gpus)

    def observe(self, counters: Counters) -> Config:
        """Fold in one scrape; return the config at the smoothed rates (times the margin)."""
        self.estimator.observe(counters)
        rates = self.estimator.rates()
        # An adapter the counters never mention has had no request since they started.
        margin = self.policy.margin
        observed = {a.id: margin * rates.get(a.id, 0.0) for a in self.config.adapters}
        unknown = set(rates) - {a.id for a in self.config.adapters}
        new = sorted(unknown - self._unknown)
        if new:
            # Once per adapter, not on every scrape: the rates of the rest are still used.
            logger.warning("traffic for %d adapters not in the config (%s%s); add them to the "
                           "config to place them", len(new), ", ".join(new[:3]),
                           ", ..." if len(new) > 3 else "")
        self._unknown |= unknown
        return with_rates(self.config, observed, self.estimator.token_means())

    def step(self, counters: Counters) -> Decision:
        """Observe one scrape and decide; see the module notes for the rules."""
        from loraserve.solver import solve

        now = counters.time
        config = self.observe(counters)
        if not self.estimator.ready:
            return self._decided(Decision(now, "keep", "none", "warming up: one reading so far",
                                          {}, config))
        policy = self.policy
        model = CostModel.from_config(config)
        utilization = predicted_utilization(self.plan, config, model)
        for gpu_id, value in utilization.items():
            self.metrics.utilization.labels(gpu_id=gpu_id).set(value)
        # A GPU that left the plan must not keep reporting its last figure.
        for gone in self._gauged - set(utilization):
            self.metrics.utilization.remove(gone)
        self._gauged = set(utilization)
        worst_gpu = max(utilization, key=lambda g: utilization[g], default=None)
        worst = utilization[worst_gpu] if worst_gpu is not None else 0.0
        current_cost = self.plan.cost_per_hour(config) / _unit(config)

        trigger: Trigger = "none"
        saving = 0.0
        if worst > policy.headroom:
            trigger = "slo"
            reason = (f"GPU {worst_gpu} would run at {worst:.0%} of its SLO limit "
                      f"(headroom {policy.headroom:.0%})")
        else:
            scratch = solve(config, solver="greedy", time_limit=policy.time_limit,
                            cost_model=model)
            if scratch.plan is not None:
                saving = current_cost - scratch.plan.cost_per_hour(config) / _unit(config)
            self._streak = self._streak + 1 if saving >= policy.min_saving - 1e-9 else 0
            waited = now - self._last_replan
            if self._streak < policy.patience:
                reason = (f"keep: a new plan would save {saving:g} (needs {policy.min_saving:g} "
                          f"for {policy.patience} readings, {self._streak} so far); worst GPU "
                          f"{worst:.0%} of its limit")
                return self._decided(Decision(now, "keep", "none", reason, utilization, config,
                                              saving))
            if waited < policy.cooldown_s:
                reason = (f"keep: saving {saving:g} but the last re-plan was {waited:.0f} s "
                          f"ago (cooldown {policy.cooldown_s:g} s)")
                return self._decided(Decision(now, "keep", "none", reason, utilization, config,
                                              saving))
            trigger = "saving"
            reason = f"a new plan would save {saving:g} for {self._streak} readings"

        result = solve(config, current=self.plan, max_moves=policy.max_moves,
                       time_limit=policy.time_limit, cost_model=model)
        if result.plan is None:
            reason = f"keep: {trigger} re-plan found no plan: {result.message}"
            logger.warning(reason)
            return self._decided(Decision(now, "keep", trigger, reason, utilization, config,
                                          saving))
        new_cost = result.plan.cost_per_hour(config) / _unit(config)
        if trigger == "saving" and current_cost - new_cost < policy.min_saving - 1e-9:
            self._streak = 0
            reason = (f"keep: the incremental re-plan saves only {current_cost - new_cost:g} "
                      f"(needs {policy.min_saving:g})")
            return self._decided(Decision(now, "keep", "none", reason, utilization, config,
                                          saving))
        migration = plan_migration(self.plan, result.plan, config)
        reason = (f"re-plan ({trigger}): {reason}; {self.plan.num_gpus} -> "
                  f"{result.plan.num_gpus} GPUs, {migration.loads} loads, "
                  f"{_size(migration.bytes_moved)}")
        return self._decided(Decision(now, "replan", trigger, reason, utilization, config,
                                      saving, result.plan, migration))

    def commit(self, decision: Decision) -> None:
        """Adopt ``decision``'s plan once the caller has applied its migration."""
        if decision.action != "replan" or decision.plan is None:
            raise ValueError("only a re-plan decision can be committed")
        self.plan = decision.plan
        self.config = decision.config
        self._last_replan = decision.time
        self._streak = 0
        self.metrics.replans.labels(trigger=decision.trigger).inc()
        if decision.migration is not None:
            self.metrics.adapters_moved.inc(decision.migration.loads)
            self.metrics.bytes_moved.inc(decision.migration.bytes_moved)
        self.metrics.gpus.set(self.plan.num_gpus)
        logger.info("committed re-plan at %.0f s: %d GPUs", decision.time, self.plan.num_gpus)

    def _decided(self, decision: Decision) -> Decision:
        self.metrics.decisions.labels(action=decision.action, trigger=decision.trigger).inc()
        log = logger.info if decision.action == "replan" else logger.debug
        log("drift %.0f s: %s", decision.time, decision.reason)
        return decision


def _size(size: float) -> str:
    """Bytes in GiB, or in MiB below one GiB (small adapters would all read 0.00 GiB)."""
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def _unit(config: Config) -> float:
    """Price of one GPU when all pools cost the same (so savings read in GPUs), else 1."""
    prices = {p.cost_per_hour for p in config.pools}
    return prices.pop() if len(prices) == 1 else 1.0
