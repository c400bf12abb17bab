"""Fleet simulator targets: speed on an hour of the Azure conv trace, and the headline comparison.

Workload: the Azure LLM inference trace 2023, conversation service
(``../shared/data/azure_llm_2023/AzureLLMInferenceTrace_conv.csv``, CC-BY 4.0; 19,366 requests
over 58 minutes), scaled x20 in rate by superposing circularly shifted copies (387,320
requests, 110.6 req/s), assigned to ``--adapters`` adapters by a seeded Zipf(1.0) popularity
with ranks 8-256 (35/25/15/12/8/5 %, :data:`loraserve.models.trace.TRACE_RANK_MIX`); each
adapter's rate and token means are those of its requests
(:func:`loraserve.sim.workload.trace_workload`). llama-3-8b on H100-80GB (analytic profile),
``max_loras`` 16, ``max_cpu_loras`` 32, ``max_replicas`` 32, SLO p99 TTFT 2 s and TPOT 60 ms.
Cold adapter loads (on-demand serving) cost 20 ms + bytes at 2 GB/s, then the profile's
host-to-GPU time (:class:`loraserve.sim.engine.SimOptions`).

Tables (printed, and CSV under ``benchmarks/results/``):

* ``speed``: each policy on ``--gpus`` (32) GPUs, the whole hour simulated to the end; the
  wall time of the simulation alone (target: 60 s or less on the 2-core machine).
* ``headline``: per policy, the GPUs needed to meet the SLO (searched; a search's failing
  runs stop as soon as they have missed the SLO), and p50/p99 TTFT and TPOT and SLO
  attainment on ``--gpus`` GPUs; with ``--max-rate`` also the max sustainable rate there.
  The checks: ``loraserve`` needs at least 40 % fewer GPUs than ``vllm-default``, has the
  lower p99 TTFT on ``--gpus`` GPUs, and needs no more GPUs than ``loraserve-greedy``.
* ``cli``: wall time of ``loraserve compare examples/quickstart.yaml`` (generated traffic)
  and of the same with ``--trace`` on the conv trace (the whole hour, and its first 900 s;
  ``--trace-duration``).

Run: python benchmarks/sim_fleet.py [--quick] [--adapters 100 500] [--gpus 32] [--scale 20]
     [--max-rate] [--no-cli] [--trace-duration S ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from loraserve.models import Config, config_from_mapping
from loraserve.models.trace import load_azure_trace
from loraserve.sim.engine import SimOptions
from loraserve.sim.experiments import Scenario, gpus_needed, max_rate
from loraserve.sim.policies import default_policies
from loraserve.sim.workload import Requests, scale_requests, trace_workload

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO.parent / "shared" / "data" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
SEED = 0


def fleet_config(adapters: list[Any], pool: int) -> Config:
    """The benchmark's config around ``adapters``."""
    raw = {
        "base_model": "llama-3-8b",
        "slo": {"ttft_ms": 2000.0, "tpot_ms": 60.0, "percentile": 99.0},
        "pools": [{"gpu_type": "H100-80GB", "count": pool, "memory_gib": 80.0,
                   "cost_per_hour": 4.0}],
        "serving": {"max_loras": 16, "max_cpu_loras": 32, "max_replicas": 32},
        "adapters": [a.model_dump() for a in adapters],
    }
    return config_from_mapping(raw, source="sim-fleet")


def status(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def speed_rows(scenario: Scenario, n_adapters: int, gpus: int) -> list[dict[str, Any]]:
    rows = []
    for policy in default_policies(scenario.config):
        started = time.perf_counter()
        deployment = scenario.deployment(policy, gpus)
        deploy_s = time.perf_counter() - started
        if deployment is None:
            rows.append({"adapters": n_adapters, "policy": policy, "gpus": gpus,
                         "requests": len(scenario.requests()), "note": "no plan"})
            continue
        result = scenario.simulate(deployment)
        s = result.summary
        rows.append({
            "adapters": n_adapters, "policy": policy, "gpus": deployment.num_gpus,
            "requests": s["requests"], "completed": s["completed"],
            "sim_s": round(s["wall_s"], 2), "deploy_s": round(deploy_s, 2),
            "steps": int(result.run.steps.sum()),
            "ttft_p99_ms": round(s["ttft_p99_ms"], 1), "slo_attainment": round(
                s["slo_attainment"], 4), "target_s": 60.0, "meets_target": s["wall_s"] <= 60.0,
        })
        status(f"speed: {n_adapters} adapters, {policy}: {s['wall_s']:.1f} s")
    return rows


def headline_rows(scenario: Scenario, n_adapters: int, gpus: int,
                  rate_search: bool) -> list[dict[str, Any]]:
    rows = []
    for policy in default_policies(scenario.config):
        started = time.perf_counter()
        needed = gpus_needed(scenario, policy)
        row: dict[str, Any] = {"adapters": n_adapters, "policy": policy,
                               "gpus_needed": needed.value,
                               "search_runs": len(needed.points)}
        fixed = scenario.evaluate(policy, gpus, what="fixed")
        if fixed is not None:
            s = fixed.summary
            row.update({f"{k}@{gpus}": round(s[k], 1) for k in (
                "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms")})
            row[f"slo_attainment@{gpus}"] = round(s["slo_attainment"], 4)
            row[f"cold_loads@{gpus}"] = s["cold_loads"]
        if rate_search:
            rate = max_rate(scenario, policy, gpus)
            row[f"max_rate_rps@{gpus}"] = None if rate.value is None else round(rate.value, 1)
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        status(f"headline: {n_adapters} adapters, {policy}: needs {needed.value} GPUs "
               f"({row['seconds']} s)")
    return rows


def checks(rows: list[dict[str, Any]], gpus: int) -> list[str]:
    by = {r["policy"]: r for r in rows}
    lines = []
    ours, default = by["loraserve"].get("gpus_needed"), by["vllm-default"].get("gpus_needed")
    if ours is not None and default is not None:
        saving = 1 - ours / default
        lines.append(f"loraserve needs {saving:.0%} fewer GPUs than vllm-default "
                     f"({ours:g} vs {default:g}; target >= 40%): "
                     f"{'met' if saving >= 0.4 else 'MISSED'}")
    elif ours is not None:
        lines.append(f"loraserve needs {ours:g} GPUs; vllm-default meets the SLO on none up to "
                     "its search limit: met")
    key = f"ttft_p99_ms@{gpus}"
    if key in by["loraserve"] and key in by["vllm-default"]:
        a, b = by["loraserve"][key], by["vllm-default"][key]
        lines.append(f"p99 TTFT on {gpus} GPUs: loraserve {a:g} ms vs vllm-default {b:g} ms "
                     f"({b / a:.1f}x): {'met' if a < b else 'MISSED'}")
    greedy = by["loraserve-greedy"].get("gpus_needed")
    if greedy is None:
        lines.append("loraserve-greedy meets the SLO on no fleet it plans (no valid plan, or "
                     f"none that meets it): loraserve is not worse (needs {ours})")
    elif ours is not None:
        lines.append(f"loraserve {ours:g} vs loraserve-greedy {greedy:g} GPUs: "
                     f"{'met' if ours <= greedy else 'MISSED'}")
    return lines


def cli_rows(trace_durations: list[float]) -> list[dict[str, Any]]:
    rows = []
    commands = [["compare", "examples/quickstart.yaml", "-q"]]
    for duration in trace_durations:
        command = ["compare", "examples/quickstart.yaml", "--trace", str(TRACE), "-q"]
        commands.append(command + (["--duration", f"{duration:g}"] if duration > 0 else []))
    for command in commands:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "loraserve.cli", *command], cwd=REPO,
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        shown = " ".join(["loraserve", *command]).replace(str(REPO.parent), "..")
        rows.append({"command": shown, "exit": done.returncode, "seconds": round(seconds, 1),
                     "under_60_s": seconds < 60})
        print(f"$ {shown}   ({seconds:.1f} s, exit {done.returncode})")
        print(done.stdout.rstrip())
        if done.returncode:
            print(done.stderr.rstrip())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--gpus", type=int, default=32)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--max-rate", action="store_true",
                        help="also search the max sustainable rate on --gpus GPUs")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI timings")
    parser.add_argument("--no-headline", action="store_true", help="speed table only")
    parser.add_argument("--trace-duration", type=float, nargs="+", default=[0.0, 900.0],
                        help="seconds of the trace for the CLI --trace timings (0: all)")
    parser.add_argument("--quick", action="store_true",
                        help="the first 10 minutes of the trace, 100 adapters")
    parser.add_argument("--cold-load-ms", type=float, default=SimOptions.cold_load_ms,
                        help="fixed cost of a cold adapter load (sensitivity runs)")
    parser.add_argument("--disk-gbps", type=float, default=SimOptions.disk_gb_per_s,
                        help="disk bandwidth of a cold adapter load (sensitivity runs)")
    parser.add_argument("--tag", default="", help="suffix of the CSV names")
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    trace = load_azure_trace(args.trace)
    if args.quick:
        trace = trace[trace["t"] < 600].reset_index(drop=True)
        args.adapters = [100]
    speed: list[dict[str, Any]] = []
    headline: list[dict[str, Any]] = []
    notes: list[str] = []
    for n in args.adapters:
        adapters, base = trace_workload(trace, n, rate_scale=args.scale, seed=SEED)
        config = fleet_config(adapters, pool=max(512, 8 * args.gpus))

        def at(scale: float, base: Requests = base) -> Requests:
            return scale_requests(base, scale, seed=SEED)

        options = SimOptions(cold_load_ms=args.cold_load_ms, disk_gb_per_s=args.disk_gbps,
                             seed=SEED)
        scenario = Scenario(config, at, options, time_limit=10.0, seed=SEED)
        status(f"{n} adapters: {len(base)} requests over {base.duration:.0f} s "
               f"({base.rate:.1f} req/s)")
        speed += speed_rows(scenario, n, args.gpus)
        if not args.no_headline:
            rows = headline_rows(scenario, n, args.gpus, args.max_rate)
            headline += rows
            notes += [f"{n} adapters: {line}" for line in checks(rows, args.gpus)]
    pd.set_option("display.width", 250)
    print("\nspeed (the whole trace on the fixed fleet, simulated to the end):")
    speed_table = pd.DataFrame(speed)
    print(speed_table.to_string(index=False))
    speed_table.to_csv(args.out / f"sim_speed{args.tag}.csv", index=False)
    if headline:
        print("\nheadline:")
        table = pd.DataFrame(headline)
        print(table.to_string(index=False))
        table.to_csv(args.out / f"sim_headline{args.tag}.csv", index=False)
        print()
        for line in notes:
            print(line)
    if not args.no_cli:
        print("\nCLI:")
        cli = pd.DataFrame(cli_rows(args.trace_duration))
        cli.to_csv(args.out / f"sim_cli{args.tag}.csv", index=False)
        print(cli.to_string(index=False))


if __name__ == "__main__":
    main()
