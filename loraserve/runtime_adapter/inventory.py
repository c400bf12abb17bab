"""The fleet inventory: which vLLM workers run where, and where each adapter's weights are.

One YAML file, validated like the planning config (pydantic, one-line errors naming the
field). Paths are relative to the inventory file; every adapter path must lie under one of
the declared ``adapter_roots``. Example::

    adapter_roots: [adapters]            # directories adapters may be loaded from
    adapters:                            # adapter id -> its PEFT directory
      support-bot: adapters/support-bot
    workers:
      - gpu_id: H100-80GB-0              # the plan's GPU id
        url: http://10.0.0.5:8000
        node: node-0
        gpu: 0                           # GPU index on the node
        tier: 64                         # the --max-lora-rank it runs with
        max_loras: 4
        max_cpu_loras: 16
        api_key_env: VLLM_KEY            # optional: its --api-key, from this variable
        lora_resolver_dir: /mnt/adapters # optional: its VLLM_LORA_RESOLVER_CACHE_DIR
    router_url: http://127.0.0.1:9000    # optional: apply waits for the router to switch
    launcher:                            # optional: commands that start/restart/stop workers
      restart: [ssh, "{node}", systemctl, restart, "vllm-lora@{gpu}-{tier}"]
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loraserve.models import ConfigError
from loraserve.models.config import Rank
from loraserve.models.io import format_validation_error, read_yaml
from loraserve.runtime_adapter.client import Timeouts

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"

#: Placeholders a launcher command may use; each is replaced in every argument.
LAUNCHER_FIELDS = ("gpu_id", "url", "host", "port", "node", "gpu", "tier", "max_loras",
                   "max_cpu_loras")


class WorkerSpec(BaseModel):
    """One vLLM worker (one GPU).

    Parameters
    ----------
    gpu_id : str
        The GPU id the placement plan uses for it.
    url : str
        Base URL of its OpenAI-compatible server.
    node : str
        Host it runs on (for the launcher and for people).
    gpu : int, optional
        GPU index on the node.
    tier : int
        The ``--max-lora-rank`` it was started with.
    max_loras : int
        ``--max-loras``.
    max_cpu_loras : int, optional
        ``--max-cpu-loras`` (defaults to ``max_loras``, as vLLM does): adapters it may hold.
    api_key_env : str, optional
        Environment variable holding its ``--api-key``.
    lora_resolver_dir : Path, optional
        The directory the worker's vLLM resolves adapters from on demand: its
        ``VLLM_LORA_RESOLVER_CACHE_DIR`` (vLLM's filesystem LoRA resolver, which loads
        ``<dir>/<adapter id>`` when a request names an adapter it has not loaded). Needed
        for a worker that a plan gives remote pairs; readable here at the same path.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    gpu_id: str = Field(min_length=1, max_length=128, pattern=_ID_PATTERN)
    url: str
    node: str = Field(default="local", min_length=1)
    gpu: int | None = Field(default=None, ge=0)
    tier: Rank
    max_loras: int = Field(default=1, ge=1, le=4096)
    max_cpu_loras: int | None = Field(default=None, ge=1, le=100_000)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    lora_resolver_dir: Path | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) < 10:
            raise ValueError(f"'{value}' is not an http(s) URL; write it as http://HOST:PORT")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _cpu_loras(self) -> WorkerSpec:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) is below max_loras "
                             f"({self.max_loras}); vLLM requires max_cpu_loras >= max_loras")
        return self

    @property
    def slots(self) -> int:
        """Adapters the worker may hold (``max_cpu_loras``, else ``max_loras``)."""
        return self.max_cpu_loras if self.max_cpu_loras is not None else self.max_loras

    @property
    def host(self) -> str:
        """Host part of the URL."""
        return self.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        """Port of the URL (80 or 443 when it has none)."""
        netloc = self.url.split("://", 1)[1].split("/", 1)[0]
        head, _, tail = netloc.rpartition(":")
        if head and tail.isdigit():
            return int(tail)
        return 443 if self.url.startswith("https://") else 80

    def api_key(self) -> str | None:
        """The API key from ``api_key_env``; :class:`ConfigError` when the variable is unset."""
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(f"workers '{self.gpu_id}': api_key_env: variable "
                              f"{self.api_key_env} is not set; export the worker's --api-key "
                              "in it")
        return value


class LauncherSpec(BaseModel):
    """Commands that start, restart (at a new tier) and stop a worker.

    Each is an argument list (or one string, split like a shell would, but run without a
    shell) whose arguments may contain ``{gpu_id}``, ``{url}``, ``{host}``, ``{port}``,
    ``{node}``, ``{gpu}``, ``{tier}``, ``{max_loras}`` and ``{max_cpu_loras}``; the same values
    are in the environment as ``LORASERVE_GPU_ID`` and so on. A command must exit 0 once the
    worker is (re)starting; apply then waits up to ``ready_timeout_s`` for ``/health``.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    start: tuple[str, ...] | None = None
    restart: tuple[str, ...] | None = None
    stop: tuple[str, ...] | None = None
    ready_timeout_s: float = Field(default=600.0, gt=0.0, le=86_400.0)
    command_timeout_s: float = Field(default=600.0, gt=0.0, le=86_400.0)

    @field_validator("start", "restart", "stop", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = shlex.split(value)
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("the command is empty; give the program and its arguments")
            for item in value:
                if isinstance(item, str):
                    _check_placeholders(item)
        return value


def _check_placeholders(text: str) -> None:
    try:
        text.format(**dict.fromkeys(LAUNCHER_FIELDS, ""))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"'{text}' uses an unknown placeholder {exc}; use one of "
                         + ", ".join("{" + f + "}" for f in LAUNCHER_FIELDS)) from None


class TimeoutSpec(BaseModel):
    """Per-request limits of the worker client, in seconds."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    connect_s: float = Field(default=3.0, gt=0.0, le=600.0)
    read_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    load_s: float = Field(default=120.0, gt=0.0, le=3600.0)

    def to_timeouts(self) -> Timeouts:
        """As the client's :class:`~loraserve.runtime_adapter.client.Timeouts`."""
        return Timeouts(self.connect_s, self.read_s, self.load_s)


class Inventory(BaseModel):
    """The fleet: workers, adapter locations, and how apply and the router reach them.

    Parameters
    ----------
    workers : list of WorkerSpec
        Every worker apply may touch.
    adapter_roots : list of Path
        Directories adapters may be loaded from.
    adapters : dict
        Adapter id -> its PEFT directory (``adapter_config.json`` and the weights), which must
        lie under one of ``adapter_roots`` and be readable by the workers at the same path.
    routes_file : Path
        The live routing table (a plan file) that apply keeps current and the router reads.
    journal : Path
        Where apply appends its steps (JSON lines, fsync'd).
    router_url : str, optional
        The router; when given, apply waits for it to load each routing change and for
        requests in flight to an adapter's old replica to finish before unloading it.
    route_settle_s : float
        Without ``router_url``: seconds to wait after a routing change before unloading.
    drain_timeout_s : float
        Most seconds to wait for in-flight requests before an unload, drain or restart.
    concurrency : int
        Steps executed at once (never two on one worker or one adapter).
    retries : int
        Extra attempts of a worker request after a transport error or 5xx.
    timeouts : TimeoutSpec
        Per-request limits.
    launcher : LauncherSpec
        Commands that start, restart and stop workers.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    workers: tuple[WorkerSpec, ...] = Field(min_length=1)
    adapter_roots: tuple[Path, ...] = Field(min_length=1)
    adapters: dict[str, Path] = Field(default_factory=dict)
    routes_file: Path = Path("routes.yaml")
    journal: Path = Path("journal.jsonl")
    router_url: str | None = None
    route_settle_s: float = Field(default=1.0, ge=0.0, le=3600.0)
    drain_timeout_s: float = Field(default=120.0, gt=0.0, le=86_400.0)
    concurrency: int = Field(default=4, ge=1, le=256)
    retries: int = Field(default=3, ge=0, le=20)
    timeouts: TimeoutSpec = TimeoutSpec()
    launcher: LauncherSpec = LauncherSpec()

    @field_validator("adapters")
    @classmethod
    def _adapter_ids(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name in value:
            if not re.match(_ID_PATTERN, name) or len(name) > 128:
                raise ValueError(f"adapter id '{name}' is not valid; use letters, digits and "
                                 "._:/- (as in the config)")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        ids = [w.gpu_id for w in self.workers]
        for index, gpu_id in enumerate(ids):
            if gpu_id in ids[:index]:
                raise ValueError(f"workers[{index}].gpu_id '{gpu_id}' appears twice; each "
                                 "worker is one GPU of the plan")
        urls = [w.url for w in self.workers]
        for index, url in enumerate(urls):
            if url in urls[:index]:
                raise ValueError(f"workers[{index}].url '{url}' appears twice; each worker "
                                 "has its own server")
        return self

    def worker(self, gpu_id: str) -> WorkerSpec:
        """The worker of ``gpu_id``; :class:`ConfigError` when the inventory lacks it."""
        for worker in self.workers:
            if worker.gpu_id == gpu_id:
                return worker
        raise ConfigError(f"the plan uses GPU '{gpu_id}', which has no worker in the "
                          "inventory; add it under workers")

    def adapter_path(self, adapter: str) -> Path:
        """The adapter's directory, checked to exist and to hold a PEFT ``adapter_config.json``.

        Raises
        ------
        ConfigError
            When the inventory does not list the adapter or the directory is missing.
        """
        path = self.adapters.get(adapter)
        if path is None:
            raise ConfigError(f"adapters: '{adapter}' is in the plan but not in the inventory; "
                              "add its directory under adapters")
        if not path.is_dir():
            raise ConfigError(f"adapters.{adapter}: directory '{path}' does not exist; fix the "
                              "path or copy the adapter there")
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(f"adapters.{adapter}: '{path}' has no adapter_config.json; give "
                              "the directory of a PEFT LoRA adapter")
        return path


def adapter_rank(path: Path, adapter: str = "") -> int:
    """An adapter's rank as vLLM computes it: the largest of ``r`` and ``rank_pattern``.

    Raises
    ------
    ConfigError
        When ``adapter_config.json`` cannot be read or has no rank.
    """
    where = f"adapters.{adapter}" if adapter else str(path)
    try:
        data = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        ranks = [int(data["r"])] + [int(v) for v in (data.get("rank_pattern") or {}).values()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: cannot read the rank from {path}/adapter_config.json "
                          f"({type(exc).__name__}); give the directory of a PEFT LoRA "
                          "adapter") from None
    return max(ranks)


def adapter_bytes(path: Path) -> int:
    """Bytes of an adapter's weight files (``*.safetensors`` and ``*.bin``) on disk."""
    return sum(f.stat().st_size for f in path.iterdir()
               if f.is_file() and f.suffix in (".safetensors", ".bin"))


def _resolve(inventory: Inventory, base_dir: Path, source: str) -> Inventory:
    def absolute(path: Path) -> Path:
        return (path if path.is_absolute() else base_dir / path).resolve()

    roots = tuple(absolute(root) for root in inventory.adapter_roots)
    for index, root in enumerate(roots):
        if not root.is_dir():
            raise ConfigError(f"{source}: adapter_roots[{index}]: directory '{root}' does not "
                              "exist; create it or fix the path")
    workers = []
    for index, worker in enumerate(inventory.workers):
        if worker.lora_resolver_dir is not None:
            store = absolute(worker.lora_resolver_dir)
            if not store.is_dir():
                raise ConfigError(f"{source}: workers[{index}].lora_resolver_dir: directory "
                                  f"'{store}' does not exist; give the worker's "
                                  "VLLM_LORA_RESOLVER_CACHE_DIR as seen from here")
            worker = worker.model_copy(update={"lora_resolver_dir": store})
        workers.append(worker)
    adapters: dict[str, Path] = {}
    for name, path in inventory.adapters.items():
        full = absolute(path)
        if not any(full.is_relative_to(root) for root in roots):
            raise ConfigError(f"{source}: adapters.{name}: '{full}' is outside the adapter "
                              "roots; move it under one of adapter_roots or add its directory "
                              "there")
        adapters[name] = full
    for field_name in ("routes_file", "journal"):
        # Written by apply and read by the router: a folder or a missing folder found only at
        # the first route step would leave a half-migrated fleet.
        target = absolute(getattr(inventory, field_name))
        if target.is_dir():
            raise ConfigError(f"{source}: {field_name}: '{target}' is a folder; give a file "
                              "name")
        if not target.parent.is_dir():
            raise ConfigError(f"{source}: {field_name}: the folder '{target.parent}' does not "
                              "exist; create it first")
    return inventory.model_copy(update={
        "workers": tuple(workers), "adapter_roots": roots, "adapters": adapters,
        "routes_file": absolute(inventory.routes_file),
        "journal": absolute(inventory.journal),
    })


def inventory_from_mapping(raw: Any, base_dir: Path, source: str = "inventory") -> Inventory:
    """Validate an inventory given as a mapping; relative paths are taken from ``base_dir``.

    Raises
    ------
    ConfigError
        One line naming the field and the fix.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the inventory must be a mapping with workers, "
                          "adapter_roots and adapters")
    try:
        inventory = Inventory.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, raw, source)) from None
    return _resolve(inventory, base_dir, source)


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an inventory YAML file.

    Raises
    ------
    ConfigError
        One line naming the file, the field and the fix.
    """
    path = Path(path)
    raw = read_yaml(path, "the inventory YAML file")
    return inventory_from_mapping(raw, path.resolve().parent, source=str(path))
