"""Placement and routing policies the simulator compares, each a named strategy.

* ``vllm-default``: what stock vLLM behind a load balancer does. Every GPU runs at the
  fleet's largest rank (the lowest configured tier that admits every adapter), every adapter
  can be served by every GPU and is loaded on demand (LRU over ``max_cpu_loras`` in host
  memory and ``max_loras`` GPU slots; a warm start holds the most popular adapters), and the
  balancer sends each request to the GPU with the fewest outstanding requests. Without a
  GPU count it provisions the fewest GPUs whose capacity at that tier covers the load.
* ``rank-agnostic-packing``: a dLoRA-like placement that ignores rank
  (:func:`loraserve.solver.baselines.rank_agnostic_placement`): one tier for all, adapters
  packed load-balanced under the same slot, memory and replica limits, weighted routing.
* ``loraserve-greedy``: the LoRAServe paper's heuristic (``solve(solver="loraserve-greedy")``)
  with weighted routing over each adapter's replicas.
* ``loraserve``: the solver's plan (``solve(solver="auto")``) with weighted routing, by
  replication only (a config's ``topology`` is set aside).
* ``loraserve-remote``: the same with remote access over the config's ``topology``: GPUs may
  serve adapters they fetch from a hosting peer (:mod:`loraserve.solver.remote`); the
  simulator charges each fetch the link time, with contention. Needs a ``topology`` section.

A policy asked for a given number of GPUs ``N`` plans with **headroom**: the plan is made for
the traffic times ``h``, with the largest ``h`` whose plan fits on ``N`` GPUs (more headroom
leaves every GPU more slack; ``h < 1`` when the traffic needs more than ``N`` GPUs at the
tier's utilization limit, so the plan is overloaded, as it would be in a cluster that small).
The search over ``h`` uses the fast greedy for ``loraserve``; the final plan at that ``h`` is
``solve(solver="auto")``'s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from loraserve.models import Config, ConfigError, PlacementPlan
from loraserve.profiles import CostModel
from loraserve.sim.engine import Worker
from loraserve.solver import InfeasibleError, Instance, solve
from loraserve.solver.baselines import rank_agnostic_placement
from loraserve.solver.build import build_plan

logger = logging.getLogger(__name__)

POLICIES: tuple[str, ...] = ("vllm-default", "rank-agnostic-packing", "loraserve-greedy",
                             "loraserve", "loraserve-remote")


def default_policies(config: Config) -> list[str]:
    """The policies worth comparing on ``config``: all, less remote access without a topology.

    Without a topology with ``remote_access``, ``loraserve-remote`` has no plan, and its row
    would only say so.

    Parameters
    ----------
    config : Config

    Returns
    -------
    list of str
        Names from :data:`POLICIES`, in that order.
    """
    return [p for p in POLICIES if p != "loraserve-remote" or config.remote_enabled]

#: Headroom factors the search for a fleet size stays within.
MIN_HEADROOM, MAX_HEADROOM = 1 / 64, 64.0
#: Bisection steps on the headroom once bracketed within 1.25x (the count is a step function).
HEADROOM_STEPS = 5


@dataclass(frozen=True)
class Deployment:
    """A fleet set up by a policy: the workers, how requests are routed, and the plan.

    Attributes
    ----------
    policy : str
    workers : tuple of Worker
    routes : tuple or None
        Per adapter (config order), ``(worker index, weight)`` pairs; None for
        least-outstanding routing over all workers.
    plan : PlacementPlan or None
        The plan behind a plan-based policy (predicted utilization per GPU).
    headroom : float
        The plan was made for the config's traffic times this.
    """

    policy: str
    workers: tuple[Worker, ...]
    routes: tuple[tuple[tuple[int, float], ...], ...] | None
    plan: PlacementPlan | None = None
    headroom: float = 1.0

    @property
    def num_gpus(self) -> int:
        """GPUs in the fleet."""
        return len(self.workers)


def deployment_from_plan(plan: PlacementPlan, config: Config, policy: str = "plan",
                         headroom: float = 1.0) -> Deployment:
    """Workers and weighted routes of ``plan`` (hosted adapters ordered by routed traffic).

    Raises
    ------
    ConfigError
        When the plan names an adapter the config lacks or leaves one without a route.
    """
    index = {a.id: i for i, a in enumerate(config.adapters)}
    gpu_index = {g.gpu_id: k for k, g in enumerate(plan.gpus)}
    routes: list[list[tuple[int, float]]] = [[] for _ in config.adapters]
    traffic: dict[tuple[int, int], float] = {}
    for adapter_id, split in plan.routes.items():
        if adapter_id not in index:
            raise ConfigError(f"plan: routes name adapter '{adapter_id}', which the config "
                              "lacks; plan and config must match")
        a = index[adapter_id]
        for gpu_id, weight in split.items():
            if gpu_id not in gpu_index:
                raise ConfigError(f"plan: adapter '{adapter_id}' is routed to unknown GPU "
                                  f"'{gpu_id}'")
            if weight > 0:
                routes[a].append((gpu_index[gpu_id], float(weight)))
                traffic[(gpu_index[gpu_id], a)] = weight * config.adapters[a].request_rate
    for a, replicas in enumerate(routes):
        if not replicas and config.adapters[a].request_rate > 0:
            raise ConfigError(f"plan: adapter '{config.adapters[a].id}' has no route; "
                              "give every adapter a GPU")
    fetched: dict[str, list[tuple[int, str]]] = {}
    for adapter_id, gpu_id, source in plan.remote_pairs():
        if adapter_id in index:
            fetched.setdefault(gpu_id, []).append((index[adapter_id], source))
    workers = []
    for k, gpu in enumerate(plan.gpus):
        ids = [index[a] for a in gpu.adapters if a in index]
        order = [-traffic.get((k, a), 0.0) for a in ids]
        hosted = [a for _, a in sorted(zip(order, ids, strict=True))]
        workers.append(Worker(gpu.gpu_id, gpu.gpu_type, gpu.tier, tuple(hosted),
                              tuple(fetched.get(gpu.gpu_id, ()))))
    return Deployment(policy, tuple(workers), tuple(tuple(r) for r in routes), plan, headroom)


def top_tier(config: Config, model: CostModel) -> tuple[str, int]:
    """The ``(gpu_type, tier)`` a rank-agnostic fleet runs at: the lowest tier admitting all.

    Raises
    ------
    ConfigError
        When no GPU type can run a tier that admits the largest rank.
    """
    largest = max(a.rank for a in config.adapters)
    reasons = []
    for pool in config.pools:
        for tier in config.serving.tiers:
            if tier < largest:
                continue
            if model.has(pool.gpu_type, tier):
                return pool.gpu_type, tier
            reasons.append(model.capacity(pool.gpu_type, tier).reason)
    detail = reasons[0] if reasons else f"serving.tiers has no tier >= {largest}"
    raise ConfigError(f"vllm-default: no GPU can run a tier that admits rank {largest}: "
                      f"{detail}")


def _vllm_default(config: Config, model: CostModel, gpus: int | None) -> Deployment:
    gpu_type, tier = top_tier(config, model)
    cap = model.capacity(gpu_type, tier)
    if gpus is None:
        load = sum(model.adapter_load(a, gpu_type, tier) for a in config.adapters)
        gpus = max(1, math.ceil(load / cap.max_utilization - 1e-9))
    popular = tuple(sorted(range(len(config.adapters)),
                           key=lambda a: (-config.adapters[a].request_rate, a)))
    workers = tuple(Worker(f"{gpu_type}-{i}", gpu_type, tier, popular) for i in range(gpus))
    return Deployment("vllm-default", workers, None)


def _plan_once(policy: str, config: Config, model: CostModel, time_limit: float, seed: int,
               fast: bool) -> PlacementPlan | None:
    """The policy's plan for ``config`` (None where it finds none)."""
    if policy == "loraserve":
        config = config.without_remote()
    if policy == "rank-agnostic-packing":
        inst = Instance.build(config, model)
        try:
            gpus = rank_agnostic_placement(inst)
        except InfeasibleError:
            return None
        return build_plan(inst, gpus)
    solver = {"loraserve": "greedy" if fast else "auto",
              "loraserve-remote": "greedy" if fast else "auto",
              "loraserve-greedy": "loraserve-greedy"}[policy]
    result = solve(config, solver=solver, time_limit=time_limit, seed=seed,  # type: ignore[arg-type]
                   cost_model=model)
    return result.plan


def _with_pool(config: Config, gpus: int) -> Config:
    pools = tuple(p.model_copy(update={"count": gpus}) for p in config.pools)
    update: dict[str, object] = {"pools": pools}
    if config.topology is not None and config.topology.nodes is not None:
        # The node count follows the pool; a declared count would contradict the new size.
        update["topology"] = config.topology.model_copy(update={"nodes": None})
    return config.model_copy(update=update)


def _fits(plan: PlacementPlan | None, gpus: int) -> bool:
    return plan is not None and plan.num_gpus <= gpus


def deploy(
    policy: str,
    config: Config,
    gpus: int | None = None,
    cost_model: CostModel | None = None,
    time_limit: float = 10.0,
    seed: int = 0,
    plans: dict[tuple[str, int, float, bool], PlacementPlan | None] | None = None,
) -> Deployment:
    """Set up a fleet the way ``policy`` would.

    Parameters
    ----------
    policy : str
        One of :data:`POLICIES`.
    config : Config
        Adapters (with the rates the plan is made for), pools, serving limits, SLO.
    gpus : int, optional
        Fleet size. Without it the policy picks its own (a plan's GPU count; for
        ``vllm-default`` the fewest GPUs whose capacity covers the load at its tier).
    cost_model : CostModel, optional
        Built from ``config`` when omitted.
    time_limit : float
        Seconds for each solve of ``loraserve``.
    seed : int
        Seed of the exact solvers.
    plans : dict, optional
        A cache of plans by (policy, GPUs, headroom, fast) for this ``config``, shared
        between calls (searches ask for the same plans again).

    Returns
    -------
    Deployment

    Raises
    ------
    ConfigError
        For an unknown policy, or when the policy finds no plan at all.
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy '{policy}'; use one of {', '.join(POLICIES)}")
    if gpus is not None and gpus < 1:
        raise ConfigError(f"a fleet needs at least 1 GPU, got {gpus}")
    model = cost_model or CostModel.from_config(config)
    if policy == "vllm-default":
        return _vllm_default(config, model, gpus)
    if policy == "loraserve-remote" and not config.remote_enabled:
        raise ConfigError("loraserve-remote: the config has no topology with remote_access; "
                          "add a topology section (see docs/remote.md)")
    if gpus is None:
        plan = _plan_once(policy, config, model, time_limit, seed, fast=False)
        if plan is None:
            raise ConfigError(f"{policy}: finds no valid plan for this config on its pools; "
                              "give more GPUs or fewer adapters per GPU")
        return deployment_from_plan(plan, config, policy)

    sized = _with_pool(config, gpus)
    cache = plans if plans is not None else {}

    def plan_at(h: float, fast: bool = True) -> PlacementPlan | None:
        key = (policy, gpus, round(h, 12), fast)
        if key not in cache:
            cache[key] = _plan_once(policy, sized.scaled(h), model, time_limit, seed, fast)
        return cache[key]

    headroom, plan = _largest_headroom(plan_at, gpus)
    if plan is None:
        raise ConfigError(f"{policy}: finds no valid plan on {gpus} GPUs even for 1/"
                          f"{1 / MIN_HEADROOM:g} of the traffic")
    if policy in ("loraserve", "loraserve-remote"):
        final = plan_at(headroom, fast=False)
        if final is not None and final.num_gpus <= gpus:
            plan = final
    return deployment_from_plan(repriced(plan, config, model), config, policy, headroom)


def repriced(plan: PlacementPlan, config: Config, model: CostModel) -> PlacementPlan:
    """The plan with its predictions for ``config``'s traffic, not the traffic it was made for.

    A plan made with headroom predicts utilization and latency for the scaled traffic; the
    simulation replays the real one, and that is what the predictions must describe.

    Parameters
    ----------
    plan : PlacementPlan
    config : Config
        The traffic the predictions are for.
    model : CostModel

    Returns
    -------
    PlacementPlan
        A copy with each GPU's utilization and predicted latencies for ``config``.
    """
    shares = plan.gpu_shares(config)
    gpus = []
    for gpu in plan.gpus:
        predicted = model.predict(gpu.gpu_type, gpu.tier, shares[gpu.gpu_id])
        gpus.append(gpu.model_copy(update={
            "utilization": round(predicted.utilization, 6),
            "predicted_tpot_ms": round(predicted.tpot_ms, 3),
            "predicted_ttft_ms": round(predicted.ttft_ms, 3)}))
    return plan.model_copy(update={"gpus": gpus})


def _largest_headroom(plan_at: Callable[[float], PlacementPlan | None],
                      gpus: int) -> tuple[float, PlacementPlan | None]:
    """The largest headroom in [MIN, MAX] whose plan fits ``gpus`` GPUs, with that plan.

    A plan's GPU count grows about in proportion to the traffic where load binds, so the
    search starts from ``gpus / count(1)``, brackets by steps of 1.25 (2 when there is no
    plan at 1 to guess from) and bisects the bracket.
    """
    nominal = plan_at(1.0)
    ratio = 1.25 if nominal is not None else 2.0
    guess = gpus / nominal.num_gpus if nominal is not None else 0.5
    h = min(MAX_HEADROOM, max(MIN_HEADROOM, guess))
    plan = plan_at(h)
    if _fits(plan, gpus):
        low, best = h, plan
        while True:
            if low >= MAX_HEADROOM:
                return low, best
            high = min(MAX_HEADROOM, low * ratio)
            plan = plan_at(high)
            if not _fits(plan, gpus):
                break
            low, best = high, plan
    else:
        high = h
        while True:
            if high <= MIN_HEADROOM:
                return 0.0, None
            low = max(MIN_HEADROOM, high / ratio)
            plan = plan_at(low)
            if _fits(plan, gpus):
                best = plan
                break
            high = low
    for _ in range(HEADROOM_STEPS):
        mid = math.sqrt(low * high)
        plan = plan_at(mid)
        if _fits(plan, gpus):
            low, best = mid, plan
        else:
            high = mid
    logger.debug("headroom %.3f fits %d GPUs", low, gpus)
    return low, best
