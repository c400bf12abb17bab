"""Remote access in the solvers: where it is necessary, where it is harmful, and no change
without a topology.

The hand-made instance: two hot rank-64 adapters that each need 1.2 GPUs of compute and three
cold ones, on H100s whose adapter cache holds two rank-64 adapters (0.7 GiB; one is 0.3125).

* Replication is infeasible on 3 GPUs: the hot adapters need two copies each, the cold ones
  one each, 7 copies, and 3 GPUs hold at most 6.
* With remote access 3 GPUs suffice: each hot adapter is hosted once and fetched by a third
  GPU, which keeps one slot free for fetched weights beside one cold adapter.
* Over a link so slow that one fetch exceeds the TTFT SLO, no remote pair is possible.
"""

from __future__ import annotations

from typing import Any

import pytest

from loraserve.models import Config, PlacementPlan, link_traffic
from loraserve.solver import Instance, solve
from loraserve.solver.remote import (
    RemoteContext,
    RemoteModel,
    build_remote_plan,
    plan_cost,
    remote_greedy,
    remote_lower_bound,
)
from tests.conftest import GPU, adapter, make_config, rate_for_load

CACHE_GIB = 0.7  # two rank-64 llama-3-8b adapters (0.3125 GiB each), not three


def instance(count: int, nic_gbit: float = 200.0, per_node: int = 8,
             **topology: Any) -> Config:
    hot = rate_for_load(1.2, tier=64)
    adapters = [adapter("h1", 64, hot), adapter("h2", 64, hot)]
    adapters += [adapter(f"c{i}", 64, 0.01) for i in range(3)]
    return make_config(adapters, serving={"tiers": [64], "adapter_cache_gib": CACHE_GIB},
                       count=count, topology={"nic_gbit_per_s": nic_gbit,
                                              "gpus_per_node": per_node, **topology})


def check(plan: PlacementPlan | None, config: Config) -> PlacementPlan:
    assert plan is not None
    assert plan.verify(config) == []
    return plan


# ---- remote access is necessary ----------------------------------------------------------


def test_replication_alone_is_infeasible() -> None:
    config = instance(3)
    result = solve(config.without_remote(), solver="milp", time_limit=20)
    assert result.status == "infeasible"
    assert result.binding == "memory"


@pytest.mark.parametrize("backend", ["greedy", "milp", "cpsat"])
def test_remote_plan_exists_and_verifies(backend: str) -> None:
    config = instance(3)
    result = solve(config, solver=backend, time_limit=20)  # type: ignore[arg-type]
    plan = check(result.plan, config)
    assert result.status == "optimal"
    assert plan.num_gpus == 3
    pairs = plan.remote_pairs()
    assert pairs, "3 GPUs need remote pairs"
    for adapter_id, gpu_id, source in pairs:
        assert adapter_id in plan.gpu(source).adapters
        assert adapter_id not in plan.gpu(gpu_id).adapters
        assert plan.routes[adapter_id][gpu_id] > 0
    assert plan.remote_table().shape[0] == len(pairs)


@pytest.mark.parametrize("backend", ["milp", "cpsat"])
def test_exact_models_find_the_three_gpu_plan(backend: str) -> None:
    config = instance(3)
    ctx = RemoteContext(Instance.build(config))
    model = RemoteModel(ctx, upper_bound=3.0)
    assert model.complete
    if backend == "milp":
        gpus, bound, optimal = model.solve_milp(20.0, None, 0, 1, True)
        assert optimal and bound == pytest.approx(3.0)
    else:
        gpus, _, _ = model.solve_cpsat(20.0, None, 0, 1)
    assert gpus is not None
    assert plan_cost(ctx, gpus) == 3.0
    check(build_remote_plan(ctx, gpus), config)


def test_exact_model_proves_two_gpus_impossible() -> None:
    ctx = RemoteContext(Instance.build(instance(3)))
    # Two GPUs have 1.8 of capacity for 2.4 of hot load: no plan, remote or not.
    gpus, bound, _ = RemoteModel(ctx, upper_bound=2.0).solve_milp(20.0, None, 0, 1, True)
    assert gpus is None and bound == float("inf")


def test_remote_saves_a_gpu_when_replication_fits() -> None:
    config = instance(4)
    replicated = solve(config.without_remote(), solver="greedy")
    remote = solve(config, solver="greedy")
    assert replicated.objective == 4.0
    assert remote.objective == 3.0
    check(remote.plan, config)
    assert remote_lower_bound(Instance.build(config)) == 3.0


def test_remote_pairs_across_nodes_load_the_nics() -> None:
    config = instance(3, per_node=1)
    plan = check(solve(config, solver="greedy").plan, config)
    traffic = link_traffic(plan, config)
    nic_edges = [e for e in traffic if "fabric" in e]
    assert nic_edges and all(v > 0 for v in traffic.values())
    # The traffic is rate x share x bytes x miss ratio, summed over the pairs on the edge.
    adapters = {a.id: a for a in config.adapters}
    expected: dict[tuple[str, str], float] = {}
    topo = config.network()
    assert topo is not None
    for adapter_id, gpu_id, source in plan.remote_pairs():
        a = adapters[adapter_id]
        rate = a.request_rate * plan.routes[adapter_id][gpu_id] * config.adapter_bytes(a)
        for edge in topo.edges(source, gpu_id):
            expected[edge] = expected.get(edge, 0.0) + rate
    assert traffic == pytest.approx(expected)


# ---- remote access is harmful --------------------------------------------------------------


def test_slow_link_gets_no_remote_pair() -> None:
    # 0.1 Gb/s: one rank-64 adapter (336 MB) takes ~27 s to fetch; the TTFT SLO is 2 s.
    config = instance(4, nic_gbit=0.1, per_node=1)
    for backend in ("greedy", "milp", "cpsat"):
        result = solve(config, solver=backend, time_limit=20)
        plan = check(result.plan, config)
        assert plan.remote == {}
        assert plan.num_gpus == 4
    assert solve(config, solver="milp").status == "optimal"


def test_slow_link_with_replication_infeasible_has_no_plan() -> None:
    result = solve(instance(3, nic_gbit=0.1, per_node=1), solver="milp", time_limit=20)
    assert result.plan is None
    assert result.status in ("infeasible", "unknown")


def test_forced_remote_pair_over_slow_link_fails_verify() -> None:
    fast = instance(3, per_node=1)
    plan = check(solve(fast, solver="greedy").plan, fast)
    slow = instance(3, nic_gbit=0.1, per_node=1)
    problems = plan.verify(slow)
    assert {p.constraint for p in problems} >= {"ttft"}


def test_link_capacity_is_checked() -> None:
    fast = instance(3, per_node=1)
    plan = check(solve(fast, solver="greedy").plan, fast)
    # 3 Gb/s keeps a fetch (~1 s) within the SLO at low load, but the hot adapters' fetch
    # traffic (GB/s) is far beyond a third of a GB/s.
    narrow = instance(3, nic_gbit=3.0, per_node=1)
    problems = plan.verify(narrow)
    assert "link" in {p.constraint for p in problems}


def test_remote_plan_fails_verify_without_topology() -> None:
    config = instance(3)
    plan = check(solve(config, solver="greedy").plan, config)
    problems = plan.verify(config.without_remote())
    assert "remote" in {p.constraint for p in problems}


def test_source_must_host_the_adapter() -> None:
    config = instance(3)
    plan = check(solve(config, solver="greedy").plan, config)
    adapter_id, gpu_id, source = plan.remote_pairs()[0]
    other = next(g.gpu_id for g in plan.gpus
                 if g.gpu_id not in (gpu_id, source) and adapter_id not in g.adapters)
    broken = plan.model_copy(update={"remote": {**plan.remote, adapter_id: {
        **plan.remote[adapter_id], gpu_id: other}}})
    problems = broken.verify(config)
    assert any(p.constraint == "remote" and "does not host" in p.message for p in problems)


def test_remote_off_gives_replication() -> None:
    config = instance(4, remote_access=False)
    plan = check(solve(config, solver="greedy").plan, config)
    assert plan.remote == {} and plan.num_gpus == 4


def test_plan_round_trips_with_remote_pairs(tmp_path: Any) -> None:
    config = instance(3)
    plan = check(solve(config, solver="greedy").plan, config)
    path = tmp_path / "plan.yaml"
    plan.save(path)
    again = PlacementPlan.load(path)
    assert again == plan
    assert again.verify(config) == []


# ---- no topology: today's behaviour --------------------------------------------------------


@pytest.mark.parametrize("backend", ["greedy", "milp", "cpsat", "auto"])
def test_no_topology_gives_identical_plans(backend: str) -> None:
    hot = rate_for_load(1.2, tier=64)
    adapters = [adapter("h1", 64, hot), adapter("h2", 64, hot), adapter("a", 8, 1.0),
                adapter("b", 16, 0.5)]
    plain = make_config(adapters, serving={"adapter_cache_gib": 2.0}, count=8)
    with_off = make_config(adapters, serving={"adapter_cache_gib": 2.0}, count=8,
                           topology={"nic_gbit_per_s": 200.0, "remote_access": False})
    first = solve(plain, solver=backend, time_limit=5)  # type: ignore[arg-type]
    second = solve(plain, solver=backend, time_limit=5)  # type: ignore[arg-type]
    third = solve(with_off, solver=backend, time_limit=5)  # type: ignore[arg-type]
    assert first.plan is not None
    assert first.plan == second.plan == third.plan
    assert first.plan.remote == {}
    assert "remote" not in first.plan.to_yaml()


def test_greedy_scales_to_many_adapters() -> None:
    # 300 adapters of rank 64/128 with Zipf-like rates on 2 nodes' worth of cache per GPU.
    rates = [40.0 / (i + 1) for i in range(300)]
    adapters = [adapter(f"a{i}", 128 if i % 3 == 0 else 64, r) for i, r in enumerate(rates)]
    config = make_config(adapters, serving={"tiers": [64, 128], "adapter_cache_gib": 3.0,
                                            "max_cpu_loras": 64},
                         count=128, topology={"nic_gbit_per_s": 400.0})
    ctx = RemoteContext(Instance.build(config))
    gpus = remote_greedy(ctx)
    plan = check(build_remote_plan(ctx, gpus), config)
    assert plan.num_gpus >= remote_lower_bound(ctx.inst)
    assert GPU in plan.gpus[0].gpu_id
