"""``loraserve``: plan, validate, verify, schema.

The CLI is thin: it parses arguments, loads inputs, calls the same Python API a user would,
and writes results. Bad input exits with code 2 and one line naming the field; an
infeasible problem exits with code 1 and says what binds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from loraserve._argtypes import at_least_one as _at_least_one
from loraserve._argtypes import count as _count
from loraserve._argtypes import positive as _positive
from loraserve._argtypes import seed as _seed
from loraserve._interrupt import Interrupted, signals_interrupt
from loraserve.models import (
    Config,
    ConfigError,
    PlacementPlan,
    SolveResult,
    load_config,
    plan_migration,
)
from loraserve.models.io import (
    check_outputs,
    one_line,
    tracking_inputs,
    tracking_writes,
    write_atomic,
)
from loraserve.models.plan_check import check_current
from loraserve.profiles import CostModel
from loraserve.solver import SOLVERS, solve
from loraserve.solver.progress import Progress, ProgressCallback

if TYPE_CHECKING:
    pass

logger = logging.getLogger("loraserve")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def format_plan(plan: PlacementPlan, config: Config) -> list[str]:
    """GPUs per type and tier, and the totals, as ``loraserve plan`` prints them."""
    lines = [f"{'gpu_type':<12} {'tier':>5} {'gpus':>5} {'adapters':>9} "
             f"{'mean util':>10} {'max util':>9}"]
    for row in plan.tier_table().itertuples(index=False):
        lines.append(f"{row.gpu_type:<12} {row.tier:>5} {row.gpus:>5} {row.adapters:>9} "
                     f"{row.mean_util:>10.1%} {row.max_util:>9.1%}")
    gpus = plan.gpu_table()
    lines.append(
        f"{'total':<12} {'':>5} {plan.num_gpus:>5} {len(config.adapters):>9}   "
        f"cost {plan.cost_per_hour(config):.2f}/h   worst predicted "
        f"p{config.slo.percentile:g} TTFT {gpus['ttft_ms'].max():.0f} ms, "
        f"p{config.slo.percentile:g} TPOT {_worst_tpot_tail(plan, config):.1f} ms"
    )
    lines.extend(slot_warning(plan, config))
    return lines


def _worst_tpot_tail(plan: PlacementPlan, config: Config) -> float:
    """The largest predicted TPOT at the SLO percentile over the plan's GPUs."""
    model = CostModel.from_config(config)
    shares = plan.gpu_shares(config)
    return max((model.predict(gpu.gpu_type, gpu.tier, shares[gpu.gpu_id]).tpot_tail_ms
                for gpu in plan.gpus if model.has(gpu.gpu_type, gpu.tier)), default=0.0)


#: Share of the time above ``max_loras`` busy adapters from which a GPU is reported.
SLOT_OVERFLOW_REPORTED = 0.05


def slot_warning(plan: PlacementPlan, config: Config) -> list[str]:
    """One line when GPUs of ``plan`` often have more busy adapters than ``max_loras``.

    Only for the compute-only model (``slo_families: false``): with the families on, the
    ``batch_slots`` row, fitted against the simulator, already keeps the contention a plan
    may have to what meets the SLO.
    """
    if not plan.gpus or config.serving.slo_families:
        return []
    table = plan.slot_table(config)
    crowded = table[table["overflow"] > SLOT_OVERFLOW_REPORTED]
    if crowded.empty:
        return []
    worst = crowded.sort_values(["overflow", "expected_active"], ascending=False).iloc[0]
    return [f"slot contention: {len(crowded)} GPU(s) have more busy adapters than max_loras "
            f"({config.serving.max_loras}) over {SLOT_OVERFLOW_REPORTED:.0%} of the time "
            f"(worst {worst.gpu_id}: {worst.expected_active:.1f} busy of {worst.hosted} "
            f"hosted, {worst.overflow:.0%} of the time); their requests wait for a LoRA slot, "
            "which the predicted TTFT leaves out: check with --simulate, or bring "
            "max_cpu_loras nearer max_loras"]


def format_result(result: SolveResult, config: Config) -> str:
    """The table ``loraserve plan`` prints: GPUs per type and tier, then the solve figures."""
    lines = format_plan(result.plan, config) if result.plan is not None else []
    gap = "n/a" if result.gap is None else f"{result.gap:.1%}"
    objective = "n/a" if result.objective is None else f"{result.objective:g}"
    lines.append(
        f"status {result.status}   solver {result.solver}   objective {objective}   "
        f"bound {result.lower_bound:g}   gap {gap}   {result.seconds:.2f} s"
    )
    if result.message:
        lines.append(result.message)
    return "\n".join(lines)


def _progress_printer(enabled: bool) -> ProgressCallback | None:
    """A progress line on stderr: rewritten in place on a terminal, one per report in logs."""
    if not enabled:
        return None
    tty = sys.stderr.isatty()

    def show(report: Progress) -> None:
        if tty:
            sys.stderr.write(f"\r\x1b[K{report}")
        else:
            sys.stderr.write(f"{report}\n")
        sys.stderr.flush()

    return show


def _cmd_plan(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    current = PlacementPlan.load(args.current) if args.current else None
    if current is not None:
        check_current(current, config, args.current, force=args.force)
    # Before the solve: a bad target found after minutes of solving loses the plan.
    check_outputs({"-o": args.output, "--migration": args.migration},
                  {"config": args.config, "--current": args.current})
    if args.max_moves is not None and current is None:
        raise ConfigError("--max-moves needs --current PLAN (the plan the moves start from)")
    if args.migration and current is None:
        raise ConfigError("--migration needs --current PLAN (the plan to migrate from)")
    if args.simulate and current is not None:
        raise ConfigError("--simulate sizes a fresh plan; drop --current, or check the re-plan "
                          "with loraserve simulate")
    show = _progress_printer(args.progress or (sys.stderr.isatty() and not args.quiet))
    result = solve(config, solver=args.solver, time_limit=args.time_limit, seed=args.seed,
                   threads=args.threads, current=current, max_moves=args.max_moves,
                   progress=show)
    if show is not None and sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    if result.status == "infeasible":
        _out(f"infeasible: {result.message}")
        return EXIT_FAIL
    _out(format_result(result, config))
    if result.plan is None:
        return EXIT_FAIL
    plan = result.plan
    if args.simulate:
        sized = _size_by_simulation(args, config, plan)
        if sized is None:
            return EXIT_FAIL
        plan = sized
    migration = None
    if current is not None:
        try:
            migration = plan_migration(current, plan, config)
        except ValueError as exc:
            # No order of steps keeps every adapter live within the slots: nothing is written.
            _out(f"no safe migration: {exc}")
            return EXIT_FAIL
        summary = migration.summary()
        _out("migration: " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in summary.items()))
    # Write the migration first: a plan on disk without the steps that reach it is the
    # state to avoid if the second write fails.
    if migration is not None and args.migration:
        migration.save(args.migration)
        _out(f"migration written to {args.migration} ({len(migration.steps)} steps; for "
             "review: apply plans its own steps from the fleet it observes)")
    if args.output:
        plan.save(args.output)
        _out(f"plan written to {args.output}")
    return EXIT_OK


def _size_by_simulation(args: argparse.Namespace, config: Config,
                        plan: PlacementPlan) -> PlacementPlan | None:
    """Check ``plan`` in simulation; where GPUs miss, tighten their families and re-solve.

    See :mod:`loraserve.sim.sizing`. None (after saying why) when no round meets the SLO.
    """
    # Imported here: planning alone must not pay for the simulator's imports.
    from loraserve.sim import Scenario, generate_requests
    from loraserve.sim.sizing import size_by_simulation

    duration, seed = args.sim_duration, args.seed
    scenario = Scenario(config, lambda s: generate_requests(config, duration, seed=seed,
                                                            rate_scale=s),
                        time_limit=min(args.time_limit, 10.0), seed=seed)
    sizing = size_by_simulation(scenario, plan, solver=args.solver,
                                time_limit=min(args.time_limit, 10.0))
    for i, step in enumerate(sizing.rounds):
        verdict = "meets" if step.meets_slo else "misses"
        what = "the plan" if i == 0 else f"re-solve {i}"
        line = (f"simulated ({duration:g} s of generated Poisson traffic, seed {seed}): "
                f"{what} ({step.gpus} GPUs) {verdict} the SLO, {step.attainment:.1%} of "
                "requests within it")
        if step.missed:
            families = ", ".join(f"{n} GPU(s) {f}" for f, n in sorted(step.missed.items()))
            line += f"; tightening {families}"
        _out(line)
        if step.worst:
            _out(step.worst)
    if sizing.plan is None:
        _out(f"no plan met the SLO in simulation after {len(sizing.rounds)} rounds of "
             "tightening the families of the GPUs that missed; check the SLO and the pools")
        return None
    if sizing.plan is not plan:
        problems = sizing.plan.verify(config)
        if problems:
            raise RuntimeError(f"the simulation-checked plan fails verify: {problems[0]}")
        _out(f"kept the re-solved plan: {sizing.plan.num_gpus} GPUs ({len(sizing.tighten)} "
             "adapters' families tightened)")
        for line in format_plan(sizing.plan, config):
            _out(line)
    return sizing.plan


def _cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # What plan checks next: a profile for every pool, readable profile files. A config that
    # validates and then fails to plan is a broken promise.
    from loraserve.profiles import CostModel

    CostModel.from_config(config)
    ranks = sorted({a.rank for a in config.adapters})
    _out(f"{args.config}: valid: {len(config.adapters)} adapters (ranks {ranks}), "
         f"{config.total_request_rate:g} req/s, "
         f"{sum(p.count for p in config.pools)} GPUs in {len(config.pools)} pool(s), "
         f"base model {config.base_model.name}")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    plan = PlacementPlan.load(args.plan)
    problems = plan.verify(config)
    if not problems:
        _out(f"{args.plan}: valid for {args.config} ({plan.num_gpus} GPUs)")
        return EXIT_OK
    for problem in problems:
        _out(str(problem))
    _out(f"{args.plan}: {len(problems)} violation(s)")
    return EXIT_FAIL


def _cmd_schema(args: argparse.Namespace) -> int:
    schema = Config.model_json_schema()
    text = json.dumps(schema, indent=2)
    if args.output:
        check_outputs({"-o": args.output})
        write_atomic(args.output, text + "\n")
    else:
        _out(text)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(prog="loraserve", description="Rank-aware LoRA placement for vLLM fleets.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v) or details (-vv) to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    plan = sub.add_parser("plan", help="solve a placement and print its table")
    plan.add_argument("config", help="config YAML")
    plan.add_argument("-o", "--output", help="write the plan YAML here")
    plan.add_argument("--solver", choices=SOLVERS, default="auto")
    plan.add_argument("--time-limit", type=_positive, default=30.0, help="seconds (default 30)")
    plan.add_argument("--seed", type=_seed, default=0, help="seeds the solvers (default 0)")
    plan.add_argument("--threads", type=_at_least_one, default=1,
                      help="solver threads (default 1: the same input gives the same plan)")
    plan.add_argument("--current", metavar="PLAN",
                      help="re-plan from this running plan, moving as little as possible")
    plan.add_argument("--force", action="store_true",
                      help="with --current: re-plan even from a plan that shares under half "
                           "its adapters with the config")
    plan.add_argument("--max-moves", type=_count, metavar="N",
                      help="with --current: at most N adapter loads")
    plan.add_argument("--migration", metavar="FILE",
                      help="with --current: write the make-before-break steps here")
    plan.add_argument("--progress", action="store_true",
                      help="print incumbent, bound and elapsed time while solving "
                           "(default on a terminal)")
    plan.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    plan.add_argument("--simulate", action="store_true",
                      help="check the plan in the simulator on generated traffic; when it "
                           "misses the SLO there, keep the smallest plan that meets it")
    plan.add_argument("--sim-duration", type=_positive, default=120.0, metavar="S",
                      help="seconds of generated traffic for --simulate (default 120)")
    plan.set_defaults(func=_cmd_plan)

    validate = sub.add_parser("validate", help="check a config and summarise it")
    validate.add_argument("config")
    validate.set_defaults(func=_cmd_validate)

    verify = sub.add_parser("verify", help="check a plan against a config, without a solver")
    verify.add_argument("config")
    verify.add_argument("plan")
    verify.set_defaults(func=_cmd_verify)

    schema = sub.add_parser("schema", help="print the config's JSON Schema")
    schema.add_argument("-o", "--output", help="write it to a file instead")
    schema.set_defaults(func=_cmd_schema)

    # Subcommands that live with their subsystems: each module adds its own parsers.
    from loraserve.profiles.cli import register as register_profile
    from loraserve.runtime_adapter.cli import register as register_runtime
    from loraserve.sim.cli import register as register_sim

    register_sim(sub)
    register_runtime(sub)
    register_profile(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code.

    Bad input exits 2 with one line on stderr, an infeasible problem or a failed check 1;
    SIGINT or SIGTERM stops any phase within a second and exits 130 or 143 after saying
    which files, if any, were written.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's usage errors (2) and --help (0), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    with tracking_inputs(), tracking_writes() as written, signals_interrupt():
        try:
            code: int = args.func(args)
            sys.stdout.flush()  # here, so that a reader gone early is handled below
        except ConfigError as exc:
            sys.stderr.write(f"error: {one_line(exc)}\n")
            return EXIT_USAGE
        except KeyboardInterrupt as exc:
            name = exc.name if isinstance(exc, Interrupted) else "SIGINT"
            what = ("no files were written" if not written
                    else "only " + ", ".join(str(p) for p in written) + " written")
            sys.stderr.write(f"interrupted ({name}); {what}\n")
            return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
        except BrokenPipeError:
            # The reader went away (`loraserve verify ... | head -1`): nothing more to say,
            # and Python's own flush at exit must not fail on the closed pipe either.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_FAIL
        return code


if __name__ == "__main__":
    raise SystemExit(main())
