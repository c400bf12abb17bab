"""Incremental re-planning: keep what runs, pay only for what must move."""

from __future__ import annotations

import numpy as np
import pytest

import loraserve
from loraserve import Config, PlacementPlan, SolveResult
from loraserve.models.migration import plan_migration
from loraserve.models.synthetic import synthetic_config
from tests.conftest import adapter, make_config, rate_for_load


def replan(config: Config, current: PlacementPlan, **kwargs: object) -> SolveResult:
    return loraserve.plan(config, current=current, time_limit=10.0, **kwargs)  # type: ignore[arg-type]


def hosted(plan: PlacementPlan) -> set[tuple[str, str]]:
    return {(g.gpu_id, a) for g in plan.gpus for a in g.adapters}


def with_rates(config: Config, rates: dict[str, float]) -> Config:
    return config.with_adapters([
        a.model_copy(update={"request_rate": rates[a.id]}) if a.id in rates else a
        for a in config.adapters
    ])


@pytest.fixture
def running() -> tuple[Config, PlacementPlan]:
    config = synthetic_config(60, 90.0, seed=5, serving={"max_cpu_loras": 16})
    plan = loraserve.plan(config, solver="greedy").plan
    assert plan is not None
    return config, plan


def test_unchanged_workload_moves_nothing(running: tuple[Config, PlacementPlan]) -> None:
    config, plan = running
    result = replan(config, plan)
    assert result.plan is not None
    assert result.solver == "incremental"
    assert result.plan.verify(config) == []
    assert hosted(result.plan) <= hosted(plan)
    assert {g.gpu_id: g.tier for g in result.plan.gpus}.items() <= \
        {g.gpu_id: g.tier for g in plan.gpus}.items()
    assert "0 adapter loads" in result.message
    migration = plan_migration(plan, result.plan, config)
    assert migration.loads == 0
    assert migration.bytes_moved == 0


def test_hot_adapter_gets_a_new_replica_and_keeps_the_rest(
        running: tuple[Config, PlacementPlan]) -> None:
    config, plan = running
    hottest = max(config.adapters, key=lambda a: a.request_rate)
    changed = with_rates(config, {hottest.id: hottest.request_rate * 3})
    result = replan(changed, plan)
    assert result.plan is not None
    assert result.plan.verify(changed) == []
    new_hosts = {g for g, a in hosted(result.plan) - hosted(plan) if a == hottest.id}
    assert new_hosts, "the tripled adapter needs more replicas"
    # Nothing but the hot adapter's traffic needed room, so only a few loads were made.
    migration = plan_migration(plan, result.plan, changed)
    assert migration.replay(plan, changed.serving.adapters_per_gpu, new=result.plan) == []
    assert migration.loads <= len(new_hosts) + 3
    kept = {g.gpu_id for g in result.plan.gpus} & {g.gpu_id for g in plan.gpus}
    assert len(kept) >= plan.num_gpus - 1


def test_falling_rates_free_gpus(running: tuple[Config, PlacementPlan]) -> None:
    config, plan = running
    changed = with_rates(config, {a.id: a.request_rate * 0.3 for a in config.adapters})
    scratch = loraserve.plan(changed, solver="greedy")
    result = replan(changed, plan)
    assert result.plan is not None and scratch.plan is not None
    assert result.plan.verify(changed) == []
    assert result.plan.num_gpus < plan.num_gpus
    assert result.plan.num_gpus <= scratch.plan.num_gpus + 1
    assert {g.gpu_id for g in result.plan.gpus} <= {g.gpu_id for g in plan.gpus}


def test_move_cap_is_reported_when_it_binds(running: tuple[Config, PlacementPlan]) -> None:
    config, plan = running
    changed = with_rates(config, {a.id: a.request_rate * 2.5 for a in config.adapters[:20]})
    free = replan(changed, plan)
    assert free.plan is not None
    needed = plan_migration(plan, free.plan, changed).loads
    assert needed > 0
    capped = replan(changed, plan, max_moves=0)
    assert capped.status == "infeasible"
    assert capped.binding == "moves"
    assert "max_moves is 0 (short by" in capped.message


def test_added_and_removed_adapters() -> None:
    rate = rate_for_load(0.2)
    before = make_config([adapter(f"a{i}", 8, rate) for i in range(6)])
    plan = loraserve.plan(before).plan
    assert plan is not None
    after = make_config([adapter(f"a{i}", 8, rate) for i in range(1, 6)]
                        + [adapter("new", 16, rate)])
    result = replan(after, plan)
    assert result.plan is not None
    assert result.plan.verify(after) == []
    assert "a0" not in result.plan.routes
    assert "new" in result.plan.routes
    migration = plan_migration(plan, result.plan, after)
    assert migration.replay(plan, after.serving.adapters_per_gpu, new=result.plan) == []


def test_withdrawn_tier_changes_tier() -> None:
    rate = rate_for_load(0.3, tier=16)
    before = make_config([adapter("a", 8, rate), adapter("b", 8, rate)],
                         serving={"tiers": [16, 64]})
    plan = loraserve.plan(before).plan
    assert plan is not None
    assert {g.tier for g in plan.gpus} == {16}
    after = make_config([adapter("a", 8, rate), adapter("b", 8, rate)],
                        serving={"tiers": [8, 32]})
    result = replan(after, plan)
    assert result.plan is not None
    assert result.plan.verify(after) == []
    assert {g.tier for g in result.plan.gpus} == {8}
    assert "1 tier changes" in result.message or "2 tier changes" in result.message


def test_incremental_is_deterministic(running: tuple[Config, PlacementPlan]) -> None:
    config, plan = running
    rng = np.random.default_rng(0)
    changed = with_rates(config, {a.id: a.request_rate * float(rng.uniform(0.3, 3.0))
                                  for a in config.adapters[::5]})
    first, second = replan(changed, plan), replan(changed, plan)
    assert first.plan is not None and second.plan is not None
    assert first.plan.to_yaml() == second.plan.to_yaml()


def test_max_moves_needs_current(running: tuple[Config, PlacementPlan]) -> None:
    config, _ = running
    with pytest.raises(ValueError, match="max_moves"):
        loraserve.plan(config, max_moves=3)


def test_paper_heuristic_replans_from_scratch_and_relabels() -> None:
    # 64 slots for the paper's slot-blind packing; batch_slots off, as in its own search.
    config = synthetic_config(60, 90.0, seed=5, serving={"max_cpu_loras": 64,
                                                        "slo_families": False})
    running = loraserve.plan(config, solver="loraserve-greedy").plan
    assert running is not None
    changed = with_rates(config, {a.id: a.request_rate * 1.5 for a in config.adapters[:6]})
    result = loraserve.plan(changed, solver="loraserve-greedy", current=running)
    assert result.plan is not None
    assert result.solver == "loraserve-greedy"
    assert result.plan.verify(changed) == []
    # Relabelling keeps the ids of the GPUs that carry on, so most hosting survives.
    assert len(hosted(result.plan) & hosted(running)) >= len(hosted(running)) // 2
    assert "adapter loads" in result.message
    incremental = replan(changed, running)
    assert incremental.plan is not None
    moved = plan_migration(running, incremental.plan, changed).bytes_moved
    assert moved <= plan_migration(running, result.plan, changed).bytes_moved


def test_drifted_slot_bound_fleet_replans() -> None:
    # Regression: a construction that opened a GPU and left it empty broke tier lowering.
    base = synthetic_config(1000, total_rate=1000.0, gpu_count=10000, seed=1,
                            serving={"max_loras": 16, "max_cpu_loras": 16,
                                     "max_replicas": 1024})
    running = loraserve.plan(base, solver="greedy").plan
    assert running is not None
    rng = np.random.default_rng(1)
    chosen = rng.choice(1000, 100, replace=False)
    factors = np.exp(rng.uniform(np.log(0.3), np.log(3.0), 100))
    changed = with_rates(base, {base.adapters[i].id: base.adapters[i].request_rate * float(f)
                                for i, f in zip(chosen, factors, strict=True)})
    result = replan(changed, running)
    assert result.plan is not None
    assert result.plan.verify(changed) == []


def test_an_adapter_at_max_replicas_gets_room_on_its_replicas() -> None:
    # At most two replicas: "hot" runs on both GPUs beside the cold adapters. When it grows
    # past what its share of them carries it may not get a third replica, so cold adapters
    # make room on its GPUs and move to a new one instead.
    load = rate_for_load(1.0)
    adapters = [adapter("hot", 8, 1.2 * load)] + [adapter(f"c{i}", 8, 0.15 * load)
                                                   for i in range(4)]
    config = make_config(adapters, count=4, serving={"max_replicas": 2})
    current = loraserve.plan(config, time_limit=5.0).plan
    assert current is not None and current.num_gpus == 2 and len(current.routes["hot"]) == 2
    grown = with_rates(config, {"hot": 1.9 * load})
    result = replan(grown, current)
    assert result.plan is not None, result.message
    assert result.plan.verify(grown) == []
    assert "re-planned from scratch" not in result.message
    assert result.plan.num_gpus == 3
    # "hot" keeps its two GPUs; only cold adapters load elsewhere.
    assert set(result.plan.routes["hot"]) == set(current.routes["hot"])
    moved = hosted(result.plan) - hosted(current)
    assert moved and all(a.startswith("c") for _, a in moved)


def test_a_dead_end_on_the_running_replicas_falls_back_to_a_renamed_scratch_plan() -> None:
    # "hot" (rank 8) runs on a tier-64 GPU beside a rank-64 adapter, one replica each. Grown
    # past what a tier-64 GPU carries, it fits only on a GPU of a lower tier, which the
    # running plan's GPU is not: a fresh plan is taken, renamed onto the running GPUs.
    load = rate_for_load(1.0)
    config = make_config([adapter("hot", 8, 0.1 * load), adapter("big", 64, 0.1 * load)],
                         count=4, serving={"max_replicas": 1})
    current = loraserve.plan(config, time_limit=5.0).plan
    assert current is not None and current.num_gpus == 1 and current.gpus[0].tier == 64
    grown = with_rates(config, {"hot": 0.97 * load})
    result = replan(grown, current)
    assert result.plan is not None, result.message
    assert result.plan.verify(grown) == []
    assert "re-planned from scratch" in result.message
    assert current.gpus[0].gpu_id in {g.gpu_id for g in result.plan.gpus}
    # max_moves still judges the fall-back's loads.
    capped = replan(grown, current, max_moves=0)
    assert capped.plan is None and capped.binding == "moves"
