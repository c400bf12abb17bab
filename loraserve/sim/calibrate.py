"""Fit the SLO families' parameters against the simulator, on single GPUs.

Run ``python -m loraserve.sim.calibrate [--gpu-type H100-80GB] [--base-model llama-3-8b]``:
it simulates one GPU over a grid of adapter mixes and loads, and writes the fitted values to
``loraserve/profiles/data/slo_calibration.yaml`` (``--write``) or prints them.

* ``tpot_tail_kappa``: one adapter per GPU (no slot contention), prompts of 256-3,072 and
  outputs of 64-512 tokens, tiers 8-128, utilization 50-90 % of the tier's limit. A point
  the ``tpot_tail`` row admits at ``kappa`` satisfies ``kappa <= kappa_max(point)`` (the row
  is monotone in ``kappa``); the fitted ``kappa`` is the smallest that excludes every point
  whose simulated attainment misses the SLO.
* ``slot_variance_weight`` and ``slot_margin``: ``n`` adapters of equal or Zipf popularity on
  one GPU with ``max_loras`` 4, 8 and 16, at loads the compute and TPOT rows admit, so only
  slots can fail. For each variance weight the margin is the least that excludes every
  failing point; the weight kept is the one that excludes the fewest points that meet it.

Both fits are closed-form over the grid, so the result depends only on the simulator and
the seeds (fixed).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from loraserve.models import Config, config_from_mapping
from loraserve.profiles import CostModel
from loraserve.profiles.slo import CALIBRATION_FILE, busy_probability, tail_scale
from loraserve.sim.engine import SimOptions, Worker, run
from loraserve.sim.results import SimResult
from loraserve.sim.workload import generate_requests

logger = logging.getLogger(__name__)

SEEDS = (0, 1)
DURATION_S = 300.0
#: Sigma of the lognormal prompt and output lengths the grids draw: 0.8 matches the prompt
#: dispersion of the Azure conv trace (coefficient of variation 0.96), heavier than the
#: simulator's default 0.6, so plans hold on real token mixes too.
TOKEN_SIGMA = 0.8


@dataclass(frozen=True)
class Point:
    """One simulated single-GPU mix and what the families say of it."""

    tier: int
    adapters: int
    prompt: float
    output: float
    utilization: float
    attainment: float
    tpot_attainment: float = 1.0
    ttft_attainment: float = 1.0
    kappa_max: float = math.inf  # before tail_scale: divide by tail_scale(P, O, g)
    slot_row: float = 0.0
    slot_variance: float = 0.0
    max_loras: int = 16


def _config(gpu_type: str, base_model: str, n: int, rate_each: float, prompt: float,
            output: float, tier: int, max_loras: int,
            weights: list[float] | None = None) -> Config:
    weights = weights or [1.0] * n
    return config_from_mapping({
        "base_model": base_model,
        "slo": {"ttft_ms": 2000, "tpot_ms": 60, "percentile": 99},
        "pools": [{"gpu_type": gpu_type, "count": 1, "memory_gib": 80}],
        "serving": {"slo_families": True, "max_loras": max_loras,
                    "max_cpu_loras": max(n, max_loras),
                    "tiers": [tier]},
        "adapters": [{"id": f"a{i}", "rank": 8, "request_rate": rate_each * n * w / sum(weights),
                      "prompt_tokens": prompt, "output_tokens": output}
                     for i, w in enumerate(weights)],
    })


def _simulate(config: Config, model: CostModel, tier: int) -> tuple[float, float, float]:
    """Attainment of one GPU hosting every adapter, pooled over the seeds.

    Returns both SLOs together, TPOT alone and TTFT alone.
    """
    n, ok, total, tpot_ok, ttft_ok = len(config.adapters), 0, 0, 0, 0
    gpu_type = config.pools[0].gpu_type
    for seed in SEEDS:
        requests = generate_requests(config, DURATION_S, seed=seed, token_sigma=TOKEN_SIGMA)
        result = run(config, [Worker("g0", gpu_type, tier, tuple(range(n)))], requests,
                     [[(0, 1.0)]] * n, SimOptions(seed=seed), model)
        table = SimResult("calibrate", config, result, model).requests
        ok += int(table["slo_ok"].sum())
        tpot = table["tpot_ms"].to_numpy(dtype=float)
        tpot_ok += int(np.sum(~(tpot > config.slo.tpot_ms)))
        ttft_ok += int(np.sum(table["ttft_ms"].to_numpy(dtype=float) <= config.slo.ttft_ms))
        total += len(table)
    total = max(1, total)
    return ok / total, tpot_ok / total, ttft_ok / total


def _at_load(gpu_type: str, base_model: str, n: int, rho: float, prompt: float,
             output: float, tier: int, max_loras: int,
             weights: list[float] | None = None) -> tuple[Config, CostModel] | None:
    probe = _config(gpu_type, base_model, n, 1.0, prompt, output, tier, max_loras)
    model = CostModel.from_config(probe)
    if not model.has(gpu_type, tier):
        return None
    cap = model.capacity(gpu_type, tier)
    per_request = model.request_seconds(probe.adapters[0], gpu_type, tier)
    rate = rho * cap.max_utilization / per_request
    config = _config(gpu_type, base_model, n, rate / n, prompt, output, tier, max_loras,
                     weights)
    return config, CostModel.from_config(config)


def tpot_points(gpu_type: str, base_model: str) -> list[Point]:
    """The single-adapter grid for ``kappa``."""
    points = []
    for tier in TIERS:
        for prompt in (256, 512, 1024, 2048, 3072):
            for output in (64, 256, 512):
                for rho in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
                    built = _at_load(gpu_type, base_model, 1, rho, prompt, output, tier, 16)
                    if built is None:
                        continue
                    config, model = built
                    adapter = config.adapters[0]
                    row = model.tpot_row(gpu_type, tier)
                    cap = model.capacity(gpu_type, tier)
                    phi = adapter.request_rate * prompt / cap.prefill_tokens_per_s
                    decode = adapter.request_rate * output
                    room = 1.0 - phi - row.d1_ms * decode / 1e3
                    kappa_max = ((config.slo.tpot_ms * room / row.d0_ms) - 1.0) / phi \
                        if phi > 0 else math.inf
                    both, tpot, ttft = _simulate(config, model, tier)
                    points.append(Point(tier, 1, prompt, output, rho, both, tpot, ttft,
                                        kappa_max=kappa_max))
    return points


def slot_points(gpu_type: str, base_model: str) -> list[Point]:
    """The many-adapter grid for the ``batch_slots`` row.

    ``n`` adapters of equal or Zipf(1) popularity on one GPU, ``max_loras`` 4, 8 and 16, at
    loads from 10 to 100 % of the tier's limit; points the compute or ``tpot_tail`` rows
    refuse are left out (they would miss for another family's reason).
    """
    points = []
    for max_loras in (4, 8, 16):
        for mix in ("equal", "zipf"):
            # One adapter at a time just above max_loras, where the boundary lies.
            for extra in (-2, 0, 1, 2, 3, 4, 6, 8, 16, 32, 64, 112):
                n = max_loras + extra
                if n < 1 or n > 8 * max_loras:
                    continue
                weights = [1.0 / (i + 1) for i in range(n)] if mix == "zipf" else None
                for rho in (0.1, 0.3, 0.5, 0.7, 0.85, 1.0):
                    built = _at_load(gpu_type, base_model, n, rho, 1024, 256, 16, max_loras,
                                     weights)
                    if built is None:
                        continue
                    config, model = built
                    shares = [(a, 1.0) for a in config.adapters]
                    checks = model.family_checks(gpu_type, 16, shares)
                    if any(c.violated for c in checks if c.family != "batch_slots"):
                        continue
                    busy = [busy_probability(model.in_flight(a, gpu_type, 16))
                            for a in config.adapters]
                    row = sum(busy)
                    variance = sum(c * (1.0 - c) for c in busy)
                    both, tpot, ttft = _simulate(config, model, 16)
                    points.append(Point(16, n, 1024, 256, rho, both, tpot, ttft,
                                        slot_row=row, slot_variance=variance,
                                        max_loras=max_loras))
    return points


def fit_slots(slots: list[Point], target: float, weight: float) -> tuple[float, int]:
    """The least margin excluding every failing point at variance ``weight``, and its cost.

    The second value counts the points that meet the SLO and are excluded all the same.
    """
    def room(p: Point) -> float:
        return 1.0 - (p.slot_row + weight * p.slot_variance) / p.max_loras

    failing = [room(p) for p in slots if p.attainment < target]
    margin = max(-0.99, max(failing, default=-0.99)) + 1e-3
    lost = sum(1 for p in slots if p.attainment >= target and room(p) < margin)
    return margin, lost


#: Tiers of the TPOT grid; each gets its own ``kappa``.
TIERS = (8, 16, 32, 64, 128, 256)
#: Variance weights of the ``batch_slots`` row tried by the fit.
VARIANCE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
#: Exponents of :func:`tail_scale` tried by the fit.
EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)


def fit_kappa(tpot: list[Point], target: float,
              exponent: float) -> tuple[dict[int, float], int]:
    """Per tier, the least ``kappa`` excluding every failing point at ``exponent``.

    The second value counts the points that meet the SLO and are excluded all the same.
    """
    # TPOT and TTFT share the SLO's misses; the TPOT tail gets half of them, and points
    # that miss on TTFT alone are the compute family's (reported, not fitted here).
    tpot_target = 1.0 - (1.0 - target) / 2.0

    def scaled(p: Point) -> float:
        return p.kappa_max / tail_scale(p.prompt, p.output, exponent)

    kappas, lost = {}, 0
    for tier in sorted({p.tier for p in tpot}):
        points = [p for p in tpot if p.tier == tier]
        failing = [scaled(p) for p in points if p.tpot_attainment < tpot_target]
        kappa = max(0.0, max(failing, default=0.0)) * 1.02 + 1e-3
        kappas[tier] = round(kappa, 4)
        lost += sum(1 for p in points if p.tpot_attainment >= tpot_target and scaled(p) < kappa)
    return kappas, lost


def fit(tpot: list[Point], slots: list[Point], target: float) -> dict[str, Any]:
    """``kappa``, its exponent and the slot row's weight and margin; see the module docstring."""
    # The exponent that loses the fewest points that meet the SLO (ties: the smaller one).
    kappas, _, exponent = min(((*fit_kappa(tpot, target, g), g) for g in EXPONENTS),
                              key=lambda fitted: (fitted[1], fitted[2]))
    # The variance weight that loses the fewest points that meet the SLO (ties: the smaller
    # margin, then weight).
    margin, _, weight = min(((*fit_slots(slots, target, t), t) for t in VARIANCE_WEIGHTS),
                            key=lambda fitted: (fitted[1], fitted[0], fitted[2]))
    return {"tpot_tail_kappa": max(kappas.values(), default=1.0), "kappa_by_tier": kappas,
            "tail_exponent": exponent,
            "slot_variance_weight": weight, "slot_margin": round(margin, 4)}  # of max_loras


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m loraserve.sim.calibrate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-type", default="H100-80GB")
    parser.add_argument("--base-model", default="llama-3-8b")
    parser.add_argument("--target", type=float, default=0.99,
                        help="attainment a point must reach (the SLO percentile)")
    parser.add_argument("--write", action="store_true",
                        help=f"write the values into {CALIBRATION_FILE.name} (as 'default' "
                        "too when the key is the shipped default's)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    tpot = tpot_points(args.gpu_type, args.base_model)
    slots = slot_points(args.gpu_type, args.base_model)
    values = fit(tpot, slots, args.target)
    seconds = time.perf_counter() - started
    kappa_fail = sum(p.attainment < args.target for p in tpot)
    for g in EXPONENTS:
        kappas, lost = fit_kappa(tpot, args.target, g)
        print(f"tail exponent {g:g}: kappa by tier {kappas}, excludes {lost} points that meet "
              "it")
    for t in VARIANCE_WEIGHTS:
        margin, lost = fit_slots(slots, args.target, t)
        print(f"slot variance weight {t:g}: margin {margin:.3f}, excludes {lost} points that "
              "meet it")
    slot_fail = sum(p.attainment < args.target for p in slots)
    print(f"tpot grid: {len(tpot)} points, {kappa_fail} miss the SLO; slot grid: {len(slots)} "
          f"points, {slot_fail} miss; {seconds:.0f} s")
    print(yaml.safe_dump(values, sort_keys=False).strip())
    if args.write:
        raw: dict[str, Any] = {}
        if CALIBRATION_FILE.exists():
            raw = yaml.safe_load(CALIBRATION_FILE.read_text(encoding="utf-8")) or {}
        command = (f"python -m loraserve.sim.calibrate --gpu-type {args.gpu_type} "
                   f"--base-model {args.base_model} --write")
        entry = {**values, "source": command,
                 "grid": {"tpot_points": len(tpot), "slot_points": len(slots),
                          "seeds": list(SEEDS), "duration_s": DURATION_S,
                          "token_sigma": TOKEN_SIGMA}}
        raw[f"{args.gpu_type}/{args.base_model}"] = entry
        if args.gpu_type == "H100-80GB" and args.base_model == "llama-3-8b":
            raw["default"] = copy.deepcopy(entry)  # a copy: no YAML alias in the file
        header = ("# Fitted parameters of the SLO families (loraserve/profiles/slo.py), per "
                  "<gpu_type>/<base_model>;\n# 'default' serves every other pair. Written by "
                  "the command in each entry's 'source'.\n")
        tmp = CALIBRATION_FILE.with_suffix(".tmp")
        tmp.write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        tmp.replace(CALIBRATION_FILE)
        print(f"written to {CALIBRATION_FILE.name}")
    return 0


def rows(points: list[Point]) -> np.ndarray:
    """The grid as an array, for tests and notebooks."""
    return np.array([[p.tier, p.adapters, p.prompt, p.output, p.utilization, p.attainment,
                      p.kappa_max, p.slot_row] for p in points])


if __name__ == "__main__":
    sys.exit(main())
