"""Solver scale: adapters, GPUs, seconds, objective, bound and gap per solver.

Instances are synthetic (seeded): ranks 8-128 with most adapters small, Zipf(1.0) popularity,
one request per second per adapter on average, llama-3-8b on H100-80GB. Two slot settings:
``max_cpu_loras`` 64 (load binds) and 16 (slots bind: the hard case).

Run: python benchmarks/solver_scale.py [--sizes 100 300 1000] [--time-limit 30]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import pandas as pd

from loraserve.models.synthetic import synthetic_config
from loraserve.solver import solve


def run(sizes: list[int], slot_settings: list[int], solvers: list[str],
        time_limit: float) -> pd.DataFrame:
    rows = []
    for n in sizes:
        for slots in slot_settings:
            config = synthetic_config(
                n, total_rate=float(n), gpu_count=10 * n,
                serving={"max_loras": min(16, slots), "max_cpu_loras": slots,
                         "max_replicas": 64},
                seed=1,
            )
            for solver in solvers:
                started = time.perf_counter()
                result = solve(config, solver=solver, time_limit=time_limit)  # type: ignore[arg-type]
                rows.append({
                    "adapters": n,
                    "slots": slots,
                    "solver": solver,
                    "ran": result.solver,
                    "status": result.status,
                    "gpus": result.plan.num_gpus if result.plan else None,
                    "bound": result.lower_bound,
                    "gap_pct": None if result.gap is None else round(100 * result.gap, 2),
                    "binding": result.binding,
                    "seconds": round(time.perf_counter() - started, 2),
                })
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1),
                      flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--slots", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--solvers", nargs="+", default=["greedy", "milp", "auto"])
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/results/solver_scale.csv"))
    args = parser.parse_args()
    table = run(args.sizes, args.slots, args.solvers, args.time_limit)
    print()
    print(table.to_string(index=False))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory {peak_mib:.0f} MiB; python {sys.version.split()[0]}")
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
