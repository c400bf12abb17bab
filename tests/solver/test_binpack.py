"""Whole adapters: best-fit decreasing and the pool search reach known optima, stay valid."""

from __future__ import annotations

import random

import pytest

import loraserve
from loraserve.solver.binpack import best_fit_decreasing, improve_whole, items_of
from loraserve.solver.build import build_plan
from loraserve.solver.greedy import plan_cost
from loraserve.solver.instance import Instance
from loraserve.solver.paper_greedy import validity
from tests.conftest import adapter, make_config, rate_for_load

SERVING = {"max_loras": 3, "max_cpu_loras": 3, "max_replicas": 1, "tiers": [8],
           "slo_families": False}


def triplets(bins: int, seed: int = 0) -> loraserve.Config:
    """Falkenauer-style triplets: three adapters fill each of ``bins`` GPUs exactly."""
    rng = random.Random(seed)
    sizes: list[int] = []
    for _ in range(bins):
        first = rng.randint(380, 490)
        second = rng.randint(250, 1000 - first - 250)
        sizes += [first, second, 1000 - first - second]
    rng.shuffle(sizes)
    per_unit = rate_for_load(1.0, serving=SERVING)
    return make_config([adapter(f"a{i}", 8, per_unit * s / 1000 * (1 - 1e-7))
                        for i, s in enumerate(sizes)], serving=SERVING, count=2 * bins)


def test_best_fit_decreasing_is_valid_and_respects_slots() -> None:
    inst = Instance.build(triplets(10))
    gpus = best_fit_decreasing(inst).gpus()
    assert validity(inst, gpus) == []
    assert all(len(g.shares) <= 3 for g in gpus)
    assert plan_cost(inst, gpus) >= 10


def test_pool_search_reaches_the_triplet_optimum_or_one_above() -> None:
    config = triplets(8, seed=3)
    inst = Instance.build(config)
    seen: list[float] = []
    start = plan_cost(inst, best_fit_decreasing(inst).gpus())
    gpus = improve_whole(inst, target=8.0, time_limit=10.0, seed=0, report=seen.append)
    assert gpus is not None
    assert plan_cost(inst, gpus) <= 9 < start
    assert seen == sorted(seen, reverse=True)
    assert build_plan(inst, gpus).verify(config) == []


def test_hot_adapters_become_pieces_that_fit_one_gpu() -> None:
    serving = {"max_loras": 4, "max_cpu_loras": 4, "max_replicas": 4, "tiers": [8],
               "slo_families": False}
    rate = rate_for_load(1.0, serving=serving)
    config = make_config([adapter("hot", 8, 2.5 * rate), adapter("cold", 8, 0.2 * rate)],
                         serving=serving)
    inst = Instance.build(config)
    items = items_of(inst)
    assert items.adapter.tolist() == [0, 0, 0, 1]
    gpus = improve_whole(inst, target=3.0, time_limit=5.0)
    assert gpus is not None and plan_cost(inst, gpus) == 3
    assert build_plan(inst, gpus).verify(config) == []


@pytest.mark.parametrize("cache_gib", [None, 3.0])
def test_hosting_row_is_respected(cache_gib: float | None) -> None:
    # Rank-256 adapters on an adapter cache of 3 GiB: at most two per GPU, whatever their
    # load; with SLO families on, the batch-slots row is folded in as well.
    serving: dict[str, object] = {"max_loras": 4, "max_cpu_loras": 8, "max_replicas": 1}
    if cache_gib is not None:
        serving["adapter_cache_gib"] = cache_gib
    rate = rate_for_load(0.05, tier=256, serving=serving)
    config = make_config([adapter(f"a{i}", 256, rate) for i in range(12)], serving=serving)
    inst = Instance.build(config)
    gpus = improve_whole(inst, target=0.0, time_limit=3.0)
    assert gpus is not None
    assert validity(inst, gpus) == []
    assert build_plan(inst, gpus).verify(config) == []
    assert all(g.bytes <= inst.cache_bytes for g in gpus)


def test_auto_packs_whole_adapters() -> None:
    config = triplets(8, seed=3)
    result = loraserve.plan(config, time_limit=20)
    assert result.objective <= 9 and result.lower_bound == 8
    assert result.plan is not None and result.plan.verify(config) == []
