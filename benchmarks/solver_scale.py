"""Solver scale: GPUs, bound, gap and seconds per solver; then incremental re-planning.

Instances are synthetic (seeded): ranks 8-128 with most adapters small, Zipf(1.0)
popularity, llama-3-8b on H100-80GB, ``max_replicas`` 1024. Two slot settings:
``max_cpu_loras`` 64 (load binds) and 16 (slots bind: the hard case, see issue 10).

* ``scale``: 100 to 10,000 adapters at 1 req/s per adapter on average, and 10,000 adapters
  at 3 req/s (about 1,850 GPUs), for each solver.
* ``incremental``: from the greedy plan of 1,000 adapters, 10% of the adapters change rate by
  a factor drawn log-uniformly from 0.3 to 3; the incremental re-plan is compared with a
  from-scratch plan relabelled to overlap the running plan as much as possible (what a
  careful operator would do without incremental re-planning).

Run: python benchmarks/solver_scale.py [--suite scale incremental] [--sizes 1000 10000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loraserve.models import Config
from loraserve.models.migration import plan_migration, relabel
from loraserve.models.synthetic import synthetic_config
from loraserve.solver import solve

#: Time limit per solve by size, as in the targets of issue 3.
LIMITS = {1000: 10.0, 10000: 60.0}


def instance(n: int, slots: int, rate_per_adapter: float = 1.0) -> Config:
    """The seeded synthetic instance of ``n`` adapters."""
    return synthetic_config(
        n, total_rate=rate_per_adapter * n, gpu_count=10 * n,
        serving={"max_loras": min(16, slots), "max_cpu_loras": slots, "max_replicas": 1024},
        seed=1,
    )


def peak_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_scale(cases: list[tuple[int, float]], slot_settings: list[int], solvers: list[str],
              time_limit: float | None) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for n, per_adapter in cases:
        for slots in slot_settings:
            config = instance(n, slots, per_adapter)
            limit = time_limit or LIMITS.get(n, 30.0)
            for solver in solvers:
                started = time.perf_counter()
                result = solve(config, solver=solver, time_limit=limit)  # type: ignore[arg-type]
                rows.append({
                    "adapters": n,
                    "req_s": per_adapter * n,
                    "slots": slots,
                    "solver": solver,
                    "ran": result.solver,
                    "status": result.status,
                    "gpus": result.plan.num_gpus if result.plan else None,
                    "bound": result.lower_bound,
                    "gap_pct": None if result.gap is None else round(100 * result.gap, 2),
                    "binding": result.binding,
                    "limit_s": limit,
                    "seconds": round(time.perf_counter() - started, 2),
                    "peak_mib": round(peak_mib()),
                })
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1),
                      flush=True)
    return pd.DataFrame(rows)


def drifted(config: Config, fraction: float, seed: int) -> Config:
    """``config`` with ``fraction`` of its adapters' rates multiplied by 0.3 to 3."""
    rng = np.random.default_rng(seed)
    adapters = list(config.adapters)
    chosen = rng.choice(len(adapters), int(fraction * len(adapters)), replace=False)
    factors = np.exp(rng.uniform(np.log(0.3), np.log(3.0), len(chosen)))
    for i, f in zip(chosen, factors, strict=True):
        adapters[i] = adapters[i].model_copy(
            update={"request_rate": adapters[i].request_rate * float(f)})
    return config.with_adapters(adapters)


def run_incremental(n: int, slot_settings: list[int], seeds: list[int]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for slots in slot_settings:
        base = instance(n, slots)
        running = solve(base, solver="greedy").plan
        assert running is not None
        for seed in seeds:
            config = drifted(base, 0.1, seed)
            started = time.perf_counter()
            inc = solve(config, current=running, time_limit=10.0)
            inc_s = time.perf_counter() - started
            scratch = solve(config, time_limit=10.0)
            assert inc.plan is not None and scratch.plan is not None
            moved_inc = plan_migration(running, inc.plan, config).bytes_moved
            scratch_plan = relabel(scratch.plan, running, config)
            moved_scratch = plan_migration(running, scratch_plan, config).bytes_moved
            rows.append({
                "adapters": n,
                "slots": slots,
                "seed": seed,
                "running_gpus": running.num_gpus,
                "scratch_gpus": scratch.plan.num_gpus,
                "incremental_gpus": inc.plan.num_gpus,
                "scratch_gib_moved": round(moved_scratch / 2**30, 2),
                "incremental_gib_moved": round(moved_inc / 2**30, 2),
                "moved_pct_of_scratch": round(100 * moved_inc / max(moved_scratch, 1.0), 1),
                "incremental_s": round(inc_s, 2),
            })
            print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1),
                  flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="+", default=["scale", "incremental"],
                        choices=["scale", "incremental"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--slots", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--solvers", nargs="+",
                        default=["greedy", "loraserve-greedy", "auto"])
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds per solve (default: 10 s at 1,000 adapters, 60 s at "
                             "10,000, else 30 s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if "scale" in args.suite:
        cases = [(n, 1.0) for n in args.sizes]
        if 10000 in args.sizes:
            cases.append((10000, 3.0))
        table = run_scale(cases, args.slots, args.solvers, args.time_limit)
        print()
        print(table.to_string(index=False))
        table.to_csv(args.out / "solver_scale.csv", index=False)
    if "incremental" in args.suite:
        table = run_incremental(1000, args.slots, seeds=[1, 2, 3])
        print()
        print(table.to_string(index=False))
        table.to_csv(args.out / "incremental.csv", index=False)
    print(f"\npeak memory {peak_mib():.0f} MiB; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
