"""The numeric placement instance every algorithm reads.

A *kind* is a usable ``(gpu_type, tier)`` pair. ``load[a, k]`` is the share of one kind-``k``
GPU's time that adapter ``a``'s whole traffic takes (``inf`` where the tier is below the
adapter's rank); ``capacity[k]`` is the utilization a kind-``k`` GPU may reach under the SLO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loraserve.models import Config
from loraserve.profiles import CostModel

#: Shares below this are dropped: they are numerical noise, not traffic.
EPS = 1e-9


class InfeasibleError(Exception):
    """No plan exists; the message names the binding constraint and by how much."""

    def __init__(self, message: str, binding: str) -> None:
        super().__init__(message)
        self.binding = binding


@dataclass(frozen=True)
class Kind:
    """A usable ``(gpu_type, tier)`` with its limits and price."""

    index: int
    gpu_type: str
    tier: int
    capacity: float
    unit_cost: float
    pool_count: int


@dataclass
class Instance:
    """Arrays over adapters and kinds, built once per solve."""

    config: Config
    cost_model: CostModel
    kinds: list[Kind]
    load: np.ndarray
    ranks: np.ndarray
    bytes: np.ndarray
    slots: int
    max_replicas: int
    cache_bytes: float
    uniform_cost: bool

    @classmethod
    def build(cls, config: Config, cost_model: CostModel | None = None) -> Instance:
        """Build the instance of ``config``."""
        model = cost_model or CostModel.from_config(config)
        prices = {p.gpu_type: p.cost_per_hour for p in config.pools}
        uniform = len(set(prices.values())) == 1
        kinds = [
            Kind(index=i, gpu_type=t, tier=r, capacity=model.capacity(t, r).max_utilization,
                 unit_cost=1.0 if uniform else prices[t], pool_count=config.pool(t).count)
            for i, (t, r) in enumerate(model.kinds())
        ]
        adapters = config.adapters
        load = np.full((len(adapters), len(kinds)), np.inf)
        for k, kind in enumerate(kinds):
            seconds = np.array([model.request_seconds(a, kind.gpu_type, kind.tier)
                                for a in adapters])
            rates = np.array([a.request_rate for a in adapters])
            allowed = np.array([a.rank <= kind.tier for a in adapters])
            load[allowed, k] = rates[allowed] * seconds[allowed]
        return cls(
            config=config,
            cost_model=model,
            kinds=kinds,
            load=load,
            ranks=np.array([a.rank for a in adapters]),
            bytes=np.array([float(config.adapter_bytes(a)) for a in adapters]),
            slots=config.serving.adapters_per_gpu,
            max_replicas=config.serving.max_replicas,
            cache_bytes=model.adapter_cache_bytes(),
            uniform_cost=uniform,
        )

    @property
    def num_adapters(self) -> int:
        """Number of adapters."""
        return int(self.load.shape[0])

    def allowed(self, a: int, k: int) -> bool:
        """Whether adapter ``a`` may run on kind ``k``."""
        return bool(self.ranks[a] <= self.kinds[k].tier)

    def share_load(self, a: int, k: int) -> float:
        """Load of ``a``'s whole traffic on kind ``k`` relative to that kind's capacity."""
        return float(self.load[a, k] / self.kinds[k].capacity)

    def min_replicas(self, a: int) -> int:
        """Fewest GPUs adapter ``a`` must be spread over, on its best kind."""
        best = min((self.share_load(a, k) for k in range(len(self.kinds)) if self.allowed(a, k)),
                   default=math.inf)
        if math.isinf(best):
            return 0
        return max(1, math.ceil(best - 1e-9))

    def kind_of(self, gpu_type: str, tier: int) -> int:
        """Index of the kind ``(gpu_type, tier)``."""
        for kind in self.kinds:
            if kind.gpu_type == gpu_type and kind.tier == tier:
                return kind.index
        raise KeyError((gpu_type, tier))

    def adapter_checks(self) -> None:
        """Raise :class:`InfeasibleError` for an adapter that no plan can serve."""
        config = self.config
        for a, adapter in enumerate(config.adapters):
            if not any(self.allowed(a, k) for k in range(len(self.kinds))):
                reasons = [
                    cap.reason for cap in self.cost_model.capacity_table()
                    if cap.tier >= adapter.rank and not cap.usable
                ]
                detail = reasons[0] if reasons else f"serving.tiers has no tier >= {adapter.rank}"
                raise InfeasibleError(
                    f"adapter '{adapter.id}' (rank {adapter.rank}) has no usable tier: {detail}",
                    "tier",
                )
            need = self.min_replicas(a)
            if need > self.max_replicas:
                raise InfeasibleError(
                    f"adapter '{adapter.id}' needs at least {need} replicas to carry "
                    f"{adapter.request_rate:g} req/s under the SLO; serving.max_replicas is "
                    f"{self.max_replicas} (short by {need - self.max_replicas})",
                    "replicas",
                )
            if self.bytes[a] > self.cache_bytes:
                raise InfeasibleError(
                    f"adapter '{adapter.id}' needs {self.bytes[a] / 2**30:.2f} GiB; "
                    f"serving.adapter_cache_gib is {self.cache_bytes / 2**30:g} (short by "
                    f"{(self.bytes[a] - self.cache_bytes) / 2**30:.2f} GiB)",
                    "memory",
                )
