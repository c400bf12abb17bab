"""Planner vs simulator: does the plan ``loraserve plan`` writes meet the SLO in simulation?

Per config:

* ``N``: the GPUs of the plan ``loraserve.solve`` writes (``auto``, ``--time-limit``); the
  trace configs plan for the trace's peak: every rate times
  :func:`loraserve.sim.workload.peak_factor` (the 95th percentile of the 5-minute rate over
  the mean, 1.09 on the conv trace), since the hour is not stationary;
* its simulated SLO attainment on ``--seeds`` seeds of generated traffic (``--duration`` s,
  Poisson, lognormal tokens; worst and mean) and the seeds that meet the SLO, and, for the
  trace configs, on the Azure conv trace itself (the whole hour, x20 in rate);
* ``N*``: the fewest GPUs that meet the SLO in simulation by the headroom search that
  ``plan --simulate`` used before the SLO families (compute-only plans made for scaled
  rates, the ``loraserve`` policy's GPU-count search, seed 0 traffic);
* ``rank-agnostic``: rank-agnostic packing's simulated minimum (its own GPU-count search);
* planned vs simulated utilization per GPU (mean and worst absolute error, points).

Configs: the quickstart; the quickstart with ``max_cpu_loras`` = ``max_loras``; the
quickstart with 8 and 4 LoRA slots (``max_loras``; the pool of 32 is raised to 64 for 4);
the ``benchmarks/sim_fleet.py`` conv-trace configs (100 and 500 adapters, ranks to 256);
a mixed H100/A100 pool; 2,000 synthetic adapters (no ``N*``: its search takes minutes).

Run: python benchmarks/fidelity.py [--seeds 5] [--duration 300] [--time-limit 30]
     [--configs quickstart slots4 ...] [--no-search]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from loraserve.models import Config, config_from_mapping
from loraserve.models.synthetic import synthetic_config
from loraserve.models.trace import load_azure_trace
from loraserve.profiles import CostModel
from loraserve.sim.engine import SimOptions, run
from loraserve.sim.experiments import Scenario, gpus_needed
from loraserve.sim.policies import deployment_from_plan, repriced
from loraserve.sim.results import SimResult
from loraserve.sim.workload import (
    Requests,
    generate_requests,
    peak_factor,
    scale_requests,
    trace_workload,
)
from loraserve.solver import solve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from sim_fleet import TRACE, fleet_config  # noqa: E402

TRACE_SCALE = 20.0


def _quickstart(pool: int | None = None, **serving: Any) -> Config:
    raw = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    raw["serving"].update(serving)
    if pool is not None:
        raw["pools"][0]["count"] = pool
    return config_from_mapping(raw)


def _mixed() -> Config:
    raw = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    raw["pools"] = [{"gpu_type": "H100-80GB", "count": 12, "memory_gib": 80, "cost_per_hour": 4.0},
                    {"gpu_type": "A100-80GB", "count": 24, "memory_gib": 80,
                     "cost_per_hour": 2.2}]
    return config_from_mapping(raw)


_TRACE_CACHE: dict[int, tuple[Config, Requests]] = {}


def _trace(n: int) -> tuple[Config, Requests]:
    """The sim_fleet config of ``n`` adapters at the trace's mean rates, and its requests."""
    if n not in _TRACE_CACHE:
        adapters, requests = trace_workload(load_azure_trace(TRACE), n, rate_scale=TRACE_SCALE,
                                            seed=0)
        _TRACE_CACHE[n] = (fleet_config(adapters, 64), requests)
    return _TRACE_CACHE[n]


def _planning(name: str, config: Config) -> Config:
    """The config the planner is given: the trace configs at their peak rates."""
    if name not in TRACE_CONFIGS:
        return config
    return config.scaled(peak_factor(_trace(TRACE_CONFIGS[name])[1]))


CONFIGS: dict[str, Callable[[], Config]] = {
    "quickstart": lambda: _quickstart(),
    "cpu=max_loras": lambda: _quickstart(max_cpu_loras=16),
    "slots8": lambda: _quickstart(max_loras=8),
    "slots4": lambda: _quickstart(pool=64, max_loras=4),
    "trace-100": lambda: _trace(100)[0],
    "trace-500": lambda: _trace(500)[0],
    "mixed-pool": _mixed,
    "2000-adapters": lambda: synthetic_config(2000, 400.0, gpu_count=400, seed=3),
}
TRACE_CONFIGS = {"trace-100": 100, "trace-500": 500}
NO_SEARCH = {"2000-adapters"}


def _compute_only(config: Config) -> Config:
    raw = config.model_dump(mode="json", exclude_none=True)
    raw["serving"]["slo_families"] = False
    return config_from_mapping(raw)


def _attainment(config: Config, plan: Any, model: CostModel, requests: Requests,
                seed: int) -> tuple[float, np.ndarray]:
    # Predictions at the rates simulated (a trace config's plan was made for its peak).
    plan = repriced(plan, config, model)
    deployment = deployment_from_plan(plan, config)
    sim = SimResult("plan", config, run(config, deployment.workers, requests,
                                        deployment.routes, SimOptions(seed=seed), model), model,
                    plan)
    gpus = sim.gpus
    error = np.abs(gpus["load"] - gpus["predicted_utilization"]).to_numpy() * 100
    return float(sim.requests["slo_ok"].mean()), error


def _searched(config: Config, policy: str, duration: float,
              requests: Requests | None) -> float | None:
    if requests is not None:
        base = requests

        def at(scale: float) -> Requests:
            return scale_requests(base, scale, seed=0)
    else:
        def at(scale: float) -> Requests:
            return generate_requests(config, duration, seed=0, rate_scale=scale)
    scenario = Scenario(config, at, time_limit=10.0, seed=0)
    return gpus_needed(scenario, policy).value


def measure(name: str, seeds: int, duration: float, time_limit: float,
            search: bool) -> dict[str, Any]:
    """Plan one config and simulate the plan; the searched minima where asked."""
    config = CONFIGS[name]()
    started = time.perf_counter()
    result = solve(_planning(name, config), time_limit=time_limit, seed=0)
    plan_s = time.perf_counter() - started
    plan = result.plan
    row: dict[str, Any] = {"config": name, "adapters": len(config.adapters)}
    if plan is None:
        row.update({"N": "-", "solver": result.status})
        return row
    model = CostModel.from_config(config)
    target = config.slo.percentile / 100.0
    attainments, errors = [], []
    for seed in range(seeds):
        value, error = _attainment(config, plan, model,
                                   generate_requests(config, duration, seed=seed), seed)
        attainments.append(value)
        errors.append(error)
    row.update({"N": plan.num_gpus, "bound": round(result.lower_bound, 2),
                "solver": result.solver, "plan_s": round(plan_s, 1),
                "min_att": round(100 * min(attainments), 2),
                "mean_att": round(100 * float(np.mean(attainments)), 2),
                "seeds_met": f"{sum(a >= target for a in attainments)}/{seeds}"})
    trace_requests = None
    if name in TRACE_CONFIGS:
        trace_requests = _trace(TRACE_CONFIGS[name])[1]
        value, error = _attainment(config, plan, model, trace_requests, 0)
        row["trace_att"] = round(100 * value, 2)
        errors.append(error)
    err = np.concatenate(errors)
    row.update({"util_err_mean": round(float(err.mean()), 1),
                "util_err_worst": round(float(err.max()), 1)})
    if search and name not in NO_SEARCH:
        # The old method sized by simulation at the config's (mean) rates: no peak factor.
        row["N*"] = _searched(_compute_only(config), "loraserve", duration, trace_requests)
        row["rank_agnostic"] = _searched(config, "rank-agnostic-packing", duration,
                                         trace_requests)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--no-search", action="store_true",
                        help="skip the N* and rank-agnostic searches")
    args = parser.parse_args()
    rows = []
    for name in args.configs:
        rows.append(measure(name, args.seeds, args.duration, args.time_limit,
                            not args.no_search))
        sys.stderr.write(f"{rows[-1]}\n")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys), flush=True)


if __name__ == "__main__":
    main()
