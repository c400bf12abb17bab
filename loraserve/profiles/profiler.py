"""Measuring rank-dependent serving costs with torch (``loraserve profile``).

This is the only module that imports torch (``pip install loraserve[profile]``). It builds a
few decoder layers of a base model at their real shapes with random weights (bf16 on CUDA,
fp32 on CPU) and times what a multi-LoRA server runs:

* **decode step, padded** (vLLM): ``b`` sequences, each with ``context_tokens`` of KV cache;
  the base GEMMs (fused ``qkv`` and ``gate_up`` as vLLM runs them), RoPE, attention over the
  cache, and LoRA on every target module from weights stacked in ``lora_slots`` slots and
  **padded to the tier** ``R`` (vLLM's ``lora_a_stacked``/``lora_b_stacked`` for
  ``--max-lora-rank R``). ``min(b, lora_slots)`` distinct adapters are active, so below the
  slot count each sequence has its own adapter. The shrink and expand products are one
  segmented GEMM each over the tokens grouped by adapter (:func:`torch.nn.functional.grouped_mm`,
  the segmented-GEMM form of vLLM's and Punica's multi-LoRA kernels): every token pays for
  rank ``R`` whatever its adapter's own rank;
* **decode step, rank-grouped** (S-LoRA): the same batch with the adapters unpadded, kept
  per rank and applied one segmented GEMM per distinct rank; the active adapters' ranks cycle
  down from the tier (``R, R/2, ..., 8, R, ...``, vLLM's admissible ranks), so the difference
  to the padded step is what padding costs;
* **prefill** over ``n`` tokens: sequences of ``prefill_sequence_tokens`` (causal attention
  within each), one adapter per sequence, padded LoRA;
* **adapter load**: one adapter's A and B matrices of rank ``r``, module by module, from
  pinned host memory to the device (on CPU: a host-to-host copy into the adapter buffers,
  which is what activating an adapter costs there).

Timing: on CUDA, CUDA events after warm-ups, decode steps captured as CUDA graphs (as vLLM
runs decode); on CPU, :func:`time.perf_counter` (or, with one thread,
:func:`time.process_time`: the latency on an unshared core). Each point is the median of
``repeats`` samples (the lowest over ``passes`` sweeps), tiers interleaved. Whole-model
latency is scaled from the measured layers by depth::

    model_ms = num_layers / layers_measured * (median of the measured layers)
               + (median of embedding lookup, final norm, LM head and argmax)

The profile stores the padded decode and the prefill medians made non-decreasing in batch
size, token count and tier (a least-squares isotonic fit); the raw medians of every variant
go to a CSV file beside the profile.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)

from loraserve.models import PRESETS, BaseModelSpec, ConfigError
from loraserve.models.base_model import ALL_LINEAR_MODULES, TargetModule
from loraserve.models.config import ADMISSIBLE_RANKS
from loraserve.models.io import read_text, write_atomic
from loraserve.profiles.fitting import (
    gpu_type_from_name,
    isotonic,
    isotonic_table,
    load_model_spec,
)
from loraserve.profiles.schema import Profile, TierProfile

logger = logging.getLogger(__name__)

Tensor = torch.Tensor
DeviceName = Literal["auto", "cuda", "cpu"]
CpuClock = Literal["wall", "process"]
Kind = Literal["decode", "prefill", "load"]
Variant = Literal["padded", "grouped", "copy"]

DEFAULT_TIERS: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
GPU_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
CPU_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
GPU_PREFILL_TOKENS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
CPU_PREFILL_TOKENS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
RMS_EPS = 1e-5
ROPE_THETA = 500_000.0

#: Columns of the raw-measurement CSV written beside a profile.
CSV_COLUMNS = ("kind", "variant", "tier", "size", "layers_ms", "head_ms", "model_ms",
               "spread", "samples", "calls_per_sample", "measured")


# ---- settings and results --------------------------------------------------------------------


@dataclass(frozen=True)
class ProfilerSettings:
    """What to measure and how.

    Parameters
    ----------
    base_model : BaseModelSpec
        Shapes of the model (a preset or a user spec).
    tiers : tuple of int
        Rank tiers (``--max-lora-rank``) to measure.
    batch_sizes, prefill_tokens : tuple of int, optional
        Decode batch sizes and prefill token counts; device defaults when omitted.
    load_ranks : tuple of int, optional
        Adapter ranks whose load time is measured; the tiers when omitted.
    context_tokens : int
        KV-cache length per sequence in the decode step.
    lora_slots : int
        Adapter slots of the stacked LoRA buffers (vLLM ``--max-loras``).
    target_modules : tuple of str
        Modules the adapters modify.
    layers : int
        Decoder layers built and timed (the rest is scaled by depth).
    repeats, warmup : int
        Timed samples per point (the median is kept) and untimed runs before them.
    min_sample_ms : float
        A sample repeats the call until it lasts at least this long (tiny shapes on CPU).
    prefill_sequence_tokens : int
        Length of each sequence in a prefill pass; each sequence uses its own adapter.
    passes : int
        Full sweeps over all points; each point keeps its lowest median (noisy machines).
    rechecks : int
        Rounds, after the sweeps, that measure again every point slower than a neighbour
        doing more work (higher tier, batch, tokens or rank) by over ``INVERSION_TOLERANCE``;
        the lower median is kept. A burst of interference, or a first point timed before the
        caches and allocator settle, otherwise stays in the profile as a fake slowdown.
    threads : int, optional
        CPU threads for torch (default: torch's own choice). One thread is far steadier
        on a machine shared with other work, where a descheduled thread stalls the rest.
    cpu_clock : {"wall", "process"}
        On CPU, time with :func:`time.perf_counter` (wall) or :func:`time.process_time`
        (the CPU time the process used; with one thread, the latency on an unshared core,
        whatever else runs on the machine). ``process`` needs ``threads=1``.
    grouped : bool
        Also time the unpadded, rank-grouped decode step.
    cuda_graphs : bool
        Capture decode steps as CUDA graphs on CUDA.
    device : {"auto", "cuda", "cpu"}
        CUDA when present for ``auto``.
    gpu_type : str, optional
        Profile key; derived from the device name when omitted (``CPU`` on CPU).
    seed : int
        Seed of the random weights, inputs and held-out compositions.
    command : str
        The command line, recorded in the provenance.
    """

    base_model: BaseModelSpec
    tiers: tuple[int, ...] = DEFAULT_TIERS
    batch_sizes: tuple[int, ...] | None = None
    prefill_tokens: tuple[int, ...] | None = None
    load_ranks: tuple[int, ...] | None = None
    context_tokens: int = 1024
    lora_slots: int = 16
    target_modules: tuple[TargetModule, ...] = ALL_LINEAR_MODULES
    layers: int = 2
    repeats: int = 10
    warmup: int = 3
    min_sample_ms: float = 1.0
    prefill_sequence_tokens: int = 512
    passes: int = 1
    rechecks: int = 2
    threads: int | None = None
    cpu_clock: CpuClock = "wall"
    grouped: bool = True
    cuda_graphs: bool = True
    device: DeviceName = "auto"
    gpu_type: str | None = None
    seed: int = 0
    command: str = ""

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one line naming the setting) for a bad setting."""
        grids = {"tiers": self.tiers, "batch_sizes": self.batch_sizes,
                 "prefill_tokens": self.prefill_tokens, "load_ranks": self.load_ranks}
        for name, grid in grids.items():
            if grid is None:
                continue
            if not grid or min(grid) < 1:
                raise ConfigError(f"{name}: give positive whole numbers (got {list(grid)})")
            if any(b <= a for a, b in itertools.pairwise(grid)):
                raise ConfigError(f"{name}: values must be strictly increasing "
                                  f"(got {list(grid)})")
        for name in ("batch_sizes", "prefill_tokens"):
            grid = grids[name]
            if grid is not None and len(grid) < 2:
                raise ConfigError(f"{name}: give at least two values (the profile interpolates)")
        positive = {"context_tokens": self.context_tokens, "lora_slots": self.lora_slots,
                    "layers": self.layers, "repeats": self.repeats, "passes": self.passes,
                    "prefill_sequence_tokens": self.prefill_sequence_tokens}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}: must be at least 1 (got {value})")
        if self.rechecks < 0:
            raise ConfigError(f"rechecks: must be 0 or more (got {self.rechecks})")
        if self.layers > self.base_model.num_layers:
            raise ConfigError(f"layers: {self.layers} exceeds the model's "
                              f"{self.base_model.num_layers} layers; use fewer")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: must be at least 1 (got {self.threads})")
        if self.cpu_clock == "process" and self.threads != 1:
            raise ConfigError("cpu_clock: the process clock measures latency only with one "
                              "thread; set threads to 1 or use the wall clock")
        if self.warmup < 0 or self.min_sample_ms < 0:
            raise ConfigError("warmup and min_sample_ms must be 0 or more")
        if not self.target_modules:
            raise ConfigError("target_modules: give at least one module")


@dataclass(frozen=True)
class Measurement:
    """One measured point (a CSV row).

    Attributes
    ----------
    kind : {"decode", "prefill", "load"}
    variant : {"padded", "grouped", "copy"}
        LoRA layout (``copy`` for adapter loads).
    tier : int
        Rank tier (0 for loads).
    size : int
        Batch size (decode), tokens (prefill) or adapter rank (load).
    layers_ms : float
        Median time of the measured layers (of the measured layers' adapter bytes for a load).
    head_ms : float
        Median time of embedding, final norm, LM head and argmax (0 for loads).
    model_ms : float
        Whole-model estimate, scaled by depth.
    spread : float
        ``(p90 - p10) / median`` of the samples: the timing noise at this point.
    samples, calls_per_sample : int
        Timed samples behind the median, and calls timed together in one sample.
    measured : int
        Times the point was measured (passes and re-measurements); the lowest median is kept.
    """

    kind: Kind
    variant: Variant
    tier: int
    size: int
    layers_ms: float
    head_ms: float
    model_ms: float
    spread: float
    samples: int
    calls_per_sample: int
    measured: int = 1


@dataclass(frozen=True)
class ProfileRun:
    """A measured profile and the raw measurements behind it."""

    profile: Profile
    measurements: tuple[Measurement, ...]

    def save(self, path: str | Path) -> Path:
        """Write the profile to ``path`` and the raw measurements beside it (``.csv``).

        Both files are written atomically; the CSV first, so a profile on disk always has
        its measurements. Returns the CSV's path.
        """
        path = Path(path)
        raw = raw_csv_path(path)
        profile = self.profile.model_copy(
            update={"provenance": {**self.profile.provenance, "raw_measurements": raw.name}})
        write_atomic(raw, measurements_to_csv(self.measurements))
        write_atomic(path, profile.to_yaml())
        return raw


@dataclass(frozen=True)
class CheckPoint:
    """One re-measured point: measured and predicted whole-model latency.

    Attributes
    ----------
    kind : {"decode", "prefill"}
    tier, size : int
        Rank tier; batch size or prefill tokens.
    composition : tuple of int
        Sequences per adapter of a decode batch.
    measured_ms : float
        Measured now.
    predicted_ms : float
        The profile's value (interpolated for a held-out point, stored for a grid point).
    session_ms : float
        For a held-out point, the same interpolation of the grid points re-measured in this
        session: its error is the interpolation's alone, free of any drift of the machine
        since the profile was measured. NaN for grid points.
    """

    kind: Kind
    tier: int
    size: int
    composition: tuple[int, ...]
    measured_ms: float
    predicted_ms: float
    session_ms: float = math.nan

    @property
    def error(self) -> float:
        """Relative error of the profile, ``(predicted - measured) / measured``."""
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def session_error(self) -> float:
        """Relative error of the interpolation of this session's grid measurements."""
        return (self.session_ms - self.measured_ms) / self.measured_ms


@dataclass(frozen=True)
class CheckReport:
    """Held-out prediction errors of a profile, and the drift of its grid points.

    Attributes
    ----------
    points : tuple of CheckPoint
        Held-out points (sizes the profile did not measure).
    grid : tuple of CheckPoint
        The profile's own grid points, re-measured in the same session: ``error`` is how
        far the stored values are from today's.
    session : Profile, optional
        The profile built from the re-measured grid (what ``session_ms`` interpolates).
    """

    points: tuple[CheckPoint, ...]
    grid: tuple[CheckPoint, ...] = ()
    session: Profile | None = None

    def abs_errors(self, kind: Kind | None = None, session: bool = False) -> list[float]:
        """Absolute relative errors of held-out points, of one kind or all."""
        return [abs(p.session_error if session else p.error) for p in self.points
                if kind is None or p.kind == kind]

    def median_abs_error(self, kind: Kind | None = None, session: bool = False) -> float:
        """Median absolute relative error (NaN without points)."""
        errors = self.abs_errors(kind, session)
        return statistics.median(errors) if errors else math.nan

    def max_abs_error(self, kind: Kind | None = None, session: bool = False) -> float:
        """Largest absolute relative error (NaN without points)."""
        errors = self.abs_errors(kind, session)
        return max(errors) if errors else math.nan

    def median_drift(self, kind: Kind | None = None) -> float:
        """Median absolute change of the grid points since the profile (NaN without)."""
        changes = [abs(p.error) for p in self.grid if kind is None or p.kind == kind]
        return statistics.median(changes) if changes else math.nan


def raw_csv_path(profile_path: str | Path) -> Path:
    """Where the raw measurements of a profile file live: beside it, ``.csv``."""
    return Path(profile_path).with_suffix(".csv")


def measurements_to_csv(rows: Sequence[Measurement]) -> str:
    """Render measurements as CSV text with :data:`CSV_COLUMNS`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = asdict(row)
        for key in ("layers_ms", "head_ms", "model_ms"):
            values[key] = f"{values[key]:.6g}"
        values["spread"] = f"{values['spread']:.4f}"
        writer.writerow(values)
    return buffer.getvalue()


def read_measurements(path: str | Path) -> list[Measurement]:
    """Read a raw-measurement CSV written by :meth:`ProfileRun.save`.

    Raises
    ------
    ConfigError
        When the file is missing or a row is malformed.
    """
    path = Path(path)
    try:
        text = read_text(path, "a raw-measurement CSV file")
    except ConfigError as exc:
        if str(exc) != f"{path}: file not found":
            raise
        raise ConfigError(f"{path}: raw measurements not found; `loraserve profile` writes "
                          "them beside the profile") from None
    rows: list[Measurement] = []
    for number, record in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            rows.append(Measurement(
                kind=cast(Kind, _literal(record["kind"], ("decode", "prefill", "load"))),
                variant=cast(Variant, _literal(record["variant"], ("padded", "grouped", "copy"))),
                tier=int(record["tier"]), size=int(record["size"]),
                layers_ms=float(record["layers_ms"]), head_ms=float(record["head_ms"]),
                model_ms=float(record["model_ms"]), spread=float(record["spread"]),
                samples=int(record["samples"]),
                calls_per_sample=int(record["calls_per_sample"]),
                measured=int(record.get("measured") or 1)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: line {number}: not a measurement row ({exc}); "
                              f"expected columns {', '.join(CSV_COLUMNS)}") from None
    return rows


def _literal(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"'{value}' is not one of {', '.join(allowed)}")
    return value


# ---- devices and timing ----------------------------------------------------------------------


def resolve_device(name: DeviceName) -> torch.device:
    """The torch device for ``name`` (``auto``: CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: cuda was asked for but torch {torch.__version__} sees no "
                          "CUDA device; use --device cpu, or a CUDA build of torch on a GPU")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def default_gpu_type(device: torch.device) -> str:
    """Profile key for the device: ``H100-80GB`` style for GPUs, ``CPU`` for CPUs."""
    if device.type != "cuda":
        return "CPU"
    total = torch.cuda.get_device_properties(device).total_memory
    return gpu_type_from_name(device_name(device), total)


def _driver_version(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True)
        return done.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown (nvidia-smi did not answer)"


@dataclass
class _Timer:
    device: torch.device
    warmup: int
    repeats: int
    min_sample_ms: float
    cuda_graphs: bool
    clock: CpuClock = "wall"
    graph_note: str = ""

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _elapsed_ms(self, call: Callable[[], object], calls: int) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            for _ in range(calls):
                call()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        clock = time.process_time if self.clock == "process" else time.perf_counter
        begin = clock()
        for _ in range(calls):
            call()
        return (clock() - begin) * 1e3

    def _capture(self, call: Callable[[], object]) -> Callable[[], object]:
        """Capture ``call`` as a CUDA graph (as vLLM runs decode); eager when capture fails."""
        stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                call()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                call()
        except RuntimeError as exc:
            if not self.graph_note:
                logger.warning("CUDA graph capture failed (%s); timing eagerly", exc)
                self.graph_note = f"capture failed, eager: {str(exc).splitlines()[0]}"
            return call
        self.graph_note = self.graph_note or "decode steps replayed as CUDA graphs"
        return graph.replay

    def median_ms(self, call: Callable[[], object], graph: bool = False
                  ) -> tuple[float, float, int]:
        """Median ms per call, relative spread (p10..p90) and calls per sample."""
        with torch.inference_mode():
            run = self._capture(call) if graph and self.cuda and self.cuda_graphs else call
            for _ in range(self.warmup):
                run()
            self._sync()
            once = self._elapsed_ms(run, 1)
            calls = 1
            if self.min_sample_ms > 0 and once < self.min_sample_ms:
                calls = min(10_000, math.ceil(self.min_sample_ms / max(once, 1e-4)))
            samples = [self._elapsed_ms(run, calls) / calls for _ in range(self.repeats)]
        median = statistics.median(samples)
        low, high = np.percentile(samples, [10, 90])
        return median, float(high - low) / median, calls


# ---- LoRA kernels and attention --------------------------------------------------------------


@dataclass(frozen=True)
class Segments:
    """Tokens grouped by adapter: token counts per adapter and their device offsets."""

    counts: tuple[int, ...]
    offsets: Tensor

    @classmethod
    def of(cls, counts: Sequence[int], device: torch.device) -> Segments:
        """Segments of ``counts`` tokens (in order) on ``device``."""
        ends = np.cumsum(counts, dtype=np.int64)
        return cls(tuple(int(c) for c in counts),
                   torch.tensor(ends, dtype=torch.int32, device=device))

    @property
    def tokens(self) -> int:
        """Tokens in all segments."""
        return sum(self.counts)


GroupedMM = Callable[[Tensor, Tensor, Segments], Tensor]


def grouped_mm(x: Tensor, weights: Tensor, segments: Segments) -> Tensor:
    """Segmented GEMM: token segment ``i`` of ``x`` times ``weights[i]`` (one kernel).

    ``x`` is ``[tokens, k]``; ``weights`` is ``[segments, k, n]`` (column-major views of the
    stacked ``[segments, n, k]`` buffers, vLLM's layout).
    """
    return F.grouped_mm(x, weights, offs=segments.offsets)


def looped_mm(x: Tensor, weights: Tensor, segments: Segments) -> Tensor:
    """The same product as :func:`grouped_mm`, one matmul per segment (fallback)."""
    parts = []
    start = 0
    for index, count in enumerate(segments.counts):
        parts.append(x[start:start + count] @ weights[index])
        start += count
    return torch.cat(parts)


def padded_lora(
    x: Tensor, a_stack: Tensor, b_stack: Tensor, segments: Segments, mm: GroupedMM = grouped_mm
) -> Tensor:
    """LoRA output of tokens grouped by adapter, weights stacked and padded (vLLM).

    Parameters
    ----------
    x : Tensor
        ``[tokens, in]``, segment ``i`` using the adapter in slot ``i``.
    a_stack, b_stack : Tensor
        ``[slots, R, in]`` and ``[slots, out, R]``, each adapter zero-padded to the tier R.
    segments : Segments
        Tokens per adapter, in slot order (slots ``0 .. len(counts) - 1``).
    mm : callable
        The segmented GEMM.
    """
    used = len(segments.counts)
    shrunk = mm(x, a_stack[:used].transpose(1, 2), segments)
    return mm(shrunk, b_stack[:used].transpose(1, 2), segments)


@dataclass(frozen=True)
class RankGroup:
    """Adapters of one rank in a rank-grouped batch: their tokens and their weights."""

    rank: int
    start: int
    segments: Segments
    a_stack: Tensor
    b_stack: Tensor


def grouped_lora(
    x: Tensor, groups: Sequence[RankGroup], out: Tensor, mm: GroupedMM = grouped_mm
) -> Tensor:
    """Add the LoRA output of unpadded adapters to ``out``, one segmented GEMM per rank (S-LoRA).

    ``x`` holds the tokens sorted by rank group; group ``g``'s tokens start at ``g.start``
    and its adapters' weights are ``[n, r, in]`` and ``[n, out, r]`` at their own rank.
    Returns ``out``.
    """
    for group in groups:
        end = group.start + group.segments.tokens
        used = len(group.segments.counts)
        shrunk = mm(x[group.start:end], group.a_stack[:used].transpose(1, 2), group.segments)
        out[group.start:end].add_(mm(shrunk, group.b_stack[:used].transpose(1, 2),
                                     group.segments))
    return out


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor) -> Tensor:
    """One query token per sequence against its cache, grouped-query attention.

    ``q`` is ``[b, heads, d]``, the caches ``[b, kv_heads, n, d]``. With a single query token
    the query heads sharing a KV head can be laid along the query axis, so one
    :func:`~torch.nn.functional.scaled_dot_product_attention` call reads each KV head once
    (what FlashDecoding-style kernels do); head ``h`` uses KV head ``h // (heads / kv_heads)``.
    """
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    grouped = q.view(batch, kv_heads, heads // kv_heads, dim)
    return F.scaled_dot_product_attention(grouped, k_cache, v_cache).reshape(batch, heads, dim)


def prefill_attention(q: Tensor, k: Tensor, v: Tensor, sequence_tokens: int) -> Tensor:
    """Causal attention within consecutive sequences of ``sequence_tokens`` (last may be short).

    ``q`` is ``[tokens, heads, d]``, ``k`` and ``v`` ``[tokens, kv_heads, d]``; returns
    ``[tokens, heads * d]``.
    """
    tokens, heads, dim = q.shape
    parts = []
    start = 0
    while start < tokens:
        length = min(sequence_tokens, tokens - start)
        count = (tokens - start) // length
        end = start + count * length

        def split(t: Tensor, s: int = start, e: int = end, n: int = count, m: int = length
                  ) -> Tensor:
            return t[s:e].view(n, m, t.shape[1], dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True,
                                             enable_gqa=True)
        parts.append(out.transpose(1, 2).reshape(end - start, heads * dim))
        start = end
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# ---- the model under test --------------------------------------------------------------------


@dataclass
class _Layer:
    norm1: Tensor
    qkv: Tensor
    o: Tensor
    norm2: Tensor
    gate_up: Tensor
    down: Tensor
    k_cache: Tensor
    v_cache: Tensor
    k_store: Tensor
    v_store: Tensor


LoraHook = Callable[[int, TargetModule, Tensor, Tensor], None]


def _tier_ranks(tier: int) -> list[int]:
    """Ranks of the active adapters at ``tier``: vLLM's ranks from the tier down, cycled."""
    ranks = [r for r in sorted(ADMISSIBLE_RANKS, reverse=True) if r <= tier]
    if not ranks or ranks[0] != tier:
        ranks.insert(0, tier)
    return ranks


def balanced_counts(tokens: int, slots: int) -> list[int]:
    """Tokens per adapter when ``tokens`` sequences spread over ``min(tokens, slots)`` adapters."""
    used = min(tokens, slots)
    return [tokens // used + (1 if i < tokens % used else 0) for i in range(used)]


def random_counts(tokens: int, slots: int, rng: np.random.Generator) -> list[int]:
    """An uneven split of ``tokens`` over ``min(tokens, slots)`` adapters (each at least one)."""
    used = min(tokens, slots)
    extra = rng.multinomial(tokens - used, [1.0 / used] * used)
    return [1 + int(e) for e in extra]


class _Bench:
    """The decoder layers at real shapes, their caches, and what builds the LoRA buffers."""

    def __init__(self, settings: ProfilerSettings, device: torch.device, max_batch: int,
                 max_prefill: int, timer: _Timer) -> None:
        spec = settings.base_model
        self.settings = settings
        self.spec = spec
        self.device = device
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.timer = timer
        self.head_dim = spec.head_dim
        self.q_out = spec.num_attention_heads * spec.head_dim
        self.kv_out = spec.num_kv_heads * spec.head_dim
        torch.manual_seed(settings.seed)
        h, i = spec.hidden_size, spec.intermediate_size
        context = settings.context_tokens
        self.layers = [
            _Layer(
                norm1=self._ones(h), qkv=self._weights(self.q_out + 2 * self.kv_out, h),
                o=self._weights(h, self.q_out), norm2=self._ones(h),
                gate_up=self._weights(2 * i, h), down=self._weights(h, i),
                k_cache=self._random(max_batch, spec.num_kv_heads, context + 1, self.head_dim),
                v_cache=self._random(max_batch, spec.num_kv_heads, context + 1, self.head_dim),
                k_store=self._random(max_prefill, spec.num_kv_heads, self.head_dim),
                v_store=self._random(max_prefill, spec.num_kv_heads, self.head_dim),
            )
            for _ in range(settings.layers)
        ]
        self.embedding = self._weights(spec.vocab_size, h)
        self.final_norm = self._ones(h)
        self.lm_head = self._weights(spec.vocab_size, h)
        positions = torch.arange(max(context + 1, settings.prefill_sequence_tokens),
                                 device=device, dtype=torch.float32)
        inv = ROPE_THETA ** (-torch.arange(0, self.head_dim, 2, device=device,
                                           dtype=torch.float32) / self.head_dim)
        angles = torch.outer(positions, inv).repeat(1, 2)
        self.cos = angles.cos().to(self.dtype)
        self.sin = angles.sin().to(self.dtype)
        self.mm: GroupedMM = grouped_mm
        self.kernel = "torch.nn.functional.grouped_mm (one segmented GEMM per LoRA product)"
        try:
            # The layout the measurement uses: a transposed view of vLLM's stacked buffers.
            padded_lora(self._random(16, 64), self._random(2, 8, 64), self._random(2, 64, 8),
                        Segments.of([9, 7], device))
            self._sync()
        except (RuntimeError, NotImplementedError) as exc:
            logger.warning("grouped_mm unavailable here (%s); one matmul per adapter instead",
                           str(exc).splitlines()[0])
            self.mm = looped_mm
            self.kernel = "one matmul per adapter segment (grouped_mm unavailable)"

    # -- tensors

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _random(self, *shape: int) -> Tensor:
        return torch.randn(*shape, device=self.device, dtype=self.dtype)

    def _weights(self, out_features: int, in_features: int) -> Tensor:
        return torch.randn(out_features, in_features, device=self.device,
                           dtype=self.dtype).mul_(0.02)

    def _ones(self, size: int) -> Tensor:
        return torch.ones(size, device=self.device, dtype=self.dtype)

    def module_shape(self, module: TargetModule) -> tuple[int, int]:
        """``(in, out)`` of a target module."""
        return self.spec.module_shape(module)

    # -- one decoder layer

    def layer(self, index: int, x: Tensor, cos: Tensor, sin: Tensor,
              attention: Callable[[_Layer, Tensor, Tensor, Tensor], Tensor],
              lora: LoraHook) -> Tensor:
        """One decoder layer on ``x`` (``[tokens, hidden]``), LoRA added by ``lora``."""
        w = self.layers[index]
        spec = self.spec
        tokens = x.shape[0]
        q_out, kv_out, inter = self.q_out, self.kv_out, spec.intermediate_size
        h = F.rms_norm(x, (spec.hidden_size,), w.norm1, RMS_EPS)
        qkv = F.linear(h, w.qkv)
        lora(index, "q_proj", h, qkv[:, :q_out])
        lora(index, "k_proj", h, qkv[:, q_out:q_out + kv_out])
        lora(index, "v_proj", h, qkv[:, q_out + kv_out:])
        q = _rotate(qkv[:, :q_out].view(tokens, -1, self.head_dim), cos, sin)
        k = _rotate(qkv[:, q_out:q_out + kv_out].view(tokens, -1, self.head_dim), cos, sin)
        v = qkv[:, q_out + kv_out:].view(tokens, -1, self.head_dim)
        attn = attention(w, q, k, v)
        o = F.linear(attn, w.o)
        lora(index, "o_proj", attn, o)
        x = x + o
        h = F.rms_norm(x, (spec.hidden_size,), w.norm2, RMS_EPS)
        gate_up = F.linear(h, w.gate_up)
        lora(index, "gate_proj", h, gate_up[:, :inter])
        lora(index, "up_proj", h, gate_up[:, inter:])
        act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        down = F.linear(act, w.down)
        lora(index, "down_proj", act, down)
        return x + down

    def _decode_attention(self, batch: int) -> Callable[[_Layer, Tensor, Tensor, Tensor],
                                                         Tensor]:
        position = self.settings.context_tokens

        def attend(w: _Layer, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            w.k_cache[:batch, :, position] = k
            w.v_cache[:batch, :, position] = v
            out = decode_attention(q, w.k_cache[:batch], w.v_cache[:batch])
            return out.reshape(batch, self.q_out)

        return attend

    def _prefill_attention(self, tokens: int) -> Callable[[_Layer, Tensor, Tensor, Tensor],
                                                          Tensor]:
        sequence = self.settings.prefill_sequence_tokens

        def attend(w: _Layer, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            # vLLM writes the prompt's keys and values into the cache as it prefills.
            w.k_store[:tokens].copy_(k)
            w.v_store[:tokens].copy_(v)
            return prefill_attention(q, k, v, sequence)

        return attend

    # -- LoRA buffers

    def padded_buffers(self, tier: int) -> dict[tuple[int, TargetModule], tuple[Tensor, Tensor]]:
        """The stacked buffers of vLLM at ``tier``: every slot padded to the tier, zeros beyond."""
        ranks = _tier_ranks(tier)
        buffers = {}
        for index in range(self.settings.layers):
            for module in self.settings.target_modules:
                fan_in, fan_out = self.module_shape(module)
                a = torch.zeros(self.settings.lora_slots, tier, fan_in, device=self.device,
                                dtype=self.dtype)
                b = torch.zeros(self.settings.lora_slots, fan_out, tier, device=self.device,
                                dtype=self.dtype)
                for slot in range(self.settings.lora_slots):
                    rank = ranks[slot % len(ranks)]
                    a[slot, :rank].normal_(0.0, 0.02)
                    b[slot, :, :rank].normal_(0.0, 0.02)
                buffers[(index, module)] = (a, b)
        return buffers

    def grouped_buffers(self, tier: int) -> dict[tuple[int, TargetModule, int],
                                                 tuple[Tensor, Tensor]]:
        """S-LoRA-style unpadded adapters, stacked per rank (same adapters as the slots)."""
        ranks = _tier_ranks(tier)
        per_rank: dict[int, int] = {}
        for slot in range(self.settings.lora_slots):
            rank = ranks[slot % len(ranks)]
            per_rank[rank] = per_rank.get(rank, 0) + 1
        buffers = {}
        for index in range(self.settings.layers):
            for module in self.settings.target_modules:
                fan_in, fan_out = self.module_shape(module)
                for rank, count in per_rank.items():
                    a = self._random(count, rank, fan_in).mul_(0.02)
                    b = self._random(count, fan_out, rank).mul_(0.02)
                    buffers[(index, module, rank)] = (a, b)
        return buffers

    def padded_hook(self, buffers: dict[tuple[int, TargetModule], tuple[Tensor, Tensor]],
                    counts: Sequence[int]) -> LoraHook:
        """LoRA hook for tokens in slot order, ``counts[i]`` tokens on slot ``i``."""
        segments = Segments.of(counts, self.device)
        mm = self.mm

        def hook(index: int, module: TargetModule, x: Tensor, out: Tensor) -> None:
            pair = buffers.get((index, module))
            if pair is not None:
                out.add_(padded_lora(x, pair[0], pair[1], segments, mm))

        return hook

    def grouped_hook(self, tier: int, buffers: dict[tuple[int, TargetModule, int],
                                                    tuple[Tensor, Tensor]],
                     counts: Sequence[int]) -> LoraHook:
        """LoRA hook for tokens sorted by rank.

        Adapter ``i`` (its rank cycled down from the tier) has ``counts[i]`` tokens.
        """
        ranks = _tier_ranks(tier)
        by_rank: dict[int, list[int]] = {}
        for slot, count in enumerate(counts):
            by_rank.setdefault(ranks[slot % len(ranks)], []).append(count)
        layout: list[tuple[int, int, Segments]] = []
        start = 0
        for rank in sorted(by_rank, reverse=True):
            segments = Segments.of(by_rank[rank], self.device)
            layout.append((rank, start, segments))
            start += segments.tokens
        mm = self.mm
        groups: dict[tuple[int, TargetModule], list[RankGroup]] = {}
        for index in range(self.settings.layers):
            for module in self.settings.target_modules:
                groups[(index, module)] = [
                    RankGroup(rank, first, segments, *buffers[(index, module, rank)])
                    for rank, first, segments in layout
                ]

        def hook(index: int, module: TargetModule, x: Tensor, out: Tensor) -> None:
            found = groups.get((index, module))
            if found is not None:
                grouped_lora(x, found, out, mm)

        return hook

    # -- what is timed

    def time_decode(self, batch: int, hook: LoraHook) -> tuple[float, float, int]:
        """Median ms of one decode step through the built layers."""
        x = self._random(batch, self.spec.hidden_size)
        position = self.settings.context_tokens
        cos = self.cos[position].expand(batch, 1, self.head_dim)
        sin = self.sin[position].expand(batch, 1, self.head_dim)
        attend = self._decode_attention(batch)

        def step() -> Tensor:
            y = x
            for index in range(self.settings.layers):
                y = self.layer(index, y, cos, sin, attend, hook)
            return y

        return self.timer.median_ms(step, graph=True)

    def time_prefill(self, tokens: int, hook: LoraHook) -> tuple[float, float, int]:
        """Median ms of one prefill pass over ``tokens`` through the built layers."""
        x = self._random(tokens, self.spec.hidden_size)
        sequence = self.settings.prefill_sequence_tokens
        positions = torch.arange(tokens, device=self.device) % sequence
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        attend = self._prefill_attention(tokens)

        def run() -> Tensor:
            y = x
            for index in range(self.settings.layers):
                y = self.layer(index, y, cos, sin, attend, hook)
            return y

        return self.timer.median_ms(run)

    def time_head(self, tokens: int, sampled: int) -> float:
        """Median ms of the embedding of ``tokens`` and the LM head on ``sampled`` rows."""
        ids = torch.randint(self.spec.vocab_size, (tokens,), device=self.device)
        last = self._random(sampled, self.spec.hidden_size)

        def run() -> Tensor:
            F.embedding(ids, self.embedding)
            h = F.rms_norm(last, (self.spec.hidden_size,), self.final_norm, RMS_EPS)
            return F.linear(h, self.lm_head).argmax(dim=-1)

        return self.timer.median_ms(run, graph=sampled == tokens)[0]

    def time_load(self, rank: int) -> tuple[float, float, int]:
        """Median ms to copy one rank-``rank`` adapter's weights of the built layers."""
        pin = self.device.type == "cuda"
        pairs: list[tuple[Tensor, Tensor]] = []
        for _ in range(self.settings.layers):
            for module in self.settings.target_modules:
                fan_in, fan_out = self.module_shape(module)
                for shape in ((rank, fan_in), (fan_out, rank)):
                    host = torch.randn(*shape, dtype=self.dtype).pin_memory() if pin \
                        else torch.randn(*shape, dtype=self.dtype)
                    pairs.append((host, torch.empty(shape, device=self.device, dtype=self.dtype)))

        def copy() -> None:
            for host, target in pairs:
                target.copy_(host, non_blocking=pin)

        return self.timer.median_ms(copy)


# ---- measuring -------------------------------------------------------------------------------


def _resolved(settings: ProfilerSettings, device: torch.device) -> ProfilerSettings:
    cuda = device.type == "cuda"
    batches = settings.batch_sizes or (GPU_BATCH_SIZES if cuda else CPU_BATCH_SIZES)
    prefill = settings.prefill_tokens or (GPU_PREFILL_TOKENS if cuda else CPU_PREFILL_TOKENS)
    loads = settings.load_ranks or settings.tiers
    gpu_type = settings.gpu_type or default_gpu_type(device)
    resolved = replace(settings, batch_sizes=batches, prefill_tokens=prefill, load_ranks=loads,
                       gpu_type=gpu_type)
    resolved.validate()
    if cuda == gpu_type.upper().startswith("CPU"):
        where = "a CUDA GPU" if cuda else "the CPU"
        raise ConfigError(
            f"--gpu-type: '{gpu_type}' does not name {where} this runs on; CPU profiles are "
            "keyed 'CPU...' and GPU ones by the GPU (for example H100-80GB)")
    return resolved


@contextmanager
def _torch_state(seed: int, threads: int | None) -> Iterator[None]:
    """Seeded torch RNG and the thread count for the measurement; the caller's restored."""
    state = torch.random.get_rng_state()
    before = torch.get_num_threads()
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
        torch.set_num_threads(before)


Key = tuple[Kind, Variant, int, int]
"""A measured point: kind, variant, tier (0 for loads) and size (batch, tokens or rank)."""

#: A raw median slower than its neighbour with more work (higher tier, batch, tokens or rank)
#: by more than this is counted as an inversion in the provenance (noise, or a kernel effect
#: such as a rank-8 GEMM slower than a rank-16 one on some CPUs); the fit evens them out.
INVERSION_TOLERANCE = 0.03


class _Measurer:
    """Measures points on one bench, keeps the best median per point, scales by depth.

    Interference on a shared machine only ever adds time, so when every point is measured
    more than once (``passes``) the lower median is kept.
    """

    def __init__(self, settings: ProfilerSettings, device: torch.device, max_batch: int,
                 max_prefill: int, progress: Callable[[str], None] | None) -> None:
        self.settings = settings
        self.timer = _Timer(device, settings.warmup, settings.repeats, settings.min_sample_ms,
                            settings.cuda_graphs, settings.cpu_clock)
        self.bench = _Bench(settings, device, max_batch, max_prefill, self.timer)
        self.scale = settings.base_model.num_layers / settings.layers
        self.progress = progress
        self.timed: dict[Key, tuple[float, float, int]] = {}
        self.counts: dict[Key, int] = {}
        self.rechecked = 0
        self.heads: dict[tuple[int, int], float] = {}
        self._padded: dict[int, dict[tuple[int, TargetModule], tuple[Tensor, Tensor]]] = {}
        self._grouped: dict[int, dict[tuple[int, TargetModule, int], tuple[Tensor, Tensor]]] = {}

    def say(self, line: str) -> None:
        logger.info("%s", line)
        if self.progress is not None:
            self.progress(line)

    def _keep(self, key: Key, timed: tuple[float, float, int]) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        if key not in self.timed or timed[0] < self.timed[key][0]:
            self.timed[key] = timed

    def head_key(self, kind: Kind, size: int) -> tuple[int, int] | None:
        """(tokens embedded, rows through the LM head) of a point; None for loads."""
        if kind == "decode":
            return (size, size)
        if kind == "prefill":
            return (size, math.ceil(size / self.settings.prefill_sequence_tokens))
        return None

    def time_head(self, key: tuple[int, int], again: bool = False) -> None:
        if key in self.heads and not again:
            return
        ms = self.bench.time_head(*key)
        self.heads[key] = min(ms, self.heads.get(key, math.inf))

    def measure_points(self, points: Sequence[Key],
                       compositions: Mapping[int, Sequence[int]] | None = None) -> None:
        """Measure decode and prefill ``points`` in the order given.

        Each tier's LoRA buffers are built on first use and kept, so callers can interleave
        tiers (slow drifts in background load then hit every tier alike). ``compositions``
        gives tokens per adapter for a decode batch size (balanced when absent).
        """
        slots = self.settings.lora_slots
        for key in points:
            kind, variant, tier, size = key
            if tier not in self._padded:
                self._padded[tier] = self.bench.padded_buffers(tier)
            if kind == "decode":
                counts = (compositions or {}).get(size) or balanced_counts(size, slots)
                if variant == "grouped":
                    if tier not in self._grouped:
                        self._grouped[tier] = self.bench.grouped_buffers(tier)
                    hook = self.bench.grouped_hook(tier, self._grouped[tier], counts)
                else:
                    hook = self.bench.padded_hook(self._padded[tier], counts)
                self._keep(key, self.bench.time_decode(size, hook))
            else:
                sequence = self.settings.prefill_sequence_tokens
                lengths = [min(sequence, size - s) for s in range(0, size, sequence)]
                counts = _sequences_to_adapters(lengths, slots)
                hook = self.bench.padded_hook(self._padded[tier], counts)
                self._keep(key, self.bench.time_prefill(size, hook))
            head = self.head_key(kind, size)
            if head is not None:
                self.time_head(head)

    def by_tier(self, kind: Kind, size: int, tiers: Sequence[int]) -> str:
        """A progress line's figures: the padded point of ``size`` at every tier."""
        return ", ".join(f"tier {t} {self.model_ms((kind, 'padded', t, size)):.2f} ms"
                         for t in tiers)

    def measure_load(self, rank: int) -> None:
        """Time loading one rank-``rank`` adapter."""
        self._keep(("load", "copy", 0, rank), self.bench.time_load(rank))

    def model_ms(self, key: Key) -> float:
        """Whole-model latency of a measured point: layers scaled by depth, plus the head."""
        head = self.head_key(key[0], key[3])
        return self.timed[key][0] * self.scale + (self.heads[head] if head else 0.0)

    def row(self, key: Key) -> Measurement:
        """The CSV row of a measured point."""
        layers_ms, spread, calls = self.timed[key]
        head = self.head_key(key[0], key[3])
        return Measurement(key[0], key[1], key[2], key[3], layers_ms,
                           self.heads[head] if head else 0.0, self.model_ms(key), spread,
                           self.settings.repeats, calls, self.counts[key])

    def recheck(self, rounds: int,
                compositions: Mapping[int, Sequence[int]] | None = None) -> None:
        """Measure inverted points again, up to ``rounds`` times, keeping the lower median.

        ``compositions`` is as in :meth:`measure_points`, so a point is timed as it was.
        """
        for round_ in range(rounds):
            points, heads = self.inversions()
            if not points and not heads:
                return
            self.say(f"recheck {round_ + 1}/{rounds}: {len(points)} point(s) and "
                     f"{len(heads)} LM-head timing(s) slower than a neighbour with more work")
            for head in heads:
                self.time_head(head, again=True)
            for key in points:
                if key[0] == "load":
                    self.measure_load(key[3])
                else:
                    self.measure_points([key], compositions)
            self.rechecked += len(points)

    def inversions(self) -> tuple[list[Key], list[tuple[int, int]]]:
        """Points, and LM-head timings, slower than a neighbour that does more work.

        Interference only adds time, so of an inverted pair the slower one is listed.
        """
        limit = 1.0 + INVERSION_TOLERANCE
        suspects: set[Key] = set()
        series: dict[tuple[Kind, Variant], dict[int, dict[int, float]]] = {}
        for key, (ms, _, _) in self.timed.items():
            series.setdefault((key[0], key[1]), {}).setdefault(key[2], {})[key[3]] = ms
        for (kind, variant), by_tier in series.items():
            tiers = sorted(by_tier)
            for tier in tiers:
                sizes = sorted(by_tier[tier])
                for small, large in itertools.pairwise(sizes):
                    if by_tier[tier][small] > limit * by_tier[tier][large]:
                        suspects.add((kind, variant, tier, small))
            for low, high in itertools.pairwise(tiers):
                for size, ms in by_tier[low].items():
                    if size in by_tier[high] and ms > limit * by_tier[high][size]:
                        suspects.add((kind, variant, low, size))
        slow_heads = sorted({a for a in self.heads for b in self.heads
                             if a != b and a[0] <= b[0] and a[1] <= b[1]
                             and self.heads[a] > limit * self.heads[b]})
        return sorted(suspects), slow_heads


def _sequences_to_adapters(lengths: Sequence[int], slots: int) -> list[int]:
    """Tokens per adapter when consecutive sequences share adapters in contiguous blocks."""
    used = min(len(lengths), slots)
    counts = [0] * used
    for index, length in enumerate(lengths):
        counts[index * used // len(lengths)] += length
    return counts


def measure(
    settings: ProfilerSettings, progress: Callable[[str], None] | None = None
) -> ProfileRun:
    """Measure a profile (see the module docstring for what is timed).

    Every point is measured ``passes`` times (full sweeps, so a burst of interference hits
    one sweep) and the lowest median kept. Tiers are innermost, so every tier of a batch
    size is timed back to back.

    Parameters
    ----------
    settings : ProfilerSettings
    progress : callable, optional
        Called with one line per measured batch size or token count (all tiers).

    Returns
    -------
    ProfileRun
        The profile (``source: measured``) and every raw measurement.

    Raises
    ------
    ConfigError
        A bad setting, or a device that is not there.
    """
    settings.validate()
    device = resolve_device(settings.device)
    settings = _resolved(settings, device)
    assert settings.batch_sizes and settings.prefill_tokens and settings.load_ranks
    began = time.perf_counter()
    variants: tuple[Variant, ...] = ("padded", "grouped") if settings.grouped else ("padded",)
    with _torch_state(settings.seed, settings.threads):
        measurer = _Measurer(settings, device, max(settings.batch_sizes),
                             max(settings.prefill_tokens), progress)
        for sweep in range(settings.passes):
            # Tiers innermost: every tier of a batch size is timed within moments of the
            # others, so drifting background load cannot fake (or hide) a tier slowdown.
            for batch in settings.batch_sizes:
                measurer.measure_points([("decode", v, t, batch) for t in settings.tiers
                                         for v in variants])
                measurer.say(f"pass {sweep + 1}/{settings.passes} decode b{batch}: "
                             + measurer.by_tier("decode", batch, settings.tiers))
            for tokens in settings.prefill_tokens:
                measurer.measure_points([("prefill", "padded", t, tokens)
                                         for t in settings.tiers])
                measurer.say(f"pass {sweep + 1}/{settings.passes} prefill {tokens} tokens: "
                             + measurer.by_tier("prefill", tokens, settings.tiers))
            for rank in settings.load_ranks:
                measurer.measure_load(rank)
        measurer.recheck(settings.rechecks)
        rows = [measurer.row(key) for key in measurer.timed]
        measurer.say("adapter loads: " + ", ".join(
            f"r{r.size} {r.model_ms:.2f} ms" for r in rows if r.kind == "load"))
        profile = build_profile(settings, rows, _provenance(
            settings, device, measurer, time.perf_counter() - began))
    return ProfileRun(profile, tuple(rows))


def build_profile(settings: ProfilerSettings, rows: Sequence[Measurement],
                  provenance: dict[str, str]) -> Profile:
    """The profile of measured ``rows``: padded decode and prefill, fitted monotone."""
    assert settings.batch_sizes and settings.prefill_tokens and settings.gpu_type

    def medians(kind: Kind, grid: Sequence[int], tier: int) -> list[float]:
        found = {r.size: r.model_ms for r in rows
                 if r.kind == kind and r.variant == "padded" and r.tier == tier}
        return [found[size] for size in grid]

    decode = isotonic_table({t: medians("decode", settings.batch_sizes, t)
                             for t in settings.tiers})
    prefill = isotonic_table({t: medians("prefill", settings.prefill_tokens, t)
                              for t in settings.tiers})
    loads = sorted((r.size, r.model_ms) for r in rows if r.kind == "load")
    load_fit = isotonic([ms for _, ms in loads])
    tiers = {
        tier: TierProfile(decode_ms=tuple(round(v, 4) for v in decode[tier]),
                          prefill_ms=tuple(round(v, 4) for v in prefill[tier]))
        for tier in settings.tiers
    }
    return Profile(
        gpu_type=settings.gpu_type,
        base_model=settings.base_model.name,
        source="measured",
        description=_description(settings, provenance),
        provenance=provenance,
        lora_slots=settings.lora_slots,
        context_tokens=settings.context_tokens,
        lora_target_modules=settings.target_modules,
        batch_sizes=settings.batch_sizes,
        prefill_tokens=settings.prefill_tokens,
        tiers=tiers,
        adapter_load_ms={rank: round(ms, 4) for (rank, _), ms in zip(loads, load_fit,
                                                                        strict=True)},
    )


def _scaling(settings: ProfilerSettings) -> str:
    layers = settings.layers
    return (f"whole-model ms = {settings.base_model.num_layers} / {layers} x median of the "
            f"{layers} measured decoder layer{'s' if layers > 1 else ''} + median of embedding, "
            "final norm, LM head and argmax (measured once per batch or token count); adapter "
            f"load = {settings.base_model.num_layers} / {layers} x the measured layers' copy")


def _description(settings: ProfilerSettings, provenance: dict[str, str]) -> str:
    return (
        f"Measured with `loraserve profile` on {provenance['device_name']} "
        f"({provenance['device']}, {provenance['dtype']}, torch {provenance['torch']}): "
        f"{settings.layers} of {settings.base_model.num_layers} decoder layers of "
        f"{settings.base_model.name} at real shapes, random weights. Decode: b sequences, "
        f"{settings.context_tokens} tokens of KV cache each, fused qkv/gate_up GEMMs, RoPE, "
        "grouped-query attention; LoRA on "
        f"{', '.join(settings.target_modules)} from {settings.lora_slots} stacked slots padded "
        f"to the tier (vLLM), min(b, {settings.lora_slots}) distinct adapters, "
        f"{provenance['lora_kernel']}. Prefill: sequences of "
        f"{settings.prefill_sequence_tokens} tokens, one adapter each, causal attention. "
        f"Median of {settings.repeats} samples after {settings.warmup} warm-ups "
        f"({provenance['timer']}), the lowest of {settings.passes} pass(es), tiers "
        f"interleaved. Scaling: {provenance['scaling']}. "
        "Values are the medians made non-decreasing in batch, tokens and tier (least-squares "
        "isotonic fit); the raw medians, including the unpadded rank-grouped (S-LoRA) decode, "
        "are in the CSV beside this file."
    )


def _count_inversions(measurer: _Measurer) -> int:
    points, heads = measurer.inversions()
    return len(points) + len(heads)


def _timer_text(settings: ProfilerSettings, cuda: bool, graph: str) -> str:
    if cuda:
        return f"CUDA events, CUDA graphs: {graph}"
    if settings.cpu_clock == "process":
        return ("time.process_time (CPU time of the process on one thread: the latency on an "
                "unshared core)")
    return "time.perf_counter"


def _provenance(settings: ProfilerSettings, device: torch.device, measurer: _Measurer,
                seconds: float) -> dict[str, str]:
    cuda = device.type == "cuda"
    graph = measurer.timer.graph_note if cuda and settings.cuda_graphs else "not used"
    return {
        "generator": "loraserve.profiles.profiler",
        "command": settings.command or "loraserve profile",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device.type,
        "device_name": device_name(device),
        "driver": _driver_version(device),
        "cuda": str(torch.version.cuda) if cuda else "n/a (CPU)",
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": str(torch.get_num_threads()),
        "dtype": str(measurer.bench.dtype).removeprefix("torch."),
        "timer": _timer_text(settings, cuda, graph),
        "lora_kernel": measurer.bench.kernel,
        "layers_measured": str(settings.layers),
        "scaling": _scaling(settings),
        "repeats": str(settings.repeats),
        "passes": str(settings.passes),
        "rechecks": str(settings.rechecks),
        "inversions": (f"{_count_inversions(measurer)} raw median(s) slower than "
                       f"a neighbour with more work by over {INVERSION_TOLERANCE:.0%} after "
                       f"{measurer.rechecked} re-measurement(s) (kept as measured; the "
                       "monotone fit evens them out)"),
        "warmup": str(settings.warmup),
        "min_sample_ms": f"{settings.min_sample_ms:g}",
        "prefill_sequence_tokens": str(settings.prefill_sequence_tokens),
        "grouped_ranks": "active adapters' ranks cycle down from the tier over vLLM's ranks",
        "seed": str(settings.seed),
        "base_model_spec": json.dumps(settings.base_model.model_dump(mode="json"),
                                      sort_keys=True),
        "seconds": f"{seconds:.1f}",
    }


# ---- checking --------------------------------------------------------------------------------


def held_out_sizes(grid: Sequence[int]) -> list[int]:
    """A size strictly between each pair of neighbouring grid points (geometric middle)."""
    sizes = []
    for low, high in itertools.pairwise(grid):
        if high - low < 2:
            continue
        middle = min(high - 1, max(low + 1, round(math.sqrt(low * high))))
        sizes.append(middle)
    return sizes


def settings_from_profile(profile: Profile, **overrides: object) -> ProfilerSettings:
    """The settings a measured profile was made with (from its fields and provenance)."""
    prov = profile.provenance
    if "base_model_spec" in prov:
        spec = BaseModelSpec.model_validate(json.loads(prov["base_model_spec"]))
    elif profile.base_model in PRESETS:
        spec = PRESETS[profile.base_model]
    else:
        raise ConfigError(f"profile {profile.gpu_type}/{profile.base_model}: its provenance has "
                          "no base_model_spec and the model is not a preset")
    values: dict[str, object] = {
        "base_model": spec,
        "tiers": profile.tier_values,
        "batch_sizes": profile.batch_sizes,
        "prefill_tokens": profile.prefill_tokens,
        "context_tokens": profile.context_tokens,
        "lora_slots": profile.lora_slots,
        "target_modules": profile.lora_target_modules,
        "layers": int(prov.get("layers_measured", "2")),
        "repeats": int(prov.get("repeats", "10")),
        "warmup": int(prov.get("warmup", "3")),
        "min_sample_ms": float(prov.get("min_sample_ms", "1")),
        "prefill_sequence_tokens": int(prov.get("prefill_sequence_tokens", "512")),
        "passes": int(prov.get("passes", "1")),
        "rechecks": int(prov.get("rechecks", "0")),
        "threads": int(prov["threads"]) if prov.get("device") == "cpu" and "threads" in prov
        else None,
        "cpu_clock": "process" if prov.get("timer", "").startswith("time.process_time")
        else "wall",
        "gpu_type": profile.gpu_type,
        "device": "cuda" if prov.get("device") == "cuda" else "cpu",
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ProfilerSettings(**values)  # type: ignore[arg-type]


def check_profile(
    profile: Profile,
    *,
    tiers: Sequence[int] | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    threads: int | None = None,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Re-measure held-out points and compare them with the profile's interpolation.

    Held out: for every tier, a batch size between each pair of neighbouring grid sizes with
    its sequences spread unevenly (at random, seeded) over ``min(b, lora_slots)`` adapters,
    and a token count between each pair of prefill grid points. The measurement is the same
    as the profile's (same layers, scaling and device); the prediction is
    :meth:`Profile.decode_ms` / :meth:`Profile.prefill_ms`. The grid points are re-measured
    in the same sweep, which separates the two sources of error: how far the machine has
    drifted since the profile was measured (``grid``), and how well the interpolation of
    today's grid predicts today's held-out points (``session_error``).

    Raises
    ------
    ConfigError
        When the profile was not measured on this kind of device.
    """
    if profile.source != "measured":
        raise ConfigError(f"--check: profile {profile.gpu_type}/{profile.base_model} is "
                          f"{profile.source}, not measured; check a file `loraserve profile` "
                          "wrote")
    settings = settings_from_profile(profile, repeats=repeats, warmup=warmup, seed=seed,
                                     threads=threads, device="auto")
    device = resolve_device("auto")
    here = default_gpu_type(device)
    same = (here == profile.gpu_type if device.type == "cuda"
            else profile.gpu_type.upper().startswith("CPU"))
    if not same:
        raise ConfigError(f"--check: the profile was measured on {profile.gpu_type}; this "
                          f"machine is {here}; check it where it was measured")
    settings = replace(settings, device=device.type)  # type: ignore[arg-type]
    settings.validate()
    checked = tuple(tiers) if tiers else profile.tier_values
    unknown = [t for t in checked if t not in profile.tiers]
    if unknown:
        raise ConfigError(f"--tiers: the profile has no tier {unknown[0]}; it has "
                          f"{list(profile.tier_values)}")
    rng = np.random.default_rng(seed)
    batches = held_out_sizes(profile.batch_sizes)
    tokens_grid = held_out_sizes(profile.prefill_tokens)
    compositions = {b: random_counts(b, settings.lora_slots, rng) for b in batches}
    all_batches = sorted({*batches, *profile.batch_sizes})
    all_tokens = sorted({*tokens_grid, *profile.prefill_tokens})
    with _torch_state(seed, settings.threads):
        measurer = _Measurer(settings, device, max(all_batches), max(all_tokens), progress)
        for sweep in range(settings.passes):
            # Held-out and grid sizes interleaved, tiers innermost, as the profile was made.
            for batch in all_batches:
                measurer.measure_points([("decode", "padded", t, batch) for t in checked],
                                        compositions)
                measurer.say(f"pass {sweep + 1}/{settings.passes} decode b{batch}"
                             f"{' (held out)' if batch in compositions else ''}: "
                             + measurer.by_tier("decode", batch, checked))
            for tokens in all_tokens:
                measurer.measure_points([("prefill", "padded", t, tokens) for t in checked])
        measurer.recheck(settings.rechecks, compositions)
        session = build_profile(
            replace(settings, tiers=checked, batch_sizes=profile.batch_sizes,
                    prefill_tokens=profile.prefill_tokens, gpu_type=profile.gpu_type),
            [measurer.row(key) for key in measurer.timed if key[3] not in compositions
             or key[0] != "decode"],
            {"device_name": device_name(device), "device": device.type, "dtype": "",
             "torch": str(torch.__version__), "lora_kernel": measurer.bench.kernel,
             "timer": "", "scaling": ""})
    points, grid = [], []
    for key in measurer.timed:
        kind, _, tier, size = key
        measured = measurer.model_ms(key)
        if kind == "decode":
            stored, now = profile.decode_ms(tier, size), session.decode_ms(tier, size)
        else:
            stored, now = profile.prefill_ms(tier, size), session.prefill_ms(tier, size)
        held = size in compositions if kind == "decode" else size in tokens_grid
        if held:
            points.append(CheckPoint(kind, tier, size, tuple(compositions.get(size, ())),
                                     measured, stored, now))
        else:
            grid.append(CheckPoint(kind, tier, size, (), measured, stored))
    return CheckReport(tuple(points), tuple(grid), session)


# ---- plotting --------------------------------------------------------------------------------


def plot_measurements(rows: Sequence[Measurement], title: str, path: str | Path) -> Path:
    """Step latency vs batch size, one line per tier, padded (solid) vs grouped (dashed).

    A second panel shows what padding costs: padded over grouped step latency. Written
    atomically as PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    decode = [r for r in rows if r.kind == "decode"]
    if not decode:
        raise ConfigError(f"{path}: no decode measurements to plot")
    tiers = sorted({r.tier for r in decode})
    figure, (latency, ratio) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(tiers)))
    for tier, colour in zip(tiers, colours, strict=True):
        series = {}
        for variant, style in (("padded", "-"), ("grouped", "--")):
            points = sorted((r.size, r.model_ms) for r in decode
                            if r.tier == tier and r.variant == variant)
            if not points:
                continue
            series[variant] = dict(points)
            label = f"tier {tier} {variant}"
            latency.plot(*zip(*points, strict=True), style, color=colour, marker="o",
                         markersize=3, label=label)
        if "padded" in series and "grouped" in series:
            sizes = sorted(set(series["padded"]) & set(series["grouped"]))
            ratio.plot(sizes, [series["padded"][s] / series["grouped"][s] for s in sizes],
                       color=colour, marker="o", markersize=3, label=f"tier {tier}")
    for axis in (latency, ratio):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size (sequences)")
        axis.grid(True, alpha=0.3)
    latency.set_ylabel("decode step, whole model (ms)")
    latency.set_title("padded to the tier (solid) vs rank-grouped (dashed)")
    latency.legend(fontsize=7, ncol=2)
    ratio.set_ylabel("padded / grouped step latency")
    ratio.set_title("what padding costs")
    ratio.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    os.replace(tmp, path)
    return path


def plot_profile(profile_path: str | Path, out: str | Path | None = None) -> Path:
    """Plot the raw measurements beside a profile file; returns the PNG's path."""
    profile_path = Path(profile_path)
    profile = Profile.load(profile_path)
    rows = read_measurements(raw_csv_path(profile_path))
    target = Path(out) if out is not None else profile_path.with_suffix(".png")
    device = profile.provenance.get("device_name", profile.gpu_type)
    return plot_measurements(rows, f"{profile.base_model} on {profile.gpu_type} ({device})",
                             target)


__all__ = [
    "CSV_COLUMNS",
    "CheckPoint",
    "CheckReport",
    "Measurement",
    "ProfileRun",
    "ProfilerSettings",
    "RankGroup",
    "Segments",
    "balanced_counts",
    "build_profile",
    "check_profile",
    "decode_attention",
    "gpu_type_from_name",
    "grouped_lora",
    "grouped_mm",
    "held_out_sizes",
    "isotonic",
    "isotonic_table",
    "load_model_spec",
    "looped_mm",
    "measure",
    "padded_lora",
    "plot_measurements",
    "plot_profile",
    "prefill_attention",
    "random_counts",
    "read_measurements",
    "resolve_device",
    "settings_from_profile",
]

