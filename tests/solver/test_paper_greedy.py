"""The LoRAServe paper's heuristic: budgets, packing, leftovers, the fleet-size search."""

from __future__ import annotations

from typing import Any

import pytest

import loraserve
from loraserve import Config, config_from_mapping
from loraserve.models.synthetic import synthetic_config
from loraserve.solver.bounds import lower_bound
from loraserve.solver.build import build_plan
from loraserve.solver.greedy import OpenGPU, greedy_placement
from loraserve.solver.instance import InfeasibleError, Instance
from loraserve.solver.paper_greedy import (
    apportion,
    loraserve_greedy,
    loraserve_greedy_min,
    rank_budgets,
    rank_groups,
    validity,
)
from tests.conftest import QUICKSTART, adapter, base_raw, make_config, rate_for_load


def tier_of(inst: Instance, gpu: OpenGPU) -> int:
    return inst.kinds[gpu.kind].tier


def routed(gpus: list[OpenGPU], a: int) -> float:
    return sum(g.shares.get(a, 0.0) for g in gpus)


# ---- budgets ---------------------------------------------------------------------------------


def test_apportion_is_hamilton_with_a_minimum_of_one() -> None:
    assert apportion([3.0, 1.0], 8) == [6, 2]
    # Equal quotas 3.33: one seat left, the earliest group (highest rank) takes it.
    assert apportion([1.0, 1.0, 1.0], 10) == [4, 3, 3]
    # A tiny group is lifted to one seat; the seat comes from the least-earned last seat.
    assert apportion([0.01, 5.0, 4.99], 10) == [1, 5, 4]
    # Fewer seats than groups: the first (highest-rank) groups get one each.
    assert apportion([1.0, 5.0, 4.0], 2) == [1, 1, 0]
    demands = [0.3, 2.7, 11.1, 4.4, 0.05]
    for seats in range(5, 60):
        budgets = apportion(demands, seats)
        assert sum(budgets) == seats
        assert min(budgets) >= 1
        quotas = [seats * d / sum(demands) for d in demands]
        # Quota rule wherever the minimum of one did not interfere (no group lifted).
        if min(quotas) >= 1:
            for budget, quota in zip(budgets, quotas, strict=True):
                assert quota - 1 < budget < quota + 1


def proportional_instance() -> Config:
    # Six rank-8 adapters at 0.5 of a tier-8 GPU (D_8 = 3) and two rank-64 ones at 0.5 of a
    # tier-64 GPU (D_64 = 1).
    small, big = rate_for_load(0.5), rate_for_load(0.5, tier=64)
    return make_config([adapter(f"s{i}", 8, small) for i in range(6)]
                       + [adapter(f"b{i}", 64, big) for i in range(2)])


def test_budgets_sum_to_fleet_and_follow_demand() -> None:
    inst = Instance.build(proportional_instance())
    groups = rank_groups(inst)
    assert [g.rank for g in groups] == [64, 8]
    assert [g.demand for g in groups] == pytest.approx([1.0, 3.0])
    assert rank_budgets(inst, 8) == {64: 2, 8: 6}
    assert rank_budgets(inst, 4) == {64: 1, 8: 3}
    for n in range(2, 40):
        assert sum(rank_budgets(inst, n).values()) == n
    gpus = loraserve_greedy(inst, 8)
    assert len(gpus) == 8
    # A group's GPUs run at the group's tier.
    assert sorted(tier_of(inst, g) for g in gpus) == [8] * 6 + [64] * 2


# ---- packing -------------------------------------------------------------------------------


def test_hot_adapter_splits_over_several_gpus() -> None:
    # One adapter worth 2.5 GPUs: next-fit fills two GPUs and puts the rest on a third.
    config = make_config([adapter("hot", 8, rate_for_load(2.5))])
    inst = Instance.build(config)
    gpus = loraserve_greedy(inst, 3)
    assert sorted(g.shares[0] for g in gpus) == pytest.approx([0.2, 0.4, 0.4])
    assert routed(gpus, 0) == pytest.approx(1.0)
    assert validity(inst, gpus) == []
    best, n = loraserve_greedy_min(inst)
    assert n == 3
    assert build_plan(inst, best).verify(config) == []


def leftover_instance() -> Config:
    # Groups of demand 0.1 (rank 64), 0.8 (rank 32) and 1.4 (rank 8, two adapters of 0.7).
    # On three GPUs each group gets one, so rank 8 overflows its single GPU.
    return make_config([adapter("r64", 64, rate_for_load(0.1, tier=64)),
                        adapter("r32", 32, rate_for_load(0.8, tier=32)),
                        adapter("r8a", 8, rate_for_load(0.7)),
                        adapter("r8b", 8, rate_for_load(0.7))])


def test_leftovers_go_to_least_utilized_admitting_gpu() -> None:
    config = leftover_instance()
    inst = Instance.build(config)
    assert rank_budgets(inst, 3) == {64: 1, 32: 1, 8: 1}
    gpus = loraserve_greedy(inst, 3)
    by_tier = {tier_of(inst, g): g for g in gpus}
    r8b = 3
    # Next-fit: r8a (0.7) then 0.3 / 0.7 of r8b fill the tier-8 GPU to its capacity.
    assert by_tier[8].shares[r8b] == pytest.approx(0.3 / 0.7)
    assert by_tier[8].load == pytest.approx(inst.kinds[by_tier[8].kind].capacity)
    # The rest goes to the tier-64 GPU (utilization 0.1), not the tier-32 one (0.8).
    assert by_tier[64].shares[r8b] == pytest.approx(0.4 / 0.7)
    assert r8b not in by_tier[32].shares
    assert validity(inst, gpus) == []
    assert build_plan(inst, gpus).verify(config) == []


def test_traffic_that_fits_nowhere_overloads_and_is_reported() -> None:
    # Two GPUs cannot carry 2.3 GPUs of demand: the plan is invalid on compute.
    inst = Instance.build(leftover_instance())
    gpus = loraserve_greedy(inst, 2)
    assert all(routed(gpus, a) == pytest.approx(1.0) for a in range(inst.num_adapters))
    problems = validity(inst, gpus)
    assert [p.split(":")[0] for p in problems] == ["compute"]
    _, n = loraserve_greedy_min(inst)
    assert n == 3


# ---- the fleet-size search ---------------------------------------------------------------


def roomy_quickstart() -> Config:
    # The quickstart with as many adapter slots as adapters, which the paper's system, fetching
    # adapters over RDMA, effectively has.
    raw: dict[str, Any] = loraserve.load_config(QUICKSTART).model_dump(mode="json",
                                                                      exclude_none=True)
    raw["serving"]["max_cpu_loras"] = 256
    # The paper's packing is blind to LoRA batch slots, so with 256 hosted adapters a GPU
    # only passes when that family is off (the search under test is the paper's, not ours).
    raw["serving"]["slo_families"] = False
    return config_from_mapping(raw, source="test")


def splittable() -> Config:
    return make_config([adapter(f"s{i}", 8, rate_for_load(0.4)) for i in range(6)])


def mixed_rank() -> Config:
    big, small = rate_for_load(0.3, tier=128), rate_for_load(0.3, tier=8)
    return make_config([adapter("big0", 128, big), adapter("big1", 128, big),
                        adapter("small0", 8, small), adapter("small1", 8, small)])


def synthetic_roomy() -> Config:
    return synthetic_config(300, total_rate=300.0, gpu_count=300,
                            serving={"max_loras": 16, "max_cpu_loras": 512, "max_replicas": 64,
                                     "slo_families": False},
                            seed=3)


@pytest.mark.parametrize("build", [splittable, mixed_rank, leftover_instance, roomy_quickstart,
                                   synthetic_roomy])
def test_min_fleet_is_valid_and_above_the_bound(build: Any) -> None:
    config = build()
    inst = Instance.build(config)
    gpus, n = loraserve_greedy_min(inst)
    assert len(gpus) == n
    assert validity(inst, gpus) == []
    assert build_plan(inst, gpus).verify(config) == []
    assert n >= lower_bound(inst).value - 1e-9
    # Starting from the bound gives the same answer as starting from the load.
    assert loraserve_greedy_min(inst, start=int(lower_bound(inst).value))[1] == n


def test_quickstart_as_shipped_is_beyond_the_paper_heuristic() -> None:
    # Hottest-first next-fit piles each group's cold tail onto one GPU: at every fleet size
    # the last rank-8 GPU hosts more than the quickstart's 32 slots. The paper ignores slots.
    inst = Instance.build(loraserve.load_config(QUICKSTART))
    with pytest.raises(InfeasibleError, match="ignores adapter slots") as info:
        loraserve_greedy_min(inst)
    assert info.value.binding == "slots"
    assert len(greedy_placement(inst)) <= inst.config.pools[0].count


def cold_tail() -> Config:
    # Sixty rank-8 adapters, a few warm and a long cold tail (1.6 GPUs of load in all), four
    # slots per GPU: slots, not load, set the fleet (at least 15 GPUs).
    rates = [rate_for_load(0.3 / (i + 1) + 0.004) for i in range(60)]
    return make_config([adapter(f"c{i}", 8, r) for i, r in enumerate(rates)],
                       serving={"max_loras": 4, "max_cpu_loras": 4, "max_replicas": 64})


def test_slots_make_the_paper_heuristic_need_more_gpus_than_ours() -> None:
    config = cold_tail()
    inst = Instance.build(config)
    ours = len(greedy_placement(inst))
    # As described (fill to capacity) the cold tail shares one GPU at every fleet size.
    with pytest.raises(InfeasibleError) as info:
        loraserve_greedy_min(inst)
    assert info.value.binding == "slots"
    # Balanced fill spreads the tail as the fleet grows, but next-fit by load does not count
    # adapters, so each GPU must be nearly empty before the coldest ones spread four to a
    # GPU: far more GPUs than a slot-aware placement. Asserted because it holds here
    # (53 against 15), not because it must hold on every instance.
    gpus, n = loraserve_greedy_min(inst, fill="utilization")
    assert build_plan(inst, gpus).verify(config) == []
    assert n > ours >= lower_bound(inst).value


def test_memory_infeasible_names_the_reason() -> None:
    # Six tiny rank-128 adapters, a cache that holds two: the paper packs all six on one GPU
    # whatever the fleet size, so no fleet up to the pool's 64 works.
    config = make_config([adapter(f"m{i}", 128, 0.01) for i in range(6)],
                         serving={"adapter_cache_gib": 1.5})
    with pytest.raises(InfeasibleError,
                       match="ignores adapter slots, LoRA batch slots and adapter memory") as info:
        loraserve_greedy_min(Instance.build(config))
    assert info.value.binding == "memory"


def test_pool_smaller_than_the_load_is_infeasible() -> None:
    config = config_from_mapping(base_raw([adapter("hot", 8, rate_for_load(5.0))], count=3),
                                 source="test")
    with pytest.raises(InfeasibleError) as info:
        loraserve_greedy_min(Instance.build(config))
    assert info.value.binding == "pool"


def test_validity_reports_each_family() -> None:
    inst = Instance.build(make_config([adapter(f"t{i}", 16, 0.01) for i in range(3)],
                                      serving={"max_loras": 2, "max_replicas": 1}))
    tier8, tier16 = inst.kind_of("H100-80GB", 8), inst.kind_of("H100-80GB", 16)
    gpus = [OpenGPU(kind=tier16, shares={0: 0.5, 1: 1.0, 2: 1.0}),
            OpenGPU(kind=tier8, shares={0: 0.25})]
    families = {p.split(":")[0] for p in validity(inst, gpus)}
    assert families == {"slots", "replicas", "routing", "tier"}


def test_deterministic() -> None:
    inst = Instance.build(synthetic_roomy())
    first, n1 = loraserve_greedy_min(inst)
    second, n2 = loraserve_greedy_min(Instance.build(synthetic_roomy()))
    assert n1 == n2
    assert [(g.kind, g.shares) for g in first] == [(g.kind, g.shares) for g in second]
    assert [(g.kind, g.shares) for g in loraserve_greedy(inst, n1 + 3)] == \
        [(g.kind, g.shares) for g in loraserve_greedy(inst, n1 + 3)]
