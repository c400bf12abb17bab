"""The discrete-event core: a fleet of vLLM-like workers behind a router.

Each worker runs vLLM's scheduler at iteration level:

* **Continuous batching with chunked prefill.** A step has a token budget of
  ``max_num_batched_tokens``. Every decoding sequence takes one token of it; what is left goes
  to prefill, first to sequences whose prompt is part-way through, then to waiting requests
  in arrival order. A step with ``b`` decoding sequences and ``c`` prefill tokens takes
  ``decode_ms(tier, b) + c * prefill_ms(tier, C) / C`` (``C`` the budget): the same
  time-sharing of decode and prefill that :class:`~loraserve.profiles.CostModel` prices, so
  the solver and the simulator agree on the physics. A step with prefill only takes
  ``prefill_ms(tier, c)``.
* **Admission limits.** At most ``max_num_seqs`` sequences run; a request is admitted only
  when its whole context (prompt + output tokens) fits in the free KV cache (the cost model's
  KV bytes at the worker's tier, over the base model's KV bytes per token), so nothing is
  ever preempted; when the head of the queue does not fit, admission stops for the step, as
  vLLM's does.
* **LoRA slots.** At most ``max_loras`` distinct adapters run in a batch; a waiting request
  whose adapter would be one too many is skipped for a later one whose adapter is already
  running (vLLM skips it the same way). Adapters live in ``max_loras`` GPU slots (LRU) and a
  CPU cache of ``max_cpu_loras`` (LRU, pre-filled with the adapters a plan hosts). Activating
  an adapter that is not in a GPU slot adds the profile's host-to-GPU ``load_ms(rank)`` to
  the step; one that is not in the CPU cache first costs a cold load from disk
  (:class:`SimOptions`). Loading blocks the whole step, as it does in a vLLM worker.

**Event skipping.** Between events (an arrival at the worker, a sequence finishing, a
prefill step ending) a worker's batch is constant, so a run of identical decode steps is
advanced in closed form: the worker's next event is the first sequence to finish,
``k`` steps of ``decode_ms(tier, b)`` ahead. An arrival in the middle of such a run cuts it
at the next step boundary. Steps that carry prefill are simulated one at a time.

**Request overhead.** A profile measured through the server (``request_overhead_ms``) says
how long a request spends outside the engine's steps before its first token reaches the
client (HTTP, request processing, streaming). Each request reaches its worker's queue that
much after its arrival; its TTFT and end-to-end time count from the arrival.

**Remote fetches.** A worker may serve an adapter it does not host, fetching it from a peer
(a plan's remote pair, :attr:`Worker.remote`). Activating such an adapter when it is not in
the worker's CPU cache fetches its weights over the widest path of the config's topology
instead of reading them from disk: the transfer takes ``bytes / bottleneck bandwidth`` and
the links of the path serve concurrent fetches one after another (first come, first served:
a fetch starts when every link of its path is free), then the profile's host-to-GPU
``load_ms(rank)`` follows. The fetched adapter stays in the CPU cache (LRU) and in a GPU slot
like any other, so later requests reuse it until it is evicted; adapters the worker hosts
are pinned, and fetched ones share the topology's ``remote_slots`` cache slots (LRU among
themselves), the room the plan reserves for them.

The router either splits each adapter's requests over its replicas by the plan's weights
(seeded draws) or sends each request to the worker with the fewest outstanding requests.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from loraserve.models import Config, ConfigError
from loraserve.models.topology import Topology, build_topology
from loraserve.profiles import CostModel
from loraserve.sim.workload import Requests

logger = logging.getLogger(__name__)

#: How often (in arrivals) a long run reports progress.
PROGRESS_EVERY = 20_000


@dataclass(frozen=True)
class Worker:
    """One simulated GPU: its id, type, rank tier and the adapters it starts with.

    Attributes
    ----------
    gpu_id, gpu_type : str
    tier : int
        The worker's ``--max-lora-rank``: every step pays the LoRA padding of this rank.
    hosted : tuple of int
        Adapter indices loaded into the CPU cache at start, most important first (the first
        ``max_loras`` also start in GPU slots). A plan's hosted adapters; for on-demand
        serving, the most popular adapters (a warm server).
    remote : tuple of (int, str)
        ``(adapter index, source gpu_id)`` of every adapter the worker fetches from a peer
        (a plan's remote pairs); the source is a worker's ``gpu_id`` in the topology.
    """

    gpu_id: str
    gpu_type: str
    tier: int
    hosted: tuple[int, ...] = ()
    remote: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class SimOptions:
    """Settings of a run that are not in the config.

    Attributes
    ----------
    cold_load_ms : float
        Fixed cost of loading an adapter that is in neither the GPU slots nor the CPU cache
        (reading its checkpoint and building host tensors), on top of the bytes.
    disk_gb_per_s : float
        Read bandwidth for such a cold load (GB/s). The host-to-GPU copy that follows is the
        profile's ``load_ms(rank)``.
    max_drain_s : float
        After the last arrival, simulate at most this long; requests still unfinished then
        count as missing the SLO.
    stop_on_slo_failure : bool
        Stop as soon as more requests have missed the SLO than its percentile allows (the
        run can no longer meet it). Searches use this; the result is marked ``stopped``.
    seed : int
        Seeds the weighted routing draws.
    """

    cold_load_ms: float = 20.0
    disk_gb_per_s: float = 2.0
    max_drain_s: float = 300.0
    stop_on_slo_failure: bool = False
    seed: int = 0


@dataclass
class RunResult:
    """Raw outcome of :func:`run`: per-request times and per-worker counters.

    Times are seconds from the start of the run; ``nan`` where a request did not get that far
    (still waiting when the run stopped, or rejected because its context exceeds the KV cache).
    ``fetches``, ``fetch_s`` and ``fetch_wait_s`` count each worker's remote fetches, their
    seconds (waiting for the links included) and the waiting alone; ``link_bytes`` is what
    crossed each directed edge of the topology.
    """

    requests: Requests
    workers: list[Worker]
    gpu: np.ndarray
    start: np.ndarray
    first: np.ndarray
    done: np.ndarray
    busy_s: np.ndarray
    loads: np.ndarray
    cold_loads: np.ndarray
    load_s: np.ndarray
    steps: np.ndarray
    end: float
    stopped: bool
    wall_s: float
    rejected: int = 0
    options: SimOptions = field(default_factory=SimOptions)
    fetches: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fetch_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fetch_wait_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    link_bytes: dict[tuple[str, str], float] = field(default_factory=dict)
    topology: Topology | None = None

    def link_utilization(self) -> dict[tuple[str, str], float]:
        """Share of each used link's bandwidth the run's fetches took, over the run's span."""
        if self.topology is None or self.end <= 0:
            return {}
        return {edge: moved / (self.topology.edge_bytes_per_s(edge) * self.end)
                for edge, moved in self.link_bytes.items()}


class _State:
    """Mutable state of one worker during a run (plain attributes for speed)."""

    __slots__ = ("act_wait", "active", "bulk", "busy", "cold", "counter", "cpu", "dec",
                 "fetch_s", "fetch_wait", "fetches", "gpu_slots",
                 "heap", "idle", "index", "kv_cap", "kv_used", "load_cost", "load_s", "loads",
                 "n_wait", "pending_first", "pf_tok", "pinned", "pre", "prefilling", "remote",
                 "remote_cap",
                 "seg_d", "seg_k", "seg_start", "steps", "steps_pending", "version", "wcount", "wq",
                 "wqa")

    def __init__(self, index: int) -> None:
        self.index = index
        # Waiting requests per adapter, and how many of them belong to adapters in the
        # batch: when the batch has max_loras adapters and none of theirs waits, nothing
        # can be admitted, and the scheduler knows it without scanning the queue.
        self.wcount: dict[int, int] = {}
        self.act_wait = 0
        self.active: dict[int, int] = {}
        self.bulk = False
        self.busy = 0.0
        self.cold = 0
        self.counter = 0
        self.cpu: OrderedDict[int, None] = OrderedDict()
        self.dec: list[float] = []
        # Remote adapters: adapter -> (directed path edges, bottleneck bytes/s, bytes).
        self.remote: dict[int, tuple[list[tuple[str, str]], float, float]] = {}
        self.pinned: set[int] = set()
        self.remote_cap = 0
        self.fetches = 0
        self.fetch_s = 0.0
        self.fetch_wait = 0.0
        self.gpu_slots: OrderedDict[int, None] = OrderedDict()
        self.heap: list[tuple[int, int]] = []
        self.idle = True
        self.kv_cap = 0
        self.kv_used = 0
        self.load_cost: tuple[list[float], list[float]] = ([], [])
        self.load_s = 0.0
        self.loads = 0
        self.n_wait = 0
        self.pending_first: list[int] = []
        self.pf_tok = 0.0
        self.pre: list[float] = []
        self.prefilling: list[list[int]] = []
        self.seg_d = 0.0
        self.seg_k = 0
        self.seg_start = 0.0
        self.steps = 0
        self.steps_pending = 0
        self.version = 0
        self.wq: deque[int] = deque()
        self.wqa: dict[int, deque[int]] = {}


def _tables(model: CostModel, gpu_type: str, tier: int, max_seqs: int,
            chunk: int) -> tuple[list[float], float, list[float], int]:
    """Step-time tables (seconds) and KV capacity (tokens) of one (type, tier)."""
    profile = model.profiles[gpu_type]
    if tier not in profile.tiers:
        raise ConfigError(f"the {gpu_type} profile has no tier {tier}; it has "
                          f"{list(profile.tier_values)}")
    cap = model.capacity(gpu_type, tier)
    if cap.kv_cache_bytes <= 0 or (not cap.usable and cap.reason.startswith("memory")):
        raise ConfigError(f"tier {tier} on {gpu_type} cannot run: {cap.reason}")
    dec = [0.0] + [profile.decode_ms(tier, b) / 1e3 for b in range(1, max_seqs + 1)]
    pf_tok = profile.prefill_ms(tier, chunk) / 1e3 / chunk
    grid = np.asarray(profile.prefill_tokens, dtype=float)
    values = np.asarray(profile.tiers[tier].prefill_ms, dtype=float)
    tokens = np.arange(chunk + 1, dtype=float)
    pre = np.interp(tokens, grid, values)
    # Beyond the grid the profile extrapolates its last segment; do the same.
    slope = (values[-1] - values[-2]) / (grid[-1] - grid[-2])
    beyond = tokens > grid[-1]
    pre[beyond] = values[-1] + slope * (tokens[beyond] - grid[-1])
    kv_tokens = int(cap.kv_cache_bytes // model.config.base_model.kv_bytes_per_token)
    return dec, pf_tok, (pre / 1e3).tolist(), kv_tokens


def _topology_for(config: Config, workers: Sequence[Worker]) -> Topology | None:
    """The config's topology, over pools grown to cover every worker's GPU id.

    A search for the GPUs a policy needs may simulate more GPUs than a pool holds; GPU
    ``<type>-<i>`` then sits where a larger pool would put it.
    """
    if config.topology is None:
        return None
    need = {p.gpu_type: p.count for p in config.pools}
    for worker in workers:
        for gpu_id in (worker.gpu_id, *(src for _, src in worker.remote)):
            head, _, tail = gpu_id.rpartition("-")
            if head in need and tail.isdigit():
                need[head] = max(need[head], int(tail) + 1)
    if all(need[p.gpu_type] == p.count for p in config.pools):
        return config.network()
    spec = config.topology.model_copy(update={"nodes": None})
    pools = tuple((p.gpu_type, need[p.gpu_type], p.gpus_per_node) for p in config.pools)
    return build_topology(spec, pools)


def weighted_routes(requests: Requests, weights: Sequence[Sequence[tuple[int, float]]],
                    rng: np.random.Generator) -> np.ndarray:
    """Each request's worker, drawn by its adapter's routing weights.

    Parameters
    ----------
    requests : Requests
    weights : sequence
        ``weights[a]`` lists ``(worker index, weight)`` for adapter ``a``.
    rng : numpy.random.Generator

    Raises
    ------
    ConfigError
        When a request's adapter has no route.
    """
    adapter = requests.adapter
    target = np.full(adapter.size, -1, dtype=np.int64)
    order = np.argsort(adapter, kind="stable")
    bounds = np.searchsorted(adapter[order], np.arange(len(weights) + 1))
    draws = rng.random(adapter.size)
    for a, split in enumerate(weights):
        lo, hi = int(bounds[a]), int(bounds[a + 1])
        if lo == hi:
            continue
        if not split:
            raise ConfigError(f"adapter index {a} has requests but no route; the plan must "
                              "route every adapter")
        idx = order[lo:hi]
        if len(split) == 1:
            target[idx] = split[0][0]
            continue
        gpus = np.array([g for g, _ in split], dtype=np.int64)
        cum = np.cumsum([w for _, w in split], dtype=float)
        pick = np.searchsorted(cum / cum[-1], draws[idx], side="right")
        target[idx] = gpus[np.minimum(pick, gpus.size - 1)]
    return target


def run(
    config: Config,
    workers: Sequence[Worker],
    requests: Requests,
    routes: Sequence[Sequence[tuple[int, float]]] | np.ndarray | None,
    options: SimOptions | None = None,
    cost_model: CostModel | None = None,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    """Simulate ``workers`` serving ``requests``.

    Parameters
    ----------
    config : Config
        Serving limits, SLO, base model and adapters (``requests.adapter`` indexes them).
    workers : sequence of Worker
    requests : Requests
    routes : sequence or None
        Per adapter, ``(worker index, weight)`` pairs: weighted routing over its replicas.
        None: every request goes to the worker with the fewest outstanding requests (ties to
        the next worker after the last one chosen), and any worker serves any adapter.
        An integer array with one entry per request: the worker each request goes to (a
        routing decided outside, for example by plans that change during the run).
    options : SimOptions, optional
    cost_model : CostModel, optional
        Built from ``config`` when omitted.
    progress : callable, optional
        Called with the share of arrivals processed, now and then.

    Returns
    -------
    RunResult
    """
    options = options or SimOptions()
    model = cost_model or CostModel.from_config(config)
    if not workers:
        raise ConfigError("a simulation needs at least one GPU")
    started = time.perf_counter()
    serving = config.serving
    max_seqs, chunk, max_loras = serving.max_num_seqs, serving.max_num_batched_tokens, \
        serving.max_loras
    cpu_cap = serving.adapters_per_gpu
    adapters = config.adapters
    n_adapters = len(adapters)
    if len(requests) and int(requests.adapter.max()) >= n_adapters:
        raise ConfigError("requests name an adapter index beyond the config's adapters; "
                          "build the requests from this config")

    topo = _topology_for(config, workers)
    link_free: dict[tuple[str, str], float] = {}
    link_bytes: dict[tuple[str, str], float] = {}
    tables: dict[tuple[str, int], tuple[list[float], float, list[float], int]] = {}
    costs: dict[str, tuple[list[float], list[float]]] = {}
    states: list[_State] = []
    for i, worker in enumerate(workers):
        key = (worker.gpu_type, worker.tier)
        if key not in tables:
            tables[key] = _tables(model, worker.gpu_type, worker.tier, max_seqs, chunk)
        if worker.gpu_type not in costs:
            profile = model.profiles[worker.gpu_type]
            host = [profile.load_ms(a.rank) / 1e3 for a in adapters]
            cold = [options.cold_load_ms / 1e3 + config.adapter_bytes(a)
                    / (options.disk_gb_per_s * 1e9) for a in adapters]
            costs[worker.gpu_type] = (host, cold)
        state = _State(i)
        state.dec, state.pf_tok, state.pre, state.kv_cap = tables[key]
        state.load_cost = costs[worker.gpu_type]
        if worker.remote:
            if topo is None:
                raise ConfigError(f"worker {worker.gpu_id} fetches adapters remotely but the "
                                  "config has no topology; add a topology section")
            for a, source in worker.remote:
                if not topo.reachable(source, worker.gpu_id):
                    raise ConfigError(f"worker {worker.gpu_id} fetches '{adapters[a].id}' from "
                                      f"{source}, which the topology cannot reach it from")
                state.remote[a] = (topo.edges(source, worker.gpu_id),
                                   topo.bandwidth(source, worker.gpu_id),
                                   float(config.adapter_bytes(adapters[a])))
            state.pinned = set(worker.hosted)
            state.remote_cap = config.topology.remote_slots if config.topology else 1
        # LRU order runs from the next to evict to the last: the most important go last.
        for a in reversed(worker.hosted[:cpu_cap]):
            state.cpu[a] = None
        for a in reversed(worker.hosted[:max_loras]):
            state.gpu_slots[a] = None
        states.append(state)

    n = len(requests)
    arrival: list[float] = requests.arrival.tolist()
    adapter: list[int] = requests.adapter.tolist()
    prompt: list[int] = requests.prompt_tokens.tolist()
    output: list[int] = requests.output_tokens.tolist()
    nan = math.nan
    start = [nan] * n
    first = [nan] * n
    done = [nan] * n
    admitted = bytearray(n)
    missed = bytearray(n)
    if isinstance(routes, np.ndarray):
        if routes.shape != (n,) or (n and (int(routes.min()) < 0
                                            or int(routes.max()) >= len(states))):
            raise ConfigError("per-request routes must give one worker index in "
                              f"[0, {len(states)}) for each of the {n} requests")
        target: list[int] = routes.astype(np.int64).tolist()
        gpu_of = target
    elif routes is not None:
        rng = np.random.default_rng(options.seed)
        target = weighted_routes(requests, routes, rng).tolist()
        gpu_of = target
    else:
        target = []
        gpu_of = [-1] * n
    ttft_slo = config.slo.ttft_ms / 1e3
    tpot_slo = config.slo.tpot_ms / 1e3
    allowed_misses = math.floor((1.0 - config.slo.percentile / 100.0) * n)
    misses = 0
    stop_misses = options.stop_on_slo_failure
    events: list[tuple[float, int, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    rejected = 0

    def finish(w: _State, r: int, now: float) -> None:
        nonlocal misses
        done[r] = now
        w.kv_used -= prompt[r] + output[r]
        outstanding[w.index] -= 1
        a = adapter[r]
        left = w.active[a] - 1
        if left:
            w.active[a] = left
        else:
            del w.active[a]
            w.act_wait -= w.wcount.get(a, 0)
        o = output[r]
        if o > 1 and not missed[r] and (now - first[r]) / (o - 1) > tpot_slo:
            missed[r] = 1
            misses += 1

    def fetch(w: _State, a: int, now: float) -> float:
        """Seconds to fetch remote adapter ``a`` from its peer, links taken in turn."""
        edges, bandwidth, size = w.remote[a]
        begin = max([now] + [link_free.get(e, 0.0) for e in edges])
        end = begin + size / bandwidth
        for e in edges:
            link_free[e] = end
            link_bytes[e] = link_bytes.get(e, 0.0) + size
        w.fetches += 1
        w.fetch_s += end - now
        w.fetch_wait += begin - now
        return end - now

    def activate(w: _State, a: int, now: float) -> float:
        """Seconds to bring adapter ``a`` into a GPU slot; 0 when it is there."""
        slots = w.gpu_slots
        if a in slots:
            slots.move_to_end(a)
            return 0.0
        host, cold = w.load_cost
        cost = host[a]
        cpu = w.cpu
        if a in cpu:
            cpu.move_to_end(a)
        else:
            if a in w.remote:
                cost += fetch(w, a, now)
            else:
                cost += cold[a]
                w.cold += 1
            cpu[a] = None
            pinned = w.pinned
            if w.remote and len(cpu) - len(pinned.intersection(cpu)) > w.remote_cap:
                # Fetched weights live in the reserved slots: the least recent one goes,
                # from the GPU slots too (vLLM drops an evicted adapter everywhere).
                victim = next((old for old in cpu if old not in w.active
                               and old not in pinned and old != a), None)
                if victim is not None:
                    del cpu[victim]
                    slots.pop(victim, None)
            if len(cpu) > cpu_cap:
                # Fetched adapters make room among themselves; hosted ones stay pinned.
                victim = next((old for old in cpu if old not in w.active
                               and old not in pinned), None)
                if victim is None and pinned:
                    victim = next((old for old in cpu if old not in w.active), None)
                if victim is not None:
                    del cpu[victim]
        w.loads += 1
        w.load_s += cost
        slots[a] = None
        if len(slots) > max_loras:
            for old in slots:
                if old not in w.active:
                    del slots[old]
                    break
        return cost

    def pick(w: _State) -> int:
        """The first waiting request the LoRA slot rule admits; -1 when none."""
        if len(w.active) < max_loras:
            wq = w.wq
            while admitted[wq[0]]:
                wq.popleft()
            return wq[0]
        best = -1
        if not w.act_wait:
            return best
        wqa = w.wqa
        for a in w.active:
            q = wqa.get(a)
            if q:
                while q and admitted[q[0]]:
                    q.popleft()
                if q and (best < 0 or q[0] < best):
                    best = q[0]
        return best

    def schedule(w: _State, now: float) -> None:
        """Plan the step (or run of decode steps) that starts at ``now``."""
        nonlocal rejected
        heap = w.heap
        b = len(heap)
        budget = chunk - b
        tokens = 0
        new_first: list[int] = []
        if w.prefilling:
            keep: list[list[int]] = []
            for item in w.prefilling:
                if budget <= 0:
                    keep.append(item)
                    continue
                take = item[1] if item[1] < budget else budget
                budget -= take
                tokens += take
                item[1] -= take
                if item[1]:
                    keep.append(item)
                else:
                    new_first.append(item[0])
            w.prefilling = keep
        load = 0.0
        running = b + len(w.prefilling) + len(new_first)
        while budget > 0 and w.n_wait and running < max_seqs:
            r = pick(w)
            if r < 0:
                break
            need = prompt[r] + output[r]
            if w.kv_used + need > w.kv_cap:
                if need > w.kv_cap:
                    # It can never fit: vLLM rejects such a request; so does the simulator.
                    admitted[r] = 1
                    w.n_wait -= 1
                    outstanding[w.index] -= 1
                    w.wcount[adapter[r]] -= 1
                    if adapter[r] in w.active:
                        w.act_wait -= 1
                    rejected += 1
                    continue
                break
            admitted[r] = 1
            w.n_wait -= 1
            w.kv_used += need
            a = adapter[r]
            waiting = w.wcount[a] - 1
            w.wcount[a] = waiting
            count = w.active.get(a)
            if count is None:
                w.active[a] = 1
                w.act_wait += waiting
                load += activate(w, a, now)
            else:
                w.active[a] = count + 1
                w.act_wait -= 1
            p = prompt[r]
            take = p if p < budget else budget
            budget -= take
            tokens += take
            start[r] = now
            if take == p:
                new_first.append(r)
            else:
                w.prefilling.append([r, p - take])
            running += 1
        w.version += 1
        if tokens:
            step = (w.dec[b] + tokens * w.pf_tok if b else w.pre[tokens]) + load
            w.pending_first = new_first
            w.bulk = False
            w.idle = False
            w.steps_pending = 1
            w.busy += step
            push(events, (now + step, w.index, w.version))
        elif b:
            k = heap[0][0] - w.counter
            d = w.dec[b]
            w.bulk = True
            w.idle = False
            w.seg_start, w.seg_d, w.seg_k = now, d, k
            w.steps_pending = k
            w.busy += k * d
            push(events, (now + k * d, w.index, w.version))
        else:
            w.bulk = False
            w.idle = True

    def boundary(w: _State, now: float) -> None:
        """The worker's step (or run of steps) ended at ``now``."""
        nonlocal misses
        w.counter += w.steps_pending
        w.steps += w.steps_pending
        w.steps_pending = 0
        heap = w.heap
        if w.pending_first:
            counter = w.counter
            for r in w.pending_first:
                first[r] = now
                if now - arrival[r] > ttft_slo and not missed[r]:
                    missed[r] = 1
                    misses += 1
                if output[r] <= 1:
                    finish(w, r, now)
                else:
                    heapq.heappush(heap, (counter + output[r] - 1, r))
            w.pending_first = []
        counter = w.counter
        while heap and heap[0][0] <= counter:
            finish(w, heapq.heappop(heap)[1], now)
        schedule(w, now)

    n_workers = len(states)
    outstanding = [0] * n_workers
    last_choice = -1
    # A profile's request overhead (HTTP, request processing, streaming: measured through
    # the server) delays each request's arrival at its worker; its TTFT counts from the
    # original arrival. Requests then reach the workers in the order of the delayed times.
    delays = [model.profiles[w.gpu_type].request_overhead_ms / 1e3 for w in workers]
    order: list[int] | None = None
    reach = arrival
    if n and any(delays):
        if target:
            shifted = np.asarray(arrival) + np.asarray(delays)[np.asarray(target)]
        else:
            shifted = np.asarray(arrival) + min(delays)
        sort = np.argsort(shifted, kind="stable")
        order = sort.tolist()
        reach = shifted[sort].tolist()
    horizon = (reach[-1] if n else 0.0) + options.max_drain_s
    stopped = False
    now = 0.0
    i = 0
    next_report = PROGRESS_EVERY
    while True:
        next_arrival = reach[i] if i < n else math.inf
        if events and events[0][0] <= next_arrival:
            now, index, version = pop(events)
            if now > horizon:
                stopped = True
                break
            w = states[index]
            if version == w.version:
                boundary(w, now)
                if stop_misses and misses > allowed_misses:
                    stopped = True
                    break
            continue
        if i >= n:
            break
        now = next_arrival
        r = i if order is None else order[i]
        i += 1
        if routes is None:
            # Least outstanding requests; ties go round-robin from the last choice.
            low = min(outstanding)
            try:
                g = outstanding.index(low, last_choice + 1)
            except ValueError:
                g = outstanding.index(low)
            last_choice = g
            gpu_of[r] = g
        else:
            g = target[r]
        w = states[g]
        w.wq.append(r)
        a = adapter[r]
        q = w.wqa.get(a)
        if q is None:
            w.wqa[a] = deque((r,))
        else:
            q.append(r)
        w.n_wait += 1
        outstanding[g] += 1
        w.wcount[a] = w.wcount.get(a, 0) + 1
        if a in w.active:
            w.act_wait += 1
        if w.idle:
            boundary(w, now)
        elif w.bulk:
            done_steps = math.ceil((now - w.seg_start) / w.seg_d - 1e-9)
            if done_steps < w.seg_k:
                done_steps = max(done_steps, 0)
                w.busy -= (w.seg_k - done_steps) * w.seg_d
                w.seg_k = done_steps
                w.steps_pending = done_steps
                w.bulk = False
                w.version += 1
                push(events, (w.seg_start + done_steps * w.seg_d, w.index, w.version))
        if progress is not None and i >= next_report:
            next_report += PROGRESS_EVERY
            progress(i / n)
    if progress is not None:
        progress(1.0)
    wall = time.perf_counter() - started
    logger.info("simulated %d requests on %d GPUs in %.2f s (%s)", n, n_workers, wall,
                "stopped early" if stopped else "complete")
    return RunResult(
        requests=requests,
        workers=list(workers),
        gpu=np.asarray(gpu_of, dtype=np.int64),
        start=np.asarray(start),
        first=np.asarray(first),
        done=np.asarray(done),
        busy_s=np.array([w.busy for w in states]),
        loads=np.array([w.loads for w in states]),
        cold_loads=np.array([w.cold for w in states]),
        load_s=np.array([w.load_s for w in states]),
        steps=np.array([w.steps for w in states]),
        end=now,
        stopped=stopped,
        wall_s=wall,
        rejected=rejected,
        options=options,
        fetches=np.array([w.fetches for w in states], dtype=np.int64),
        fetch_s=np.array([w.fetch_s for w in states]),
        fetch_wait_s=np.array([w.fetch_wait for w in states]),
        link_bytes=link_bytes,
        topology=topo,
    )
