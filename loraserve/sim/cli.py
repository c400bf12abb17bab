"""The simulator's subcommands: ``simulate``, ``compare`` and ``capacity``.

Each reads a config, builds the traffic (a generated stream, or an Azure trace with
``--trace``), calls :mod:`loraserve.sim`'s Python API and prints a table; progress goes to
stderr (rewritten in place on a terminal; ``-q`` silences it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from loraserve._argtypes import at_least_one as _gpus
from loraserve._argtypes import non_negative as _non_negative
from loraserve._argtypes import positive as _positive
from loraserve._argtypes import seed as _seed
from loraserve.models import Config, ConfigError, PlacementPlan, load_config
from loraserve.models.io import check_outputs, write_atomic
from loraserve.models.plan_check import check_plan
from loraserve.models.trace import load_azure_trace
from loraserve.sim.dynamic import add_dynamic_arguments
from loraserve.sim.engine import SimOptions
from loraserve.sim.experiments import (
    Scenario,
    capacity,
    compare,
    parse_names,
    plot_capacity,
    plot_comparison,
)
from loraserve.sim.policies import POLICIES, default_policies, deployment_from_plan
from loraserve.sim.results import SimResult
from loraserve.sim.workload import (
    Requests,
    fit_token_means,
    generate_requests,
    requests_from_trace,
)

EXIT_OK, EXIT_FAIL = 0, 1

#: Seconds of generated traffic when neither ``--trace`` nor ``--duration`` is given.
DEFAULT_DURATION_S = 60.0


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


class _Status:
    """One status line on stderr: rewritten in place on a terminal, one line per update in logs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        text = f"[{elapsed:6.1f} s] {text}"
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{text}")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def bar(self, label: str) -> Callable[[float], None]:
        """A progress bar for one long simulation."""
        last = [-1]

        def show(share: float) -> None:
            tenth = int(share * 20)
            if tenth == last[0] or (not self.tty and tenth % 4 and share < 1):
                return
            last[0] = tenth
            self.line(f"{label} [{'#' * tenth}{'.' * (20 - tenth)}] {share:4.0%}")

        return show

    def on_run(self, policy: str, what: str, gpus: int, scale: float,
               result: SimResult | None) -> None:
        if result is None:
            verdict = "no plan"
        else:
            s = result.summary
            verdict = (f"attainment {s['slo_attainment']:.1%} "
                       f"{'meets' if s['meets_slo'] else 'misses'} the SLO")
        # No run number: with --jobs the runs of several processes interleave here.
        self.line(f"{policy} {what}: {gpus} GPUs, x{scale:.3g} rate: {verdict}")

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


@dataclass
class _Traffic:
    config: Config
    requests_at: Callable[[float], Requests]
    description: str


def load_trace(args: argparse.Namespace) -> pd.DataFrame:
    """The ``--trace`` file's rows (sorted with ``--sort-trace``), cut to ``--duration``."""
    trace = load_azure_trace(args.trace, unsorted="sort" if args.sort_trace else "error")
    if args.duration is not None:
        trace = trace[trace["t"] < args.duration].reset_index(drop=True)
        if len(trace) < 2:
            raise ConfigError(f"--duration {args.duration:g}: the trace's first "
                              f"{args.duration:g} s hold fewer than two requests")
    return trace


def _traffic(args: argparse.Namespace, config: Config) -> _Traffic:
    """The planning config and the traffic at any rate scale, from the CLI arguments."""
    seed = args.seed
    if args.trace:
        trace = load_trace(args)
        base = requests_from_trace(trace, config, seed=seed, rate_scale=args.rate_scale)
        # Scale the config's rates to the traffic actually replayed, and price each adapter
        # with the token counts of its requests: every policy plans for what is simulated.
        factor = base.rate / config.total_request_rate
        planned = fit_token_means(config.scaled(factor), base)
        native = len(trace) / max(1e-9, float(trace["t"].iloc[-1] - trace["t"].iloc[0]))
        root = base.rate / native

        def at(scale: float) -> Requests:
            if scale == 1.0:
                return base
            return requests_from_trace(trace, config, seed=seed, rate_scale=root * scale)

        described = (f"trace {Path(args.trace).name}: {len(base)} requests over "
                     f"{base.duration:.0f} s ({base.rate:.1f} req/s, x{root:.3g} the trace)")
        return _Traffic(planned, at, described)
    duration = args.duration if args.duration is not None else DEFAULT_DURATION_S
    scale0 = args.rate_scale if args.rate_scale is not None else 1.0
    planned = config.scaled(scale0) if scale0 != 1.0 else config

    def generated(scale: float) -> Requests:
        return generate_requests(config, duration, seed=seed, arrival=args.arrival, cv=args.cv,
                                 token_sigma=args.token_sigma, rate_scale=scale0 * scale)

    first = generated(1.0)
    described = (f"generated: {len(first)} requests over {duration:g} s "
                 f"({first.rate:.1f} req/s, {args.arrival}"
                 f"{f' cv {args.cv:g}' if args.arrival == 'gamma' else ''}, seed {seed})")
    return _Traffic(planned, lambda s: first if s == 1.0 else generated(s), described)


def _options(args: argparse.Namespace) -> SimOptions:
    return SimOptions(cold_load_ms=args.cold_load_ms, disk_gb_per_s=args.disk_gbps,
                      max_drain_s=args.max_drain, seed=args.seed)


def _cell(spec: str, blank: str = "-") -> Callable[[Any], str]:
    """A table cell formatter: text as it is, ``blank`` for a missing figure, else ``spec``."""

    def fmt(value: Any) -> str:
        if isinstance(value, str):
            return value
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return blank
        return format(value, spec)

    return fmt


_ms = _cell(".0f")
_count = _cell(".0f", "none")
_rate = _cell(".1f")
_one = _cell(".1f")
_pct = _cell(".1%")


def _fmt_table(frame: pd.DataFrame, columns: list[tuple[str, str, Callable[[Any], str]]]) -> str:
    cells = [[fmt(row[key]) for key, _, fmt in columns] for _, row in frame.iterrows()]
    heads = [head for _, head, _ in columns]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(heads, widths, strict=True)))]
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def _text(value: Any) -> str:
    return str(value)


def _write_csv(frame: pd.DataFrame, path: str) -> None:
    write_atomic(path, frame.to_csv(index=False))


def _slo_line(config: Config) -> str:
    slo = config.slo
    return (f"SLO: p{slo.percentile:g} TTFT <= {slo.ttft_ms:g} ms and TPOT <= "
            f"{slo.tpot_ms:g} ms (a run meets it when {slo.percentile:g}% of requests meet both)")


def _cmd_simulate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    plan = PlacementPlan.load(args.plan)
    check_plan(plan, args.plan, config, args.config)
    check_outputs({"--requests-csv": args.requests_csv, "--gpus-csv": args.gpus_csv},
                  {"config": args.config, "--plan": args.plan, "--trace": args.trace})
    traffic = _traffic(args, config)
    status = _Status(args.progress or (sys.stderr.isatty() and not args.quiet))
    scenario = Scenario(traffic.config, traffic.requests_at, _options(args), seed=args.seed)
    deployment = deployment_from_plan(plan, traffic.config, policy=Path(args.plan).name)
    result = scenario.simulate(deployment, progress=status.bar("simulating"))
    status.done()
    s = result.summary
    _out(f"{args.config}: {traffic.description}")
    _out(_slo_line(traffic.config))
    _out(f"{args.plan}: {deployment.num_gpus} GPUs; simulated in {s['wall_s']:.1f} s"
         + ("; stopped before every request finished" if s["stopped"] else ""))
    _out(_fmt_table(result.gpus, [
        ("gpu_id", "gpu", _text), ("tier", "tier", _text), ("hosted", "adapters", _text),
        ("requests", "requests", _text), ("load", "load", _pct),
        ("predicted_utilization", "predicted", _pct), ("busy", "busy", _pct),
        ("adapter_loads", "loads", _text), ("expected_busy_adapters", "busy adapters", _one),
        ("ttft_tail_ms", f"p{config.slo.percentile:g} TTFT", _ms),
        ("tpot_tail_ms", f"p{config.slo.percentile:g} TPOT", _ms),
        ("slo_attainment", "within SLO", _pct)]))
    gpus = result.gpus
    error = (gpus["load"] - gpus["predicted_utilization"]).abs()
    if error.notna().any():
        _out(f"load vs the plan's predicted utilization: mean abs error "
             f"{100 * error.mean():.1f} points, worst {100 * error.max():.1f}")
    _out(f"TTFT p50 {_ms(s['ttft_p50_ms'])} ms, p99 {_ms(s['ttft_p99_ms'])} ms; "
         f"TPOT p50 {_ms(s['tpot_p50_ms'])} ms, p99 {_ms(s['tpot_p99_ms'])} ms; "
         f"E2E p99 {_ms(s['e2e_p99_ms'])} ms")
    _out(f"SLO attainment {s['slo_attainment']:.2%} ({'meets' if s['meets_slo'] else 'misses'} "
         f"the SLO); throughput {s['throughput_rps']:.1f} req/s, "
         f"{s['output_tokens_per_s']:.0f} output tokens/s")
    if args.requests_csv:
        _write_csv(result.requests, args.requests_csv)
        _out(f"per-request table written to {args.requests_csv}")
    if args.gpus_csv:
        _write_csv(result.gpus, args.gpus_csv)
        _out(f"per-GPU table written to {args.gpus_csv}")
    return EXIT_OK if s["meets_slo"] else EXIT_FAIL


def _policies(args: argparse.Namespace, config: Config) -> list[str]:
    if args.policies is None:
        return default_policies(config)
    return parse_names(args.policies, POLICIES, "--policies", "policy")


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.dynamic:
        from loraserve.sim.dynamic import cmd_compare_dynamic

        return cmd_compare_dynamic(args)
    config = load_config(args.config)
    policies = _policies(args, config)
    check_outputs({"--csv": args.csv, "--plot": args.plot},
                  {"config": args.config, "--trace": args.trace})
    pool_size = sum(p.count for p in config.pools)
    if args.gpus is not None and args.gpus > pool_size:
        raise ConfigError(f"--gpus {args.gpus}: the pools hold {pool_size} GPUs; give at most "
                          "that, or grow the pools")
    traffic = _traffic(args, config)
    status = _Status(args.progress or (sys.stderr.isatty() and not args.quiet))
    # Curves need every run to the end; a table needs only each search run's verdict.
    scenario = Scenario(traffic.config, traffic.requests_at, _options(args),
                        time_limit=args.time_limit, seed=args.seed, on_run=status.on_run,
                        stop_early=not args.plot)
    result = compare(scenario, policies, gpus=args.gpus, searches=not args.no_search,
                     jobs=args.jobs)
    status.done()
    _out(f"{args.config}: {len(config.adapters)} adapters; {traffic.description}")
    _out(_slo_line(traffic.config))
    n = result.gpus
    columns: list[tuple[str, str, Callable[[Any], str]]] = [("policy", "policy", _text)]
    if not args.no_search:
        columns += [("gpus_needed", "GPUs needed", _count),
                    ("max_rate_rps", f"max req/s @{n}", _rate)]
    columns += [("ttft_p50_ms", "p50 TTFT", _ms), ("ttft_p99_ms", "p99 TTFT", _ms),
                ("tpot_p50_ms", "p50 TPOT", _ms), ("tpot_p99_ms", "p99 TPOT", _ms),
                ("slo_attainment", "SLO att.", _pct)]
    table = result.table.astype(object)
    for column, _, _ in columns[1:]:
        table.loc[~result.table["has_plan"].astype(bool), column] = "no plan"
    _out(_fmt_table(table, columns))
    _out(f"latencies (ms) and SLO attainment at {traffic.config.total_request_rate:.1f} req/s "
         f"on {n} GPUs; {len(result.points)} simulations in "
         f"{time.perf_counter() - status.started:.1f} s")
    if args.csv:
        _write_csv(result.table, args.csv)
        _out(f"table written to {args.csv}")
    if args.plot:
        plot_comparison(result, args.plot, title=Path(args.config).name)
        _out(f"plot written to {args.plot}")
    return EXIT_OK


def _cmd_capacity(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    policies = _policies(args, config)
    check_outputs({"--csv": args.csv, "--plot": args.plot},
                  {"config": args.config, "--trace": args.trace})
    traffic = _traffic(args, config)
    status = _Status(args.progress or (sys.stderr.isatty() and not args.quiet))
    scenario = Scenario(traffic.config, traffic.requests_at, _options(args),
                        time_limit=args.time_limit, seed=args.seed, on_run=status.on_run)
    table = capacity(scenario, policies, args.rates)
    status.done()
    _out(f"{args.config}: {len(config.adapters)} adapters; {traffic.description}")
    _out(_slo_line(traffic.config))
    _out(_fmt_table(table, [("policy", "policy", _text), ("request_rate", "req/s", _rate),
                            ("planned_gpus", "GPUs planned", _count),
                            ("gpus_needed", "GPUs needed (simulated)", _count)]))
    if args.csv:
        _write_csv(table, args.csv)
        _out(f"table written to {args.csv}")
    if args.plot:
        plot_capacity(table, args.plot, title=Path(args.config).name)
        _out(f"plot written to {args.plot}")
    return EXIT_OK


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _workload_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config YAML")
    parser.add_argument("--trace", metavar="FILE",
                        help="Azure LLM trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens); "
                             "by default a generated stream")
    parser.add_argument("--sort-trace", action="store_true",
                        help="accept a trace whose rows are out of time order (sorted first)")
    parser.add_argument("--duration", type=_positive, metavar="S",
                        help=f"seconds of traffic (generated: default {DEFAULT_DURATION_S:g}; "
                             "trace: its first S seconds)")
    parser.add_argument("--rate-scale", type=_positive, metavar="X",
                        help="traffic multiplier (trace: default scales it to the config's "
                             "total rate; generated: default 1)")
    parser.add_argument("--arrival", choices=("poisson", "gamma"), default="poisson",
                        help="arrival process of a generated stream")
    parser.add_argument("--cv", type=_positive, default=1.0,
                        help="coefficient of variation of gamma inter-arrival gaps")
    parser.add_argument("--token-sigma", type=_non_negative, default=0.6,
                        help="lognormal sigma of generated token counts (default 0.6)")
    parser.add_argument("--seed", type=_seed, default=0, help="seeds traffic, routing, solvers")
    parser.add_argument("--cold-load-ms", type=_non_negative, default=SimOptions.cold_load_ms,
                        help="fixed cost of loading an adapter from disk (default "
                             f"{SimOptions.cold_load_ms:g})")
    parser.add_argument("--disk-gbps", type=_positive, default=SimOptions.disk_gb_per_s,
                        help="disk read bandwidth for such loads, GB/s (default "
                             f"{SimOptions.disk_gb_per_s:g})")
    parser.add_argument("--max-drain", type=_positive, default=SimOptions.max_drain_s,
                        metavar="S", help="simulate at most S seconds after the last arrival")
    parser.add_argument("--progress", action="store_true",
                        help="progress on stderr even when it is not a terminal")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress")


def register(sub: Any) -> None:
    """Add the simulator's subcommands to the ``loraserve`` parser's ``sub``."""
    simulate = sub.add_parser("simulate", help="simulate a plan serving a trace")
    _workload_args(simulate)
    simulate.add_argument("--plan", required=True, help="plan YAML (from loraserve plan)")
    simulate.add_argument("--requests-csv", metavar="FILE", help="write per-request latencies")
    simulate.add_argument("--gpus-csv", metavar="FILE", help="write per-GPU figures")
    simulate.set_defaults(func=_cmd_simulate)

    comp = sub.add_parser("compare", help="compare placement policies on one trace")
    _workload_args(comp)
    comp.add_argument("--policies", nargs="+", default=None, metavar="POLICY",
                      help=f"policies to compare ({', '.join(POLICIES)}; default all, "
                           "loraserve-remote only when the config has a topology)")
    comp.add_argument("--gpus", type=_gpus, metavar="N",
                      help="fleet size for the fixed-size figures (default: loraserve's plan)")
    comp.add_argument("--no-search", action="store_true",
                      help="only the fixed-size figures (skip GPUs needed and max rate)")
    comp.add_argument("--time-limit", type=_positive, default=10.0,
                      help="seconds per loraserve solve (default 10)")
    comp.add_argument("--plot", metavar="FILE.png",
                      help="draw the curves (runs every simulation to the end, so slower)")
    comp.add_argument("--csv", metavar="FILE", help="write the table")
    comp.add_argument("--jobs", type=_gpus, default=_cpus(), metavar="N",
                      help="policies simulated at once, one process each (default: the "
                           "CPUs this process may use)")
    add_dynamic_arguments(comp)
    comp.set_defaults(func=_cmd_compare)

    cap = sub.add_parser("capacity", help="GPUs needed against request rate")
    _workload_args(cap)
    cap.add_argument("--policies", nargs="+", default=["loraserve"], metavar="POLICY",
                     help="policies (default loraserve)")
    cap.add_argument("--rates", type=_positive, nargs="+", default=[0.5, 1.0, 1.5, 2.0],
                     metavar="X", help="rate scales to try (default 0.5 1 1.5 2)")
    cap.add_argument("--time-limit", type=_positive, default=10.0,
                     help="seconds per loraserve solve (default 10)")
    cap.add_argument("--plot", metavar="FILE.png", help="draw GPUs needed against rate")
    cap.add_argument("--csv", metavar="FILE", help="write the table")
    cap.set_defaults(func=_cmd_capacity)
