"""Baselines: the rank-agnostic (dLoRA-like) placement and the paper's first valid fleet."""

from __future__ import annotations

import math
from typing import Any

import pytest

from loraserve import Config, config_from_mapping
from loraserve.models.synthetic import synthetic_config
from loraserve.solver.baselines import paper_greedy_first_valid, rank_agnostic_placement
from loraserve.solver.bounds import lower_bound
from loraserve.solver.build import build_plan
from loraserve.solver.greedy import OpenGPU, greedy_placement
from loraserve.solver.instance import InfeasibleError, Instance
from loraserve.solver.paper_greedy import loraserve_greedy, loraserve_greedy_min, validity
from tests.conftest import adapter, base_raw, make_config, rate_for_load


def tiers(inst: Instance, gpus: list[OpenGPU]) -> set[int]:
    return {inst.kinds[g.kind].tier for g in gpus}


def synthetic(slots: int, n: int = 200, seed: int = 2, **serving: Any) -> Config:
    return synthetic_config(n, total_rate=float(n), gpu_count=400, seed=seed,
                            serving={"max_loras": min(16, slots), "max_cpu_loras": slots,
                                     "max_replicas": 64, **serving})


def cold_tail() -> Config:
    # Sixty rank-8 adapters, a long cold tail, four slots per GPU: slots set the fleet.
    rates = [rate_for_load(0.3 / (i + 1) + 0.004) for i in range(60)]
    return make_config([adapter(f"c{i}", 8, r) for i, r in enumerate(rates)],
                       serving={"max_loras": 4, "max_cpu_loras": 4, "max_replicas": 64})


# ---- rank-agnostic ---------------------------------------------------------------------------


@pytest.mark.parametrize("build", [
    lambda: synthetic(64), lambda: synthetic(16), lambda: synthetic(8, n=120),
    # Memory-bound: with the SLO families the greedy needs one GPU more than rank-agnostic
    # packing here (18 against 17), so this one is held to the compute-only model.
    lambda: synthetic(10_000, adapter_cache_gib=4.0, slo_families=False), cold_tail,
])
def test_rank_agnostic_verifies_on_one_tier_and_needs_at_least_greedys_gpus(build: Any) -> None:
    config = build()
    inst = Instance.build(config)
    gpus = rank_agnostic_placement(inst)
    assert build_plan(inst, gpus).verify(config) == []
    assert validity(inst, gpus) == []
    # One tier for the fleet: the lowest admitting the largest rank present.
    top = int(inst.ranks.max())
    assert tiers(inst, gpus) == {min(k.tier for k in inst.kinds if k.tier >= top)}
    assert all(g.shares for g in gpus)
    assert len(gpus) >= len(greedy_placement(inst))
    assert len(gpus) >= lower_bound(inst).value - 1e-9


def test_rank_agnostic_pays_the_top_tier_for_every_adapter() -> None:
    # Eight rank-8 adapters at 0.45 of a tier-8 GPU and one tiny rank-128 adapter: 3.6 GPUs
    # of load at tier 8, so a rank-aware plan fits on 4 (one at tier 128 carrying the big
    # adapter and some small ones). At tier 128 every small adapter weighs more (decode at
    # the padded rank is slower) and the fleet grows to 5.
    config = make_config([adapter(f"s{i}", 8, rate_for_load(0.45)) for i in range(8)]
                         + [adapter("big", 128, 0.01)])
    inst = Instance.build(config)
    ours = greedy_placement(inst)
    agnostic = rank_agnostic_placement(inst)
    assert len(ours) == 4
    assert tiers(inst, agnostic) == {128}
    assert len(agnostic) == 5
    assert build_plan(inst, agnostic).verify(config) == []


def test_single_rank_splittable_load_packs_at_the_load_bound() -> None:
    # One rank, ample slots: water-filling with splits reaches ceil(total load).
    config = make_config([adapter(f"s{i}", 8, rate_for_load(0.37)) for i in range(11)])
    inst = Instance.build(config)
    gpus = rank_agnostic_placement(inst)
    assert len(gpus) == math.ceil(11 * 0.37)
    assert tiers(inst, gpus) == {8}


def test_slots_set_the_count_when_they_bind() -> None:
    config = make_config([adapter(f"t{i}", 16, 0.001) for i in range(40)],
                         serving={"max_loras": 4, "max_cpu_loras": 4})
    inst = Instance.build(config)
    gpus = rank_agnostic_placement(inst)
    assert len(gpus) == 10
    assert all(len(g.shares) == 4 for g in gpus)


def test_the_count_is_minimal_for_load_balanced_packing() -> None:
    config = cold_tail()
    inst = Instance.build(config)
    gpus = rank_agnostic_placement(inst)
    # Hand-check the search: hand the packer one GPU fewer and it fails.
    from loraserve.solver.baselines import _agnostic_kinds, _fleet, _pack_balanced

    kinds = _agnostic_kinds(inst)
    share = inst.load[:, kinds[0].index]
    order = sorted(range(inst.num_adapters), key=lambda a: (-float(share[a]), a))
    assert _pack_balanced(inst, _fleet(kinds, len(gpus) - 1), order) is None
    assert _pack_balanced(inst, _fleet(kinds, len(gpus)), order) is not None


def test_hot_adapter_splits_and_respects_the_replica_cap() -> None:
    # 1.9 tier-8 GPUs of traffic: two replicas at tier 8, three at tier 128.
    hot = adapter("hot", 8, rate_for_load(1.9))
    config = make_config([hot, adapter("big", 128, 0.01)], serving={"max_replicas": 3})
    inst = Instance.build(config)
    gpus = rank_agnostic_placement(inst)
    assert sum(g.shares.get(0, 0.0) for g in gpus) == pytest.approx(1.0)
    assert sum(0 in g.shares for g in gpus) == 3
    assert build_plan(inst, gpus).verify(config) == []
    # With two replicas allowed only a rank-aware plan exists.
    capped = make_config([hot, adapter("big", 128, 0.01)], serving={"max_replicas": 2})
    capped_inst = Instance.build(capped)
    assert greedy_placement(capped_inst)
    with pytest.raises(InfeasibleError, match="needs 3 replicas at tier 128") as info:
        rank_agnostic_placement(capped_inst)
    assert info.value.binding == "replicas"


def test_pool_too_small_for_the_top_tier() -> None:
    raw = base_raw([adapter(f"s{i}", 8, rate_for_load(0.45)) for i in range(8)]
                   + [adapter("big", 128, 0.01)], count=4)
    config = config_from_mapping(raw, source="test")
    inst = Instance.build(config)
    assert len(greedy_placement(inst)) == 4
    with pytest.raises(InfeasibleError) as info:
        rank_agnostic_placement(inst)
    assert info.value.binding == "pool"


def test_mixed_gpu_types_use_one_tier_per_type() -> None:
    raw = base_raw([adapter(f"s{i}", 8, rate_for_load(0.45)) for i in range(30)]
                   + [adapter("big", 64, 0.5)], count=6)
    raw["pools"].append({"gpu_type": "A100-80GB", "count": 40, "memory_gib": 80.0,
                         "cost_per_hour": 1.5})
    config = config_from_mapping(raw, source="test")
    inst = Instance.build(config)
    gpus = rank_agnostic_placement(inst)
    assert build_plan(inst, gpus).verify(config) == []
    by_type: dict[str, set[int]] = {}
    for g in gpus:
        kind = inst.kinds[g.kind]
        by_type.setdefault(kind.gpu_type, set()).add(kind.tier)
    assert all(t == {64} for t in by_type.values())


def test_rank_agnostic_is_deterministic() -> None:
    first = rank_agnostic_placement(Instance.build(synthetic(16)))
    second = rank_agnostic_placement(Instance.build(synthetic(16)))
    assert [(g.kind, g.shares) for g in first] == [(g.kind, g.shares) for g in second]


# ---- the paper's heuristic at its first valid fleet size -------------------------------------


def roomy() -> Config:
    # Slots for every adapter, as the paper's RDMA system has; its packing is blind to LoRA
    # batch slots, so the batch_slots family is off for the paper's search under test.
    return synthetic(512, n=300, slo_families=False)


@pytest.mark.parametrize("fill", ["capacity", "utilization"])
def test_first_valid_is_the_first_valid_size(fill: Any) -> None:
    config = roomy()
    inst = Instance.build(config)
    start = int(lower_bound(inst).value)
    found = paper_greedy_first_valid(inst, start, fill=fill)
    assert found is not None
    gpus, n = found
    assert len(gpus) == n
    assert validity(inst, gpus) == []
    assert [(g.kind, g.shares) for g in gpus] == \
        [(g.kind, g.shares) for g in loraserve_greedy(inst, n, fill=fill)]
    assert build_plan(inst, [g for g in gpus if g.shares]).verify(config) == []
    for m in range(start, n):
        assert validity(inst, loraserve_greedy(inst, m, fill=fill)) != []
    # The galloping search can only stop at or beyond the first valid size.
    assert loraserve_greedy_min(inst, start=start, fill=fill)[1] >= n


def test_first_valid_starts_at_one_at_least() -> None:
    config = make_config([adapter("hot", 8, rate_for_load(2.5))])
    found = paper_greedy_first_valid(Instance.build(config), start=-4)
    assert found is not None
    assert found[1] == 3


def test_none_when_no_size_up_to_the_pool_is_valid() -> None:
    # The paper's capacity fill piles the cold tail on one GPU whatever the fleet size.
    inst = Instance.build(cold_tail())
    assert paper_greedy_first_valid(inst, start=2) is None
    # Its even fill spreads the tail once the fleet is large enough.
    found = paper_greedy_first_valid(inst, start=2, fill="utilization")
    assert found is not None
    assert found[1] > len(greedy_placement(inst))
    assert paper_greedy_first_valid(inst, start=2, fill="utilization", stop=found[1] - 1) is None
