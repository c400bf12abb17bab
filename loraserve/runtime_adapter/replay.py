"""Replay requests against a live endpoint and simulate the same requests: the ground truth.

:func:`replay` sends each request at its time as a streamed completion (token-id prompts of
exact length, ``min_tokens`` = ``max_tokens`` with ``ignore_eos``, so every request carries
exactly the tokens asked for) and records its time to first token and end-to-end time;
:func:`simulate_replayed` runs the simulator on the very same requests (the real send times,
adapters and token counts) on one worker, and :func:`latency_summary` gives both sides' p50 and
p99 TTFT and TPOT and throughput. ``benchmarks/ground_truth.py`` and the real-engine test use
them.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import numpy as np

from loraserve.models import Config
from loraserve.profiles import CostModel
from loraserve.profiles.schema import Profile
from loraserve.sim.engine import SimOptions, Worker, run
from loraserve.sim.workload import Requests


@dataclass
class Replayed:
    """One request: what is sent, and (after :func:`replay`) what came back.

    Attributes
    ----------
    arrival : float
        Planned send time (seconds from the start); after the replay, the real one.
    adapter : int
        Index into the adapter names given to :func:`replay`.
    prompt, output : int
        Prompt tokens and output tokens.
    ttft, e2e : float
        Seconds from sending to the first streamed token and to the end (NaN if it failed).
    tokens : int
        Output tokens the server reported.
    error : str
        Empty when the request succeeded.
    """

    arrival: float
    adapter: int
    prompt: int
    output: int
    ttft: float = math.nan
    e2e: float = math.nan
    tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the request completed."""
        return not self.error and not math.isnan(self.e2e)

    @property
    def tpot(self) -> float:
        """Seconds per output token after the first (NaN with one output token)."""
        return (self.e2e - self.ttft) / (self.output - 1) if self.output > 1 else math.nan


def prompt_ids(length: int, salt: int, vocab: int) -> list[int]:
    """A prompt of ``length`` token ids, distinct per ``salt`` (no prefix reuse)."""
    return [3 + (salt * 7919 + i * 31) % (vocab - 3) for i in range(length)]


async def _send(client: httpx.AsyncClient, url: str, names: Sequence[str], request: Replayed,
                t0: float, vocab: int, salt: int) -> None:
    await asyncio.sleep(max(0.0, t0 + request.arrival - time.perf_counter()))
    began = time.perf_counter()
    request.arrival = began - t0
    body = {"model": names[request.adapter], "prompt": prompt_ids(request.prompt, salt, vocab),
            "max_tokens": request.output, "min_tokens": request.output, "ignore_eos": True,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                request.error = f"HTTP {response.status_code}: {response.text[:200]}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                if math.isnan(request.ttft) and '"text"' in line:
                    request.ttft = time.perf_counter() - began
                if '"completion_tokens"' in line:
                    usage = json.loads(line[5:]).get("usage") or {}
                    request.tokens = int(usage.get("completion_tokens") or 0)
        request.e2e = time.perf_counter() - began
    except httpx.HTTPError as exc:
        request.error = f"{type(exc).__name__}: {exc}"


async def replay_async(url: str, names: Sequence[str], requests: Sequence[Replayed],
                       vocab: int, salt: int = 0) -> float:
    """Send every request at its time, streamed, concurrently; the wall time it took."""
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        t0 = time.perf_counter() + 0.2
        await asyncio.gather(*(_send(client, url, names, r, t0, vocab, salt * 1_000_003 + i)
                               for i, r in enumerate(requests)))
        return time.perf_counter() - t0


def replay(url: str, names: Sequence[str], requests: Sequence[Replayed], vocab: int,
           salt: int = 0) -> float:
    """:func:`replay_async` from synchronous code."""
    return asyncio.run(replay_async(url, names, requests, vocab, salt))


@dataclass(frozen=True)
class LatencySummary:
    """p50/p99 TTFT and TPOT (ms), throughput (req/s) and, simulated, the busy share."""

    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float
    throughput: float
    busy: float = math.nan

    def relative_error(self, measured: LatencySummary, metric: str) -> float:
        """``(self - measured) / measured`` of one metric."""
        mine, theirs = getattr(self, metric), getattr(measured, metric)
        return float((mine - theirs) / theirs)


def _pct(values: np.ndarray, q: float) -> float:
    values = values[~np.isnan(values)]
    return float(np.percentile(values, q)) if values.size else math.nan


def latency_summary(ttft_s: np.ndarray, tpot_s: np.ndarray, arrival: np.ndarray,
                    end: np.ndarray, busy: float = math.nan) -> LatencySummary:
    """The summary of per-request seconds (throughput: requests over first arrival to last end)."""
    span = float(np.nanmax(end) - np.nanmin(arrival))
    return LatencySummary(1e3 * _pct(ttft_s, 50), 1e3 * _pct(ttft_s, 99),
                          1e3 * _pct(tpot_s, 50), 1e3 * _pct(tpot_s, 99),
                          float(np.sum(~np.isnan(end))) / span if span > 0 else math.nan, busy)


def measured_summary(requests: Sequence[Replayed]) -> LatencySummary:
    """The summary of the completed replayed requests."""
    done = [r for r in requests if r.ok]
    arrival = np.array([r.arrival for r in done])
    return latency_summary(np.array([r.ttft for r in done]), np.array([r.tpot for r in done]),
                           arrival, arrival + np.array([r.e2e for r in done]))


def simulate_replayed(config: Config, profile: Profile, gpu_type: str, tier: int,
                      requests: Sequence[Replayed]) -> LatencySummary:
    """Simulate the completed ``requests`` on one worker hosting every adapter of ``config``.

    ``config.adapters[i]`` is the adapter of ``Replayed.adapter == i``; arrivals are the real
    send times.
    """
    done = sorted((r for r in requests if r.ok), key=lambda r: r.arrival)
    arrival = np.array([r.arrival for r in done])
    arrival -= arrival[0]
    reqs = Requests(arrival=arrival, adapter=np.array([r.adapter for r in done], dtype=np.int64),
                    prompt_tokens=np.array([r.prompt for r in done], dtype=np.int64),
                    output_tokens=np.array([r.output for r in done], dtype=np.int64),
                    duration=float(arrival[-1]) if len(arrival) > 1 else 1.0)
    worker = Worker(f"{gpu_type}-0", gpu_type, tier, hosted=tuple(range(len(config.adapters))))
    model = CostModel.from_config(config, {gpu_type: profile})
    result = run(config, [worker], reqs, [[(0, 1.0)]] * len(config.adapters),
                 SimOptions(max_drain_s=3600.0), cost_model=model)
    out = reqs.output_tokens
    tpot = np.where(out > 1, (result.done - result.first) / np.maximum(out - 1, 1), np.nan)
    span = float(np.nanmax(result.done) - arrival[0])
    return latency_summary(result.first - arrival, tpot, arrival, result.done,
                           float(result.busy_s[0]) / span if span > 0 else math.nan)
