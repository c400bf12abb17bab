"""Policies: how each sets up a fleet, and the headroom search for a given fleet size."""

from __future__ import annotations

import math

import pytest

from loraserve import ConfigError, CostModel, load_config
from loraserve.sim.policies import (
    POLICIES,
    default_policies,
    deploy,
    deployment_from_plan,
    top_tier,
)
from loraserve.solver import solve
from tests.conftest import QUICKSTART, adapter, make_config, rate_for_load


@pytest.fixture(scope="module")
def quickstart():  # type: ignore[no-untyped-def]
    return load_config(QUICKSTART)


def mixed() -> object:
    rate = rate_for_load(0.3)
    return make_config([adapter(f"a{i}", rank, rate) for i, rank in
                        enumerate([8, 8, 8, 16, 16, 32, 64, 128])])


def test_vllm_default_runs_every_gpu_at_the_largest_rank(quickstart) -> None:  # type: ignore[no-untyped-def]
    model = CostModel.from_config(quickstart)
    d = deploy("vllm-default", quickstart, cost_model=model)
    gpu_type, tier = top_tier(quickstart, model)
    assert tier == 128 == max(a.rank for a in quickstart.adapters)
    assert {w.tier for w in d.workers} == {tier}
    assert d.routes is None
    load = sum(model.adapter_load(a, gpu_type, tier) for a in quickstart.adapters)
    assert d.num_gpus == math.ceil(load / model.capacity(gpu_type, tier).max_utilization)
    rates = [quickstart.adapters[a].request_rate for a in d.workers[0].hosted]
    assert rates == sorted(rates, reverse=True)  # warm caches hold the most popular first
    assert deploy("vllm-default", quickstart, 40).num_gpus == 40


def test_rank_agnostic_packing_uses_one_tier_and_a_valid_plan(quickstart) -> None:  # type: ignore[no-untyped-def]
    d = deploy("rank-agnostic-packing", quickstart)
    assert {w.tier for w in d.workers} == {128}
    assert d.plan is not None and d.plan.verify(quickstart) == []
    assert d.routes is not None and all(d.routes)


def test_loraserve_routes_follow_its_plan(quickstart) -> None:  # type: ignore[no-untyped-def]
    d = deploy("loraserve", quickstart)
    # The policy deploys the planner's own plan (auto, whose exact phase depends on the
    # machine's speed within its time limit): never more GPUs than the greedy plan.
    plan = solve(quickstart, solver="greedy").plan
    assert plan is not None and d.plan is not None
    assert d.num_gpus == d.plan.num_gpus <= plan.num_gpus
    assert d.plan.verify(quickstart) == []
    assert len({w.tier for w in d.workers}) > 1
    assert d.routes is not None
    for a, split in enumerate(d.routes):
        assert sum(w for _, w in split) == pytest.approx(1.0)
        for g, _ in split:
            assert a in d.workers[g].hosted


def test_a_fleet_size_is_met_with_headroom(quickstart) -> None:  # type: ignore[no-untyped-def]
    own = deploy("loraserve", quickstart).num_gpus
    roomy = deploy("loraserve", quickstart, own + 4)
    tight = deploy("loraserve", quickstart, own - 3)
    assert roomy.num_gpus <= own + 4 and roomy.headroom > 1.0
    assert tight.num_gpus <= own - 3 and tight.headroom < 1.0
    assert roomy.plan is not None
    assert max(g.utilization for g in roomy.plan.gpus) < 0.9


def test_loraserve_greedy_plans_where_slots_do_not_bind() -> None:
    config = mixed()
    d = deploy("loraserve-greedy", config)
    assert d.plan is not None and d.plan.verify(config) == []


def test_loraserve_greedy_without_a_valid_plan_is_a_one_line_error(quickstart) -> None:  # type: ignore[no-untyped-def]
    # The paper's heuristic ignores slots: on the quickstart it packs too many adapters.
    with pytest.raises(ConfigError, match="loraserve-greedy: finds no valid plan") as info:
        deploy("loraserve-greedy", quickstart)
    assert "\n" not in str(info.value)


def test_unknown_policy_and_mismatched_plan_are_refused(quickstart) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="unknown policy 'round-robin'"):
        deploy("round-robin", quickstart)
    plan = deploy("loraserve", mixed()).plan
    assert plan is not None
    with pytest.raises(ConfigError, match="lacks"):
        deployment_from_plan(plan, quickstart)
    assert set(POLICIES) == {"vllm-default", "rank-agnostic-packing", "loraserve-greedy",
                             "loraserve", "loraserve-remote"}


def test_default_policies_leave_out_remote_access_without_a_topology() -> None:
    assert "loraserve-remote" not in default_policies(make_config())
    with_topology = make_config(topology={"nic_gbit_per_s": 200.0})
    assert default_policies(with_topology) == list(POLICIES)
