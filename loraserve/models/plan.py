"""Placement plans and solver results: values that can be saved, diffed and verified."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

from loraserve.models.config import Adapter, Config
from loraserve.models.io import parse_model, read_text, write_atomic

if TYPE_CHECKING:
    from loraserve.profiles.capacity import CostModel

#: Tolerance on sums of routing weights and on capacity checks.
TOLERANCE = 1e-6


class GPUPlacement(BaseModel):
    """One GPU of a plan: its type, rank tier, hosted adapters and predicted behaviour.

    Parameters
    ----------
    gpu_id : str
        Logical GPU name, unique in the plan (``<gpu_type>-<index>``).
    gpu_type : str
        The pool it comes from.
    tier : int
        The ``--max-lora-rank`` the worker runs with.
    adapters : list of str
        Adapters whose weights the worker keeps loaded.
    utilization : float
        Predicted compute utilization (share of the GPU's time busy).
    predicted_tpot_ms, predicted_ttft_ms : float
        Predicted TPOT and TTFT at the SLO percentile under the planned load.
    adapter_memory_gib : float
        Bytes of the hosted adapters' weights (the worker's adapter cache), in GiB.
    """

    model_config = ConfigDict(extra="forbid")

    gpu_id: str
    gpu_type: str
    tier: int
    adapters: list[str] = Field(default_factory=list)
    utilization: float = 0.0
    predicted_tpot_ms: float = 0.0
    predicted_ttft_ms: float = 0.0
    adapter_memory_gib: float = 0.0


class Violation(BaseModel):
    """One broken constraint found by :meth:`PlacementPlan.verify`.

    Parameters
    ----------
    constraint : str
        Constraint family (``routing``, ``tier``, ``compute``, ``memory``, ``slots``,
        ``replicas``, ``pool``, ``remote``, ``ttft``, ``link``, ``unknown``).
    subject : str
        The adapter, GPU or pool concerned.
    message : str
        What is wrong, in one sentence.
    excess : float
        By how much the limit is exceeded, in the constraint's unit (0 when not numeric).
    """

    model_config = ConfigDict(frozen=True)

    constraint: str
    subject: str
    message: str
    excess: float = 0.0

    def __str__(self) -> str:
        return f"{self.constraint}: {self.subject}: {self.message}"


class PlacementPlan(BaseModel):
    """Where every adapter lives and how its traffic splits.

    A plan is a value: solving produces it without side effects, it round-trips through YAML,
    and :meth:`verify` checks it against a :class:`~loraserve.models.config.Config` without a
    solver.

    Parameters
    ----------
    base_model : str
        The base model's name, for a sanity check when the plan is applied.
    gpus : list of GPUPlacement
        The GPUs used, sorted by id.
    routes : dict
        ``routes[adapter_id][gpu_id]`` is the share of the adapter's requests that GPU serves;
        each adapter's shares sum to 1.
    remote : dict
        ``remote[adapter_id][gpu_id]`` is the GPU that ``gpu_id`` fetches the adapter from:
        ``gpu_id`` serves the adapter's routed share without hosting it (remote access over
        the config's topology). Empty for replication-only plans.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format_version: Literal[1] = 1
    base_model: str
    gpus: list[GPUPlacement] = Field(default_factory=list)
    routes: dict[str, dict[str, float]] = Field(default_factory=dict)
    remote: dict[str, dict[str, str]] = Field(default_factory=dict)

    @property
    def num_gpus(self) -> int:
        """Number of GPUs the plan uses."""
        return len(self.gpus)

    def gpu(self, gpu_id: str) -> GPUPlacement:
        """Return the GPU called ``gpu_id``."""
        for gpu in self.gpus:
            if gpu.gpu_id == gpu_id:
                return gpu
        raise KeyError(gpu_id)

    def remote_pairs(self) -> list[tuple[str, str, str]]:
        """``(adapter_id, gpu_id, source_gpu_id)`` of every remote pair, sorted."""
        return sorted((a, g, src) for a, pairs in self.remote.items() for g, src in pairs.items())

    def gpus_by_type_and_tier(self) -> dict[tuple[str, int], int]:
        """Count GPUs per ``(gpu_type, tier)``."""
        return dict(sorted(Counter((g.gpu_type, g.tier) for g in self.gpus).items()))

    def cost_per_hour(self, config: Config) -> float:
        """Price of the plan's GPUs per hour under ``config``'s pools."""
        prices = {p.gpu_type: p.cost_per_hour for p in config.pools}
        return sum(prices.get(g.gpu_type, math.nan) for g in self.gpus)

    def normalized(self) -> PlacementPlan:
        """Return a copy with sorted GPUs, adapters and routes and no zero-weight routes."""
        gpus = sorted(
            (g.model_copy(update={"adapters": sorted(g.adapters)}) for g in self.gpus),
            key=lambda g: _natural_key(g.gpu_id),
        )
        routes = {
            a: {g: w for g, w in sorted(split.items(), key=lambda kv: _natural_key(kv[0])) if w > 0}
            for a, split in sorted(self.routes.items())
        }
        remote = {a: dict(sorted(pairs.items(), key=lambda kv: _natural_key(kv[0])))
                  for a, pairs in sorted(self.remote.items()) if pairs}
        return self.model_copy(update={"gpus": gpus, "routes": routes, "remote": remote})

    # ---- serialisation -------------------------------------------------------------------

    def to_yaml(self) -> str:
        """Serialise to YAML."""
        data = self.model_dump(mode="json")
        if not data["remote"]:
            del data["remote"]  # replication-only plans read and write as before
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: str = "plan") -> PlacementPlan:
        """Parse a plan from YAML text.

        Raises
        ------
        ConfigError
            One line naming the field when the text is not a valid plan.
        """
        return parse_model(cls, text, source, "a plan must be a mapping with gpus and routes")

    def save(self, path: str | Path) -> None:
        """Write the plan to ``path`` atomically (a failed write leaves the old file intact)."""
        write_atomic(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> PlacementPlan:
        """Read a plan written by :meth:`save`."""
        return cls.from_yaml(read_text(path), source=str(path))

    # ---- tables --------------------------------------------------------------------------

    def gpu_table(self) -> pd.DataFrame:
        """One row per GPU: id, type, tier, hosted adapter count, utilization, latencies."""
        rows = [
            {
                "gpu_id": g.gpu_id,
                "gpu_type": g.gpu_type,
                "tier": g.tier,
                "adapters": len(g.adapters),
                "utilization": g.utilization,
                "tpot_ms": g.predicted_tpot_ms,
                "ttft_ms": g.predicted_ttft_ms,
                "adapter_memory_gib": g.adapter_memory_gib,
            }
            for g in self.gpus
        ]
        return pd.DataFrame(rows, columns=[
            "gpu_id", "gpu_type", "tier", "adapters", "utilization", "tpot_ms", "ttft_ms",
            "adapter_memory_gib",
        ])

    def remote_table(self) -> pd.DataFrame:
        """One row per remote pair: adapter, serving GPU, source GPU and routed weight."""
        rows = [{"adapter_id": a, "gpu_id": g, "source_gpu_id": src,
                 "weight": self.routes.get(a, {}).get(g, 0.0)}
                for a, g, src in self.remote_pairs()]
        return pd.DataFrame(rows, columns=["adapter_id", "gpu_id", "source_gpu_id", "weight"])

    def route_table(self) -> pd.DataFrame:
        """One row per (adapter, GPU) route with its weight."""
        rows = [
            {"adapter_id": a, "gpu_id": g, "weight": w}
            for a, split in self.routes.items()
            for g, w in split.items()
        ]
        return pd.DataFrame(rows, columns=["adapter_id", "gpu_id", "weight"])

    def tier_table(self) -> pd.DataFrame:
        """GPUs, hosted adapters and mean utilization per (gpu_type, tier)."""
        table = self.gpu_table()
        if table.empty:
            return pd.DataFrame(columns=["gpu_type", "tier", "gpus", "adapters", "mean_util",
                                         "max_util"])
        grouped = table.groupby(["gpu_type", "tier"], as_index=False).agg(
            gpus=("gpu_id", "count"),
            adapters=("adapters", "sum"),
            mean_util=("utilization", "mean"),
            max_util=("utilization", "max"),
        )
        return grouped

    def gpu_shares(self, config: Config) -> dict[str, list[tuple[Adapter, float]]]:
        """Per GPU, each adapter of ``config`` it serves and its share of that one's traffic.

        An adapter is served where it is hosted or fetched from a peer (a remote pair); its
        share is its routed weight there (0 where the routes give it none: it is still
        hosted, and takes its place in the GPU's hosting rows).
        """
        adapters = {a.id: a for a in config.adapters}
        fetched: dict[str, list[str]] = {}
        for adapter_id, gpu_id, _ in self.remote_pairs():
            fetched.setdefault(gpu_id, []).append(adapter_id)
        shares = {}
        for gpu in self.gpus:
            served = dict.fromkeys([*gpu.adapters, *fetched.get(gpu.gpu_id, ())])
            shares[gpu.gpu_id] = [(adapters[a], self.routes.get(a, {}).get(gpu.gpu_id, 0.0))
                                  for a in served if a in adapters]
        return shares

    def slot_table(self, config: Config, cost_model: CostModel | None = None) -> pd.DataFrame:
        """Per GPU, how many hosted adapters are expected to be busy against ``max_loras``.

        A vLLM batch runs at most ``max_loras`` distinct adapters; a waiting request of
        another adapter is skipped until a slot frees, which happens only when every running
        request of a batched adapter has finished. With adapters that are nearly always busy
        that wait is unbounded, and it is not part of the predicted TTFT: the placement
        limits hosted adapters to ``max_cpu_loras``, not busy ones to ``max_loras``. This table
        says where that matters (:meth:`CostModel.predict` explains the estimate).

        Parameters
        ----------
        config : Config
            Gives the adapters' rates and token counts, and ``max_loras``.
        cost_model : CostModel, optional
            Built from ``config`` when omitted.

        Returns
        -------
        pandas.DataFrame
            ``gpu_id, hosted, expected_active, max_loras, overflow`` (the probability that
            more than ``max_loras`` adapters are busy at once), one row per GPU.
        """
        from loraserve.profiles.capacity import CostModel

        model = cost_model or CostModel.from_config(config)
        shares = self.gpu_shares(config)
        rows = []
        for gpu in self.gpus:
            prediction = model.predict(gpu.gpu_type, gpu.tier, shares[gpu.gpu_id])
            rows.append({"gpu_id": gpu.gpu_id, "hosted": len(gpu.adapters),
                         "expected_active": prediction.active_adapters,
                         "max_loras": config.serving.max_loras,
                         "overflow": prediction.slot_overflow})
        return pd.DataFrame(rows, columns=["gpu_id", "hosted", "expected_active", "max_loras",
                                           "overflow"])

    # ---- verification --------------------------------------------------------------------

    def verify(self, config: Config, cost_model: CostModel | None = None) -> list[Violation]:
        """Check the plan against ``config``; return every violation (empty when valid).

        No solver is involved: routing sums, tier >= rank, compute utilization under each
        tier's SLO-derived limit, the SLO families ``tpot_tail`` (TPOT at the
        percentile) and ``batch_slots`` (adapters busy at once against ``max_loras``),
        memory, adapter slots, replica caps and pool sizes are
        recomputed from the inputs; for remote pairs also that the source hosts the adapter
        and is reachable, that the fetch time keeps the TTFT SLO, and that the RDMA traffic
        fits every link of the topology.

        Parameters
        ----------
        config : Config
            The inputs the plan claims to satisfy.
        cost_model : CostModel, optional
            Cost model to price loads with; built from ``config`` when omitted.
        """
        # Imported here because the cost model sits one layer above models/ in the import
        # order; plans still verify themselves, as users expect.
        from loraserve.profiles.capacity import CostModel

        model = cost_model or CostModel.from_config(config)
        return _verify(self, config, model)


def _natural_key(text: str) -> tuple[str, int]:
    head, _, tail = text.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (text, -1)


def _verify(plan: PlacementPlan, config: Config, model: CostModel) -> list[Violation]:
    problems: list[Violation] = []
    adapters = {a.id: a for a in config.adapters}
    served = plan.gpu_shares(config)
    limits = config.serving
    gpus: dict[str, GPUPlacement] = {}
    pools = {p.gpu_type: p for p in config.pools}
    for gpu in plan.gpus:
        if gpu.gpu_id in gpus:
            problems.append(Violation(constraint="unknown", subject=gpu.gpu_id,
                                      message="GPU id appears twice"))
        gpus[gpu.gpu_id] = gpu
        if gpu.gpu_type not in pools:
            problems.append(Violation(constraint="pool", subject=gpu.gpu_id,
                                      message=f"GPU type '{gpu.gpu_type}' is not in the pools"))
        if gpu.tier not in limits.tiers:
            problems.append(Violation(constraint="tier", subject=gpu.gpu_id,
                                      message=f"tier {gpu.tier} is not in serving.tiers"))
    if plan.base_model != config.base_model.name:
        problems.append(Violation(constraint="unknown", subject="base_model",
                                  message=f"plan is for '{plan.base_model}', config for "
                                  f"'{config.base_model.name}'"))

    for gpu_type, used in Counter(g.gpu_type for g in plan.gpus).items():
        if gpu_type in pools and used > pools[gpu_type].count:
            problems.append(Violation(constraint="pool", subject=gpu_type,
                                      message=f"uses {used} GPUs; the pool holds "
                                      f"{pools[gpu_type].count}",
                                      excess=used - pools[gpu_type].count))

    hosted_on: dict[str, set[str]] = {g.gpu_id: set(g.adapters) for g in plan.gpus}
    replicas_of = Counter(a for g in plan.gpus for a in set(g.adapters))
    load: dict[str, float] = dict.fromkeys(gpus, 0.0)
    for adapter_id in plan.routes:
        if adapter_id not in adapters:
            problems.append(Violation(constraint="unknown", subject=adapter_id,
                                      message="routed adapter is not in the config"))
    for adapter_id, adapter in adapters.items():
        split = plan.routes.get(adapter_id)
        if not split:
            problems.append(Violation(constraint="routing", subject=adapter_id,
                                      message="adapter has no route", excess=1.0))
            continue
        total = sum(split.values())
        if not all(math.isfinite(w) for w in split.values()):
            # NaN compares false with everything: without this a NaN share passed every check.
            bad = next(g for g, w in split.items() if not math.isfinite(w))
            problems.append(Violation(constraint="routing", subject=adapter_id,
                                      message=f"weight {split[bad]} on {bad} is not a number "
                                      "between 0 and 1", excess=1.0))
            continue
        if abs(total - 1.0) > TOLERANCE:
            problems.append(Violation(constraint="routing", subject=adapter_id,
                                      message=f"routing weights sum to {total:.6f}, not 1",
                                      excess=abs(total - 1.0)))
        for gpu_id, weight in split.items():
            if weight < -TOLERANCE:
                problems.append(Violation(constraint="routing", subject=adapter_id,
                                          message=f"negative weight {weight} on {gpu_id}",
                                          excess=-weight))
            target = gpus.get(gpu_id)
            if target is None:
                problems.append(Violation(constraint="routing", subject=adapter_id,
                                          message=f"routed to unknown GPU {gpu_id}"))
                continue
            remote_source = plan.remote.get(adapter_id, {}).get(gpu_id)
            if (adapter_id not in hosted_on[gpu_id] and remote_source is None
                    and weight > TOLERANCE):
                problems.append(Violation(constraint="routing", subject=adapter_id,
                                          message=f"routed to {gpu_id}, which does not host it"))
            if target.gpu_type in pools and model.has(target.gpu_type, target.tier):
                load[gpu_id] += weight * model.adapter_load(adapter, target.gpu_type, target.tier)
        replicas = replicas_of[adapter_id]
        if replicas > limits.max_replicas:
            problems.append(Violation(constraint="replicas", subject=adapter_id,
                                      message=f"hosted on {replicas} GPUs; max_replicas is "
                                      f"{limits.max_replicas}",
                                      excess=replicas - limits.max_replicas))

    for gpu in plan.gpus:
        hosted = [adapters[a] for a in gpu.adapters if a in adapters]
        for name in gpu.adapters:
            if name not in adapters:
                problems.append(Violation(constraint="unknown", subject=gpu.gpu_id,
                                          message=f"hosts unknown adapter '{name}'"))
        for adapter in hosted:
            if adapter.rank > gpu.tier:
                problems.append(Violation(constraint="tier", subject=gpu.gpu_id,
                                          message=f"hosts '{adapter.id}' of rank {adapter.rank} "
                                          f"above its tier {gpu.tier}",
                                          excess=adapter.rank - gpu.tier))
        if len(hosted) > limits.adapters_per_gpu:
            problems.append(Violation(constraint="slots", subject=gpu.gpu_id,
                                      message=f"hosts {len(hosted)} adapters; the limit is "
                                      f"{limits.adapters_per_gpu}",
                                      excess=len(hosted) - limits.adapters_per_gpu))
        if gpu.gpu_type not in pools:
            continue
        used_bytes = sum(config.adapter_bytes(a) for a in hosted)
        cache_bytes = model.adapter_cache_bytes()
        if used_bytes > cache_bytes * (1 + TOLERANCE):
            problems.append(Violation(constraint="memory", subject=gpu.gpu_id,
                                      message=f"hosted adapters need {used_bytes / 2**30:.2f} "
                                      f"GiB; serving.adapter_cache_gib is "
                                      f"{cache_bytes / 2**30:g}",
                                      excess=(used_bytes - cache_bytes) / 2**30))
        if gpu.tier not in limits.tiers:
            continue  # reported above; the cost model prices configured tiers only
        if not model.has(gpu.gpu_type, gpu.tier):
            reason = model.capacity(gpu.gpu_type, gpu.tier).reason
            family = "memory" if reason.startswith("memory") else "tier"
            problems.append(Violation(constraint=family, subject=gpu.gpu_id,
                                      message=f"tier {gpu.tier} is not usable: {reason}"))
            continue
        limit = model.capacity(gpu.gpu_type, gpu.tier).max_utilization
        if load[gpu.gpu_id] > limit + TOLERANCE:
            problems.append(Violation(constraint="compute", subject=gpu.gpu_id,
                                      message=f"utilization {load[gpu.gpu_id]:.3f} exceeds "
                                      f"{limit:.3f}, the most that keeps the SLO at tier "
                                      f"{gpu.tier}",
                                      excess=load[gpu.gpu_id] - limit))
        problems += _verify_slo_families(gpu, served[gpu.gpu_id], model)
    if plan.remote:
        problems += _verify_remote(plan, config, model, gpus, load)
    return problems


def _verify_slo_families(gpu: GPUPlacement, shares: list[tuple[Adapter, float]],
                         model: CostModel) -> list[Violation]:
    """The SLO families beyond compute (``tpot_tail``, ``batch_slots``) on one GPU.

    ``shares`` are every adapter the GPU serves, hosted or fetched from a peer: a remote
    pair's requests run in the same batches and take a batch slot too.
    """
    problems = []
    for check in model.family_checks(gpu.gpu_type, gpu.tier, shares):
        if check.family in ("tpot_tail", "batch_slots") and check.violated:
            problems.append(Violation(constraint=check.family, subject=gpu.gpu_id,
                                      message=check.detail,
                                      excess=check.used - check.limit))
    return problems


def link_traffic(plan: PlacementPlan, config: Config) -> dict[tuple[str, str], float]:
    """Planned RDMA bytes per second on every directed edge the plan's remote pairs use.

    A remote pair's traffic is its request rate (the adapter's rate times the pair's routed
    weight) times the adapter's bytes times the topology's ``miss_ratio``, on every edge of
    the widest path from the source to the serving GPU. Empty without remote pairs.
    """
    topo, spec = config.network(), config.topology
    if topo is None or spec is None:
        return {}
    adapters = {a.id: a for a in config.adapters}
    traffic: dict[tuple[str, str], float] = {}
    for adapter_id, gpu_id, source in plan.remote_pairs():
        adapter = adapters.get(adapter_id)
        if adapter is None or not topo.reachable(source, gpu_id):
            continue
        weight = plan.routes.get(adapter_id, {}).get(gpu_id, 0.0)
        rate = adapter.request_rate * weight * spec.miss_ratio * config.adapter_bytes(adapter)
        for edge in topo.edges(source, gpu_id):
            traffic[edge] = traffic.get(edge, 0.0) + rate
    return traffic


def _verify_remote(plan: PlacementPlan, config: Config, model: CostModel,
                   gpus: dict[str, GPUPlacement], load: dict[str, float]) -> list[Violation]:
    """Checks of remote pairs: sources, TTFT with the fetch, reserved cache, link traffic."""
    problems: list[Violation] = []
    topo = config.network()
    spec = config.topology
    if topo is None or spec is None or not spec.remote_access:
        problems.append(Violation(
            constraint="remote", subject="remote",
            message="the plan serves adapters remotely but the config has no topology with "
                    "remote_access"))
        return problems
    adapters = {a.id: a for a in config.adapters}
    limits = config.serving
    fetch_limit: dict[str, float] = {}
    reserve_bytes: dict[str, float] = {}
    for adapter_id, gpu_id, source in plan.remote_pairs():
        subject = f"{adapter_id}@{gpu_id}"
        adapter = adapters.get(adapter_id)
        target, origin = gpus.get(gpu_id), gpus.get(source)
        if adapter is None or target is None or origin is None:
            problems.append(Violation(constraint="remote", subject=subject,
                                      message=f"names an unknown adapter or GPU (source "
                                      f"{source})"))
            continue
        if adapter_id not in origin.adapters:
            problems.append(Violation(constraint="remote", subject=subject,
                                      message=f"source {source} does not host the adapter"))
        if adapter_id in target.adapters:
            problems.append(Violation(constraint="remote", subject=subject,
                                      message="the GPU hosts the adapter itself; a pair is "
                                      "either hosted or remote"))
        if not topo.reachable(source, gpu_id):
            problems.append(Violation(constraint="remote", subject=subject,
                                      message=f"{source} cannot reach {gpu_id} in the topology "
                                      "(GPU ids must be <gpu_type>-<i> within the pool)"))
            continue
        if adapter.rank > target.tier:
            problems.append(Violation(constraint="tier", subject=gpu_id,
                                      message=f"serves '{adapter_id}' of rank {adapter.rank} "
                                      f"above its tier {target.tier}",
                                      excess=adapter.rank - target.tier))
        fetch = model.remote_fetch_ms(adapter, target.gpu_type, topo.bandwidth(source, gpu_id))
        if model.has(target.gpu_type, target.tier):
            limit = model.max_utilization_with(target.gpu_type, target.tier, fetch)
            fetch_limit[gpu_id] = min(fetch_limit.get(gpu_id, math.inf), limit)
            if limit <= 0.0:
                problems.append(Violation(constraint="ttft", subject=subject,
                                          message=f"fetching from {source} takes {fetch:.1f} ms; "
                                          "even an idle GPU then misses the TTFT SLO of "
                                          f"{config.slo.ttft_ms:g} ms"))
        reserve_bytes[gpu_id] = max(reserve_bytes.get(gpu_id, 0.0),
                                    float(config.adapter_bytes(adapter)))
    for gpu_id, limit in sorted(fetch_limit.items()):
        if limit > 0.0 and load.get(gpu_id, 0.0) > limit + TOLERANCE:
            problems.append(Violation(constraint="ttft", subject=gpu_id,
                                      message=f"utilization {load[gpu_id]:.3f} exceeds "
                                      f"{limit:.3f}, the most that keeps the TTFT SLO with its "
                                      "slowest remote fetch", excess=load[gpu_id] - limit))
    cache = model.adapter_cache_bytes()
    for gpu_id, largest in sorted(reserve_bytes.items()):
        gpu = gpus[gpu_id]
        hosted = [adapters[a] for a in gpu.adapters if a in adapters]
        slots = len(hosted) + spec.remote_slots
        if slots > limits.adapters_per_gpu:
            problems.append(Violation(constraint="slots", subject=gpu_id,
                                      message=f"hosts {len(hosted)} adapters and reserves "
                                      f"{spec.remote_slots} for fetched ones; the limit is "
                                      f"{limits.adapters_per_gpu}",
                                      excess=slots - limits.adapters_per_gpu))
        need = sum(config.adapter_bytes(a) for a in hosted) + spec.remote_slots * largest
        if need > cache * (1 + TOLERANCE):
            problems.append(Violation(constraint="memory", subject=gpu_id,
                                      message=f"hosted adapters and the reserve for fetched ones "
                                      f"need {need / 2**30:.2f} GiB; serving.adapter_cache_gib "
                                      f"is {cache / 2**30:g}", excess=(need - cache) / 2**30))
    for edge, used in sorted(link_traffic(plan, config).items()):
        capacity = topo.link_capacity(edge)
        if used > capacity * (1 + TOLERANCE):
            problems.append(Violation(constraint="link", subject=f"{edge[0]}->{edge[1]}",
                                      message=f"remote fetches need {used / 1e9:.3f} GB/s; "
                                      f"max_link_utilization allows {capacity / 1e9:.3f}",
                                      excess=(used - capacity) / 1e9))
    return problems


SolveStatus = Literal["optimal", "feasible", "infeasible", "unknown"]


class SolveResult(BaseModel):
    """What a solver returns: the plan (when one was found) and how good it is.

    Parameters
    ----------
    status : {"optimal", "feasible", "infeasible", "unknown"}
        ``optimal``: proven (gap within the solver's tolerance); ``feasible``: a plan with a
        gap; ``infeasible``: proven that no plan exists, with ``message`` saying what binds;
        ``unknown``: no plan found within the limits.
    plan : PlacementPlan or None
        The best plan found.
    objective : float or None
        The plan's cost: GPUs, or cost per hour when pools differ in price.
    lower_bound : float
        A valid lower bound on the optimal objective.
    gap : float or None
        ``(objective - lower_bound) / objective``.
    seconds : float
        Wall-clock solve time.
    solver : str
        Algorithm that produced the plan.
    message : str
        Human-readable detail: what bound, why infeasible.
    binding : str or None
        The constraint family that determines the lower bound or causes infeasibility.
    """

    model_config = ConfigDict(extra="forbid")

    status: SolveStatus
    plan: PlacementPlan | None = None
    objective: float | None = None
    lower_bound: float = 0.0
    gap: float | None = None
    seconds: float = 0.0
    solver: str = ""
    message: str = ""
    binding: str | None = None

    def summary(self) -> pd.DataFrame:
        """One-row table of the result's figures."""
        return pd.DataFrame([{
            "status": self.status,
            "solver": self.solver,
            "gpus": self.plan.num_gpus if self.plan else None,
            "objective": self.objective,
            "lower_bound": self.lower_bound,
            "gap": self.gap,
            "seconds": self.seconds,
            "binding": self.binding,
        }])
