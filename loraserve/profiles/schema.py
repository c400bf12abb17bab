"""The profile file format (version 1) and its interpolation.

A profile holds, for one GPU type and one base model, per rank tier ``R`` (the worker's
``--max-lora-rank``):

* ``decode_ms[i]``: one decode step for ``batch_sizes[i]`` running sequences, each with
  ``context_tokens`` of KV cache, ``min(batch, lora_slots)`` distinct adapters in the batch,
  their LoRA weights padded to ``R`` (vLLM pads every adapter to ``--max-lora-rank``);
* ``prefill_ms[j]``: one prefill pass over ``prefill_tokens[j]`` tokens at tier ``R``;

and per adapter rank ``r``: ``adapter_load_ms[r]``, the time to load an adapter's weights from
host memory to the GPU, and optionally ``peer_load_ms[r]``, the time to load it from a peer
node over a ``peer_link_gbit_per_s`` RDMA link (network transfer, then the host-to-GPU copy).
Optionally, ``request_overhead_ms``: what a request takes beyond the engine's steps before its
first token reaches the client (HTTP, request processing, streaming), measured through the
server by ``loraserve profile --engine vllm``; the simulator adds it to every request's time
to first token (0 when absent, as in the analytic profiles); and ``step_overhead_ms`` and
``token_overhead_ms``, what serving adds to each decode step (per step, per running
sequence), which :meth:`Profile.decode_ms` includes.
Latencies are whole-model milliseconds. Between grid points the
latency is interpolated linearly; beyond the last point it is extrapolated from the last
segment (decode and prefill are close to affine in their argument at large sizes).

The format is stable: later versions add optional fields only.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loraserve.models import ConfigError
from loraserve.models.base_model import ALL_LINEAR_MODULES, TargetModule
from loraserve.models.io import format_validation_error, read_yaml


class TierProfile(BaseModel):
    """Latencies of one rank tier, on the profile's grids."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    decode_ms: tuple[float, ...]
    prefill_ms: tuple[float, ...]


class Profile(BaseModel):
    """Rank-dependent serving costs of one base model on one GPU type.

    Parameters
    ----------
    gpu_type, base_model : str
        What was profiled; the pair is the lookup key.
    source : {"analytic", "measured"}
        Derived from datasheet figures, or measured with ``loraserve profile``.
    description : str
        How the numbers were obtained, in prose.
    provenance : dict
        Machine, software versions, date and command.
    lora_slots : int
        Distinct adapters per decode batch assumed (``min(batch, lora_slots)``).
    context_tokens : int
        KV-cache length per sequence in the decode measurements.
    lora_target_modules : tuple of str
        Modules the profiled adapters modify.
    batch_sizes, prefill_tokens : tuple of int
        The grids, strictly increasing.
    tiers : dict
        Per rank tier, latencies on the grids.
    adapter_load_ms : dict
        Per adapter rank, host-to-GPU load time.
    peer_load_ms : dict
        Per adapter rank, load time from a peer node at ``peer_link_gbit_per_s`` (optional).
    peer_link_gbit_per_s : float, optional
        The link bandwidth ``peer_load_ms`` holds for; required with it.
    request_overhead_ms : float
        Fixed time a request spends outside the engine's steps before its first token
        reaches the client (HTTP, request processing, streaming); 0 when not measured.
    step_overhead_ms, token_overhead_ms : float
        What serving adds to each decode step beyond the engine's own time, per step and per
        running sequence (the server's output processing and streaming, where it competes
        with the engine for the CPU); :meth:`decode_ms` includes them. 0 when not measured.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    format_version: Literal[1] = 1
    gpu_type: str
    base_model: str
    source: Literal["analytic", "measured"]
    description: str = ""
    provenance: dict[str, str] = Field(default_factory=dict)
    lora_slots: int = Field(ge=1)
    context_tokens: int = Field(ge=1)
    lora_target_modules: tuple[TargetModule, ...] = ALL_LINEAR_MODULES
    batch_sizes: tuple[int, ...] = Field(min_length=2)
    prefill_tokens: tuple[int, ...] = Field(min_length=2)
    tiers: dict[int, TierProfile] = Field(min_length=1)
    adapter_load_ms: dict[int, float] = Field(default_factory=dict)
    peer_load_ms: dict[int, float] = Field(default_factory=dict)
    peer_link_gbit_per_s: float | None = Field(default=None, gt=0.0)
    request_overhead_ms: float = Field(default=0.0, ge=0.0)
    step_overhead_ms: float = Field(default=0.0, ge=0.0)
    token_overhead_ms: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _grids_match(self) -> Profile:
        grids = (("batch_sizes", self.batch_sizes), ("prefill_tokens", self.prefill_tokens))
        for name, grid in grids:
            if any(b <= a for a, b in pairwise(grid)) or grid[0] < 1:
                raise ValueError(f"{name} must be positive and strictly increasing")
        for tier, table in self.tiers.items():
            if len(table.decode_ms) != len(self.batch_sizes):
                raise ValueError(f"tiers.{tier}.decode_ms has {len(table.decode_ms)} values; "
                                 f"batch_sizes has {len(self.batch_sizes)}")
            if len(table.prefill_ms) != len(self.prefill_tokens):
                raise ValueError(f"tiers.{tier}.prefill_ms has {len(table.prefill_ms)} values; "
                                 f"prefill_tokens has {len(self.prefill_tokens)}")
            if min(table.decode_ms) <= 0 or min(table.prefill_ms) <= 0:
                raise ValueError(f"tiers.{tier}: latencies must be positive")
        if self.peer_load_ms and self.peer_link_gbit_per_s is None:
            raise ValueError("peer_load_ms needs peer_link_gbit_per_s, the link bandwidth it "
                             "was measured or modelled at; add it")
        return self

    @property
    def tier_values(self) -> tuple[int, ...]:
        """Profiled tiers, ascending."""
        return tuple(sorted(self.tiers))

    def _table(self, tier: int) -> TierProfile:
        try:
            return self.tiers[tier]
        except KeyError:
            raise KeyError(
                f"profile {self.gpu_type}/{self.base_model} has no tier {tier}; "
                f"it has {list(self.tier_values)}"
            ) from None

    def decode_ms(self, tier: int, batch: float) -> float:
        """Decode-step latency at ``tier`` for ``batch`` running sequences."""
        engine = _interp(batch, self.batch_sizes, self._table(tier).decode_ms)
        return engine + self.step_overhead_ms + self.token_overhead_ms * max(batch, 1.0)

    def prefill_ms(self, tier: int, tokens: float) -> float:
        """Prefill latency at ``tier`` for a pass over ``tokens`` tokens."""
        return _interp(tokens, self.prefill_tokens, self._table(tier).prefill_ms)

    def load_ms(self, rank: int) -> float:
        """Host-to-GPU load time of a rank-``rank`` adapter (interpolated over ranks)."""
        if not self.adapter_load_ms:
            return 0.0
        ranks = tuple(sorted(self.adapter_load_ms))
        return _interp(rank, ranks, tuple(self.adapter_load_ms[r] for r in ranks))

    def peer_network_ms(self, rank: int, bytes_per_s: float) -> float | None:
        """Network part of a peer load at ``bytes_per_s``, from ``peer_load_ms``; None without.

        The table's time less the host-to-GPU copy is the transfer at the reference link;
        a transfer scales inversely with bandwidth.
        """
        if not self.peer_load_ms or self.peer_link_gbit_per_s is None:
            return None
        ranks = tuple(sorted(self.peer_load_ms))
        peer = _interp(rank, ranks, tuple(self.peer_load_ms[r] for r in ranks))
        reference = self.peer_link_gbit_per_s * 1e9 / 8
        return max(0.0, peer - self.load_ms(rank)) * reference / bytes_per_s

    def to_yaml(self) -> str:
        """Serialise to the profile file format (grids as one-line lists)."""
        data = self.model_dump(mode="json")
        # JSON mode turns integer keys into strings; YAML can keep them as the integers they are.
        data["tiers"] = {int(k): v for k, v in data["tiers"].items()}
        data["adapter_load_ms"] = {int(k): v for k, v in data["adapter_load_ms"].items()}
        if data["peer_load_ms"]:
            data["peer_load_ms"] = {int(k): v for k, v in data["peer_load_ms"].items()}
        else:
            # Profiles without peer loads read and write as before.
            del data["peer_load_ms"]
            if data["peer_link_gbit_per_s"] is None:
                del data["peer_link_gbit_per_s"]
        for name in ("request_overhead_ms", "step_overhead_ms", "token_overhead_ms"):
            if not data[name]:
                # Profiles without a measured overhead read and write as before.
                del data[name]
        return yaml.dump(data, Dumper=_FlowListDumper, sort_keys=False, width=100)

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read and validate a profile file.

        Raises
        ------
        ConfigError
            One line naming the file and the field.
        """
        path = Path(path)
        try:
            raw = read_yaml(path, "a profile YAML file")
        except ConfigError as exc:
            if str(exc) == f"{path}: file not found":
                raise ConfigError(f"{path}: profile file not found") from None
            raise
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a profile must be a mapping")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, raw, str(path))) from None


class _FlowListDumper(yaml.SafeDumper):
    """Writes lists of numbers on one line so a profile reads as a table."""


def _represent_list(dumper: yaml.SafeDumper, data: list[object]) -> yaml.Node:
    flow = all(isinstance(item, int | float) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowListDumper.add_representer(list, _represent_list)


def _interp(x: float, xs: tuple[int, ...], ys: tuple[float, ...]) -> float:
    if x <= xs[0]:
        # Below the grid latency is flat: a tiny batch costs what the smallest one does.
        return float(ys[0])
    if x >= xs[-1]:
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return float(ys[-1] + slope * (x - xs[-1]))
    return float(np.interp(x, xs, ys))
