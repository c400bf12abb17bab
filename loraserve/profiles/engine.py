"""Measuring a cost profile on the real vLLM engine (``loraserve profile --engine vllm``).

The torch profiler (:mod:`loraserve.profiles.profiler`) times layers written here; this one
times vLLM itself: its scheduler, its LoRA kernels padded to ``--max-lora-rank``, sampling
and output processing, on a model of real shapes with random weights
(``load_format="dummy"``: nothing is downloaded). vLLM pins its own torch, so it lives in a
separate environment: the timing runs there as a subprocess (``_vllm_probe.py``, a standalone
script), and this module, which imports neither torch nor vLLM, turns its samples into a
profile in the stable format plus the raw CSV beside it.

What the probe times, per tier (see ``_vllm_probe.py``): decode steps at each batch size
(``LLMEngine.step()`` with every sequence decoding), the step that prefills one prompt of
each token count, and ``add_lora`` per adapter rank. With ``serve`` on, it then starts the
OpenAI server on the same model and adapters and sends sequential streamed completions:
what a request takes beyond the engine's own steps (HTTP, request processing, streaming) is
stored as the profile's ``request_overhead_ms``, which the simulator adds to every request's
time to first token.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import logging
import math
import os
import shlex
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from loraserve.models import BaseModelSpec, ConfigError
from loraserve.models.base_model import TargetModule
from loraserve.models.config import ADMISSIBLE_RANKS
from loraserve.models.io import write_atomic
from loraserve.profiles.fitting import gpu_type_from_name, isotonic, isotonic_table
from loraserve.profiles.schema import Profile, TierProfile

logger = logging.getLogger(__name__)

_PROBE = Path(__file__).with_name("_vllm_probe.py")

#: Columns of the raw CSV written beside an engine profile.
ENGINE_CSV_COLUMNS = ("kind", "tier", "size", "median_ms", "p10_ms", "p90_ms", "spread",
                      "samples")

#: Target modules of the adapters by default (attention only: what the local fleet's
#: adapters modify; pass all seven for a GPU profile of a real deployment).
ATTENTION_MODULES: tuple[TargetModule, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class EngineSettings:
    """What to time on the vLLM engine, and how.

    Parameters
    ----------
    base_model : BaseModelSpec
        Shapes of the model (built with random weights).
    python : Path
        The Python of the environment that has vLLM.
    tiers : tuple of int
        ``--max-lora-rank`` values; one engine per tier.
    batch_sizes, prefill_tokens, load_ranks : tuple of int
        Decode batches, prefill token counts (each at most ``max_num_batched_tokens``) and
        adapter ranks whose load is timed.
    target_modules : tuple of str
        Modules the adapters modify.
    max_loras, max_num_seqs, max_num_batched_tokens, max_model_len : int
        The engine's limits (as the workers run them).
    context_tokens : int
        Prompt tokens of each decoding sequence (its KV cache when the steps are timed).
    steps : int
        Decode steps timed per batch size.
    repeats, warmup : int
        Prefill and load samples per point, and untimed runs before them.
    dtype : str
        vLLM ``--dtype``.
    serve : bool
        Also time sequential requests through the OpenAI server (``request_overhead_ms``).
    serve_requests : int
        Requests sent to the server per prompt length.
    cpus : str, optional
        CPU list (``taskset -c``) for the engine's processes.
    gpu_type : str, optional
        Profile key; from the device when omitted (``CPU`` on a CPU).
    seed : int
    command : str
        The command line, for the provenance.
    """

    base_model: BaseModelSpec
    python: Path
    tiers: tuple[int, ...] = (8, 16, 32, 64)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    prefill_tokens: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    load_ranks: tuple[int, ...] | None = None
    target_modules: tuple[TargetModule, ...] = ATTENTION_MODULES
    max_loras: int = 4
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512
    max_model_len: int = 512
    context_tokens: int = 64
    steps: int = 20
    repeats: int = 5
    warmup: int = 3
    dtype: str = "float32"
    serve: bool = True
    serve_requests: int = 20
    cpus: str | None = None
    gpu_type: str | None = None
    seed: int = 0
    command: str = ""
    engine_args: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that cannot be measured."""
        for name in ("tiers", "load_ranks"):
            values = getattr(self, name) or ()
            bad = [v for v in values if v not in ADMISSIBLE_RANKS]
            if bad:
                raise ConfigError(f"--{name.replace('_', '-')}: {bad[0]} is not a rank vLLM "
                                  f"accepts; use {', '.join(map(str, ADMISSIBLE_RANKS))}")
        for name in ("batch_sizes", "prefill_tokens"):
            grid = getattr(self, name)
            if len(grid) < 2 or any(b <= a for a, b in itertools.pairwise(grid)):
                raise ConfigError(f"--{name.replace('_', '-')}: give at least two increasing "
                                  "values")
        if max(self.batch_sizes) > self.max_num_seqs:
            raise ConfigError(f"--batch-sizes: {max(self.batch_sizes)} exceeds --max-num-seqs "
                              f"{self.max_num_seqs}")
        if max(self.prefill_tokens) > min(self.max_num_batched_tokens, self.max_model_len - 1):
            raise ConfigError(f"--prefill-tokens: {max(self.prefill_tokens)} exceeds what one "
                              f"step prefills (--max-num-batched-tokens "
                              f"{self.max_num_batched_tokens}, --max-model-len "
                              f"{self.max_model_len})")
        if self.context_tokens + self.steps + self.warmup + 4 > self.max_model_len:
            raise ConfigError("--context-tokens: the decoding sequences outgrow --max-model-len; "
                              "lower it or raise --max-model-len")
        if not self.python.exists():
            raise ConfigError(f"--vllm-python: {self.python} does not exist; point it (or "
                              "LORASERVE_VLLM_PYTHON) at the Python of an environment with vLLM")


@dataclass(frozen=True)
class EnginePoint:
    """The samples of one timed point (a CSV row once summarised)."""

    kind: str
    tier: int
    size: int
    samples: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        """Median of the samples."""
        return float(statistics.median(self.samples))

    def row(self) -> dict[str, str]:
        """The CSV row: median, p10, p90, spread and sample count."""
        values = np.asarray(self.samples, dtype=float)
        p10, p90 = (float(np.percentile(values, q)) for q in (10, 90))
        median = self.median_ms
        return {"kind": self.kind, "tier": str(self.tier), "size": str(self.size),
                "median_ms": f"{median:.6g}", "p10_ms": f"{p10:.6g}", "p90_ms": f"{p90:.6g}",
                "spread": f"{(p90 - p10) / median if median > 0 else 0.0:.4f}",
                "samples": str(len(self.samples))}


@dataclass(frozen=True)
class EngineRun:
    """An engine profile and the samples behind it."""

    profile: Profile
    points: tuple[EnginePoint, ...]

    def save(self, path: str | Path) -> Path:
        """Write the profile and its raw CSV (``.csv`` beside it); return the CSV's path."""
        path = Path(path)
        raw = path.with_suffix(".csv")
        profile = self.profile.model_copy(
            update={"provenance": {**self.profile.provenance, "raw_measurements": raw.name}})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=ENGINE_CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for point in self.points:
            writer.writerow(point.row())
        write_atomic(raw, buffer.getvalue())
        write_atomic(path, profile.to_yaml())
        return raw


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def engine_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a vLLM process here: on a CPU, 1 GiB of KV cache, one thread."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def _pinned(command: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else command


def _probe_spec(settings: EngineSettings, work: Path) -> dict[str, Any]:
    spec = settings.base_model.model_dump(mode="json")
    spec.update({
        "tiers": list(settings.tiers), "batch_sizes": list(settings.batch_sizes),
        "prefill_tokens": list(settings.prefill_tokens),
        "load_ranks": list(settings.load_ranks or settings.tiers),
        "target_modules": list(settings.target_modules), "max_loras": settings.max_loras,
        "max_model_len": settings.max_model_len, "max_num_seqs": settings.max_num_seqs,
        "max_num_batched_tokens": settings.max_num_batched_tokens, "dtype": settings.dtype,
        "seed": settings.seed, "context_tokens": settings.context_tokens,
        "steps": settings.steps, "warmup": settings.warmup, "repeats": settings.repeats,
        "engine_args": settings.engine_args, "work_dir": str(work),
    })
    return spec


def run_probe(settings: EngineSettings, work: Path,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the probe in the vLLM environment; its JSON answer (samples and versions)."""
    spec_path, out_path = work / "spec.json", work / "samples.json"
    spec_path.write_text(json.dumps(_probe_spec(settings, work)))
    command = _pinned([str(settings.python), str(_PROBE), str(spec_path), str(out_path)],
                      settings.cpus)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=engine_env()) as process:
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:
            line = line.rstrip()
            tail = [*tail[-40:], line]
            if progress is not None and line.startswith("tier "):
                progress(line)
        code = process.wait()
    if code != 0 or not out_path.exists():
        raise ConfigError("the vLLM probe failed (exit code "
                          f"{code}); its last lines:\n" + "\n".join(tail[-15:]))
    answer: dict[str, Any] = json.loads(out_path.read_text())
    return answer


@dataclass(frozen=True)
class ServedRequest:
    """One sequential request through the server: its prompt, TTFT and end-to-end time."""

    prompt_tokens: int
    output_tokens: int
    ttft_ms: float
    e2e_ms: float


def prompt_ids(length: int, salt: int, vocab: int) -> list[int]:
    """A prompt of ``length`` token ids, distinct per ``salt`` (no prefix reuse)."""
    return [3 + (salt * 7919 + i * 31) % (vocab - 3) for i in range(length)]


def _stream_once(client: Any, url: str, model: str, prompt: list[int],
                 output_tokens: int) -> tuple[float, float]:
    body = {"model": model, "prompt": prompt, "max_tokens": output_tokens,
            "min_tokens": output_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True}
    began = time.perf_counter()
    first = math.nan
    with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise ConfigError(f"the vLLM server answered {response.status_code}: "
                              f"{response.read()[:300]!r}")
        for line in response.iter_lines():
            if line.startswith("data:") and '"choices"' in line and math.isnan(first):
                first = time.perf_counter()
    end = time.perf_counter()
    return 1e3 * (first - began), 1e3 * (end - began)


def serve_requests(settings: EngineSettings, work: Path, tier: int,
                   prompts: Sequence[int], output_tokens: int = 8,
                   progress: Callable[[str], None] | None = None) -> list[ServedRequest]:
    """Start the OpenAI server on the probe's model at ``tier`` and time sequential requests.

    Each prompt length gets ``settings.serve_requests`` streamed completions (after two
    untimed ones), one at a time, with an adapter of the tier's rank.
    """
    import httpx

    port = _free_port()
    adapter = work / f"r{tier}-0"
    command = _pinned([
        str(settings.python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(work / "model"), "--load-format", "dummy", "--skip-tokenizer-init",
        "--served-model-name", "probe", "--host", "127.0.0.1", "--port", str(port),
        "--enable-lora", "--max-lora-rank", str(tier), "--max-loras", str(settings.max_loras),
        "--max-model-len", str(settings.max_model_len),
        "--max-num-seqs", str(settings.max_num_seqs),
        "--max-num-batched-tokens", str(settings.max_num_batched_tokens),
        "--dtype", settings.dtype, "--lora-modules", f"a0={adapter}",
        "--no-enable-prefix-caching", "--seed", str(settings.seed),
    ], settings.cpus)
    log = (work / "server.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               env=engine_env(), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    out: list[ServedRequest] = []
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise ConfigError(f"the vLLM server exited with code {process.returncode}; "
                                  f"see {work / 'server.log'}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError("the vLLM server did not become healthy in 600 s")
            time.sleep(0.5)
        vocab = settings.base_model.vocab_size
        with httpx.Client(timeout=120) as client:
            counter = 0
            for tokens in prompts:
                for k in range(settings.serve_requests + 2):
                    counter += 1
                    prompt = prompt_ids(tokens, counter, vocab)
                    ttft, e2e = _stream_once(client, url, "a0", prompt, output_tokens)
                    if k >= 2:
                        out.append(ServedRequest(tokens, output_tokens, ttft, e2e))
                if progress is not None and tokens > 0:
                    mine = [r for r in out if r.prompt_tokens == tokens]
                    progress(f"server tier {tier} prompt {tokens}: TTFT "
                             f"{statistics.median(r.ttft_ms for r in mine):.2f} ms, E2E "
                             f"{statistics.median(r.e2e_ms for r in mine):.2f} ms")
            # Concurrent streams: what serving adds to a decode step at batch > 1.
            batch = min(settings.max_loras, settings.max_num_seqs)
            long_output = 24
            for round_ in range(3):
                prompts_ = [prompt_ids(16, 10_000 + round_ * 100 + k, vocab)
                            for k in range(batch)]
                with ThreadPoolExecutor(batch) as pool:
                    timed = list(pool.map(
                        lambda p: _stream_once(client, url, "a0", p, long_output), prompts_))
                if round_:
                    out += [ServedRequest(-batch, long_output, t, e) for t, e in timed]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()
    return out


@dataclass(frozen=True)
class ServingOverhead:
    """What serving adds to the engine's own steps (ms).

    Attributes
    ----------
    request_ms : float
        Per request, before its first token reaches the client.
    step_ms, token_ms : float
        Per decode step, and per running sequence in it.
    """

    request_ms: float
    step_ms: float
    token_ms: float


def serving_overhead(profile: Profile, tier: int,
                     served: Sequence[ServedRequest]) -> ServingOverhead:
    """Fit what serving adds, from requests timed through the server.

    Per request: the median over sequential requests of TTFT less the profile's prefill step
    for the prompt. Per step and per sequence: the median TPOT of sequential requests (batch
    1) and of ``B`` concurrent ones (rows with ``prompt_tokens == -B``), each less the
    engine's decode step at that batch, solved for ``step + B x token``.
    """
    alone = [r for r in served if r.prompt_tokens > 0]
    first = [r.ttft_ms - profile.prefill_ms(tier, r.prompt_tokens) for r in alone]

    def tpot(rows: Sequence[ServedRequest]) -> float:
        return float(statistics.median((r.e2e_ms - r.ttft_ms) / (r.output_tokens - 1)
                                       for r in rows))

    extra_one = tpot([r for r in alone if r.output_tokens > 1]) - profile.decode_ms(tier, 1)
    together = [r for r in served if r.prompt_tokens < 0]
    token = 0.0
    if together:
        batch = -together[0].prompt_tokens
        extra_many = tpot(together) - profile.decode_ms(tier, batch)
        token = max(0.0, (extra_many - extra_one) / (batch - 1))
    step = max(0.0, extra_one - token)
    return ServingOverhead(max(0.0, float(statistics.median(first))), step, token)


def measure_engine(settings: EngineSettings,
                   progress: Callable[[str], None] | None = None) -> EngineRun:
    """Time the vLLM engine per tier and build the profile (see the module's docstring)."""
    settings.validate()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loraserve-engine-") as folder:
        work = Path(folder)
        answer = run_probe(settings, work, progress)
        points = tuple(EnginePoint(r["kind"], int(r["tier"]), int(r["size"]),
                                   tuple(float(v) for v in r["samples"]))
                       for r in answer["rows"])
        versions: dict[str, str] = {k: str(v) for k, v in answer["versions"].items()}
        profile = build_engine_profile(settings, points, versions, started)
        served: list[ServedRequest] = []
        if settings.serve:
            tier = min(settings.tiers)
            prompts = sorted({settings.prefill_tokens[0], settings.prefill_tokens[-1] // 2})
            served = serve_requests(settings, work, tier, prompts, progress=progress)
            fit = serving_overhead(profile, tier, served)
            for kind, rows in (("served_ttft", [(r.prompt_tokens, r.ttft_ms) for r in served]),
                               ("served_e2e", [(r.prompt_tokens, r.e2e_ms) for r in served])):
                for size in sorted({p for p, _ in rows}):
                    points += (EnginePoint(kind, tier, size,
                                           tuple(v for p, v in rows if p == size)),)
            batch = min(settings.max_loras, settings.max_num_seqs)
            provenance = {
                **profile.provenance,
                "serving_overhead": (
                    f"request {fit.request_ms:.3f} ms, step {fit.step_ms:.3f} ms, token "
                    f"{fit.token_ms:.3f} ms: through the OpenAI server at tier {tier} "
                    f"({len(served)} streamed completions: sequential ones with prompts of "
                    f"{'/'.join(map(str, prompts))} tokens and 8 output tokens, and rounds of "
                    f"{batch} concurrent ones with 24; CSV rows served_*, a negative size is "
                    "a concurrent round's batch). Request: TTFT less the engine's prefill "
                    "step; step and token: TPOT less the engine's decode step, at batch 1 and "
                    f"{batch}. It includes HTTP, request processing, output processing and "
                    "streaming, and their competition with the engine for the CPU"),
                "seconds": f"{time.perf_counter() - started:.1f}",
            }
            profile = profile.model_copy(update={
                "request_overhead_ms": round(fit.request_ms, 4),
                "step_overhead_ms": round(fit.step_ms, 4),
                "token_overhead_ms": round(fit.token_ms, 4), "provenance": provenance})
    return EngineRun(profile, points)


def build_engine_profile(settings: EngineSettings, points: Sequence[EnginePoint],
                         versions: dict[str, str], started: float) -> Profile:
    """The profile of the probe's samples: medians, made non-decreasing in size and tier."""
    medians = {(p.kind, p.tier, p.size): p.median_ms for p in points}
    decode = isotonic_table({t: [medians[("decode", t, b)] for b in settings.batch_sizes]
                             for t in settings.tiers})
    prefill = isotonic_table({t: [medians[("prefill", t, n)] for n in settings.prefill_tokens]
                              for t in settings.tiers})
    loads = sorted((p.size, p.median_ms) for p in points if p.kind == "load")
    load_fit = isotonic([ms for _, ms in loads])
    cuda = versions.get("device") == "cuda"
    gpu_type = settings.gpu_type or (
        gpu_type_from_name(versions.get("device_name", "GPU"),
                           int(versions.get("device_memory_bytes", "0") or 0))
        if cuda else "CPU")
    if not cuda and gpu_type != "CPU" and settings.gpu_type is None:
        raise ConfigError("a CPU profile is keyed CPU")
    provenance = {
        "generator": "loraserve.profiles.engine (vLLM engine)",
        "command": settings.command or "loraserve profile --engine vllm",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "engine": f"vLLM {versions.get('vllm', '?')}",
        "device": versions.get("device", "?"),
        "device_name": versions.get("device_name", "?"),
        "cuda": versions.get("cuda", "?"),
        "torch": versions.get("torch", "?"),
        "python": versions.get("python", "?"),
        "platform": versions.get("platform", "?"),
        "threads": versions.get("threads", "?"),
        "cpus": settings.cpus or "not pinned",
        "dtype": settings.dtype,
        "timer": "time.perf_counter around LLMEngine.step() (engine core in process) and "
                 "LLMEngine.add_lora()",
        "weights": "load_format=dummy (random weights at the model's real shapes)",
        "engine_limits": (f"max_loras {settings.max_loras}, max_num_seqs "
                          f"{settings.max_num_seqs}, max_num_batched_tokens "
                          f"{settings.max_num_batched_tokens}, max_model_len "
                          f"{settings.max_model_len}, prefix caching off"),
        "samples": (f"decode: median of {settings.steps} steps after {settings.warmup} per "
                    f"batch; prefill and loads: median of {settings.repeats} after "
                    f"{settings.warmup}"),
        "seed": str(settings.seed),
        "base_model_spec": json.dumps(settings.base_model.model_dump(mode="json"),
                                      sort_keys=True),
        "seconds": f"{time.perf_counter() - started:.1f}",
    }
    description = (
        f"Measured with `loraserve profile --engine vllm` on {provenance['device_name']} "
        f"({provenance['engine']}, {settings.dtype}): the whole {settings.base_model.name} "
        "model at its real shapes with random weights, served by vLLM's own engine. Decode: "
        f"one LLMEngine.step() with b sequences of {settings.context_tokens} prompt tokens "
        f"decoding, min(b, {settings.max_loras}) distinct adapters of the tier's rank on "
        f"{', '.join(settings.target_modules)}; prefill: the step that prefills one prompt "
        "(and samples its first token); adapter load: add_lora (checkpoint read and the "
        "engine's tensors). Values are medians made non-decreasing in batch, tokens and tier; "
        "the samples' medians and spreads are in the CSV beside this file.")
    return Profile(
        gpu_type=gpu_type, base_model=settings.base_model.name, source="measured",
        description=description, provenance=provenance, lora_slots=settings.max_loras,
        context_tokens=settings.context_tokens, lora_target_modules=settings.target_modules,
        batch_sizes=settings.batch_sizes, prefill_tokens=settings.prefill_tokens,
        tiers={t: TierProfile(decode_ms=tuple(round(v, 4) for v in decode[t]),
                              prefill_ms=tuple(round(v, 4) for v in prefill[t]))
               for t in settings.tiers},
        adapter_load_ms={rank: round(ms, 4)
                         for (rank, _), ms in zip(loads, load_fit, strict=True)},
    )


def command_line(words: Sequence[str]) -> str:
    """A shell-quoted command line."""
    return " ".join(shlex.quote(w) for w in words)
