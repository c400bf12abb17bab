"""The numeric placement instance every algorithm reads: the solvers' feasibility core.

A *kind* is a usable ``(gpu_type, tier)`` pair. Every per-GPU constraint family reaches the
algorithms through two rows, which each of them (heuristics, LNS, the exact models, the
configuration LP and the bounds) already enforces:

* the **traffic row** ``sum_a share[a] * load[a, k] <= capacity[k]``. ``load[a, k]`` is the
  larger of adapter ``a``'s compute load on a kind-``k`` GPU (share of its time, against the
  TTFT utilization limit) and its ``tpot_tail`` row scaled to the same limit
  (:meth:`CostModel.tpot_load`); ``inf`` where the tier is below the adapter's rank. A GPU of
  one adapter is held to exactly both families; a mix is held to each adapter's stricter
  one, which is safe (a traffic-weighted mean of the two rows never exceeds it).
* the **hosting row** ``sum_{a hosted} bytes[a] <= cache_bytes``: adapter-cache memory
  (``serving.adapter_cache_gib``) and, where a GPU may host more adapters than ``max_loras``,
  the ``batch_slots`` family (:meth:`CostModel.slot_weight` against
  :meth:`CostModel.slot_limit`), folded the same way into one weight per adapter.
  ``adapter_bytes`` keeps the adapters' real sizes for what moves over links and disks.

Adding a per-GPU family means giving it a row in :class:`~loraserve.profiles.CostModel`
(its coefficients and :meth:`~loraserve.profiles.CostModel.family_checks` for ``verify``) and
folding it here; ``docs/architecture.md`` walks through it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
class Tightening:
    """Per-adapter factors (>= 1) on the families' rows, from a simulation that missed.

    ``loraserve plan --simulate`` raises them for the adapters of the GPUs that missed the
    SLO in simulation, for the family that explains the miss, and solves again: the plan
    then leaves those adapters more room in that family only.
    """

    compute: float = 1.0
    tpot_tail: float = 1.0
    batch_slots: float = 1.0

    def __post_init__(self) -> None:
        for name in ("compute", "tpot_tail", "batch_slots"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 1.0):
                raise ValueError(f"tightening {name} must be a finite factor >= 1, "
                                 f"got {value!r}")


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
    adapter_bytes: np.ndarray | None = None
    #: Which family each entry of ``load`` comes from: True where ``tpot_tail`` is stricter.
    tpot_binds: np.ndarray | None = None
    #: Family names folded into the hosting row (``memory``, ``batch_slots``).
    hosting_families: tuple[str, ...] = ()

    @classmethod
    def build(cls, config: Config, cost_model: CostModel | None = None,
              tighten: Mapping[str, Tightening] | None = None) -> Instance:
        """Build the instance of ``config``.

        ``tighten`` maps adapter ids to factors on their rows (:class:`Tightening`).
        """
        model = cost_model or CostModel.from_config(config)
        tighten = tighten or {}
        factors = [tighten.get(a.id, Tightening()) for a in config.adapters]
        prices = {p.gpu_type: p.cost_per_hour for p in config.pools}
        uniform = len(set(prices.values())) == 1
        kinds = [
            Kind(index=i, gpu_type=t, tier=r, capacity=model.capacity(t, r).max_utilization,
                 unit_cost=1.0 if uniform else prices[t], pool_count=config.pool(t).count)
            for i, (t, r) in enumerate(model.kinds())
        ]
        adapters = config.adapters
        load = np.full((len(adapters), len(kinds)), np.inf)
        tpot_binds = np.zeros((len(adapters), len(kinds)), dtype=bool)
        for k, kind in enumerate(kinds):
            seconds = np.array([model.request_seconds(a, kind.gpu_type, kind.tier)
                                for a in adapters])
            rates = np.array([a.request_rate for a in adapters])
            allowed = np.array([a.rank <= kind.tier for a in adapters])
            compute = rates * seconds * np.array([f.compute for f in factors])
            # The tpot_tail row has limit 1; scaled to the compute limit it shares the row.
            tpot = kind.capacity * np.array([model.tpot_load(a, kind.gpu_type, kind.tier)
                                             * f.tpot_tail
                                             for a, f in zip(adapters, factors, strict=True)])
            tpot_binds[:, k] = allowed & (tpot > compute)
            load[allowed, k] = np.maximum(compute, tpot)[allowed]
        real_bytes = np.array([float(config.adapter_bytes(a)) for a in adapters])
        host, cache, families = _hosting_row(model, config, real_bytes,
                                             np.array([f.batch_slots for f in factors]))
        return cls(
            config=config,
            cost_model=model,
            kinds=kinds,
            load=load,
            ranks=np.array([a.rank for a in adapters]),
            bytes=host,
            slots=config.serving.adapters_per_gpu,
            max_replicas=config.serving.max_replicas,
            cache_bytes=cache,
            uniform_cost=uniform,
            adapter_bytes=real_bytes,
            tpot_binds=tpot_binds,
            hosting_families=families,
        )

    @property
    def real_bytes(self) -> np.ndarray:
        """The adapters' weight sizes in bytes (``bytes`` is the folded hosting weight)."""
        return self.bytes if self.adapter_bytes is None else self.adapter_bytes

    def load_family(self, a: int | None = None) -> str:
        """``tpot_tail`` where that row sets ``a``'s load (or most load), else ``compute``."""
        if self.tpot_binds is None or not self.tpot_binds.size:
            return "compute"
        if a is not None:
            return "tpot_tail" if bool(self.tpot_binds[a].any()) else "compute"
        finite = np.where(np.isfinite(self.load), self.load, 0.0)
        weight = float((finite * self.tpot_binds).sum())
        return "tpot_tail" if weight > 0.5 * float(finite.sum()) else "compute"

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
            real = float(self.real_bytes[a])
            limit = self.cost_model.adapter_cache_bytes()
            if real > limit:
                raise InfeasibleError(
                    f"adapter '{adapter.id}' needs {real / 2**30:.2f} GiB; "
                    f"serving.adapter_cache_gib is {limit / 2**30:g} (short by "
                    f"{(real - limit) / 2**30:.2f} GiB)",
                    "memory",
                )


#: Units of the hosting row per unit of ``batch_slots`` weight when memory is unlimited
#: (integer weights for CP-SAT stay small).
SLOT_UNIT = 2.0**16


def _hosting_row(model: CostModel, config: Config, real_bytes: np.ndarray,
                 slot_factors: np.ndarray) -> tuple[np.ndarray, float, tuple[str, ...]]:
    """The hosting row's per-adapter weights, its limit and the families folded into it."""
    cache = model.adapter_cache_bytes()
    families = ("memory",) if math.isfinite(cache) else ()
    if not model.slot_family_binds():
        return real_bytes, cache, families
    limit = model.slot_limit()
    # The instance's adapters, not the cost model's: a caller may price scaled rates with
    # the model of the unscaled config.
    weights = np.array([model.slot_weight(a) for a in config.adapters]) * slot_factors
    if math.isfinite(cache):
        # Both rows in bytes: an adapter takes the larger of its share of either.
        return np.maximum(real_bytes, weights * cache / limit), cache, (*families, "batch_slots")
    # At least one unit: an idle adapter still takes a cache entry, and packers divide by it.
    return (np.maximum(np.ceil(weights * SLOT_UNIT), 1.0), math.floor(limit * SLOT_UNIT),
            ("batch_slots",))
