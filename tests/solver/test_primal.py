"""Price-and-branch from the configuration LP, and ``auto`` spending its time limit."""

from __future__ import annotations

import numpy as np

import loraserve
from loraserve.models.synthetic import synthetic_config
from loraserve.solver.build import build_plan
from loraserve.solver.colgen import Pattern, colgen_bound
from loraserve.solver.greedy import greedy_placement, plan_cost
from loraserve.solver.instance import Instance
from loraserve.solver.paper_greedy import validity
from loraserve.solver.primal import repair, restricted_master_plan
from tests.conftest import adapter, make_config, rate_for_load


def known_gap() -> loraserve.Config:
    """Five adapters of 0.6 GPU each, two slots per GPU, at most two replicas.

    Loads and slots each need 3 GPUs, and so does the configuration LP (a GPU carries at
    most 1/0.6 adapters); but 3 GPUs are full only if each holds one whole adapter and
    parts of others, which needs 7 slots of 6: the optimum is 4.
    """
    serving = {"max_loras": 2, "max_cpu_loras": 2, "max_replicas": 2, "tiers": [8]}
    rate = rate_for_load(0.6, serving=serving)
    return make_config([adapter(f"a{i}", 8, rate) for i in range(5)], serving=serving)


def test_auto_returns_at_the_time_limit_when_the_gap_stays() -> None:
    limit = 4.0
    result = loraserve.plan(known_gap(), time_limit=limit)
    assert result.objective == 4 and result.lower_bound == 3
    assert result.status == "feasible"
    # Not proven, so the time limit is used (not a tight assertion: the loop ends a few
    # tenths early to return on time).
    assert result.seconds >= 0.75 * limit


def test_auto_stops_early_at_a_proven_optimum() -> None:
    serving = {"max_loras": 4, "max_cpu_loras": 4, "tiers": [8]}
    rate = rate_for_load(0.5, serving=serving)
    config = make_config([adapter(f"a{i}", 8, rate) for i in range(4)], serving=serving)
    result = loraserve.plan(config, time_limit=30)
    assert result.status == "optimal"
    assert result.seconds < 10


def test_restricted_master_recovers_and_repairs() -> None:
    serving = {"max_loras": 16, "max_cpu_loras": 16, "max_replicas": 64}
    config = synthetic_config(
        60, total_rate=60.0, gpu_count=200, seed=2, serving=serving)
    inst = Instance.build(config)
    start = greedy_placement(inst)
    strong = colgen_bound(inst, upper_bound=plan_cost(inst, start), start=start,
                          time_limit=20.0)
    assert strong.patterns
    plan = restricted_master_plan(inst, strong.patterns, start, time_limit=10.0)
    assert plan is not None
    assert plan_cost(inst, plan) <= plan_cost(inst, start)
    assert plan_cost(inst, plan) >= strong.value
    assert build_plan(inst, plan).verify(config) == []


def test_repair_drops_over_cover_and_places_what_is_missing() -> None:
    serving = {"max_loras": 4, "max_cpu_loras": 4, "max_replicas": 4, "tiers": [8]}
    rate = rate_for_load(0.3, serving=serving)
    config = make_config([adapter(f"a{i}", 8, rate) for i in range(4)], serving=serving)
    inst = Instance.build(config)
    # a0 covered twice (0.8 + 0.7), a3 not at all.
    chosen = [Pattern(0, np.array([0, 1]), np.array([0.8, 1.0])),
              Pattern(0, np.array([0, 2]), np.array([0.7, 1.0]))]
    plan = repair(inst, chosen)
    assert plan is not None
    assert validity(inst, plan) == []
    assert sum(g.shares.get(0, 0.0) for g in plan) == 1.0 or abs(
        sum(g.shares.get(0, 0.0) for g in plan) - 1.0) < 1e-9
    assert any(3 in g.shares for g in plan)
