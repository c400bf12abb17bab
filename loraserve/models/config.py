"""The validated planning input: workload, cluster, SLO and serving limits.

One YAML file holds all of it; :func:`load_config` reads it through
:mod:`loraserve.models.io`, merges adapters from an optional CSV file, and validates everything
into a :class:`Config`. Any problem is raised as :class:`ConfigError` whose message is one
line naming the field.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from loraserve.models.base_model import (
    ALL_LINEAR_MODULES,
    PRESETS,
    BaseModelSpec,
    TargetModule,
)
from loraserve.models.io import (
    ConfigError,
    clip,
    format_validation_error,
    read_text,
    read_yaml,
)
from loraserve.models.topology import Topology, TopologySpec, build_topology

__all__ = ["ConfigError", "format_validation_error"]  # re-exported: their old home

logger = logging.getLogger(__name__)

#: The ``--max-lora-rank`` values vLLM accepts; an adapter's rank must be one of them too.
Rank = Literal[8, 16, 32, 64, 128, 256, 320, 512]
ADMISSIBLE_RANKS: tuple[int, ...] = tuple(get_args(Rank))

#: Most requests per second one adapter may have (any more is a typo, not a workload).
MAX_REQUEST_RATE = 1e6

#: Bytes in a GiB.
GiB = 1024**3


class Adapter(BaseModel):
    """One LoRA adapter and the traffic it receives.

    Parameters
    ----------
    id : str
        Unique name; this is the ``lora_name`` the vLLM workers load it under.
    rank : int
        LoRA rank, one of vLLM's admissible ranks.
    request_rate : float
        Mean requests per second.
    prompt_tokens, output_tokens : float
        Mean prompt and generated tokens per request.
    target_modules : tuple of str
        Linear modules the adapter modifies.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    rank: Rank
    request_rate: float = Field(ge=0.0, le=MAX_REQUEST_RATE)
    prompt_tokens: float = Field(gt=0.0, le=1e6)
    output_tokens: float = Field(gt=0.0, le=1e6)
    target_modules: tuple[TargetModule, ...] = ALL_LINEAR_MODULES

    @field_validator("rank", mode="before")
    @classmethod
    def _rank_message(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value not in ADMISSIBLE_RANKS:
            raise ValueError(
                f"rank {value} is not one vLLM accepts; use one of "
                + ", ".join(str(r) for r in ADMISSIBLE_RANKS)
            )
        return value

    @field_validator("target_modules")
    @classmethod
    def _unique_modules(cls, value: tuple[TargetModule, ...]) -> tuple[TargetModule, ...]:
        if not value:
            raise ValueError("target_modules is empty; list at least one module")
        if len(set(value)) != len(value):
            raise ValueError("target_modules lists a module twice")
        return value


class AdapterDefaults(BaseModel):
    """Values an adapter takes when its own entry leaves them out."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    prompt_tokens: float = Field(default=1024.0, gt=0.0, le=1e6)
    output_tokens: float = Field(default=256.0, gt=0.0, le=1e6)
    target_modules: tuple[TargetModule, ...] = ALL_LINEAR_MODULES


class GPUPool(BaseModel):
    """A pool of identical GPUs the planner may use.

    Parameters
    ----------
    gpu_type : str
        Profile key, for example ``H100-80GB``.
    count : int
        GPUs available in the pool.
    memory_gib : float
        Memory per GPU.
    cost_per_hour : float
        Price per GPU-hour; the objective when pools differ.
    gpus_per_node : int
        GPUs that share a node.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    gpu_type: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    count: int = Field(ge=1, le=100_000)
    memory_gib: float = Field(gt=0.0, le=4096.0)
    cost_per_hour: float = Field(default=1.0, gt=0.0)
    gpus_per_node: int = Field(default=8, ge=1, le=64)


class SLO(BaseModel):
    """Latency targets at one percentile.

    Parameters
    ----------
    ttft_ms : float
        Time to first token, at ``percentile``.
    tpot_ms : float
        Time per output token (inter-token latency) of a running request.
    percentile : float
        The percentile both targets apply at, in (50, 100).
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    ttft_ms: float = Field(gt=0.0, le=600_000.0)
    tpot_ms: float = Field(gt=0.0, le=60_000.0)
    percentile: float = Field(default=99.0, ge=50.0, lt=100.0)


class ServingLimits(BaseModel):
    """vLLM worker settings and planning limits shared by every GPU.

    Parameters
    ----------
    max_loras : int
        vLLM ``--max-loras``: distinct adapters in one batch (GPU slots).
    max_cpu_loras : int
        vLLM ``--max-cpu-loras``: adapters a worker keeps loaded; the planner hosts at most
        this many adapters per GPU. Defaults to ``max_loras``, as vLLM does.
    max_replicas : int
        Most GPUs one adapter may be hosted on.
    tiers : tuple of int
        Rank tiers (``--max-lora-rank``) the planner may give a GPU.
    min_kv_cache_gib : float
        A tier is usable on a GPU type only if at least this much KV cache remains after the
        base weights, the tier's LoRA buffers and the runtime overhead.
    runtime_overhead_gib : float
        GPU memory for activations, CUDA graphs and the allocator.
    adapter_cache_gib : float, optional
        Host memory per worker for its CPU LoRA cache; hosted adapters' weights must fit.
        Unlimited when omitted.
    gpu_memory_utilization : float
        vLLM ``--gpu-memory-utilization``: the share of GPU memory the worker may use.
    max_utilization : float
        Cap on a GPU's planned compute utilization, below what the SLO alone allows.
    max_num_seqs : int
        vLLM ``--max-num-seqs``: most sequences in one batch.
    max_num_batched_tokens : int
        vLLM ``--max-num-batched-tokens``: prefill tokens per scheduler step.
    slo_families : bool
        Hold each GPU to the SLO families ``tpot_tail`` (TPOT at the percentile) and
        ``batch_slots`` (busy adapters against ``max_loras``) besides mean compute. True by
        default; False gives the compute-only model, whose plans can miss the SLO.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    max_loras: int = Field(default=16, ge=1, le=4096)
    max_cpu_loras: int | None = Field(default=None, ge=1, le=100_000)
    max_replicas: int = Field(default=8, ge=1, le=100_000)
    tiers: tuple[Rank, ...] = (8, 16, 32, 64, 128, 256)
    min_kv_cache_gib: float = Field(default=8.0, gt=0.0, le=4096.0)
    runtime_overhead_gib: float = Field(default=2.0, ge=0.0, le=4096.0)
    adapter_cache_gib: float | None = Field(default=None, gt=0.0, le=1_000_000.0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    max_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    #: Hold each GPU to the SLO families ``tpot_tail`` and ``batch_slots`` as well as to
    #: mean compute (loraserve/profiles/slo.py). Off gives the compute-only model, which
    #: over-promises: its plans can miss the SLO in simulation.
    slo_families: bool = True
    max_num_seqs: int = Field(default=256, ge=1, le=65536)
    max_num_batched_tokens: int = Field(default=2048, ge=16, le=1_048_576)

    @field_validator("tiers")
    @classmethod
    def _sorted_tiers(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("tiers is empty; list at least one rank tier")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _cpu_loras_cover_gpu_slots(self) -> ServingLimits:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) is below max_loras ({self.max_loras}); "
                "vLLM requires max_cpu_loras >= max_loras"
            )
        return self

    @property
    def adapters_per_gpu(self) -> int:
        """Adapters one GPU may host (vLLM's ``max_cpu_loras``, defaulting to ``max_loras``)."""
        return self.max_cpu_loras if self.max_cpu_loras is not None else self.max_loras


class Config(BaseModel):
    """Everything the planner needs: base model, adapters, GPU pools, SLO and limits.

    Build it with :func:`load_config` from YAML, or directly in Python. Adapters are fully
    resolved: defaults are applied before validation.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    base_model: BaseModelSpec
    slo: SLO
    pools: tuple[GPUPool, ...] = Field(min_length=1)
    serving: ServingLimits = ServingLimits()
    adapters: tuple[Adapter, ...] = Field(min_length=1)
    profiles: tuple[Path, ...] = ()
    topology: TopologySpec | None = None

    @field_validator("base_model", mode="before")
    @classmethod
    def _resolve_preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in PRESETS:
                raise ValueError(
                    f"unknown preset '{value}'; use one of {', '.join(sorted(PRESETS))} "
                    "or give the model's shapes as a mapping"
                )
            return PRESETS[value]
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Config:
        seen: set[str] = set()
        for index, adapter in enumerate(self.adapters):
            if adapter.id in seen:
                raise ValueError(
                    f"adapters[{index}].id '{adapter.id}' appears twice; adapter ids must be unique"
                )
            seen.add(adapter.id)
        types = [pool.gpu_type for pool in self.pools]
        if len(set(types)) != len(types):
            raise ValueError("pools: a gpu_type appears twice; merge the pools or rename one")
        top_tier = max(self.serving.tiers)
        for index, adapter in enumerate(self.adapters):
            if adapter.rank > top_tier:
                raise ValueError(
                    f"adapters[{index}].rank {adapter.rank} (id '{adapter.id}') exceeds the "
                    f"largest tier in serving.tiers ({top_tier}); add tier {adapter.rank}"
                )
        if self.topology is not None:
            per_node = self.topology.gpus_per_node
            for index, pool in enumerate(self.pools):
                if (per_node is not None and "gpus_per_node" in pool.model_fields_set
                        and pool.gpus_per_node != per_node):
                    raise ValueError(
                        f"pools[{index}].gpus_per_node ({pool.gpus_per_node}) differs from "
                        f"topology.gpus_per_node ({per_node}); set one of them, not both")
            self.network()  # builds the graph, so a bad link fails here, not in the solver
        return self

    def network(self) -> Topology | None:
        """The cluster graph of ``topology`` over the pools; None without a topology."""
        if self.topology is None:
            return None
        pools = tuple((p.gpu_type, p.count, p.gpus_per_node) for p in self.pools)
        return build_topology(self.topology, pools)

    @property
    def remote_enabled(self) -> bool:
        """Whether plans may serve adapters remotely (a topology with remote_access on)."""
        return self.topology is not None and self.topology.remote_access

    def without_remote(self) -> Config:
        """A copy without the topology: replication only, exactly as without the section."""
        return self.model_copy(update={"topology": None})

    @property
    def total_request_rate(self) -> float:
        """Sum of the adapters' request rates (requests per second)."""
        return sum(a.request_rate for a in self.adapters)

    def adapter_bytes(self, adapter: Adapter) -> int:
        """Bytes of ``adapter``'s weights for this config's base model."""
        return self.base_model.adapter_bytes(adapter.rank, adapter.target_modules)

    def pool(self, gpu_type: str) -> GPUPool:
        """Return the pool of ``gpu_type``."""
        for pool in self.pools:
            if pool.gpu_type == gpu_type:
                return pool
        raise KeyError(gpu_type)

    def with_adapters(self, adapters: list[Adapter] | tuple[Adapter, ...]) -> Config:
        """Return a copy with another adapter list (validated again)."""
        data = self.model_dump()
        data["adapters"] = [a.model_dump() for a in adapters]
        data["base_model"] = self.base_model
        return Config.model_validate(data)

    def scaled(self, factor: float) -> Config:
        """Return a copy with every adapter's request rate multiplied by ``factor``.

        Raises
        ------
        ConfigError
            When ``factor`` puts an adapter's rate outside what a config may hold.
        """
        limit = MAX_REQUEST_RATE
        hottest = max(self.adapters, key=lambda a: a.request_rate)
        if not math.isfinite(factor) or factor < 0 or hottest.request_rate * factor > limit:
            raise ConfigError(f"rate scale {factor:g} puts adapter {clip(hottest.id)} at "
                              f"{hottest.request_rate * factor:g} req/s; the most a config may "
                              f"hold is {limit:g} req/s per adapter")
        return self.with_adapters(
            [a.model_copy(update={"request_rate": a.request_rate * factor}) for a in self.adapters]
        )

    def to_yaml(self) -> str:
        """Serialise to the YAML format :func:`load_config` reads."""
        data = self.model_dump(mode="json")
        data["adapters"] = [dict(a) for a in data["adapters"]]
        if data.get("topology") is None:
            data.pop("topology", None)  # configs without one read and write as before
        return yaml.safe_dump(data, sort_keys=False)


_CSV_NUMBERS = {"rank": int, "request_rate": float, "prompt_tokens": float, "output_tokens": float}


def read_adapters_csv(path: Path) -> list[dict[str, Any]]:
    """Read adapter rows from a CSV with header ``id,rank,request_rate[,prompt_tokens,...]``.

    ``target_modules``, when present, separates module names with ``;``.
    """
    try:
        text = read_text(path, "a CSV file")
    except ConfigError as exc:
        if "file not found" not in str(exc):
            raise ConfigError(f"adapters_csv: {exc}") from None
        raise ConfigError(
            f"adapters_csv: file '{path}' not found; paths are relative to the config file"
        ) from None
    try:
        return _adapter_rows(path, text)
    except csv.Error as exc:
        raise ConfigError(f"adapters_csv: '{path}': not a readable CSV ({exc})") from None


def _adapter_rows(path: Path, text: str) -> list[dict[str, Any]]:
    """The rows of an ``adapters_csv`` file's ``text``, numbers parsed and checked finite."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    required = {"id", "rank", "request_rate"}
    header = set(reader.fieldnames or [])
    if not required <= header:
        missing = ", ".join(sorted(required - header))
        raise ConfigError(f"adapters_csv: '{path}' lacks column(s) {missing}; add them")
    rows: list[dict[str, Any]] = []
    for line, row in enumerate(reader, start=2):
        entry: dict[str, Any] = {}
        for key, value in row.items():
            if key is None or value is None or value.strip() == "":
                continue
            value = value.strip()
            if key == "target_modules":
                entry[key] = [m.strip() for m in value.split(";") if m.strip()]
            elif key in _CSV_NUMBERS:
                try:
                    number = _CSV_NUMBERS[key](value)
                except ValueError:
                    raise ConfigError(
                        f"adapters_csv: '{path}' line {line}: {key} {clip(value)} is not a "
                        "number"
                    ) from None
                if not math.isfinite(number):
                    raise ConfigError(
                        f"adapters_csv: '{path}' line {line}: {key} {clip(value)} is not a "
                        "finite number; give a number"
                    )
                entry[key] = number
            else:
                entry[key] = value
        rows.append(entry)
    return rows


def config_from_mapping(
    raw: Mapping[str, Any], base_dir: Path | None = None, source: str = "config"
) -> Config:
    """Validate a config given as a mapping (the parsed YAML).

    Parameters
    ----------
    raw : mapping
        The document: ``base_model``, ``slo``, ``pools``, ``serving``, ``adapter_defaults``,
        ``adapters`` and/or ``adapters_csv``, ``profiles``, ``topology``.
    base_dir : Path, optional
        Folder that relative paths (``adapters_csv``, ``profiles``) are resolved against.
    source : str
        Name used at the start of error messages.

    Raises
    ------
    ConfigError
        With a one-line message naming the field.
    """
    if not isinstance(raw, Mapping):
        kind = type(raw).__name__
        raise ConfigError(f"{source}: the document must be a mapping of fields, not {kind}")
    if "routes" in raw and "gpus" in raw and "adapters" not in raw:
        raise ConfigError(f"{source}: is a plan, not a config; give the config YAML (a plan "
                          "goes after it, as in loraserve verify CONFIG PLAN)")
    base_dir = base_dir or Path.cwd()
    data = dict(raw)
    try:
        defaults = AdapterDefaults.model_validate(data.pop("adapter_defaults", None) or {})
    except ValidationError as exc:
        prefixed = {"adapter_defaults": raw.get("adapter_defaults")}
        line = format_validation_error(exc, prefixed, source)
        raise ConfigError(line.replace(f"{source}: ", f"{source}: adapter_defaults.", 1)) from None
    listed = data.get("adapters")
    if listed is not None and not isinstance(listed, list):
        raise ConfigError(f"{source}: adapters: give a list of adapters (each with id, rank, "
                          f"request_rate), not {clip(listed)}")
    entries = list(listed or [])
    csv_path = data.pop("adapters_csv", None)
    if csv_path is not None:
        if not isinstance(csv_path, str):
            raise ConfigError(f"{source}: adapters_csv: give a file path as a string")
        entries.extend(read_adapters_csv(base_dir / csv_path))
    if not entries:
        raise ConfigError(f"{source}: adapters: no adapters given; list them or set adapters_csv")
    resolved: list[Any] = []
    for entry in entries:
        if isinstance(entry, Mapping):
            merged = {
                "prompt_tokens": defaults.prompt_tokens,
                "output_tokens": defaults.output_tokens,
                "target_modules": defaults.target_modules,
            }
            merged.update(entry)
            resolved.append(merged)
        else:
            resolved.append(entry)
    data["adapters"] = resolved
    profiles = data.get("profiles")
    if isinstance(profiles, list):
        data["profiles"] = [str(base_dir / p) if isinstance(p, str) else p for p in profiles]
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, {**data}, source)) from None
    for path in config.profiles:
        if path.is_dir():
            raise ConfigError(f"{source}: profiles: '{path}' is a folder; give a profile "
                              "YAML file")
        if not path.is_file():
            raise ConfigError(f"{source}: profiles: file '{path}' not found")
    return config


def load_config(path: str | Path) -> Config:
    """Load and validate a YAML config file.

    Parameters
    ----------
    path : str or Path
        The YAML file. ``adapters_csv`` and ``profiles`` are relative to its folder.

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        One line naming the file, the field and the fix.
    """
    path = Path(path)
    raw = read_yaml(path, "the config YAML file")
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; see examples/quickstart.yaml")
    return config_from_mapping(raw, base_dir=path.parent, source=str(path))
