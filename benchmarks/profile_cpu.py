"""Measured tier slowdowns and held-out prediction error of `loraserve profile`, on this machine.

For each model (default llama-3-8b and mistral-7b), on CUDA when present and on the CPU
otherwise (fp32; the figures are then CPU figures, not GPU ones):

1. measure a profile with the torch profiler (``loraserve.profiles.profiler.measure``):
   real layer shapes, ``--layers`` decoder layers scaled by depth, tiers 8-256, padded
   (vLLM) and rank-grouped (S-LoRA) decode, prefill, adapter loads;
2. re-measure held-out points (``check_profile``: batch sizes between the grid points with
   uneven adapter compositions, token counts between the prefill points) together with the
   grid, and report the prediction error of the profile's interpolation, the error of the
   same interpolation of the grid re-measured in that session (the interpolation alone),
   and the drift of the grid since the profile;
3. report the slowdown of tiers 128 and 256 over tier 8 at batch 32 and 128 (decode step),
   measured (fitted profile and raw medians) beside the analytic H100-80GB and A100-80GB
   profiles shipped with loraserve, and the padded / grouped step ratio (what padding costs).

Writes ``benchmarks/results/profile_<device>.csv`` (the table) and the measured profiles
with their raw CSVs, plots and held-out points (``<model>.check.csv``) under
``benchmarks/results/profiles/<GPU type>/``.

Run: python benchmarks/profile_cpu.py [--models llama-3-8b mistral-7b] [--layers 1]
     [--repeats 5] [--warmup 1] [--passes 1] [--threads N] [--cpu-clock wall|process]
     [--quick]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from loraserve.models import PRESETS
from loraserve.profiles.analytic import GPU_SPECS, analytic_profile
from loraserve.profiles.profiler import (
    ProfilerSettings,
    check_profile,
    measure,
    plot_profile,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SLOWDOWN_TIERS = (128, 256)
SLOWDOWN_BATCHES = (32, 128)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", nargs="+", default=["llama-3-8b", "mistral-7b"])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--cpu-clock", choices=("wall", "process"), default="wall",
                        help="process: CPU time of the process (needs --threads 1)")
    parser.add_argument("--tiers", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        default=[1, 2, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--prefill-tokens", type=int, nargs="+",
                        default=[64, 128, 256, 512, 1024])
    parser.add_argument("--quick", action="store_true",
                        help="tiers 8,128,256, batches 1,8,32,128, prefill 128,512, 3 repeats")
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.tiers, args.batch_sizes, args.prefill_tokens = [8, 128, 256], [1, 8, 32, 128], \
            [128, 512]
        args.repeats = 3
    command = "python benchmarks/profile_cpu.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    rows = []
    for name in args.models:
        settings = ProfilerSettings(
            base_model=PRESETS[name], tiers=tuple(args.tiers),
            batch_sizes=tuple(args.batch_sizes), prefill_tokens=tuple(args.prefill_tokens),
            layers=args.layers, repeats=args.repeats, warmup=args.warmup, passes=args.passes,
            threads=args.threads, cpu_clock=args.cpu_clock, command=command)
        began = time.perf_counter()
        run = measure(settings, progress=lambda line, n=name: print(f"{n}: {line}",
                                                                    file=sys.stderr))
        measured_s = time.perf_counter() - began
        profile = run.profile
        out = RESULTS / "profiles" / profile.gpu_type / f"{name}.measured.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        run.save(out)
        plot_profile(out)
        raw = {(r.variant, r.tier, r.size): r.model_ms for r in run.measurements
               if r.kind == "decode"}
        report = None
        if not args.no_check:
            began = time.perf_counter()
            report = check_profile(profile, progress=lambda line, n=name: print(
                f"{n} check: {line}", file=sys.stderr))
            check_s = time.perf_counter() - began
            pd.DataFrame([
                {"held_out": p in report.points, "kind": p.kind, "tier": p.tier,
                 "size": p.size, "measured_ms": p.measured_ms, "profile_ms": p.predicted_ms,
                 "error": p.error, "session_ms": p.session_ms, "session_error": p.session_error,
                 "composition": " ".join(map(str, p.composition))}
                for p in (*report.points, *report.grid)
            ]).to_csv(out.with_name(f"{name}.check.csv"), index=False)
        analytic = {gpu: analytic_profile(PRESETS[name], GPU_SPECS[gpu])
                    for gpu in ("H100-80GB", "A100-80GB")}
        for batch in SLOWDOWN_BATCHES:
            if batch not in profile.batch_sizes or 8 not in profile.tiers:
                continue
            for tier in SLOWDOWN_TIERS:
                if tier not in profile.tiers:
                    continue
                row = {
                    "model": name, "device": profile.provenance["device_name"],
                    "gpu_type": profile.gpu_type, "batch": batch, "tier": tier,
                    "tier8_ms": profile.decode_ms(8, batch),
                    "tier_ms": profile.decode_ms(tier, batch),
                    "slowdown": profile.decode_ms(tier, batch) / profile.decode_ms(8, batch),
                    "slowdown_raw": raw[("padded", tier, batch)] / raw[("padded", 8, batch)],
                    "padded_over_grouped": (raw[("padded", tier, batch)]
                                            / raw[("grouped", tier, batch)]),
                }
                for gpu, other in analytic.items():
                    row[f"analytic_{gpu}"] = other.decode_ms(tier, batch) / other.decode_ms(
                        8, batch)
                if report is not None:
                    row["heldout_decode_median_err"] = report.median_abs_error("decode")
                    row["heldout_decode_max_err"] = report.max_abs_error("decode")
                    row["heldout_decode_session_err"] = report.median_abs_error(
                        "decode", session=True)
                    row["grid_drift"] = report.median_drift("decode")
                    row["heldout_prefill_median_err"] = report.median_abs_error("prefill")
                    row["heldout_points"] = len(report.points)
                    row["check_s"] = check_s
                row["measure_s"] = measured_s
                rows.append(row)
        if report is not None:
            for kind in ("decode", "prefill"):
                print(f"{name}: held-out {kind} median |error| "
                      f"{report.median_abs_error(kind):.1%} (max "
                      f"{report.max_abs_error(kind):.1%}) against the profile, "
                      f"{report.median_abs_error(kind, session=True):.1%} (max "
                      f"{report.max_abs_error(kind, session=True):.1%}) against the grid "
                      f"re-measured in the same session; grid drift "
                      f"{report.median_drift(kind):.1%}", file=sys.stderr)
    frame = pd.DataFrame(rows)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    RESULTS.mkdir(parents=True, exist_ok=True)
    frame.to_csv(RESULTS / f"profile_{device}.csv", index=False)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = args.threads or torch.get_num_threads()
    print(f"# {command}; torch {torch.__version__}; {threads} thread(s); "
          f"load average {load:.2f}")
    if not frame.empty:
        columns = ["model", "batch", "tier", "tier8_ms", "tier_ms", "slowdown", "slowdown_raw",
                   "analytic_H100-80GB", "analytic_A100-80GB", "padded_over_grouped"]
        columns += [c for c in ("heldout_decode_median_err", "heldout_decode_max_err",
                                "heldout_decode_session_err", "grid_drift",
                                "heldout_prefill_median_err") if c in frame]
        print(frame[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
