"""Remote adapter access against replication only, on memory-bound llama-3-8b fleets.

Two scenarios, both llama-3-8b on H100-80GB (analytic profile), 8 GPUs per node with NVLink
(450 GB/s) and a 200 Gb/s RDMA NIC per node, SLO p99 TTFT 2 s and TPOT 60 ms, 1024 prompt
and 256 output tokens per request, the topology's defaults (``miss_ratio`` 1,
``max_link_utilization`` 0.5, one reserved slot per remote-serving GPU):

* ``hot-pairs``: ``--groups`` groups (16) of five rank-64 adapters: two hot ones that each
  need 1.2 GPUs of compute and three cold ones (0.01 req/s); a host adapter cache of 0.7 GiB
  (two rank-64 adapters). Replication needs two copies of every hot adapter.
* ``zipf``: ``--adapters`` (200) adapters of rank 64 (60 %) and 128 (40 %), Zipf(1.0)
  popularity over ``--rate`` (400) req/s in total, a 2 GiB adapter cache.

For each scenario and plan (``replication``: ``solve`` on the config without its topology;
``remote``: with it), the table gives the plan's GPUs and lower bound, whether replication
fits on as many GPUs as the remote plan uses, the remote pairs, the planned utilization of
the busiest link, and a simulation of ``--seconds`` (120) of Poisson traffic on the plan's
own GPUs: p99 TTFT, SLO attainment, remote fetches, the share of remote-routed requests that
fetched (the measured miss ratio) and the busiest link's utilization.

Run: python benchmarks/remote.py [--groups 16] [--adapters 200] [--rate 400]
     [--seconds 120] [--time-limit 20]
Writes benchmarks/results/remote.csv.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loraserve.models import Config, config_from_mapping, link_traffic
from loraserve.profiles import CostModel
from loraserve.sim.engine import run
from loraserve.sim.policies import deployment_from_plan
from loraserve.sim.results import SimResult
from loraserve.sim.workload import generate_requests
from loraserve.solver import solve

RESULTS = Path(__file__).resolve().parent / "results"
GPU = "H100-80GB"
SEED = 0


def _config(adapters: list[dict[str, Any]], cache_gib: float, tiers: list[int],
            pool: int) -> Config:
    raw = {
        "base_model": "llama-3-8b",
        "slo": {"ttft_ms": 2000.0, "tpot_ms": 60.0, "percentile": 99.0},
        "pools": [{"gpu_type": GPU, "count": pool, "memory_gib": 80.0, "gpus_per_node": 8}],
        "serving": {"max_loras": 16, "max_cpu_loras": 32, "max_replicas": 32, "tiers": tiers,
                    "adapter_cache_gib": cache_gib},
        "adapter_defaults": {"prompt_tokens": 1024, "output_tokens": 256},
        "adapters": adapters,
        "topology": {"nic_gbit_per_s": 200.0, "intra_node": "nvlink"},
    }
    return config_from_mapping(raw, source="remote-benchmark")


def _rate_for_share(share: float, tier: int) -> float:
    """Request rate whose load is ``share`` of a tier-``tier`` H100's SLO capacity."""
    probe = _config([{"id": "probe", "rank": 8, "request_rate": 1.0}], 1.0, [tier], 1)
    model = CostModel.from_config(probe)
    cap = model.capacity(GPU, tier)
    return share * cap.max_utilization / model.request_seconds(probe.adapters[0], GPU, tier)


def hot_pairs(groups: int) -> Config:
    hot = _rate_for_share(1.2, 64)
    adapters: list[dict[str, Any]] = []
    for g in range(groups):
        adapters += [{"id": f"hot-{g}-{i}", "rank": 64, "request_rate": round(hot, 6)}
                     for i in range(2)]
        adapters += [{"id": f"cold-{g}-{i}", "rank": 64, "request_rate": 0.01}
                     for i in range(3)]
    return _config(adapters, 0.7, [64], 8 * groups)


def zipf(n: int, rate: float) -> Config:
    rng = np.random.default_rng(SEED)
    weights = 1.0 / np.arange(1, n + 1)
    weights /= weights.sum()
    ranks = rng.choice([64, 128], size=n, p=[0.6, 0.4])
    adapters = [{"id": f"lora-{i:04d}", "rank": int(ranks[i]),
                 "request_rate": round(float(rate * weights[i]), 6)} for i in range(n)]
    return _config(adapters, 2.0, [64, 128], 4 * n)


def status(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def evaluate(name: str, config: Config, seconds: float, time_limit: float) -> list[dict[str, Any]]:
    model = CostModel.from_config(config)
    requests = generate_requests(config, seconds, seed=SEED)
    rows: list[dict[str, Any]] = []
    plans = {}
    for label, cfg in (("replication", config.without_remote()), ("remote", config)):
        started = time.perf_counter()
        result = solve(cfg, solver="auto", time_limit=time_limit, cost_model=model)
        solve_s = time.perf_counter() - started
        status(f"{name} {label}: {result.status} {result.objective} GPUs in {solve_s:.1f} s")
        plans[label] = result
        row: dict[str, Any] = {"scenario": name, "plan": label, "adapters": len(config.adapters),
                               "rate_rps": round(config.total_request_rate, 1),
                               "status": result.status, "gpus": result.objective,
                               "lower_bound": result.lower_bound, "solve_s": round(solve_s, 1)}
        plan = result.plan
        if plan is None:
            rows.append(row)
            continue
        traffic = link_traffic(plan, config)
        topo = config.network()
        assert topo is not None
        row["remote_pairs"] = len(plan.remote_pairs())
        row["planned_max_link_util"] = max(
            (v / topo.edge_bytes_per_s(e) for e, v in traffic.items()), default=0.0)
        deployment = deployment_from_plan(plan, config, label)
        outcome = run(config, deployment.workers, requests, deployment.routes, cost_model=model)
        summary = SimResult(label, config, outcome, model, plan).summary
        fetched_on = {(w, a) for w, worker in enumerate(deployment.workers)
                      for a, _ in worker.remote}
        remote_routed = sum(1 for g, a in zip(outcome.gpu.tolist(),
                                              outcome.requests.adapter.tolist(), strict=True)
                            if (g, a) in fetched_on)
        util = outcome.link_utilization()
        row.update({
            "ttft_p50_ms": round(summary["ttft_p50_ms"], 1),
            "ttft_p99_ms": round(summary["ttft_p99_ms"], 1),
            "tpot_p99_ms": round(summary["tpot_p99_ms"], 1),
            "slo_attainment": round(summary["slo_attainment"], 4),
            "meets_slo": summary["meets_slo"],
            "fetches": int(outcome.fetches.sum()),
            "measured_miss_ratio": round(int(outcome.fetches.sum()) / remote_routed, 4)
            if remote_routed else None,
            "sim_max_link_util": round(max(util.values(), default=0.0), 4),
            "sim_s": round(outcome.wall_s, 1),
        })
        rows.append(row)
    remote = plans["remote"]
    if remote.plan is not None:
        # Replication on the remote plan's fleet size: does it fit at all?
        pools = tuple(p.model_copy(update={"count": remote.plan.num_gpus})
                      for p in config.pools)
        small = config.without_remote().model_copy(update={"pools": pools})
        fit = solve(small, solver="auto", time_limit=time_limit, cost_model=model)
        status(f"{name} replication on {remote.plan.num_gpus} GPUs: {fit.status}")
        for row in rows:
            row["replication_on_remote_gpus"] = fit.status
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=200)
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--time-limit", type=float, default=20.0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = evaluate("hot-pairs", hot_pairs(args.groups), args.seconds, args.time_limit)
    rows += evaluate("zipf", zipf(args.adapters, args.rate), args.seconds, args.time_limit)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "remote.csv"
    table.to_csv(path, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False))
    print(f"\nwrote {path} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
