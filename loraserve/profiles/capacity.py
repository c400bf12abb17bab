"""From a profile and an SLO to per-tier capacity and per-adapter load.

The model (the same one the solver, ``verify`` and the simulator read):

* **Memory.** A vLLM worker at tier ``R`` allocates LoRA buffers for ``max_loras`` adapters
  padded to rank ``R`` (vLLM's stacked ``lora_a``/``lora_b`` tensors). What remains of
  ``memory * gpu_memory_utilization`` after the base weights, those buffers and the runtime
  overhead is KV cache. A tier is usable on a GPU type only if at least ``min_kv_cache_gib``
  remains.
* **Batch.** The operating batch ``b*`` is the largest batch that (i) fits in the KV cache at
  the workload's mean context (prompt + output tokens), (ii) respects ``max_num_seqs`` and
  (iii) keeps the TPOT SLO. With chunked prefill a running sequence waits for the prefill work
  interleaved with decode, so TPOT(b) = d(b) / (1 - f(b)), where d(b) is the profile's
  decode step and f(b) the share of busy time spent on prefill at full load.
* **Throughput and load.** Decode runs at ``theta = b* / d(b*)`` tokens/s and prefill at
  ``pi = C / p(C)`` tokens/s with C = ``max_num_batched_tokens``. A request of adapter ``a``
  keeps a tier-``R`` GPU busy ``P_a / pi + O_a / theta`` seconds, so adapter ``a`` puts a
  load (share of the GPU's time) of ``lambda_a * (P_a / pi + O_a / theta)`` on it. Padding is
  why this grows with ``R`` even for a rank-8 adapter.
* **Utilization limit.** The TTFT percentile ``q`` under utilization ``rho`` is approximated as
  prefill + one decode step + the M/M/1 waiting-time percentile with the mean prefill as the
  service time, ``W_q = s * ln(rho / (1 - q)) / (1 - rho)``. The tier's ``max_utilization``
  is the largest ``rho`` that keeps it under the TTFT SLO, capped by
  ``serving.max_utilization``.
  A profile's ``request_overhead_ms`` (measured through the server) adds to the TTFT.
* **Remote access.** A request served on a GPU that fetches its adapter from a peer waits,
  on top, for the fetch: the profile's peer load (network transfer, then the host-to-GPU
  copy) at the path's bandwidth, with the transfer stretched by ``1 / (1 - u)`` for a link
  at the planned utilization cap ``u`` (the mean transfer time of a processor-sharing link,
  which is how concurrent RDMA transfers share a NIC). Such a GPU's utilization limit is the
  largest ``rho`` whose TTFT percentile plus the fetch stays under the SLO.

These are approximations for planning; the simulator checks them against iteration-level
behaviour.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from loraserve.models import Adapter, Config
from loraserve.models.config import GiB
from loraserve.profiles.library import find_profile
from loraserve.profiles.schema import Profile
from loraserve.profiles.slo import (
    BATCH_SLOTS,
    TPOT_TAIL,
    SloCalibration,
    TpotRow,
    load_calibration,
    slot_weight,
    tail_scale,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TierCapacity:
    """What one GPU of a type, at one rank tier, can sustain under the SLO.

    Attributes
    ----------
    gpu_type : str
    tier : int
    usable : bool
        False when memory or the SLO rules the tier out; ``reason`` says why.
    reason : str
    lora_buffer_bytes : float
        GPU memory of the tier's padded LoRA buffers.
    kv_cache_bytes : float
        KV cache left for sequences.
    batch : float
        Operating batch ``b*``.
    batch_limit : str
        What set ``b*``: ``kv_cache``, ``max_num_seqs`` or ``tpot``.
    decode_tokens_per_s, prefill_tokens_per_s : float
        Throughputs at the operating point.
    step_ms : float
        Decode-step latency at ``b*``.
    max_utilization : float
        Largest load that keeps the TTFT percentile under the SLO.
    tpot_ms : float
        Mean TPOT of a GPU at ``max_utilization`` with the workload's mean tokens: the
        time per output token a request's time in the system is priced with.
    """

    gpu_type: str
    tier: int
    usable: bool
    reason: str = ""
    lora_buffer_bytes: float = 0.0
    kv_cache_bytes: float = 0.0
    batch: float = 0.0
    batch_limit: str = ""
    decode_tokens_per_s: float = 0.0
    prefill_tokens_per_s: float = 0.0
    step_ms: float = 0.0
    max_utilization: float = 0.0
    tpot_ms: float = 0.0


@dataclass(frozen=True)
class LatencyPrediction:
    """Predicted latencies of a GPU under a given load.

    Attributes
    ----------
    utilization : float
        Share of the GPU's time busy.
    tpot_ms, ttft_ms : float
        Mean TPOT, and TTFT at the SLO percentile.
    active_adapters : float
        Expected number of hosted adapters with a request in flight at a random instant.
    slot_overflow : float
        Probability that more adapters than ``max_loras`` have a request in flight: then
        requests of the adapters left out wait for a LoRA slot to free, a wait the TTFT
        above does not count.
    tpot_tail_ms : float
        TPOT at the SLO percentile (the ``tpot_tail`` family's model).
    slot_load : float
        The ``batch_slots`` row of the hosted adapters (its limit is
        :meth:`CostModel.slot_limit`).
    """

    utilization: float
    tpot_ms: float
    ttft_ms: float
    active_adapters: float = 0.0
    slot_overflow: float = 0.0
    tpot_tail_ms: float = 0.0
    slot_load: float = 0.0


@dataclass(frozen=True)
class FamilyCheck:
    """One per-GPU constraint family evaluated on one GPU.

    Attributes
    ----------
    family : str
        ``compute``, ``tpot_tail`` or ``batch_slots``.
    used, limit : float
        The row's value on the GPU and its limit (``used <= limit`` is feasible).
    detail : str
        What the row measures, for messages.
    """

    family: str
    used: float
    limit: float
    detail: str

    @property
    def violated(self) -> bool:
        """Whether the GPU breaks the family (beyond rounding)."""
        return self.used > self.limit + 1e-6


def active_adapters(in_flight: list[float], slots: int) -> tuple[float, float]:
    """Expected busy adapters and the probability that more than ``slots`` are busy.

    ``in_flight[i]`` is adapter ``i``'s mean number of requests in flight (Little's law: rate
    times time in the system). Requests of one adapter overlap as in an M/G/infinity queue, so
    the adapter is busy with probability ``1 - exp(-in_flight)``, independently of the others;
    the count of busy adapters is then Poisson-binomial.

    Parameters
    ----------
    in_flight : list of float
        Mean requests in flight per adapter.
    slots : int
        Adapters a batch can run at once (``max_loras``).

    Returns
    -------
    tuple of float
        The expected number of busy adapters, and the probability that more than ``slots``
        are busy.
    """
    busy = [1.0 - math.exp(-max(0.0, m)) for m in in_flight]
    # Only counts up to slots + 1 matter, which keeps this linear in the adapters.
    dist = [1.0] + [0.0] * (slots + 1)
    for p in busy:
        # The last cell collects every count above ``slots``: once over, always over.
        dist[slots + 1] += dist[slots] * p
        for k in range(slots, 0, -1):
            dist[k] = dist[k] * (1.0 - p) + dist[k - 1] * p
        dist[0] *= 1.0 - p
    return sum(busy), min(1.0, max(0.0, dist[slots + 1]))


#: Share of an RDMA link's bandwidth a transfer reaches when a profile has no peer loads.
RDMA_EFFICIENCY = 0.8


def _waiting_quantile_s(rho: float, service_s: float, quantile: float) -> float:
    """M/M/1 waiting-time quantile: P(W > t) = rho * exp(-(1 - rho) t / s)."""
    if rho <= 1.0 - quantile:
        return 0.0
    if rho >= 1.0:
        return math.inf
    return service_s * math.log(rho / (1.0 - quantile)) / (1.0 - rho)


@dataclass
class CostModel:
    """Per-tier capacity and per-adapter load for one config.

    Build it with :meth:`from_config`; the solver, :meth:`PlacementPlan.verify` and the
    simulator all read the same object.
    """

    config: Config
    profiles: dict[str, Profile]
    mean_prompt_tokens: float
    mean_output_tokens: float
    _capacity: dict[tuple[str, int], TierCapacity] = field(default_factory=dict)
    _with_extra: dict[tuple[str, int, float], float] = field(default_factory=dict)
    calibration: dict[str, SloCalibration] = field(default_factory=dict)
    _tpot_rows: dict[tuple[str, int], TpotRow] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, profiles: dict[str, Profile] | None = None) -> CostModel:
        """Build the cost model of ``config``, finding a profile for every GPU pool.

        Parameters
        ----------
        config : Config
        profiles : dict, optional
            Profiles keyed by GPU type; looked up (user files, measured, analytic) when
            omitted.
        """
        found = dict(profiles or {})
        for pool in config.pools:
            if pool.gpu_type not in found:
                found[pool.gpu_type] = find_profile(pool.gpu_type, config.base_model,
                                                    config.profiles)
        weights = [a.request_rate for a in config.adapters]
        total = sum(weights)
        if total <= 0:
            weights = [1.0] * len(config.adapters)
            total = float(len(config.adapters))
        prompt = sum(w * a.prompt_tokens for w, a in zip(weights, config.adapters, strict=True))
        output = sum(w * a.output_tokens for w, a in zip(weights, config.adapters, strict=True))
        model = cls(config=config, profiles=found, mean_prompt_tokens=prompt / total,
                    mean_output_tokens=output / total)
        for pool in config.pools:
            model.calibration[pool.gpu_type] = load_calibration(pool.gpu_type,
                                                                config.base_model.name)
            for tier in config.serving.tiers:
                model._capacity[(pool.gpu_type, tier)] = model._tier_capacity(pool.gpu_type, tier)
                model._tpot_rows[(pool.gpu_type, tier)] = model._tpot_row(pool.gpu_type, tier)
        return model

    def _tpot_row(self, gpu_type: str, tier: int) -> TpotRow:
        cap = self._capacity[(gpu_type, tier)]
        calibration = self.calibration[gpu_type]
        kappa, exponent = calibration.kappa(tier), calibration.tail_exponent
        if not cap.usable:
            return TpotRow(math.inf, 0.0, 1.0, kappa, self.config.slo.tpot_ms, math.inf,
                           math.inf, exponent)
        profile = self.profiles[gpu_type]
        return TpotRow.build(profile.decode_ms(tier, 1.0), cap.step_ms, cap.batch,
                             cap.prefill_tokens_per_s, kappa, self.config.slo.tpot_ms, exponent)

    # ---- per-tier capacity ---------------------------------------------------------------

    def _tier_capacity(self, gpu_type: str, tier: int) -> TierCapacity:
        config, limits, slo = self.config, self.config.serving, self.config.slo
        pool = config.pool(gpu_type)
        profile = self.profiles[gpu_type]
        base = config.base_model
        if tier not in profile.tiers:
            return TierCapacity(gpu_type, tier, usable=False,
                                reason=f"the {gpu_type} profile has no tier {tier}")
        buffer_bytes = limits.max_loras * base.adapter_bytes(tier, profile.lora_target_modules)
        usable_bytes = pool.memory_gib * limits.gpu_memory_utilization * GiB
        overhead = limits.runtime_overhead_gib * GiB
        kv_bytes = usable_bytes - base.weight_bytes - buffer_bytes - overhead
        common: dict[str, Any] = {"lora_buffer_bytes": float(buffer_bytes),
                                  "kv_cache_bytes": float(kv_bytes)}
        if kv_bytes < limits.min_kv_cache_gib * GiB:
            return TierCapacity(
                gpu_type, tier, usable=False,
                reason=(f"memory: tier {tier} on {gpu_type} leaves {kv_bytes / GiB:.1f} GiB of KV "
                        f"cache after base weights ({base.weight_bytes / GiB:.1f} GiB) and LoRA "
                        f"buffers ({limits.max_loras} x rank {tier} = {buffer_bytes / GiB:.1f} "
                        f"GiB); min_kv_cache_gib is {limits.min_kv_cache_gib:g}"),
                **common)
        prompt, output = self.mean_prompt_tokens, self.mean_output_tokens
        chunk = limits.max_num_batched_tokens
        prefill_tps = chunk / (profile.prefill_ms(tier, chunk) / 1e3)
        prefill_s_per_request = prompt / prefill_tps

        def tpot_ms(batch: float) -> float:
            step = profile.decode_ms(tier, batch)
            decode_s = output * step / 1e3 / batch
            prefill_share = prefill_s_per_request / (prefill_s_per_request + decode_s)
            return step / (1.0 - prefill_share)

        kv_batch = kv_bytes / (base.kv_bytes_per_token * (prompt + output))
        batch_cap, limit = (kv_batch, "kv_cache")
        if limits.max_num_seqs < batch_cap:
            batch_cap, limit = (float(limits.max_num_seqs), "max_num_seqs")
        if tpot_ms(1.0) > slo.tpot_ms:
            return TierCapacity(
                gpu_type, tier, usable=False,
                reason=(f"TPOT: one sequence at tier {tier} on {gpu_type} already takes "
                        f"{tpot_ms(1.0):.1f} ms per token; the SLO is {slo.tpot_ms:g} ms"),
                **common)
        if batch_cap < 1.0:
            return TierCapacity(gpu_type, tier, usable=False,
                                reason=f"memory: KV cache at tier {tier} on {gpu_type} holds "
                                f"less than one sequence of {prompt + output:.0f} tokens",
                                **common)
        if tpot_ms(batch_cap) > slo.tpot_ms:
            low, high = 1.0, batch_cap
            for _ in range(60):
                mid = 0.5 * (low + high)
                low, high = (mid, high) if tpot_ms(mid) <= slo.tpot_ms else (low, mid)
            batch_cap, limit = low, "tpot"
        batch = math.floor(batch_cap) if batch_cap >= 1.0 else batch_cap
        step = profile.decode_ms(tier, batch)
        decode_tps = batch / (step / 1e3)
        # A measured request overhead (HTTP, request processing, streaming) adds to the TTFT.
        max_util = self._max_utilization(prefill_s_per_request,
                                         step + profile.request_overhead_ms)
        if max_util <= 0.0:
            unloaded = (prefill_s_per_request * 1e3) + step + profile.request_overhead_ms
            return TierCapacity(
                gpu_type, tier, usable=False,
                reason=(f"TTFT: an unloaded tier-{tier} {gpu_type} already needs {unloaded:.0f} "
                        f"ms to the first token; the SLO is {slo.ttft_ms:g} ms"),
                **common)
        # The mean TPOT of a GPU at its utilization limit with the mean request: a share of
        # the time goes to prefill, and the batch settles where decode keeps up with the
        # decode tokens asked for (the decode step's secant, as the tpot_tail row has it).
        per_request = prefill_s_per_request + output / decode_tps
        prefill_busy = max_util * prefill_s_per_request / per_request
        decode_rate = max_util * output / per_request
        one = profile.decode_ms(tier, 1.0)
        slope = max(0.0, (step - one) / (batch - 1.0)) if batch > 1.0 else 0.0
        room = 1.0 - prefill_busy - (slope * decode_rate / 1e3)
        at_limit = (one - slope) / room if room > 0 else step / (1.0 - prefill_busy)
        return TierCapacity(
            gpu_type, tier, usable=True, batch=float(batch), batch_limit=limit,
            decode_tokens_per_s=decode_tps, prefill_tokens_per_s=prefill_tps, step_ms=step,
            max_utilization=max_util, tpot_ms=min(slo.tpot_ms, at_limit),
            **common)

    def _max_utilization(self, prefill_s: float, step_ms: float) -> float:
        slo = self.config.slo
        quantile = slo.percentile / 100.0
        cap = self.config.serving.max_utilization

        def ttft_ms(rho: float) -> float:
            return 1e3 * (prefill_s + _waiting_quantile_s(rho, prefill_s, quantile)) + step_ms

        if ttft_ms(0.0) > slo.ttft_ms:
            return 0.0
        if ttft_ms(cap) <= slo.ttft_ms:
            return cap
        low, high = 0.0, cap
        for _ in range(60):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if ttft_ms(mid) <= slo.ttft_ms else (low, mid)
        return low

    def max_utilization_with(self, gpu_type: str, tier: int, extra_ms: float) -> float:
        """Utilization limit of a ``(gpu_type, tier)`` GPU whose requests wait ``extra_ms`` more.

        0 when even an idle GPU misses the TTFT SLO with the extra wait (or the tier is not
        usable); the tier's own limit when ``extra_ms`` is 0.
        """
        cap = self._capacity[(gpu_type, tier)]
        if not cap.usable:
            return 0.0
        if extra_ms <= 0.0:
            return cap.max_utilization
        key = (gpu_type, tier, round(extra_ms, 6))
        found = self._with_extra.get(key)
        if found is None:
            prefill_s = self.mean_prompt_tokens / cap.prefill_tokens_per_s
            overhead = self.profiles[gpu_type].request_overhead_ms
            found = self._max_utilization(prefill_s, cap.step_ms + overhead + extra_ms)
            self._with_extra[key] = found
        return found

    def remote_fetch_ms(self, adapter: Adapter, gpu_type: str, bytes_per_s: float,
                        link_utilization: float | None = None) -> float:
        """Planned time to fetch ``adapter`` from a peer over a path of ``bytes_per_s``.

        Parameters
        ----------
        adapter : Adapter
        gpu_type : str
            The fetching GPU (its profile gives the host-to-GPU copy).
        bytes_per_s : float
            The path's bottleneck bandwidth.
        link_utilization : float, optional
            Load on the path's links; the transfer is stretched by ``1 / (1 - u)``.
            Defaults to the topology's ``max_link_utilization`` (0 without a topology).
        """
        profile = self.profiles[gpu_type]
        if link_utilization is None:
            topo = self.config.topology
            link_utilization = topo.max_link_utilization if topo is not None else 0.0
        network = profile.peer_network_ms(adapter.rank, bytes_per_s)
        if network is None:
            network = 1e3 * self.config.adapter_bytes(adapter) / (bytes_per_s * RDMA_EFFICIENCY)
        stretch = 1.0 / max(1e-9, 1.0 - min(link_utilization, 0.999))
        return profile.load_ms(adapter.rank) + network * stretch

    def capacity(self, gpu_type: str, tier: int) -> TierCapacity:
        """Capacity of a ``gpu_type`` GPU at ``tier`` (usable or not; see ``reason``)."""
        return self._capacity[(gpu_type, tier)]

    def has(self, gpu_type: str, tier: int) -> bool:
        """Whether a ``gpu_type`` GPU can run at ``tier`` under the SLO and memory."""
        cap = self._capacity.get((gpu_type, tier))
        return cap is not None and cap.usable

    def kinds(self) -> list[tuple[str, int]]:
        """Usable ``(gpu_type, tier)`` pairs, in config order and ascending tier."""
        return [key for key, cap in self._capacity.items() if cap.usable]

    def capacity_table(self) -> list[TierCapacity]:
        """Every ``(gpu_type, tier)`` capacity, usable or not."""
        return list(self._capacity.values())

    # ---- adapters ------------------------------------------------------------------------

    def request_seconds(self, adapter: Adapter, gpu_type: str, tier: int) -> float:
        """GPU-busy seconds one request of ``adapter`` costs on a tier-``tier`` GPU."""
        cap = self._capacity[(gpu_type, tier)]
        if not cap.usable:
            return math.inf
        return (adapter.prompt_tokens / cap.prefill_tokens_per_s
                + adapter.output_tokens / cap.decode_tokens_per_s)

    def adapter_load(self, adapter: Adapter, gpu_type: str, tier: int) -> float:
        """Share of a tier-``tier`` GPU's time ``adapter``'s whole traffic would take."""
        return adapter.request_rate * self.request_seconds(adapter, gpu_type, tier)

    # ---- SLO families (see loraserve.profiles.slo) ----------------------------------------

    def tpot_row(self, gpu_type: str, tier: int) -> TpotRow:
        """The ``tpot_tail`` row of a ``(gpu_type, tier)`` GPU."""
        return self._tpot_rows[(gpu_type, tier)]

    def tpot_load(self, adapter: Adapter, gpu_type: str, tier: int) -> float:
        """Share of a GPU's ``tpot_tail`` row (limit 1) that ``adapter``'s whole traffic takes.

        0 when ``serving.slo_families`` is off.
        """
        if not self.has(gpu_type, tier):
            return math.inf
        if not self.config.serving.slo_families:
            return 0.0
        return self._tpot_rows[(gpu_type, tier)].coefficient(
            adapter.request_rate, adapter.prompt_tokens, adapter.output_tokens)

    def in_flight(self, adapter: Adapter, gpu_type: str, tier: int, share: float = 1.0) -> float:
        """Mean requests of ``adapter`` in flight on a GPU serving ``share`` of its traffic.

        Little's law with the time in the system of a GPU at its utilization limit (its own
        prefill, then its output tokens at the tier's TPOT there), which bounds the time on
        any GPU the plan keeps within that limit.
        """
        cap = self._capacity[(gpu_type, tier)]
        if not cap.usable:
            return math.inf
        seconds = (adapter.prompt_tokens / cap.prefill_tokens_per_s
                   + adapter.output_tokens * cap.tpot_ms / 1e3)
        return adapter.request_rate * share * seconds

    def slot_weight(self, adapter: Adapter) -> float:
        """``adapter``'s weight on the ``batch_slots`` row of any GPU that hosts it.

        Taken at its whole traffic (an upper bound for any share of it) and on the usable
        kind that keeps its requests longest, so the weight holds wherever it runs.
        """
        weights = [slot_weight(self.in_flight(adapter, t, r),
                               self.calibration[t].slot_variance_weight)
                   for (t, r), cap in self._capacity.items()
                   if cap.usable and r >= adapter.rank]
        return max(weights, default=1.0)

    def slot_limit(self) -> float:
        """The ``batch_slots`` row's limit (the strictest over the GPU types)."""
        limits = [c.slot_limit(self.config.serving.max_loras)
                  for c in self.calibration.values()]
        return min(limits, default=float(self.config.serving.max_loras))

    def slot_family_binds(self) -> bool:
        """Whether ``batch_slots`` can bind: a GPU may host more adapters than its limit."""
        if not self.config.serving.slo_families:
            return False
        return self.config.serving.adapters_per_gpu > math.floor(self.slot_limit() + 1e-9)

    def tpot_tail_ms(self, gpu_type: str, tier: int,
                     shares: list[tuple[Adapter, float]]) -> float:
        """TPOT at the SLO percentile on a ``(gpu_type, tier)`` GPU serving ``shares``.

        The ``tpot_tail`` family's model (:class:`~loraserve.profiles.slo.TpotRow`).
        """
        cap, row = self._capacity[(gpu_type, tier)], self._tpot_rows[(gpu_type, tier)]
        if not cap.usable:
            return math.inf
        prefill = sum(a.request_rate * w * a.prompt_tokens for a, w in shares)
        scaled = sum(a.request_rate * w * a.prompt_tokens
                     * tail_scale(a.prompt_tokens, a.output_tokens, row.exponent)
                     for a, w in shares)
        decode = sum(a.request_rate * w * a.output_tokens for a, w in shares)
        return row.tail_ms(prefill / cap.prefill_tokens_per_s, decode,
                           scaled / cap.prefill_tokens_per_s)

    def family_checks(self, gpu_type: str, tier: int,
                      shares: list[tuple[Adapter, float]]) -> list[FamilyCheck]:
        """The per-GPU families ``compute``, ``tpot_tail`` and ``batch_slots`` on one GPU.

        Parameters
        ----------
        gpu_type, tier : str, int
            The GPU.
        shares : list of (Adapter, float)
            Adapters it hosts and the share of each one's traffic it serves.
        """
        cap = self._capacity[(gpu_type, tier)]
        if not cap.usable:
            return [FamilyCheck("tier", 1.0, 0.0, cap.reason)]
        compute = sum(self.adapter_load(a, gpu_type, tier) * w for a, w in shares)
        tpot = sum(self.tpot_load(a, gpu_type, tier) * w for a, w in shares)
        checks = [
            FamilyCheck("compute", compute, cap.max_utilization,
                        f"utilization {compute:.1%} against a limit of "
                        f"{cap.max_utilization:.1%} (TTFT SLO)"),
            FamilyCheck(TPOT_TAIL, tpot, 1.0,
                        f"predicted p{self.config.slo.percentile:g} TPOT "
                        f"{self.tpot_tail_ms(gpu_type, tier, shares):.0f} ms against "
                        f"{self.config.slo.tpot_ms:g} ms (row at {tpot:.0%} of its limit; "
                        "prefill chunks stretch the decode steps)"),
        ]
        if self.slot_family_binds():
            slots = sum(self.slot_weight(a) for a, _ in shares)
            checks.append(FamilyCheck(
                BATCH_SLOTS, slots, self.slot_limit(),
                f"expected busy adapters {slots:.1f} against {self.slot_limit():.1f} for "
                f"max_loras {self.config.serving.max_loras}"))
        return checks

    def adapter_cache_bytes(self) -> float:
        """Bytes of hosted adapters one worker may keep (infinite when unlimited)."""
        limit = self.config.serving.adapter_cache_gib
        return math.inf if limit is None else limit * GiB

    # ---- predictions ---------------------------------------------------------------------

    def predict(
        self, gpu_type: str, tier: int, shares: list[tuple[Adapter, float]]
    ) -> LatencyPrediction:
        """Predict utilization, TPOT and TTFT (at the SLO percentile) of one GPU.

        Parameters
        ----------
        gpu_type, tier : str, int
            The GPU.
        shares : list of (Adapter, float)
            Adapters routed to it and the share of each one's traffic it serves.
        """
        cap = self._capacity[(gpu_type, tier)]
        if not cap.usable:
            return LatencyPrediction(math.inf, math.inf, math.inf)
        profile = self.profiles[gpu_type]
        util = sum(self.adapter_load(a, gpu_type, tier) * w for a, w in shares)
        prefill_busy = sum(a.request_rate * w * a.prompt_tokens for a, w in shares)
        prefill_busy /= cap.prefill_tokens_per_s
        decode_rate = sum(a.request_rate * w * a.output_tokens for a, w in shares)
        # The same mean prefill the tier's utilization limit was derived with, so that a GPU
        # at its limit is predicted exactly at the TTFT SLO.
        prefill_s = self.mean_prompt_tokens / cap.prefill_tokens_per_s
        # Batch that delivers the decode rate in the time prefill leaves free.
        needed = decode_rate / max(1e-9, 1.0 - min(prefill_busy, 0.999))
        low, high = 0.0, cap.batch
        if needed >= cap.batch / (cap.step_ms / 1e3):
            batch = cap.batch
        else:
            for _ in range(50):
                mid = 0.5 * (low + high)
                throughput = mid / (profile.decode_ms(tier, max(mid, 1.0)) / 1e3)
                low, high = (mid, high) if throughput < needed else (low, mid)
            batch = high
        step = profile.decode_ms(tier, max(batch, 1.0))
        tpot = step / max(1e-9, 1.0 - min(prefill_busy, 0.999))
        quantile = self.config.slo.percentile / 100.0
        ttft = (1e3 * (prefill_s + _waiting_quantile_s(util, prefill_s, quantile)) + step
                + profile.request_overhead_ms)
        # Time in the system of one request: its own prefill, then its decode steps.
        in_flight = [a.request_rate * w * (a.prompt_tokens / cap.prefill_tokens_per_s
                                           + a.output_tokens * tpot / 1e3)
                     for a, w in shares if w > 0]
        active, overflow = active_adapters(in_flight, self.config.serving.max_loras)
        tail = self.tpot_tail_ms(gpu_type, tier, shares)
        slots = sum(self.slot_weight(a) for a, _ in shares)
        return LatencyPrediction(util, tpot, ttft, active, overflow, tail, slots)
