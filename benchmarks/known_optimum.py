"""Instances whose optimum is known by construction: how far the solver's plans are from it.

Two families, both generated here from a seed (no data files):

* **triplets** (Falkenauer's construction): ``3 m`` items in ``m`` bins of capacity 1,000,
  each bin filled exactly by three items, the first drawn from [380, 490], the second from
  [250, 1000 - first - 250] and the third the rest, so every item is in [250, 500]: no bin
  holds four, and a plan on ``m`` GPUs must fill every GPU exactly. Sizes 60, 120, 249 and
  501 items (20, 40, 83 and 167 bins) and 600 items (200 bins). An item is a rank-8 adapter
  whose traffic takes ``size / 1000`` of a tier-8 GPU; tier 8 only; 3 adapter slots per GPU,
  so with splits allowed a split costs a slot that no optimum has to spare.
* **cut**: ``m`` GPUs, each given a rank tier (8-128, 40/25/15/12/8 %) and cut into ``S``
  adapters of that rank whose loads on that tier sum to the GPU's capacity (cut points drawn
  uniformly); ``S`` adapter slots per GPU. The loads and the slots of all adapters are
  exactly ``m`` GPUs' worth, and an adapter's share of a GPU only grows with the tier (checked
  when the instance is built), so ``m`` is optimal and is the tier-count bound.

Each comes whole (``max_replicas: 1``: bin packing) and with splits allowed
(``max_replicas: 8``). Loads are scaled by ``1 - 1e-7`` so that exact fills survive
floating point; the optimum is unchanged (every item is still larger than a quarter, and the
loads still exceed ``m - 1`` GPUs).

The rows are controlled: ``serving.slo_families: false`` (the compute-only model; the
``tpot_tail`` and ``batch_slots`` rows are off, so the traffic row is each adapter's compute
load and there is no hosting row), llama-3-8b on H100-80GB (analytic profile), one prompt and
output length for all adapters, so each tier's capacity does not depend on the rates. The
generator checks that every adapter's load on its tier is the share it was cut to.

Run: python benchmarks/known_optimum.py [--families triplets cut] [--solvers auto]
     [--time-limit 30] [--quick] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loraserve.models import Config, config_from_mapping
from loraserve.solver import solve
from loraserve.solver.instance import Instance

REPO = Path(__file__).resolve().parents[1]
GPU = "H100-80GB"
CAPACITY = 1000
#: Loads are scaled by this so exact fills stay feasible in floating point.
SHRINK = 1 - 1e-7
PROMPT, OUTPUT = 1024.0, 256.0
TRIPLET_ITEMS: tuple[int, ...] = (60, 120, 249, 501, 600)
#: (GPUs, slots per GPU) of the cut instances.
CUT_SIZES: tuple[tuple[int, int], ...] = ((50, 8), (50, 16), (200, 8), (200, 16))
CUT_RANK_MIX: dict[int, float] = {8: 0.40, 16: 0.25, 32: 0.15, 64: 0.12, 128: 0.08}


@dataclass(frozen=True)
class Known:
    """An instance and its optimum (GPUs)."""

    name: str
    config: Config
    optimum: int


def triplet_sizes(bins: int, rng: random.Random) -> list[int]:
    """Falkenauer's triplets: ``3 bins`` integer sizes, three per bin summing to 1,000."""
    sizes: list[int] = []
    for _ in range(bins):
        first = rng.randint(380, 490)
        second = rng.randint(250, CAPACITY - first - 250)
        sizes += [first, second, CAPACITY - first - second]
    rng.shuffle(sizes)
    return sizes


def _config(ranks: list[int], shares: list[float], slots: int, replicas: int, pool: int,
            tiers: tuple[int, ...], name: str) -> Config:
    """A config whose adapter ``i`` has rank ``ranks[i]`` and takes ``shares[i]`` of a GPU of
    its own rank's tier (compute-only rows)."""
    serving = {"max_loras": min(16, slots), "max_cpu_loras": slots, "max_replicas": replicas,
               "tiers": list(tiers), "slo_families": False}

    def raw(rates: list[float]) -> dict[str, Any]:
        return {
            "base_model": "llama-3-8b",
            "slo": {"ttft_ms": 2000.0, "tpot_ms": 60.0, "percentile": 99.0},
            "pools": [{"gpu_type": GPU, "count": pool, "memory_gib": 80.0,
                       "cost_per_hour": 4.0}],
            "serving": serving,
            "adapters": [{"id": f"a{i:04d}", "rank": r, "request_rate": rate,
                          "prompt_tokens": PROMPT, "output_tokens": OUTPUT}
                         for i, (r, rate) in enumerate(zip(ranks, rates, strict=True))],
        }

    probe = Instance.build(config_from_mapping(raw([1.0] * len(ranks)), source=name))
    own = [probe.kind_of(GPU, r) for r in ranks]
    per_rate = [probe.share_load(a, k) for a, k in enumerate(own)]
    rates = [s * SHRINK / p for s, p in zip(shares, per_rate, strict=True)]
    config = config_from_mapping(raw(rates), source=name)
    inst = Instance.build(config)
    for a, k in enumerate(own):
        got = inst.share_load(a, k)
        if abs(got - shares[a] * SHRINK) > 1e-12:
            raise RuntimeError(f"{name}: adapter {a} takes {got!r} of its tier, not {shares[a]}")
        for kind in inst.kinds:
            if inst.allowed(a, kind.index) and inst.share_load(a, kind.index) < got - 1e-12:
                raise RuntimeError(f"{name}: adapter {a} is cheaper on tier {kind.tier}")
    return config


def triplets(items: int, replicas: int, seed: int) -> Known:
    """The triplet instance of ``items`` adapters (``items / 3`` GPUs at the optimum)."""
    bins = items // 3
    sizes = triplet_sizes(bins, random.Random(seed * 1000 + items))
    name = f"t{items}-{'whole' if replicas == 1 else 'split'}"
    config = _config([8] * len(sizes), [s / CAPACITY for s in sizes], slots=3,
                     replicas=replicas, pool=2 * bins, tiers=(8,), name=name)
    return Known(name, config, bins)


def cut(gpus: int, slots: int, replicas: int, seed: int) -> Known:
    """``gpus`` GPUs cut into ``slots`` adapters each (``gpus`` GPUs at the optimum)."""
    rng = random.Random(seed * 1000 + gpus * 100 + slots)
    tiers, weights = zip(*CUT_RANK_MIX.items(), strict=True)
    ranks: list[int] = []
    shares: list[float] = []
    for _ in range(gpus):
        tier = rng.choices(tiers, weights)[0]
        points = sorted(rng.random() for _ in range(slots - 1))
        pieces = np.diff([0.0, *points, 1.0])
        ranks += [tier] * slots
        shares += [float(p) for p in pieces]
    order = list(range(len(ranks)))
    rng.shuffle(order)
    name = f"cut{gpus}x{slots}-{'whole' if replicas == 1 else 'split'}"
    config = _config([ranks[i] for i in order], [shares[i] for i in order], slots=slots,
                     replicas=replicas, pool=2 * gpus, tiers=tuple(sorted(tiers)), name=name)
    return Known(name, config, gpus)


def instances(families: list[str], seed: int, quick: bool) -> list[Known]:
    """Every instance of ``families``, whole then split."""
    found: list[Known] = []
    for replicas in (1, 8):
        if "triplets" in families:
            for items in TRIPLET_ITEMS[:2] if quick else TRIPLET_ITEMS:
                found.append(triplets(items, replicas, seed))
        if "cut" in families:
            for gpus, slots in CUT_SIZES[:2] if quick else CUT_SIZES:
                found.append(cut(gpus, slots, replicas, seed))
    return found


def peak_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(known: Known, solvers: list[str], limit: float) -> dict[str, Any]:
    """Solve ``known`` with every solver: GPUs found, bound, seconds."""
    row: dict[str, Any] = {"instance": known.name, "adapters": len(known.config.adapters),
                           "optimum": known.optimum}
    for solver in solvers:
        started = time.perf_counter()
        result = solve(known.config, solver=solver, time_limit=limit)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        gpus = result.plan.num_gpus if result.plan is not None else None
        row[f"{solver}_gpus"] = gpus
        row[f"{solver}_over"] = None if gpus is None else gpus - known.optimum
        row[f"{solver}_bound"] = (result.lower_bound if math.isfinite(result.lower_bound)
                                  else None)
        row[f"{solver}_s"] = round(seconds, 2)
        row[f"{solver}_ran"] = result.solver
        if gpus is not None and gpus < known.optimum:
            raise RuntimeError(f"{known.name}: {solver} found {gpus} GPUs, below the optimum")
        if result.lower_bound > known.optimum + 1e-6:
            raise RuntimeError(f"{known.name}: {solver}'s bound {result.lower_bound} is above "
                               f"the optimum {known.optimum}")
    row["limit_s"] = limit
    row["peak_mib"] = round(peak_mib())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["triplets", "cut"],
                        choices=["triplets", "cut"])
    parser.add_argument("--solvers", nargs="+", default=["auto"])
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None,
                        help="instance names to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="the two smallest sizes of each family")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for known in instances(args.families, args.seed, args.quick):
        if args.only and known.name not in args.only:
            continue
        rows.append(run(known, args.solvers, args.time_limit))
        print(pd.DataFrame([rows[-1]]).to_string(index=False, header=len(rows) == 1),
              flush=True)
    table = pd.DataFrame(rows).replace({np.nan: None})
    print()
    print(table.to_string(index=False))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "known_optimum.csv", index=False)
    print(f"\npeak memory {peak_mib():.0f} MiB; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
