"""Planner vs simulator: does the plan ``loraserve plan`` writes meet the SLO in simulation?

For each config: the planned GPU count N; the plan's simulated SLO attainment on 5 seeds of
generated traffic (``--duration`` s each, Poisson, lognormal tokens); the share of seeds
that meet the SLO; planned vs simulated utilization per GPU (mean and worst absolute error,
in points). Configs: the quickstart; the quickstart with ``max_cpu_loras`` = ``max_loras``;
the quickstart with 4 and 8 LoRA slots (``max_loras``); a mixed H100/A100 pool; 2,000
synthetic adapters. The fewest GPUs that meet the SLO by the headroom search
(``plan --simulate``'s old method) is in ``--headroom`` mode only (slow).

Run: python benchmarks/fidelity.py [--seeds 5] [--duration 300] [--time-limit 30]
     [--configs quickstart slots4 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from loraserve.models import Config, config_from_mapping
from loraserve.models.synthetic import synthetic_config
from loraserve.profiles import CostModel
from loraserve.sim.engine import SimOptions, run
from loraserve.sim.policies import deployment_from_plan
from loraserve.sim.results import SimResult
from loraserve.sim.workload import generate_requests
from loraserve.solver import solve

REPO = Path(__file__).resolve().parents[1]


def _quickstart(**serving: Any) -> Config:
    raw = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    raw["serving"].update({"slo_families": True, **serving})
    return config_from_mapping(raw)


def _mixed() -> Config:
    raw = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    raw["pools"] = [{"gpu_type": "H100-80GB", "count": 12, "memory_gib": 80, "cost_per_hour": 4.0},
                    {"gpu_type": "A100-80GB", "count": 24, "memory_gib": 80,
                     "cost_per_hour": 2.2}]
    raw["serving"]["slo_families"] = True
    return config_from_mapping(raw)


CONFIGS = {
    "quickstart": lambda: _quickstart(),
    "cpu=max_loras": lambda: _quickstart(max_cpu_loras=16),
    "slots8": lambda: _quickstart(max_loras=8),
    "slots4": lambda: _quickstart(max_loras=4),
    "mixed-pool": _mixed,
    "2000-adapters": lambda: synthetic_config(2000, 400.0, gpu_count=400, seed=3,
                                               serving={"slo_families": True}),
}


def measure(name: str, config: Config, seeds: int, duration: float,
            time_limit: float) -> dict[str, Any]:
    """Plan ``config`` and simulate the plan on ``seeds`` streams."""
    started = time.perf_counter()
    result = solve(config, time_limit=time_limit, seed=0)
    plan_s = time.perf_counter() - started
    plan = result.plan
    if plan is None:
        return {"config": name, "gpus": "-", "status": result.status}
    model = CostModel.from_config(config)
    deployment = deployment_from_plan(plan, config)
    attainments, errors = [], []
    for seed in range(seeds):
        requests = generate_requests(config, duration, seed=seed)
        sim = SimResult("plan", config, run(config, deployment.workers, requests,
                                            deployment.routes, SimOptions(seed=seed), model),
                        model, plan)
        table = sim.requests
        attainments.append(float(table["slo_ok"].mean()))
        gpus = sim.gpus
        errors.append(np.abs(gpus["load"] - gpus["predicted_utilization"]).to_numpy() * 100)
    err = np.concatenate(errors)
    target = config.slo.percentile / 100.0
    return {"config": name, "adapters": len(config.adapters), "gpus": plan.num_gpus,
            "bound": result.lower_bound, "solver": result.solver, "plan_s": round(plan_s, 1),
            "min_attainment": round(100 * min(attainments), 2),
            "mean_attainment": round(100 * float(np.mean(attainments)), 2),
            "seeds_met": f"{sum(a >= target for a in attainments)}/{seeds}",
            "util_err_mean": round(float(err.mean()), 1),
            "util_err_worst": round(float(err.max()), 1)}


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = parser.parse_args()
    rows = [measure(name, CONFIGS[name](), args.seeds, args.duration, args.time_limit)
            for name in args.configs]
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys), flush=True)


if __name__ == "__main__":
    main()
