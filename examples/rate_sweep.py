"""Capacity planning from Python: GPUs needed as the request rate grows.

Run: python examples/rate_sweep.py [examples/quickstart.yaml]
"""

from __future__ import annotations

import sys

import pandas as pd

import loraserve


def main(path: str = "examples/quickstart.yaml") -> None:
    config = loraserve.load_config(path)
    rows = []
    for factor in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0):
        result = loraserve.plan(config.scaled(factor), solver="auto", time_limit=10)
        rows.append({
            "req_per_s": round(config.total_request_rate * factor, 1),
            "status": result.status,
            "gpus": result.plan.num_gpus if result.plan else None,
            "lower_bound": result.lower_bound,
            "binding": result.binding,
            "cost_per_hour": result.plan.cost_per_hour(config) if result.plan else None,
        })
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main(*sys.argv[1:])
