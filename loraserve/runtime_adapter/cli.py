"""The runtime's subcommands: ``apply`` (make the fleet match a plan) and ``route`` (router)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from loraserve._argtypes import finite as _finite
from loraserve._argtypes import positive as _positive
from loraserve._argtypes import seed as _seed
from loraserve.drift.options import add_policy_arguments
from loraserve.models import ConfigError, MigrationPlan, PlacementPlan
from loraserve.models.plan_check import check_plan
from loraserve.runtime_adapter.errors import MigrationError, RuntimeAdapterError
from loraserve.runtime_adapter.inventory import Inventory, load_inventory
from loraserve.runtime_adapter.reconciler import ApplyResult, StepEvent, apply_plan
from loraserve.runtime_adapter.routes import read_table

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Progress:
    """Step lines on stdout and, on a terminal, a progress bar on stderr."""

    def __init__(self, rollback: bool = False) -> None:
        self.rollback = rollback
        self.tty = sys.stderr.isatty()
        self.done = 0
        self.started = time.perf_counter()

    def plan(self, migration: MigrationPlan, resumed: str | None) -> None:
        if resumed and self.rollback:
            _out(f"rolling back interrupted run {resumed}: returning to the state it started "
                 "from, planned from the fleet as it is now")
        elif resumed:
            _out(f"resuming after interrupted run {resumed}: planned again from the fleet as "
                 "it is now")
        _out(f"{len(migration.steps)} steps")

    def step(self, event: StepEvent) -> None:
        self.done += 1
        width = len(str(event.total))
        if self.tty:
            sys.stderr.write("\r\x1b[K")
        _out(f"[{self.done:>{width}}/{event.total}] {event.step}: {event.outcome} "
             f"({event.seconds:.2f} s)")
        if self.tty:
            filled = int(30 * self.done / max(event.total, 1))
            sys.stderr.write(f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{event.total} "
                             f"{time.perf_counter() - self.started:.1f} s")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _summary(result: ApplyResult) -> str:
    figures = result.summary()
    return (f"{figures['completed']} steps in {figures['seconds']:.2f} s: "
            f"{figures['loads']} loads ({figures['mib_loaded']:.2f} MiB, "
            f"{figures['load_seconds']:.2f} s from first to last), {figures['unloads']} "
            f"unloads, {figures['routes']} routing changes, {figures['tier_changes']} restarts, "
            f"{figures['gpus_started']} started, {figures['gpus_stopped']} stopped"
            + (f" (with the {result.stopped_adapters} adapters they held)"
               if result.stopped_adapters else ""))


def _cmd_apply(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.workers)
    if args.plan is None and not args.rollback:
        raise ConfigError("give the PLAN to apply, or --rollback")
    if args.plan is not None and args.rollback:
        raise ConfigError("--rollback takes no PLAN: it returns to the state the interrupted "
                          "run started from")
    target = PlacementPlan.load(args.plan) if args.plan else None
    if target is not None:
        check_plan(target, args.plan)
    progress = _Progress(rollback=args.rollback)
    try:
        result = asyncio.run(apply_plan(
            target, inventory, dry_run=args.dry_run, rollback=args.rollback,
            on_plan=None if args.dry_run else progress.plan, on_step=progress.step))
    except MigrationError as exc:
        progress.finish()
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_FAIL
    except RuntimeAdapterError as exc:
        progress.finish()
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    progress.finish()
    if args.dry_run:
        if result.resumed:
            _out(f"an interrupted run ({result.resumed}) would be resumed from the fleet as it "
                 "is now")
        for number, step in enumerate(result.migration.steps, start=1):
            note = ""
            if step.action == "stop_gpu" and inventory.launcher.stop is None:
                # What apply will really do: without a stop command the worker stays up.
                note = " [no launcher stop command: the worker stays up, empty and unrouted]"
            _out(f"{number:>4}. {step}{note}")
        summary = result.migration.summary()
        _out(f"dry run: {summary['steps']} steps ({summary['loads']} loads, "
             f"{summary['unloads']} unloads, {summary['routes']} routing changes, "
             f"{summary['tier_changes']} restarts); nothing was changed")
        if result.unprobed:
            _out(f"not checked in a dry run: the rank limit of {len(result.unprobed)} worker(s) "
                 f"({', '.join(result.unprobed[:5])}) that expose no LoRA settings; apply "
                 "checks it by loading and unloading a probe adapter before any step")
        if target is not None and target.remote:
            _out(f"then {len(target.remote_pairs())} remote pair(s) would be routed, loaded on "
                 "demand by their workers")
        return EXIT_OK
    if not result.migration.steps and result.run is None:
        _out("the fleet already matches the plan")
    else:
        _out(_summary(result))
    if result.problems:
        for problem in result.problems:
            _out(f"mismatch: {problem}")
        return EXIT_FAIL
    _out(f"every worker matches the plan; routes written to {inventory.routes_file}")
    if target is not None and target.remote:
        _out(f"{len(target.remote_pairs())} remote pair(s) routed: those workers load the "
             "adapter from their lora_resolver_dir on its first request")
    return EXIT_OK


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port (1 to 65535)")
    return int(text)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"'{text}' is not HOST:PORT (for example "
                                         "127.0.0.1:9000)")
    if not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 0 and 65535")
    return host.strip("[]"), int(port)


def _interval(text: str) -> float:
    """Seconds between checks: at least 0.05, so that a loop never spins."""
    value = _finite(text)
    if value < 0.05:
        raise argparse.ArgumentTypeError(f"must be at least 0.05 seconds, got {text}")
    return value


def _check_table(path: str, inventory: Inventory) -> None:
    """Refuse a routing table none of whose GPUs has a worker; warn about a partial match."""
    if not Path(path).exists():
        return  # the router waits for apply to write it
    table = read_table(path)
    routed = {g for split in table.routes.values() for g in split}
    missing = sorted(routed - {w.gpu_id for w in inventory.workers})
    if routed and len(missing) == len(routed):
        raise ConfigError(f"--plan {path}: none of its {len(routed)} GPUs has a worker in the "
                          f"inventory (first: {missing[0]}); route the plan apply wrote for "
                          "these workers")
    if missing:
        logger.warning("%s: %d GPU(s) have no worker in the inventory (%s); their share of "
                       "each adapter goes to the other replicas", path, len(missing),
                       ", ".join(missing[:5]))


def _cmd_route(args: argparse.Namespace) -> int:
    from loraserve.runtime_adapter.router import Router

    inventory = load_inventory(args.workers)
    _check_table(args.plan, inventory)
    router = Router(args.plan, inventory, seed=args.seed,
                    health_interval_s=args.health_interval)
    host, port = args.listen

    async def serve() -> None:
        bound = await router.start(host, port)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, router.reload)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        _out(f"routing {len(router.table.routes)} adapters over {len(inventory.workers)} "
             f"workers on http://{bound[0]}:{bound[1]} (table {router.table.version}; reload "
             "with SIGHUP or when the file changes)")
        serving: asyncio.Task[Any] = asyncio.create_task(router.serve_forever())
        await stop.wait()
        serving.cancel()
        await router.stop()

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise ConfigError(f"--listen {host}:{port}: {exc.strerror}; pick a free port") from None
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    from loraserve.drift import Decision
    from loraserve.drift.options import policy_from_args
    from loraserve.models import load_config
    from loraserve.runtime_adapter.watch import watch

    config = load_config(args.config)
    inventory = load_inventory(args.workers)
    policy = policy_from_args(args, args.half_life, time_limit=args.time_limit,
                              margin=args.margin)

    def show(decision: Decision) -> None:
        worst = max(decision.utilization.values(), default=0.0)
        reason = decision.reason.removeprefix(f"{decision.action}: ")
        # The reason may already name the action and the worst GPU: say each once.
        figure = "" if "worst GPU" in reason else f"worst GPU {worst:.0%} of its limit; "
        _out(f"{time.strftime('%H:%M:%S')} {decision.action:<6} {figure}{reason}")

    if args.once and args.patience > 1:
        sys.stderr.write(f"note: --once keeps nothing between runs, so a saving re-plan (it needs "
             f"--patience {args.patience} readings in a row) cannot fire; an SLO re-plan can. "
             "Run watch without --once, or give --patience 1\n")

    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        from loraserve.drift import DriftController

        controller = DriftController(config, PlacementPlan.load(inventory.routes_file), policy)
        start_http_server(args.metrics_port, addr="127.0.0.1",
                          registry=controller.metrics.registry)
    else:
        controller = None

    async def follow() -> None:
        # SIGTERM or Ctrl-C ends the loop between steps (a migration under way is finished
        # and committed first); the same signal again stops at once (apply resumes later).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping(signum: int) -> None:
            _out("stopping after the current step (again to stop now)")
            stop.set()
            loop.remove_signal_handler(signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping, signum)
        await watch(config, inventory, policy, args.interval, steps=1 if args.once else None,
                    dry_run=args.dry_run, report=show, controller=controller, stop=stop)
        if stop.is_set():
            _out("stopped")

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        _out("stopped")
    except RuntimeAdapterError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_FAIL
    return EXIT_OK


def register(sub: Any) -> None:
    """Add the runtime's subcommands to the ``loraserve`` parser's ``sub``."""
    apply = sub.add_parser("apply", help="make the vLLM fleet match a plan (make-before-break)")
    apply.add_argument("plan", nargs="?", help="the plan YAML to apply")
    apply.add_argument("--workers", required=True, metavar="INVENTORY",
                       help="the fleet inventory YAML")
    apply.add_argument("--dry-run", action="store_true",
                       help="check and print the steps; change nothing")
    apply.add_argument("--rollback", action="store_true",
                       help="return to the state an interrupted apply started from")
    apply.set_defaults(func=_cmd_apply)

    route = sub.add_parser("route", help="run the LoRA-aware router in front of the fleet")
    route.add_argument("--plan", required=True,
                       help="plan file to route by (the inventory's routes_file, which apply "
                            "keeps current); re-read when it changes")
    route.add_argument("--workers", required=True, metavar="INVENTORY",
                       help="the fleet inventory YAML")
    route.add_argument("--listen", type=_listen, default=("127.0.0.1", 9000),
                       metavar="HOST:PORT", help="address to serve on (default 127.0.0.1:9000)")
    route.add_argument("--health-interval", type=_interval, default=1.0, metavar="S",
                       help="seconds between worker health checks (default 1)")
    route.add_argument("--seed", type=_seed, default=None, help="seed of the replica choice")
    route.set_defaults(func=_cmd_route)

    watch = sub.add_parser("watch", help="follow traffic drift: re-plan and apply when the "
                                         "SLO is at risk or a smaller fleet would do")
    watch.add_argument("config", help="config YAML (adapter rates are replaced by observed ones)")
    watch.add_argument("--workers", required=True, metavar="INVENTORY",
                       help="the fleet inventory YAML (router_url required)")
    watch.add_argument("--interval", type=_interval, default=30.0, metavar="S",
                       help="seconds between router scrapes (default 30)")
    watch.add_argument("--once", action="store_true",
                       help="one observe-decide-act step (two scrapes an interval apart)")
    watch.add_argument("--dry-run", action="store_true", help="decide and report; apply nothing")
    add_policy_arguments(watch, 300.0, "default 300")
    watch.add_argument("--time-limit", type=_positive, default=10.0, metavar="S",
                       help="seconds per solve (default 10)")
    watch.add_argument("--margin", type=_positive, default=1.0, metavar="X",
                       help="plan and guard for X times the observed rates (default 1; "
                            "loraserve plan --simulate shows how much the model needs)")
    watch.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                       help="serve the watcher's Prometheus metrics on 127.0.0.1:PORT")
    watch.set_defaults(func=_cmd_watch)
