"""The watcher against a real router process-local server (no vLLM needed: the router serves
its own /metrics); the end-to-end re-plan on vLLM workers is in test_vllm_fleet.py's fleet."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from loraserve.drift import Decision, DriftPolicy
from loraserve.models import ConfigError
from loraserve.runtime_adapter.inventory import load_inventory
from loraserve.runtime_adapter.router import Router
from loraserve.runtime_adapter.routes import write_table
from loraserve.runtime_adapter.watch import parse_requests, watch
from loraserve.solver import solve
from tests.conftest import adapter, make_config
from tests.runtime.helpers import make_adapter, write_inventory


@pytest.fixture
def fleet(tmp_path: Path) -> tuple:
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


def test_parse_sums_an_adapter_over_workers_and_statuses(fleet: tuple) -> None:
    _, _, _, inventory = fleet
    router = Router(inventory.routes_file, inventory)
    router.metrics.requests.labels("a", "g0", "200").inc(5)
    router.metrics.requests.labels("a", "g1", "200").inc(3)
    router.metrics.requests.labels("a", "g1", "503").inc(1)
    router.metrics.requests.labels("b", "g0", "200").inc(2)
    counters = parse_requests(generate_latest(router.registry).decode(), 12.5)
    assert counters.time == 12.5
    assert counters.requests == {"a": 9.0, "b": 2.0}


def test_watch_needs_the_router_url(fleet: tuple) -> None:
    config, _, _, inventory = fleet
    with pytest.raises(ConfigError, match="router_url"):
        asyncio.run(watch(config, inventory, DriftPolicy(), 0.01, steps=1))


def test_a_surge_seen_through_the_router_is_a_dry_run_replan(fleet: tuple,
                                                              tmp_path: Path) -> None:
    config, plan, workers, inventory = fleet
    decisions: list[Decision] = []

    async def scenario() -> None:
        router = Router(inventory.routes_file, inventory, health_interval_s=60)
        host, port = await router.start("127.0.0.1", 0)
        serving = asyncio.create_task(router.serve_forever())
        watched = load_inventory(write_inventory(
            tmp_path, workers, {"a": "adapters/a", "b": "adapters/b"},
            router_url=f"http://{host}:{port}", routes_file=str(inventory.routes_file)))

        async def surge() -> None:
            # Adapter "a" at 40x its planned rate between the watcher's two scrapes.
            await asyncio.sleep(0.3)
            router.metrics.requests.labels("a", plan.gpus[0].gpu_id, "200").inc(80 * 1.0)

        policy = DriftPolicy(half_life_s=0.01, time_limit=2)
        await asyncio.gather(surge(), watch(config, watched, policy, 1.0, steps=1,
                                            dry_run=True, report=decisions.append))
        serving.cancel()
        await router.stop()

    before = inventory.routes_file.read_text()
    asyncio.run(scenario())
    (decision,) = decisions
    assert decision.action == "replan" and decision.trigger == "slo"
    assert decision.config.adapters[0].request_rate > 20 * config.adapters[0].request_rate
    assert decision.plan is not None and decision.plan.num_gpus > plan.num_gpus
    # A dry run applies nothing.
    assert inventory.routes_file.read_text() == before
