"""Make a running vLLM fleet match a placement plan, make-before-break, journaled.

:func:`apply_plan` (what ``loraserve apply`` runs) does, in order:

1. **Check the inputs** without touching anything: every GPU of the plan has a worker in the
   inventory, every adapter a directory under the adapter roots with a PEFT config whose rank
   fits the GPU's tier, no GPU holds more adapters than its ``max_cpu_loras``, a tier change
   has a launcher command. A remote pair of the plan (a GPU serving an adapter it does not
   host) needs a worker that resolves adapters on demand (``lora_resolver_dir``) from a
   directory that holds the adapter; see :func:`hosting_view` for how it is applied.
2. **Observe** the fleet: each worker's health, API key, whether runtime LoRA updating is on,
   what ``/v1/models`` lists, and the live routing table (the inventory's ``routes_file``).
   Routes to a worker that lost the adapter (it crashed, say) are repaired first.
3. **Check capabilities**: where the worker exposes its LoRA settings they are compared with
   the plan; elsewhere the highest-rank adapter the plan puts on a worker is loaded under a
   probe name and unloaded, which is the only way vLLM tells its ``--max-lora-rank``.
4. **Plan** the steps with :func:`~loraserve.models.plan_migration` from the observed state.
5. **Execute** them with bounded concurrency, journaling each step: loads first, then the
   routing change (written to the routes file; with a router, apply waits until the router
   has loaded it), then, once no request for the adapter is in flight on the old replica,
   the unload. Two steps that touch the same worker or the same adapter never overlap, and
   run in plan order, so every state the fleet passes through is one the sequential plan
   passes through as far as any adapter or worker can tell: an adapter is never routed to a
   worker without it and never loses its last routed replica.
6. **Verify**: observe again and compare with the plan; write the plan as the routes file
   (which is when remote pairs start to get traffic).

A run killed anywhere leaves the fleet consistent; the next run observes it again and plans
from there (``resume``), or, with ``rollback``, goes back to the state the interrupted run
started from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loraserve.models import (
    ADMISSIBLE_RANKS,
    PRESETS,
    BaseModelSpec,
    Config,
    ConfigError,
    GPUPlacement,
    MigrationPlan,
    MigrationStep,
    PlacementPlan,
    plan_migration,
)
from loraserve.runtime_adapter.client import ModelsInfo, WorkerClient
from loraserve.runtime_adapter.errors import (
    MigrationError,
    RankTooHighError,
    RuntimeAdapterError,
    UnreachableError,
    WorkerError,
)
from loraserve.runtime_adapter.inventory import (
    Inventory,
    adapter_bytes,
    adapter_rank,
)
from loraserve.runtime_adapter.journal import Journal, last_tiers, new_run_id, unfinished_run
from loraserve.runtime_adapter.launcher import run_launcher
from loraserve.runtime_adapter.routes import write_table

logger = logging.getLogger(__name__)

#: Name under which the capability check loads an adapter to test a worker's rank limit.
RANK_PROBE = "loraserve-rank-probe"

#: How often waits (router switch, drain, health) poll.
POLL_S = 0.05


@dataclass(frozen=True)
class StepEvent:
    """Progress of one step, for a progress bar.

    Parameters
    ----------
    index : int
        Position in the run's steps (0-based).
    total : int
        Steps in the run.
    step : MigrationStep
        The step.
    outcome : str
        What happened (``loaded``, ``already loaded``, ``unloaded``, ``routed``, ...).
    seconds : float
        How long it took.
    """

    index: int
    total: int
    step: MigrationStep
    outcome: str
    seconds: float


@dataclass
class ApplyResult:
    """What :func:`apply_plan` did.

    Parameters
    ----------
    run : str or None
        Journal run id (None for a dry run or when nothing had to change).
    migration : MigrationPlan
        The steps planned (repairs of the routing table included, first).
    resumed : str or None
        Id of the interrupted run this one continued (or rolled back).
    completed : int
        Steps executed.
    seconds : float
        Wall-clock time of the execution.
    load_seconds : float
        Wall-clock time from the first load's start to the last load's end.
    bytes_loaded : int
        Bytes of adapter weights on disk for the loads executed.
    problems : list of str
        Differences between the fleet and the plan found by the final check (empty when it
        matches).
    dry_run : bool
        Nothing was changed.
    unprobed : list of str
        Workers whose rank limit a dry run could not check: they expose no LoRA settings,
        and the probe that tells (loading an adapter) is a change a dry run does not make.
    stopped_adapters : int
        Adapters loaded on the workers the migration stops: they go with the worker, so no
        unload step counts them.
    """

    run: str | None
    migration: MigrationPlan
    resumed: str | None = None
    completed: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    bytes_loaded: int = 0
    problems: list[str] = field(default_factory=list)
    dry_run: bool = False
    unprobed: list[str] = field(default_factory=list)
    stopped_adapters: int = 0

    def summary(self) -> dict[str, Any]:
        """Counts of the steps by kind, with the timing figures."""
        figures: dict[str, Any] = dict(self.migration.summary())
        figures.update(completed=self.completed, seconds=round(self.seconds, 3),
                       load_seconds=round(self.load_seconds, 3),
                       mib_loaded=round(self.bytes_loaded / 2**20, 3))
        return figures


@dataclass
class _Observed:
    live: PlacementPlan
    models: dict[str, ModelsInfo]
    repairs: list[MigrationStep]


class _Fleet:
    """Clients for the inventory's workers, opened lazily and closed together."""

    def __init__(self, inventory: Inventory,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.inventory = inventory
        self.transport = transport
        self.clients: dict[str, WorkerClient] = {}

    def client(self, gpu_id: str) -> WorkerClient:
        if gpu_id not in self.clients:
            worker = self.inventory.worker(gpu_id)
            self.clients[gpu_id] = WorkerClient(
                worker.url, worker.api_key(), name=gpu_id,
                timeouts=self.inventory.timeouts.to_timeouts(),
                retries=self.inventory.retries, transport=self.transport)
        return self.clients[gpu_id]

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients.values()))


# ---- static checks ----------------------------------------------------------------------


def check_plan_against_inventory(plan: PlacementPlan, inventory: Inventory,
                                 tiers: dict[str, int] | None = None) -> dict[str, int]:
    """Check a plan against the inventory without any network; return adapter ranks.

    Parameters
    ----------
    plan : PlacementPlan
        The plan to apply.
    inventory : Inventory
        The fleet.
    tiers : dict, optional
        Tiers the workers run now where they differ from the inventory's (after a restart
        recorded in the journal).

    Returns
    -------
    dict
        Rank of every adapter the plan hosts, read from its ``adapter_config.json``.

    Raises
    ------
    ConfigError
        One line naming the GPU or adapter and the fix.
    """
    tiers = tiers or {}
    ranks: dict[str, int] = {}
    for gpu in plan.gpus:
        worker = inventory.worker(gpu.gpu_id)
        current = tiers.get(gpu.gpu_id, worker.tier)
        if gpu.tier != current and inventory.launcher.restart is None:
            raise ConfigError(
                f"plan: GPU {gpu.gpu_id} is at tier {gpu.tier} but its worker runs "
                f"--max-lora-rank {current}; set launcher.restart in the inventory so apply "
                "can restart it, or restart it yourself and update its tier")
        if len(set(gpu.adapters)) > worker.slots:
            raise ConfigError(
                f"plan: GPU {gpu.gpu_id} hosts {len(set(gpu.adapters))} adapters but its worker "
                f"holds at most {worker.slots} (max_cpu_loras); re-plan with "
                f"serving.max_cpu_loras <= {worker.slots}")
        for adapter in gpu.adapters:
            if adapter not in ranks:
                ranks[adapter] = adapter_rank(inventory.adapter_path(adapter), adapter)
            if ranks[adapter] > gpu.tier:
                raise ConfigError(
                    f"plan: adapter {adapter} has rank {ranks[adapter]} (its adapter_config."
                    f"json) but GPU {gpu.gpu_id} is at tier {gpu.tier}; re-plan with the "
                    "adapter's true rank")
    _check_remote_pairs(plan, inventory, tiers)
    for adapter, split in plan.routes.items():
        hosts = {g.gpu_id for g in plan.gpus if adapter in g.adapters}
        remote = plan.remote.get(adapter, {})
        for gpu_id, weight in split.items():
            if weight > 0 and gpu_id not in hosts and gpu_id not in remote:
                raise ConfigError(f"plan: routes.{adapter} sends traffic to {gpu_id}, which "
                                  "neither hosts it nor serves it remotely; fix the plan")
    return ranks


def _check_remote_pairs(plan: PlacementPlan, inventory: Inventory,
                        tiers: dict[str, int]) -> None:
    """Every remote pair's worker resolves the adapter on demand, at a tier that admits it."""
    gpus = {g.gpu_id: g for g in plan.gpus}
    remote_on = served_remotely(plan)
    for adapter, gpu_id, source in plan.remote_pairs():
        if gpu_id not in gpus:
            raise ConfigError(f"plan: remote.{adapter} names GPU {gpu_id}, which is not in "
                              "the plan's gpus; fix the plan")
        if source not in gpus or adapter not in gpus[source].adapters:
            raise ConfigError(f"plan: remote.{adapter}.{gpu_id} fetches from {source}, which "
                              "does not host it; fix the plan")
        worker = inventory.worker(gpu_id)
        store = worker.lora_resolver_dir
        if store is None:
            raise ConfigError(
                f"plan: {gpu_id} serves {adapter} remotely (fetched from {source}) but its "
                f"worker has no lora_resolver_dir; start it with VLLM_LORA_RESOLVER_CACHE_DIR "
                "set to a directory holding the adapters and name it in the inventory, or "
                "re-plan with topology.remote_access: false")
        path = store / adapter
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(
                f"workers '{gpu_id}': lora_resolver_dir '{store}' has no "
                f"{adapter}/adapter_config.json; copy or link the adapter there (vLLM's "
                "filesystem resolver loads <dir>/<adapter id>)")
        rank = adapter_rank(path, adapter)
        tier = tiers.get(gpu_id, gpus[gpu_id].tier)
        if rank > tier:
            raise ConfigError(
                f"plan: adapter {adapter} has rank {rank} (its adapter_config.json in "
                f"{store}) but {gpu_id}, which serves it remotely, is at tier {tier}; re-plan "
                "with the adapter's true rank")
    for gpu_id, adapters in sorted(remote_on.items()):
        worker = inventory.worker(gpu_id)
        held = len(set(gpus[gpu_id].adapters)) + len(adapters)
        if held > worker.slots:
            # vLLM's LRU cache cannot pin the hosted adapters: a fetched one may evict one,
            # which is then read from disk again on its next request. Slower, not wrong.
            logger.warning("%s hosts %d adapters and serves %d remotely, above its "
                           "max_cpu_loras %d: its adapter cache will evict and reload",
                           gpu_id, len(set(gpus[gpu_id].adapters)), len(adapters), worker.slots)


def served_remotely(plan: PlacementPlan) -> dict[str, set[str]]:
    """The adapters each GPU serves remotely (routed there, not hosted).

    Parameters
    ----------
    plan : PlacementPlan

    Returns
    -------
    dict
        GPU id -> adapter ids; GPUs without remote pairs are absent.
    """
    out: dict[str, set[str]] = {}
    for adapter, gpu_id, _ in plan.remote_pairs():
        if plan.routes.get(adapter, {}).get(gpu_id, 0.0) > 0:
            out.setdefault(gpu_id, set()).add(adapter)
    return out


def hosting_view(plan: PlacementPlan) -> PlacementPlan:
    """``plan`` without its remote pairs: each adapter's traffic on the GPUs that host it.

    A remote pair runs on stock vLLM as an on-demand load: the GPU's worker resolves the
    adapter from its ``lora_resolver_dir`` when the first request for it arrives. Apply
    therefore moves the fleet through this view, whose every route goes to a loaded replica
    (the migration's make-before-break invariant), and routes the remote pairs' shares at the
    end, when the hosted replicas are all in place. While apply runs, remote pairs carry no
    traffic: their shares go to the adapter's hosted replicas.

    Parameters
    ----------
    plan : PlacementPlan

    Returns
    -------
    PlacementPlan
        ``plan`` itself when it has no remote pairs; else a copy with ``remote`` empty and
        each adapter's routes renormalized over its hosting GPUs (split evenly where every
        share was remote).
    """
    if not plan.remote:
        return plan
    hosts: dict[str, list[str]] = {}
    for gpu in plan.gpus:
        for adapter in gpu.adapters:
            hosts.setdefault(adapter, []).append(gpu.gpu_id)
    routes: dict[str, dict[str, float]] = {}
    for adapter, split in plan.routes.items():
        kept = {g: w for g, w in split.items() if w > 0 and g in hosts.get(adapter, ())}
        total = sum(kept.values())
        if total > 0:
            routes[adapter] = {g: w / total for g, w in kept.items()}
        elif adapter in hosts:
            routes[adapter] = {g: 1.0 / len(hosts[adapter]) for g in hosts[adapter]}
    return plan.model_copy(update={"routes": routes, "remote": {}}).normalized()


def migration_config(base_model: str, ranks: dict[str, int], slots: int,
                     max_loras: int) -> Config:
    """The planning inputs :func:`plan_migration` reads: adapter ranks and slots per worker.

    The migration planner uses a config only for adapters' ranks, slots per GPU and adapter
    sizes; sizes are replaced by the bytes on disk afterwards, and the remaining fields
    (SLO, pools) are not read by it, so they are set to neutral values here.
    """
    spec = PRESETS.get(base_model)
    if spec is None:
        spec = BaseModelSpec(name=base_model[:64] or "unknown", num_layers=1, hidden_size=64,
                             intermediate_size=64, num_attention_heads=1, num_kv_heads=1,
                             vocab_size=1)
    return Config(
        base_model=spec,
        slo={"ttft_ms": 1000.0, "tpot_ms": 100.0},
        pools=({"gpu_type": "any", "count": 100_000, "memory_gib": 80.0},),
        serving={"max_loras": min(max_loras, slots), "max_cpu_loras": slots,
                 "max_replicas": 100_000, "tiers": ADMISSIBLE_RANKS},
        adapters=tuple({"id": a, "rank": r, "request_rate": 0.0, "prompt_tokens": 1.0,
                        "output_tokens": 1.0} for a, r in sorted(ranks.items())),
    )


# ---- the reconciler -------------------------------------------------------------------------


class Reconciler:
    """Observe a fleet, plan the migration to a target plan, and execute it.

    Parameters
    ----------
    inventory : Inventory
        The fleet.
    on_step : callable, optional
        Called with a :class:`StepEvent` after each step completes.
    transport : httpx.AsyncBaseTransport, optional
        Transport for the worker and router clients (the network by default).
    """

    def __init__(self, inventory: Inventory, on_step: Callable[[StepEvent], None] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.inventory = inventory
        self.on_step = on_step
        self.fleet = _Fleet(inventory, transport)
        self.router = (httpx.AsyncClient(base_url=inventory.router_url, transport=transport,
                                         timeout=httpx.Timeout(10.0, connect=3.0))
                       if inventory.router_url else None)
        self.routes_lock = asyncio.Lock()
        self.written: dict[str, int] = {}
        self.writes = 0

    async def aclose(self) -> None:
        """Close every connection."""
        await self.fleet.aclose()
        if self.router is not None:
            await self.router.aclose()

    # ---- observing -------------------------------------------------------------------------

    async def _probe(self, gpu_id: str) -> tuple[str, ModelsInfo | RuntimeAdapterError]:
        try:
            return gpu_id, await self.fleet.client(gpu_id).check_capabilities()
        except RuntimeAdapterError as exc:
            return gpu_id, exc

    async def observe(self, target: PlacementPlan, tiers: dict[str, int],
                      remote_on: dict[str, set[str]] | None = None) -> _Observed:
        """What the workers serve now, and the live routes restricted to what is loaded.

        An adapter a worker resolved on demand for a remote pair it keeps (``remote_on``) is
        not counted as hosted there: the migration neither keeps nor unloads it.

        Raises
        ------
        WorkerError
            A worker of the target plan cannot be used (unreachable without a launcher
            start command, wrong API key, runtime updating off).
        """
        live_file = self.inventory.routes_file
        live = (PlacementPlan.load(live_file) if live_file.exists()
                else PlacementPlan(base_model=target.base_model))
        target_ids = {g.gpu_id for g in target.gpus}
        candidates = sorted(target_ids | {g.gpu_id for g in live.gpus}
                            | {w.gpu_id for w in self.inventory.workers})
        known = {w.gpu_id for w in self.inventory.workers}
        answers = await asyncio.gather(*(self._probe(g) for g in candidates if g in known))
        models: dict[str, ModelsInfo] = {}
        for gpu_id, answer in answers:
            if isinstance(answer, ModelsInfo):
                models[gpu_id] = answer
                continue
            startable = (isinstance(answer, UnreachableError)
                         and self.inventory.launcher.start is not None)
            if gpu_id in target_ids and not startable:
                raise answer
            if gpu_id in target_ids:
                logger.info("%s is not running; the launcher will start it", gpu_id)
            else:
                logger.warning("ignoring worker %s, which is not in the plan: %s", gpu_id, answer)
        types = {g.gpu_id: g.gpu_type for g in live.gpus}
        types.update({g.gpu_id: g.gpu_type for g in target.gpus})
        gpus = []
        for gpu_id, info in sorted(models.items()):
            if gpu_id not in target_ids and not info.adapters and gpu_id not in types:
                continue  # an idle worker the plans never used: leave it alone
            tier = tiers.get(gpu_id, self.inventory.worker(gpu_id).tier)
            hosted = set(info.adapters) - (remote_on or {}).get(gpu_id, set())
            gpus.append(GPUPlacement(gpu_id=gpu_id, gpu_type=types.get(gpu_id, "any"),
                                     tier=tier, adapters=sorted(hosted)))
        loaded = {g.gpu_id: set(g.adapters) for g in gpus}
        routes: dict[str, dict[str, float]] = {}
        repairs: list[MigrationStep] = []
        for adapter, split in sorted(live.routes.items()):
            positive = {g: w for g, w in split.items() if w > 0}
            kept = {g: w for g, w in positive.items() if adapter in loaded.get(g, ())}
            total = sum(kept.values())
            fixed = {g: w / total for g, w in kept.items()} if total > 0 else {}
            if fixed:
                routes[adapter] = fixed
            if set(fixed) != set(positive):
                lost = ", ".join(sorted(set(positive) - set(fixed)))
                repairs.append(MigrationStep(action="route", adapter=adapter, weights=fixed,
                                             reason=f"repair: {lost} no longer has it loaded"))
        observed = PlacementPlan(base_model=target.base_model, gpus=gpus, routes=routes)
        return _Observed(observed.normalized(), models, repairs)

    async def check_ranks(self, target: PlacementPlan, observed: _Observed,
                          ranks: dict[str, int], tiers: dict[str, int],
                          probe: bool = True) -> list[str]:
        """Check each worker can load the highest-rank adapter the plan gives it.

        With ``probe`` False (a dry run) only workers that expose their LoRA settings are
        checked; the others are returned, unchecked, sorted.

        Raises
        ------
        RankTooHighError, AdapterNotFoundError, WorkerError
            With the worker named.
        """
        unprobed: list[str] = []

        async def check(gpu: GPUPlacement) -> None:
            if gpu.gpu_id not in observed.models or not gpu.adapters:
                return  # started or restarted by the launcher: checked when it comes up
            worker = self.inventory.worker(gpu.gpu_id)
            if gpu.tier != tiers.get(gpu.gpu_id, worker.tier):
                return  # restarted at the plan's tier first
            client = self.fleet.client(gpu.gpu_id)
            limits = await client.lora_limits()
            top = max(gpu.adapters, key=lambda a: (ranks[a], a))
            if limits is not None:
                if limits.max_lora_rank < ranks[top]:
                    raise RankTooHighError(
                        f"worker {gpu.gpu_id} ({worker.url}): runs --max-lora-rank "
                        f"{limits.max_lora_rank}, below the rank {ranks[top]} of {top} that "
                        f"the plan puts there (tier {gpu.tier}); restart it at tier "
                        f"{gpu.tier} or fix the inventory's tier", limits.max_lora_rank,
                        ranks[top])
                return
            proven = [ranks.get(a, 0) for a in observed.models[gpu.gpu_id].adapters]
            if proven and max(proven) >= ranks[top]:
                return  # it already serves an adapter of that rank
            if not probe:
                unprobed.append(gpu.gpu_id)
                return
            path = str(self.inventory.adapter_path(top))
            try:
                await client.load(RANK_PROBE, path)
            except RankTooHighError as exc:
                raise RankTooHighError(
                    f"worker {gpu.gpu_id} ({worker.url}): runs --max-lora-rank "
                    f"{exc.max_lora_rank}, below the rank {ranks[top]} of {top} that the plan "
                    f"puts there (tier {gpu.tier}); restart it at tier {gpu.tier} or fix the "
                    "inventory's tier", exc.max_lora_rank, ranks[top]) from None
            finally:
                await client.unload(RANK_PROBE)

        await asyncio.gather(*(check(gpu) for gpu in target.gpus))
        return sorted(unprobed)

    async def check_router(self) -> None:
        """Check up front that the router answers (when the inventory names one).

        Without this a run with no router loaded adapters and then waited the whole drain
        timeout at its first routing step.

        Raises
        ------
        WorkerError
            The router does not answer, with what to do.
        """
        if self.router is None:
            return
        try:
            response = await self.router.get("/loraserve/state")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise WorkerError(f"the router at {self.inventory.router_url} does not answer "
                              f"({type(exc).__name__}); start it first (loraserve route "
                              f"--plan {self.inventory.routes_file} --workers INVENTORY; it "
                              "waits for the routes file), or drop router_url from the "
                              "inventory") from None

    # ---- the routing table and the router ------------------------------------------------

    async def write_routes(self, live: PlacementPlan) -> None:
        """Replace the routes file and wait until the router serves it (or settle)."""
        async with self.routes_lock:
            version = write_table(self.inventory.routes_file, live)
            self.writes += 1
            sequence = self.writes
            self.written[version] = sequence
        if self.router is None:
            await asyncio.sleep(self.inventory.route_settle_s)
            return
        deadline = time.monotonic() + self.inventory.drain_timeout_s
        while True:
            try:
                response = await self.router.post("/loraserve/reload")
                state = response.json()
                if self.written.get(str(state.get("version")), 0) >= sequence:
                    return
            except (httpx.HTTPError, ValueError) as exc:
                logger.info("router not answering (%s); retrying", type(exc).__name__)
            if time.monotonic() > deadline:
                raise MigrationError(f"the router at {self.inventory.router_url} did not load "
                                     f"the new routing table within "
                                     f"{self.inventory.drain_timeout_s:g} s; check that it reads "
                                     f"{self.inventory.routes_file}")
            await asyncio.sleep(POLL_S)

    async def _router_inflight(self) -> dict[str, dict[str, int]] | None:
        if self.router is None:
            return None
        try:
            response = await self.router.get("/loraserve/state")
            inflight: dict[str, dict[str, int]] = response.json().get("inflight", {})
            return inflight
        except (httpx.HTTPError, ValueError):
            return None

    async def wait_drained(self, gpu_id: str, adapter: str | None) -> None:
        """Wait until no request for ``adapter`` (any, when None) is in flight to ``gpu_id``.

        In flight means between the router and the worker; with ``adapter`` None the worker's
        own running and waiting counts must reach zero too.
        """
        deadline = time.monotonic() + self.inventory.drain_timeout_s
        while True:
            busy = 0
            inflight = await self._router_inflight()
            if inflight is not None:
                if adapter is None:
                    busy += sum(per.get(gpu_id, 0) for per in inflight.values())
                else:
                    busy += inflight.get(adapter, {}).get(gpu_id, 0)
            if adapter is None and busy == 0:
                metrics = await self.fleet.client(gpu_id).metrics()
                busy += int(metrics.running + metrics.waiting)
            if busy == 0:
                return
            if time.monotonic() > deadline:
                what = f"{adapter} requests" if adapter else "requests"
                raise MigrationError(f"{busy} {what} still in flight on {gpu_id} after "
                                     f"{self.inventory.drain_timeout_s:g} s; raise "
                                     "drain_timeout_s or retry when traffic is lower")
            await asyncio.sleep(POLL_S)

    async def wait_ready(self, gpu_id: str) -> ModelsInfo:
        """Wait for a (re)started worker to answer, then check its capabilities."""
        client = self.fleet.client(gpu_id)
        deadline = time.monotonic() + self.inventory.launcher.ready_timeout_s
        while not await client.health():
            if time.monotonic() > deadline:
                raise MigrationError(f"worker {gpu_id} did not become healthy within "
                                     f"{self.inventory.launcher.ready_timeout_s:g} s of its "
                                     "launcher command")
            await asyncio.sleep(0.5)
        return await client.check_capabilities()


# ---- execution -----------------------------------------------------------------------------


def _resources(step: MigrationStep, current: dict[str, dict[str, float]]) -> set[str]:
    """What a step touches: its worker and adapter, and for a route its old and new workers.

    A drain or unload on a worker that a route takes traffic off must wait for that route.
    """
    touched: set[str] = set()
    if step.gpu_id:
        touched.add(f"gpu:{step.gpu_id}")
    if step.adapter:
        touched.add(f"adapter:{step.adapter}")
    if step.action == "route" and step.adapter:
        old = current.get(step.adapter, {})
        touched |= {f"gpu:{g}" for g in old} | {f"gpu:{g}" for g in step.weights or {}}
        current[step.adapter] = dict(step.weights or {})
    return touched


def dependencies(steps: list[MigrationStep], routes: dict[str, dict[str, float]]) -> list[set[int]]:
    """For each step, the earlier steps it must wait for (the last one per shared resource).

    Steps sharing a worker or an adapter then run in plan order; others may overlap.
    """
    current = {a: dict(s) for a, s in routes.items()}
    last: dict[str, int] = {}
    waits: list[set[int]] = []
    for index, step in enumerate(steps):
        touched = _resources(step, current)
        waits.append({last[r] for r in touched if r in last})
        for resource in touched:
            last[resource] = index
    return waits


class _Execution:
    """One run's steps executed against the fleet, journaled."""

    def __init__(self, reconciler: Reconciler, journal: Journal, run: str,
                 steps: list[MigrationStep], live: PlacementPlan, paths: dict[str, Path],
                 sizes: dict[str, int]) -> None:
        self.r = reconciler
        self.inventory = reconciler.inventory
        self.journal = journal
        self.run = run
        self.steps = steps
        self.paths = paths
        self.sizes = sizes
        self.tier = {g.gpu_id: g.tier for g in live.gpus}
        self.gpu_type = {g.gpu_id: g.gpu_type for g in live.gpus}
        self.loaded = {g.gpu_id: set(g.adapters) for g in live.gpus}
        self.serving = {g.gpu_id for g in live.gpus}
        self.routes = {a: dict(s) for a, s in live.routes.items()}
        self.base_model = live.base_model
        self.failure: BaseException | None = None
        self.completed = 0
        self.bytes_loaded = 0
        self.first_load: float | None = None
        self.last_load: float | None = None

    def live_plan(self) -> PlacementPlan:
        gpus = [GPUPlacement(gpu_id=g, gpu_type=self.gpu_type.get(g, "any"),
                             tier=self.tier.get(g, 0), adapters=sorted(self.loaded.get(g, ())))
                for g in self.serving]
        return PlacementPlan(base_model=self.base_model, gpus=gpus,
                             routes={a: s for a, s in self.routes.items() if s}).normalized()

    async def run_all(self) -> None:
        waits = dependencies(self.steps, self.routes)
        finished = [asyncio.Event() for _ in self.steps]
        gate = asyncio.Semaphore(self.inventory.concurrency)

        async def one(index: int) -> None:
            try:
                for other in waits[index]:
                    await finished[other].wait()
                if self.failure is not None:
                    return
                async with gate:
                    if self.failure is not None:
                        return
                    await self._execute(index)
            except Exception as exc:  # recorded, then reported once all running steps end
                if self.failure is None:
                    self.failure = exc
            finally:
                finished[index].set()

        await asyncio.gather(*(one(i) for i in range(len(self.steps))))
        if self.failure is not None:
            raise self.failure

    async def _execute(self, index: int) -> None:
        step = self.steps[index]
        self.journal.append({"event": "step", "run": self.run, "index": index, "phase": "start"})
        started = time.perf_counter()
        try:
            outcome = await self._do(step)
        except Exception as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.journal.append({"event": "step", "run": self.run, "index": index,
                                 "phase": "failed", "error": message})
            raise MigrationError(f"step {index + 1} ({step}) failed: {message}") from exc
        seconds = time.perf_counter() - started
        self.journal.append({"event": "step", "run": self.run, "index": index, "phase": "done",
                             "outcome": outcome, "seconds": round(seconds, 4)})
        self.completed += 1
        if self.r.on_step is not None:
            self.r.on_step(StepEvent(index, len(self.steps), step, outcome, seconds))

    async def _do(self, step: MigrationStep) -> str:
        gpu_id = step.gpu_id or ""
        adapter = step.adapter or ""
        if step.action == "load":
            client = self.r.fleet.client(gpu_id)
            now = time.perf_counter()
            self.first_load = now if self.first_load is None else min(self.first_load, now)
            loaded = await client.load(adapter, str(self.paths[adapter]))
            self.last_load = time.perf_counter()
            self.loaded.setdefault(gpu_id, set()).add(adapter)
            self.bytes_loaded += self.sizes.get(adapter, 0)
            return loaded
        if step.action == "route":
            if step.weights:
                self.routes[adapter] = dict(step.weights)
            else:
                self.routes.pop(adapter, None)
            await self.r.write_routes(self.live_plan())
            return "routed" if step.weights else "retired"
        if step.action == "unload":
            # The planner never does this; the check keeps a bug from dropping live traffic.
            if self.routes.get(adapter, {}).get(gpu_id, 0.0) > 0:
                raise MigrationError(f"refusing to unload {adapter} from {gpu_id}: the routing "
                                     "table still sends it traffic there")
            await self.r.wait_drained(gpu_id, adapter)
            unloaded = await self.r.fleet.client(gpu_id).unload(adapter)
            self.loaded.get(gpu_id, set()).discard(adapter)
            return unloaded
        if step.action == "drain":
            still = sorted(a for a, split in self.routes.items() if split.get(gpu_id, 0.0) > 0)
            if still:
                raise MigrationError(f"refusing to drain {gpu_id}: it still gets the traffic "
                                     f"of {', '.join(still[:5])}")
            self.serving.discard(gpu_id)
            await self.r.write_routes(self.live_plan())
            await self.r.wait_drained(gpu_id, None)
            return "drained"
        worker = self.inventory.worker(gpu_id)
        if step.action in ("start_gpu", "restart_gpu"):
            tier = step.tier or worker.tier
            action = "start" if step.action == "start_gpu" else "restart"
            await run_launcher(self.inventory.launcher, action, worker, tier)
            info = await self.r.wait_ready(gpu_id)
            limits = await self.r.fleet.client(gpu_id).lora_limits()
            if limits is not None and limits.max_lora_rank != tier:
                raise MigrationError(f"worker {gpu_id} came back at --max-lora-rank "
                                     f"{limits.max_lora_rank}, not {tier}; check the launcher's "
                                     "use of {tier}")
            self.tier[gpu_id] = tier
            self.gpu_type[gpu_id] = step.gpu_type or self.gpu_type.get(gpu_id, "any")
            self.loaded[gpu_id] = set(info.adapters)
            self.serving.add(gpu_id)
            await self.r.write_routes(self.live_plan())
            return f"{action}ed at tier {tier}"
        # stop_gpu: the launcher stops it, or else it stays up with nothing loaded.
        if self.inventory.launcher.stop is not None:
            await run_launcher(self.inventory.launcher, "stop", worker, self.tier.get(gpu_id, 0))
            self.loaded[gpu_id] = set()
            return "stopped"
        client = self.r.fleet.client(gpu_id)
        for name in sorted((await client.models()).adapters):
            await client.unload(name)
        self.loaded[gpu_id] = set()
        return "emptied (no launcher.stop)"


def _with_disk_sizes(migration: MigrationPlan, sizes: dict[str, int]) -> MigrationPlan:
    steps = [s.model_copy(update={"bytes": sizes.get(s.adapter or "", 0)})
             if s.action == "load" else s for s in migration.steps]
    return MigrationPlan(steps=steps)


def compare(target: PlacementPlan, models: dict[str, ModelsInfo],
            remote_on: dict[str, set[str]] | None = None) -> list[str]:
    """Differences between what the workers load and what ``target`` hosts.

    Adapters a GPU serves remotely (``remote_on``) may be loaded there or not: a worker
    loads one on demand, and its cache may have evicted it since.
    """
    problems: list[str] = []
    for gpu in target.gpus:
        info = models.get(gpu.gpu_id)
        if info is None:
            problems.append(f"{gpu.gpu_id} did not answer")
            continue
        have = set(info.adapters) - (remote_on or {}).get(gpu.gpu_id, set())
        want = set(gpu.adapters)
        if have - want:
            problems.append(f"{gpu.gpu_id} also loads {', '.join(sorted(have - want))}")
        if want - have:
            problems.append(f"{gpu.gpu_id} lacks {', '.join(sorted(want - have))}")
    return problems


async def apply_plan(target: PlacementPlan | None, inventory: Inventory, *,
                     dry_run: bool = False, rollback: bool = False,
                     on_plan: Callable[[MigrationPlan, str | None], None] | None = None,
                     on_step: Callable[[StepEvent], None] | None = None,
                     transport: httpx.AsyncBaseTransport | None = None) -> ApplyResult:
    """Make the fleet in ``inventory`` match ``target``; see the module docstring.

    Parameters
    ----------
    target : PlacementPlan or None
        The plan to reach; None with ``rollback``.
    inventory : Inventory
        The fleet.
    dry_run : bool
        Check and plan only: nothing is loaded, unloaded, routed or journaled. Every check
        that changes nothing runs (the router answers, the workers' LoRA settings where they
        expose them); the rank probe, which loads an adapter, does not, and
        :attr:`ApplyResult.unprobed` names the workers it would have checked.
    rollback : bool
        Instead of ``target``, return to the state the journal's interrupted run started from.
    on_plan : callable, optional
        Called with the migration and the resumed run id before execution starts.
    on_step : callable, optional
        Called after each step (progress).
    transport : httpx.AsyncBaseTransport, optional
        Transport for all HTTP clients.

    Returns
    -------
    ApplyResult

    Raises
    ------
    ConfigError
        Bad input (plan, inventory, paths, ranks, tiers); nothing was changed.
    WorkerError
        A worker cannot be used (unreachable, wrong key, runtime updating off, rank limit);
        nothing was changed.
    MigrationError
        A step failed; the fleet is consistent and the journal says how far it got.
    """
    interrupted = unfinished_run(inventory.journal)
    if rollback:
        if interrupted is None:
            raise ConfigError(f"{inventory.journal}: no interrupted run to roll back")
        target = interrupted.observed
    if target is None:
        raise ConfigError("give the plan to apply (or --rollback)")
    tiers = last_tiers(inventory.journal)
    full = target.normalized()
    ranks = check_plan_against_inventory(full, inventory, tiers)
    # The fleet moves through the plan's hosting view; remote pairs are routed at the end.
    remote_on = served_remotely(full)
    target = hosting_view(full)
    paths = {a: inventory.adapter_path(a) for a in ranks}
    sizes = {a: adapter_bytes(p) for a, p in paths.items()}

    reconciler = Reconciler(inventory, on_step=on_step, transport=transport)
    try:
        observed = await reconciler.observe(target, tiers, remote_on)
        for gpu in observed.live.gpus:
            for adapter in gpu.adapters:
                if adapter not in ranks and adapter in inventory.adapters:
                    ranks[adapter] = adapter_rank(inventory.adapters[adapter], adapter)
        for gpu in observed.live.gpus:
            for adapter in gpu.adapters:
                # Unknown to the inventory (loaded by someone else): only ever unloaded.
                ranks.setdefault(adapter, gpu.tier if gpu.tier in ADMISSIBLE_RANKS else 8)
        workers = [inventory.worker(g.gpu_id) for g in (*target.gpus, *observed.live.gpus)]
        config = migration_config(target.base_model, ranks,
                                  min(w.slots for w in workers) if workers else 1,
                                  min(w.max_loras for w in workers) if workers else 1)
        try:
            planned = plan_migration(observed.live, target, config)
        except ValueError as exc:
            raise ConfigError(f"no safe migration from the running fleet to the plan: "
                              f"{exc}") from None
        migration = _with_disk_sizes(MigrationPlan(steps=observed.repairs + planned.steps), sizes)
        resumed = interrupted.run if interrupted is not None else None
        await reconciler.check_router()
        unprobed = await reconciler.check_ranks(target, observed, ranks, tiers,
                                                probe=not dry_run)
        if on_plan is not None:
            on_plan(migration, resumed)
        stopped = {s.gpu_id for s in migration.steps if s.action == "stop_gpu"}
        result = ApplyResult(run=None, migration=migration, resumed=resumed, dry_run=dry_run,
                             unprobed=unprobed, stopped_adapters=sum(
                                 len(info.adapters) for gpu_id, info in observed.models.items()
                                 if gpu_id in stopped))
        if dry_run:
            return result
        if not migration.steps and interrupted is None:
            result.problems = compare(target, observed.models, remote_on)
            write_table(inventory.routes_file, full)
            return result
        return await _execute(reconciler, target, full, observed, migration, config, paths,
                              sizes, interrupted.run if interrupted else None, rollback, result)
    finally:
        await reconciler.aclose()


async def _execute(reconciler: Reconciler, target: PlacementPlan, full: PlacementPlan,
                   observed: _Observed, migration: MigrationPlan, config: Config,
                   paths: dict[str, Path], sizes: dict[str, int], interrupted: str | None,
                   rollback: bool, result: ApplyResult) -> ApplyResult:
    """Execute ``migration`` towards ``target`` (the hosting view of ``full``), journaled."""
    inventory = reconciler.inventory
    remote_on = served_remotely(full)
    run = new_run_id()
    result.run = run
    # The observed state, before repairs, is what the replay in check_journal starts from;
    # repairs only remove routes to workers that lost the adapter.
    start_state = observed.live
    with Journal(inventory.journal) as journal:
        if interrupted is not None:
            journal.append({"event": "end", "run": interrupted, "status": "superseded",
                            "by": run, "rollback": rollback})
        journal.append({
            "event": "begin", "run": run, "resumes": interrupted, "rollback": rollback,
            "slots": config.serving.adapters_per_gpu,
            "observed": start_state.model_dump(mode="json"),
            "target": target.model_dump(mode="json"),
            "steps": [s.model_dump(mode="json", exclude_defaults=True) for s in migration.steps],
        })
        execution = _Execution(reconciler, journal, run, migration.steps, start_state, paths,
                               sizes)
        started = time.perf_counter()
        try:
            await execution.run_all()
        except Exception as exc:
            journal.append({"event": "end", "run": run, "status": "failed",
                            "error": str(exc).splitlines()[0] if str(exc) else repr(exc)})
            if isinstance(exc, RuntimeAdapterError | ConfigError):
                raise MigrationError(
                    f"{exc}; the fleet is consistent (every adapter keeps a routed replica); "
                    "fix the cause and run apply again to resume") from exc
            raise
        result.seconds = time.perf_counter() - started
        result.completed = execution.completed
        result.bytes_loaded = execution.bytes_loaded
        if execution.first_load is not None and execution.last_load is not None:
            result.load_seconds = execution.last_load - execution.first_load
        after = await asyncio.gather(*(reconciler.fleet.client(g.gpu_id).models()
                                       for g in target.gpus))
        result.problems = compare(target, {g.gpu_id: m for g, m in zip(target.gpus, after,
                                                                        strict=True)},
                                  remote_on)
        if not result.problems:
            # The remote pairs' shares go live last, once every hosted replica is in place.
            await reconciler.write_routes(full)
        journal.append({"event": "end", "run": run,
                        "status": "complete" if not result.problems else "failed",
                        "problems": result.problems})
    return result


