"""Large-neighbourhood search: improves slot-bound plans, keeps them valid, repeats."""

from __future__ import annotations

import loraserve
from loraserve.models.synthetic import synthetic_config
from loraserve.solver.build import build_plan
from loraserve.solver.greedy import greedy_placement, plan_cost
from loraserve.solver.instance import Instance
from loraserve.solver.lns import improve_by_lns


def slot_bound() -> loraserve.Config:
    # 100 adapters, 16 slots per GPU: the greedy needs 8 GPUs, 7 is optimal (CP-SAT proves it).
    return synthetic_config(100, total_rate=100.0, gpu_count=1000, seed=1,
                            serving={"max_loras": 16, "max_cpu_loras": 16,
                                     "max_replicas": 1024})


def test_lns_closes_the_gap_on_a_slot_bound_instance() -> None:
    config = slot_bound()
    inst = Instance.build(config)
    start = greedy_placement(inst)
    assert plan_cost(inst, start) == 8
    steps: list[float] = []
    better = improve_by_lns(inst, start, target=7.0, time_limit=20.0, seed=0,
                            report=lambda cost, _: steps.append(cost))
    assert plan_cost(inst, better) == 7
    assert steps == [7.0]
    assert build_plan(inst, better).verify(config) == []
    assert plan_cost(inst, start) == 8, "the start plan is not modified"


def test_lns_is_repeatable() -> None:
    inst = Instance.build(slot_bound())
    start = greedy_placement(inst)
    # A target below any plan keeps the search going for all its steps.
    runs = [improve_by_lns(inst, start, target=0.0, time_limit=60.0, seed=3, max_steps=4,
                           step_work=0.2)
            for _ in range(2)]
    assert [sorted(g.shares.items()) for g in runs[0]] == \
        [sorted(g.shares.items()) for g in runs[1]]
    assert plan_cost(inst, runs[0]) <= plan_cost(inst, start)


def test_lns_returns_the_start_when_already_at_target() -> None:
    config = slot_bound()
    inst = Instance.build(config)
    start = greedy_placement(inst)
    assert improve_by_lns(inst, start, target=8.0, time_limit=5.0) is not start
    assert plan_cost(inst, improve_by_lns(inst, start, target=8.0, time_limit=5.0)) == 8


def test_auto_runs_lns_where_slots_bind() -> None:
    config = slot_bound()
    result = loraserve.plan(config, time_limit=20)
    assert result.binding == "slots"
    assert result.solver == "lns"
    assert result.status == "optimal"
    assert result.objective == 7
    assert result.plan is not None
    assert result.plan.verify(config) == []
    named = loraserve.plan(config, solver="lns", time_limit=20)
    assert named.objective == 7
