from __future__ import annotations

import math
import random
from typing import Any

import pytest
from ortools.sat.python import cp_model

from loraserve import Config
from loraserve.models.synthetic import synthetic_config
from loraserve.solver._highs import quiet_banner
from loraserve.solver.build import build_plan
from loraserve.solver.cpsat import DEFAULT_RESOLUTION, PlacementCPSAT
from loraserve.solver.greedy import OpenGPU, greedy_placement, plan_cost
from loraserve.solver.instance import Instance
from loraserve.solver.milp import MILPOutcome, PlacementMILP
from tests.conftest import adapter, make_config, rate_for_load

LIMIT = 5.0
H100 = {"gpu_type": "H100-80GB", "count": 8, "memory_gib": 80.0, "cost_per_hour": 4.0}
A100 = {"gpu_type": "A100-80GB", "count": 8, "memory_gib": 80.0, "cost_per_hour": 1.2}
ONE_TIER = {"tiers": [8], "max_replicas": 1}


def cpsat(inst: Instance, upper: float | None = None, lower: float = 0.0,
          start: list[OpenGPU] | None = None, resolution: int = DEFAULT_RESOLUTION,
          **kwargs: Any) -> MILPOutcome:
    if upper is None:
        upper = plan_cost(inst, greedy_placement(inst))
    return PlacementCPSAT(inst, upper, lower, resolution).solve(
        time_limit=kwargs.pop("time_limit", LIMIT), start=start, seed=0,
        threads=kwargs.pop("threads", 1), integral=inst.uniform_cost, **kwargs)


def checked_cost(inst: Instance, outcome: MILPOutcome) -> float:
    """The plan's cost, after checking it against the config."""
    assert outcome.gpus is not None
    assert build_plan(inst, outcome.gpus).verify(inst.config) == []
    for gpu in outcome.gpus:
        kind = inst.kinds[gpu.kind]
        load = sum(w * inst.load[a, gpu.kind] for a, w in gpu.shares.items())
        assert gpu.load == pytest.approx(load)
        assert gpu.load <= kind.capacity * (1 + 1e-9)
        assert len(gpu.shares) <= inst.slots
    routed: dict[int, float] = {}
    for gpu in outcome.gpus:
        for a, w in gpu.shares.items():
            routed[a] = routed.get(a, 0.0) + w
    assert routed == pytest.approx(dict.fromkeys(range(inst.num_adapters), 1.0))
    return plan_cost(inst, outcome.gpus)


# ---- instances ----------------------------------------------------------------------------


def splittable() -> Config:
    # Six adapters of 0.4: 2.4 GPUs of work, three GPUs when traffic splits.
    rate = rate_for_load(0.4)
    return make_config([adapter(f"s{i}", 8, rate) for i in range(6)])


def slot_bound(replicas: int = 64) -> Config:
    # Ten nearly idle adapters, four slots per GPU: three GPUs.
    return make_config([adapter(f"t{i}", 8, 0.01) for i in range(10)],
                       serving={"max_loras": 4, "max_cpu_loras": 4, "max_replicas": replicas})


def mixed_rank() -> Config:
    big, small = rate_for_load(0.3, tier=128), rate_for_load(0.3, tier=8)
    return make_config([adapter("big0", 128, big), adapter("big1", 128, big),
                        adapter("small0", 8, small), adapter("small1", 8, small)])


def no_split() -> Config:
    rate = rate_for_load(0.6)
    return make_config([adapter(f"n{i}", 8, rate) for i in range(3)],
                       serving={"max_replicas": 1})


def cache_bound(replicas: int = 64) -> Config:
    # Rank-128 adapters take 0.625 GiB; a 1.5 GiB cache holds two: six need three GPUs.
    return make_config([adapter(f"m{i}", 128, 0.01) for i in range(6)],
                       serving={"adapter_cache_gib": 1.5, "max_replicas": replicas})


def mixed_prices(replicas: int = 64) -> Config:
    rate = rate_for_load(0.4)
    return make_config([adapter(f"p{i}", 8, rate) for i in range(6)], pools=[H100, A100],
                       serving={"max_replicas": replicas})


def cheap_slow_pool() -> Config:
    # An A100 cannot carry a whole adapter and nothing may split: two H100s, 8.0 per hour.
    pools = [{**H100, "count": 10}, {**A100, "count": 10, "cost_per_hour": 1.0}]
    rate = rate_for_load(0.45)
    return make_config([adapter(f"x{i}", 8, rate) for i in range(3)], pools=pools,
                       serving={"max_replicas": 1})


def bins(sizes: list[float], count: int = 64, **serving: Any) -> Config:
    """One tier, no splitting: pure bin packing of ``sizes`` (shares of a GPU)."""
    settings = {**ONE_TIER, **serving}
    rates = [rate_for_load(s, serving=settings) for s in sizes]
    return make_config([adapter(f"b{i}", 8, r) for i, r in enumerate(rates)], count=count,
                       serving=settings)


def perfect_triples(k: int, seed: int = 0) -> list[float]:
    """``3k`` sizes in ``(0.1, 0.6)`` that fill exactly ``k`` GPUs in triples, shuffled."""
    rng = random.Random(seed)
    sizes: list[float] = []
    for _ in range(k):
        a = rng.randint(20, 55) / 100
        b = rng.randint(15, min(55, 85 - int(a * 100))) / 100
        sizes += [a, b, round(1.0 - a - b, 2)]
    rng.shuffle(sizes)
    return sizes


AGREE = [
    pytest.param(splittable, id="splittable"),
    pytest.param(slot_bound, id="slot-bound"),
    pytest.param(lambda: slot_bound(1), id="slot-bound-no-split"),
    pytest.param(mixed_rank, id="mixed-rank"),
    pytest.param(no_split, id="no-split"),
    pytest.param(cache_bound, id="cache-bound"),
    pytest.param(lambda: cache_bound(1), id="cache-bound-no-split"),
    pytest.param(mixed_prices, id="mixed-prices"),
    pytest.param(lambda: mixed_prices(1), id="mixed-prices-no-split"),
    pytest.param(cheap_slow_pool, id="cheap-slow-pool"),
    pytest.param(lambda: synthetic_config(12, 12.0, gpu_count=40, seed=2,
                                          serving={"max_loras": 4, "max_replicas": 4}),
                 id="synthetic"),
]


# ---- agreement with the MILP --------------------------------------------------------------


@pytest.mark.parametrize("build", AGREE)
@pytest.mark.parametrize("warm", [True, False], ids=["greedy-start", "cold"])
def test_agrees_with_milp(build: Any, warm: bool) -> None:
    quiet_banner()
    inst = Instance.build(build())
    greedy = greedy_placement(inst)
    upper = plan_cost(inst, greedy)
    milp = PlacementMILP(inst, upper, 0.0).solve(LIMIT, greedy, 0, 1, inst.uniform_cost)
    assert milp.proven_optimal and milp.gpus is not None
    outcome = cpsat(inst, upper, start=greedy if warm else None)
    assert checked_cost(inst, outcome) == pytest.approx(plan_cost(inst, milp.gpus))
    if inst.max_replicas == 1:
        assert outcome.proven_optimal
        assert outcome.bound == pytest.approx(plan_cost(inst, outcome.gpus or []))
    else:
        # Shares are discretised: CP-SAT's bound is not one on the real problem.
        assert outcome.bound == -math.inf
        assert not outcome.proven_optimal


# ---- bin packing with a known optimum -----------------------------------------------------


@pytest.mark.parametrize(("sizes", "optimum"), [
    pytest.param([0.6] * 7, 7, id="no-two-fit"),
    pytest.param([0.49] * 10, 5, id="pairs"),
    pytest.param([0.49] * 9, 5, id="pairs-odd"),
    pytest.param([0.7, 0.3, 0.6, 0.4, 0.5, 0.5, 0.8, 0.2], 4, id="complements"),
    pytest.param(perfect_triples(6), 6, id="triples"),
    pytest.param(perfect_triples(8, seed=3), 8, id="triples-8"),
])
def test_bin_packing_optimum(sizes: list[float], optimum: int) -> None:
    inst = Instance.build(bins(sizes))
    assert len(inst.kinds) == 1
    # Proofs take well under a second here; the limit only guards slow machines.
    outcome = cpsat(inst, upper=float(len(sizes)), start=greedy_placement(inst),
                    time_limit=20.0)
    assert checked_cost(inst, outcome) == optimum
    assert outcome.proven_optimal
    assert outcome.bound == optimum
    if sum(sizes) == pytest.approx(optimum):
        # A perfect packing fills every GPU: rounding loads up must not lose it.
        assert all(g.load == pytest.approx(inst.kinds[0].capacity) for g in outcome.gpus or [])


def test_slots_bind_packing() -> None:
    # Tiny loads, three slots a GPU: ceil(10 / 3) = 4 GPUs.
    inst = Instance.build(bins([0.05] * 10, max_loras=3, max_cpu_loras=3))
    outcome = cpsat(inst, upper=10.0)
    assert checked_cost(inst, outcome) == 4
    assert outcome.proven_optimal
    assert max(len(g.shares) for g in outcome.gpus or []) == 3


def test_memory_binds_packing() -> None:
    # Rank-64 adapters of 0.3125 GiB, a 1 GiB cache holds three: eight adapters need three.
    rate = rate_for_load(0.05, tier=64)
    config = make_config([adapter(f"m{i}", 64, rate) for i in range(8)],
                         serving={"adapter_cache_gib": 1.0, "max_replicas": 1})
    inst = Instance.build(config)
    assert math.isfinite(inst.cache_bytes)
    per_gpu = int(inst.cache_bytes // inst.bytes[0])
    outcome = cpsat(inst, upper=8.0)
    assert checked_cost(inst, outcome) == math.ceil(8 / per_gpu)
    assert outcome.proven_optimal
    for gpu in outcome.gpus or []:
        assert gpu.bytes <= inst.cache_bytes


# ---- prices -------------------------------------------------------------------------------


def test_mixed_prices_minimise_cost() -> None:
    inst = Instance.build(cheap_slow_pool())
    assert not inst.uniform_cost
    outcome = cpsat(inst, start=greedy_placement(inst))
    assert checked_cost(inst, outcome) == pytest.approx(8.0)
    assert outcome.proven_optimal
    assert outcome.bound == pytest.approx(8.0)
    assert {inst.kinds[g.kind].gpu_type for g in outcome.gpus or []} == {"H100-80GB"}


def test_cheap_pool_preferred() -> None:
    # Six adapters of 0.1 of an H100 fill one H100 (4.0 per hour) or two A100s (2.4).
    rate = rate_for_load(0.1)
    inst = Instance.build(make_config([adapter(f"c{i}", 8, rate) for i in range(6)],
                                      pools=[H100, A100], serving={"max_replicas": 1}))
    outcome = cpsat(inst, start=greedy_placement(inst))
    assert checked_cost(inst, outcome) == pytest.approx(2.4)
    assert outcome.proven_optimal
    assert {inst.kinds[g.kind].gpu_type for g in outcome.gpus or []} == {"A100-80GB"}


# ---- bounds, infeasibility, candidates ----------------------------------------------------


def test_candidates_follow_upper_bound() -> None:
    inst = Instance.build(mixed_prices())
    model = PlacementCPSAT(inst, upper_bound=5.0, lower_bound=0.0)
    per_kind: dict[int, int] = {}
    for k, j in model.candidates:
        assert j == per_kind.get(k, 0)
        per_kind[k] = j + 1
    for kind in inst.kinds:
        assert per_kind.get(kind.index, 0) == min(kind.pool_count,
                                                  math.floor(5.0 / kind.unit_cost))


def test_infeasible_without_split() -> None:
    # Three adapters of 0.6, no splitting, two GPUs in the pool.
    inst = Instance.build(bins([0.6] * 3, count=2))
    outcome = cpsat(inst, upper=math.inf)
    assert outcome.infeasible
    assert outcome.gpus is None
    assert outcome.bound == math.inf


def test_no_candidates_is_infeasible() -> None:
    # An upper bound below one GPU leaves no candidate at all.
    inst = Instance.build(no_split())
    model = PlacementCPSAT(inst, upper_bound=0.5, lower_bound=0.0)
    assert model.candidates == []
    outcome = model.solve(time_limit=LIMIT, start=None, seed=0, threads=1, integral=True)
    assert outcome.infeasible


def test_infeasible_discretisation_claims_nothing() -> None:
    # With splitting an infeasible discretised model says nothing about the real one.
    rate = rate_for_load(0.6)
    inst = Instance.build(make_config([adapter(f"n{i}", 8, rate) for i in range(3)], count=1,
                                      serving={"tiers": [8]}))
    outcome = cpsat(inst, upper=math.inf)
    assert not outcome.infeasible
    assert outcome.gpus is None
    assert outcome.bound == -math.inf


def test_lower_bound_proves_split_plan() -> None:
    # The caller's bound (3 = ceil(2.4)) is valid for the real problem: meeting it proves.
    inst = Instance.build(splittable())
    outcome = cpsat(inst, lower=3.0)
    assert checked_cost(inst, outcome) == 3
    assert outcome.proven_optimal


def test_resolution_must_be_positive() -> None:
    inst = Instance.build(splittable())
    with pytest.raises(ValueError, match="resolution"):
        PlacementCPSAT(inst, 3.0, 0.0, resolution=0)


@pytest.mark.parametrize("resolution", [5, DEFAULT_RESOLUTION])
def test_split_shares_are_multiples_of_resolution(resolution: int) -> None:
    # Three adapters of 0.6 fit two GPUs only if one splits.
    rate = rate_for_load(0.6)
    inst = Instance.build(make_config([adapter(f"n{i}", 8, rate) for i in range(3)]))
    outcome = cpsat(inst, resolution=resolution)
    assert checked_cost(inst, outcome) == 2
    assert any(w < 1 for g in outcome.gpus or [] for w in g.shares.values())
    for gpu in outcome.gpus or []:
        for w in gpu.shares.values():
            assert w * resolution == pytest.approx(round(w * resolution))


# ---- warm start ---------------------------------------------------------------------------


def synthetic(n: int = 40, slots: int = 8, replicas: int = 8) -> Instance:
    return Instance.build(synthetic_config(
        n, float(n), gpu_count=4 * n, seed=1,
        serving={"max_loras": slots, "max_cpu_loras": slots, "max_replicas": replicas}))


def test_hint_is_feasible() -> None:
    inst = synthetic()
    greedy = greedy_placement(inst)
    model = PlacementCPSAT(inst, plan_cost(inst, greedy), 0.0)
    values = model.hint_values(greedy)
    assert values is not None
    use, host, share = values
    assert sum(use) == len(greedy)
    for ps in model.by_adapter.values():
        assert sum(share[p] for p in ps) == model.units
        assert sum(host[p] for p in ps) <= inst.max_replicas
    for g, ps in model.by_gpu.items():
        load = sum(int(model.pair_load[p]) * share[p] for p in ps)
        assert load <= 10**9 * use[g]
        assert sum(host[p] for p in ps) <= inst.slots * use[g]
    # CP-SAT checks a hint before presolve and says whether it is feasible.
    assert model.set_hint(greedy)
    lines: list[str] = []
    solver = cp_model.CpSolver()
    solver.parameters.log_search_progress = True
    solver.parameters.log_to_stdout = False
    solver.parameters.max_deterministic_time = 0.01
    solver.log_callback = lines.append
    solver.solve(model.model)
    assert any("hint is complete and is feasible" in line for line in lines)


def test_hint_needs_enough_candidates() -> None:
    inst = Instance.build(splittable())
    greedy = greedy_placement(inst)
    model = PlacementCPSAT(inst, plan_cost(inst, greedy) - 1, 0.0)
    assert model.hint_values(greedy) is None


# ---- determinism and progress -------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_deterministic(threads: int) -> None:
    inst = synthetic()
    greedy = greedy_placement(inst)
    upper = plan_cost(inst, greedy)
    runs = [
        PlacementCPSAT(inst, upper, 0.0).solve(
            time_limit=60.0, start=greedy, seed=7, threads=threads, integral=True,
            deterministic_time=0.3)
        for _ in range(2)
    ]
    first, second = ([(g.kind, sorted(g.shares.items())) for g in run.gpus or []]
                     for run in runs)
    assert first
    assert first == second


def test_progress_reports_solutions() -> None:
    # From a cold start with room for ten GPUs, CP-SAT improves towards five.
    inst = Instance.build(bins([0.49] * 10))
    calls: list[tuple[float, float, float]] = []
    outcome = cpsat(inst, upper=10.0, progress=lambda *args: calls.append(args))
    assert len(calls) > 1
    objectives = [c[0] for c in calls]
    assert objectives == sorted(objectives, reverse=True)
    assert objectives[-1] == checked_cost(inst, outcome)
    assert all(bound <= objective + 1e-9 for objective, bound, _ in calls)
    assert all(seconds >= 0 for _, _, seconds in calls)


def test_progress_bound_hidden_when_split() -> None:
    inst = Instance.build(splittable())
    calls: list[tuple[float, float, float]] = []
    cpsat(inst, progress=lambda *args: calls.append(args))
    assert calls
    assert all(bound == -math.inf for _, bound, _ in calls)
