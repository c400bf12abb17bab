from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraserve import Config
from loraserve.models.synthetic import synthetic_config
from loraserve.solver._highs import quiet_banner
from loraserve.solver.bounds import lower_bound
from loraserve.solver.colgen import (
    ColgenBound,
    _Costs,
    _Duals,
    _KindData,
    _Master,
    _Pricer,
    _Run,
    _singletons,
    _start_columns,
    colgen_bound,
)
from loraserve.solver.cpsat import PlacementCPSAT
from loraserve.solver.greedy import greedy_placement, plan_cost
from loraserve.solver.instance import Instance
from loraserve.solver.milp import PlacementMILP
from tests.conftest import adapter, make_config, rate_for_load
from tests.solver.test_cpsat import (
    A100,
    H100,
    bins,
    cheap_slow_pool,
    mixed_prices,
    perfect_triples,
)

TIERS = [8, 16, 32]


def bound_of(inst: Instance, **kwargs: Any) -> ColgenBound:
    greedy = greedy_placement(inst)
    return colgen_bound(inst, plan_cost(inst, greedy), start=greedy, **kwargs)


def config_of(loads: list[float], ranks: list[int], serving: dict[str, Any]) -> Config:
    """Adapters whose whole traffic is ``loads[i]`` of a GPU at their own rank's tier."""
    return make_config(
        [adapter(f"a{i}", r, rate_for_load(x, tier=r, serving=serving))
         for i, (x, r) in enumerate(zip(loads, ranks, strict=True))],
        serving=serving, count=16)


# ---- validity against exact optima ---------------------------------------------------------


@st.composite
def small_instances(draw: st.DrawFn, split: bool) -> Instance:
    n = draw(st.integers(3, 8))
    top = 1.5 if split else 0.95
    loads = draw(st.lists(st.floats(0.05, top), min_size=n, max_size=n))
    ranks = draw(st.lists(st.sampled_from(TIERS), min_size=n, max_size=n))
    slots = draw(st.integers(1, 4))
    serving = {"tiers": TIERS, "max_loras": slots, "max_cpu_loras": slots,
               "max_replicas": draw(st.integers(2, 3)) if split else 1}
    return Instance.build(config_of(loads, ranks, serving))


def alone(inst: Instance) -> float:
    """Cost of the plan that gives every adapter GPUs of its own (no greedy needed)."""
    return float(sum(max(1, inst.min_replicas(a)) for a in range(inst.num_adapters)))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(small_instances(split=False))
def test_never_above_cpsat_optimum(inst: Instance) -> None:
    # Without splitting CP-SAT's optimum is exact (see cpsat's notes).
    outcome = PlacementCPSAT(inst, alone(inst), 0.0).solve(
        time_limit=5.0, start=None, seed=0, threads=1, integral=True)
    if not outcome.proven_optimal or outcome.gpus is None:
        return
    optimum = plan_cost(inst, outcome.gpus)
    result = colgen_bound(inst, optimum, start=outcome.gpus)
    assert result.value <= optimum + 1e-9
    assert result.value == math.floor(result.value)
    # No start plan, and cut short after one master solve: weaker, still valid.
    early = colgen_bound(inst, math.inf, start=[], max_iterations=1)
    assert early.value <= optimum + 1e-9


@settings(max_examples=30, deadline=None, derandomize=True)
@given(small_instances(split=True))
def test_never_above_milp_optimum_with_splitting(inst: Instance) -> None:
    quiet_banner()
    milp = PlacementMILP(inst, alone(inst), 0.0).solve(5.0, None, 0, 1, True)
    if not milp.proven_optimal or milp.gpus is None:
        return
    optimum = plan_cost(inst, milp.gpus)
    assert colgen_bound(inst, math.inf, start=[]).value <= optimum + 1e-9
    assert colgen_bound(inst, optimum, start=milp.gpus).value <= optimum + 1e-9


# ---- strength where slots, time and memory are tied -----------------------------------------


def test_slots_and_time_tied_with_splitting() -> None:
    # Two slots a GPU; loads 0.98, 0.5, 0.25, 0.25 of a GPU. Totals fit two GPUs exactly in
    # slots (4) and within in time (1.98), so the tier-count bound is 2. A two-GPU plan
    # would use every slot, so nothing splits (a split takes a third slot on some GPU); as
    # whole adapters, 0.98 shares a GPU with none of the others. The optimum is 3: a slot
    # next to the busy adapter cannot lend the GPU's time to the others.
    serving = {"tiers": [8], "max_loras": 2, "max_cpu_loras": 2, "max_replicas": 4}
    inst = Instance.build(config_of([0.98, 0.5, 0.25, 0.25], [8] * 4, serving))
    assert lower_bound(inst).value == 2
    result = bound_of(inst)
    assert result.value == 3
    assert 2 < result.lp_value <= 3


def test_hot_and_cold_without_splitting() -> None:
    # Four hot adapters (0.7) need a GPU each; four cold ones (0.01) ride along in the free
    # slots. Optimum 4; the tier-count bound sees 2.84 GPUs of time and 8 / 4 slots: 3.
    serving = {"tiers": [8], "max_loras": 4, "max_cpu_loras": 4, "max_replicas": 1}
    inst = Instance.build(config_of([0.7] * 4 + [0.01] * 4, [8] * 8, serving))
    assert lower_bound(inst).value == 3
    result = bound_of(inst)
    assert result.value == 4
    assert result.converged


def test_bin_packing_relaxation_is_tight() -> None:
    # No two of 0.6 share a GPU: 7, where time alone says 5.
    inst = Instance.build(bins([0.6] * 7))
    assert lower_bound(inst).value == 5
    assert bound_of(inst).value == 7


@pytest.mark.parametrize(("sizes", "optimum"), [
    pytest.param([0.7, 0.3, 0.6, 0.4, 0.5, 0.5, 0.8, 0.2], 4, id="complements"),
    pytest.param(perfect_triples(6), 6, id="triples"),
])
def test_exact_fills_stay_valid(sizes: list[float], optimum: int) -> None:
    # Loads that fill GPUs exactly (up to floating-point error) must not be ruled out.
    result = bound_of(Instance.build(bins(sizes)))
    assert result.value == optimum
    assert result.converged


def test_synthetic_slot_bound_not_weaker_than_tier_count() -> None:
    inst = Instance.build(synthetic_config(
        60, 60.0, gpu_count=200, seed=3,
        serving={"max_loras": 8, "max_cpu_loras": 8, "max_replicas": 8}))
    result = bound_of(inst, time_limit=10.0)
    assert result.value >= lower_bound(inst).value


# ---- memory -----------------------------------------------------------------------------------


def test_memory_and_time_tied() -> None:
    # Rank-128 adapters take 0.625 GiB and a 1.5 GiB cache holds two: the cache acts as two
    # slots, and the argument of the slot test gives 3 where the tier-count bound says 2.
    serving = {"tiers": [128], "adapter_cache_gib": 1.5, "max_replicas": 4}
    inst = Instance.build(config_of([0.98, 0.5, 0.25, 0.25], [128] * 4, serving))
    assert math.isfinite(inst.cache_bytes)
    assert lower_bound(inst).value == 2
    assert bound_of(inst).value == 3


def test_memory_binds_without_splitting() -> None:
    # Rank-64 adapters of 0.3125 GiB, a 1 GiB cache holds three: eight need three GPUs.
    rate = rate_for_load(0.05, tier=64)
    config = make_config([adapter(f"m{i}", 64, rate) for i in range(8)],
                         serving={"adapter_cache_gib": 1.0, "max_replicas": 1})
    result = bound_of(Instance.build(config))
    assert result.value == 3


# ---- prices -------------------------------------------------------------------------------


def test_mixed_prices_round_up_to_a_plan_cost() -> None:
    # Six adapters of 0.4 of an H100 (4.0 per hour), or about 1.28 of an A100 (1.2): the
    # LP buys the cheaper A100 time (about 7.7 A100s, 9.2 per hour); whole GPUs cost at
    # least 9.6 (eight A100s).
    inst = Instance.build(mixed_prices())
    assert not inst.uniform_cost
    result = bound_of(inst)
    cheapest = min(k.unit_cost * inst.share_load(0, k.index) for k in inst.kinds
                   if inst.allowed(0, k.index))
    assert result.lp_value == pytest.approx(6 * cheapest, rel=1e-4)
    assert 9.1 < result.lp_value < 9.6
    # Whole GPUs: the bound is a sum of whole GPU prices (4.0 and 1.2), at least the LP's.
    assert result.value >= result.lp_value - 1e-9
    assert any(abs(4.0 * h + 1.2 * a - result.value) < 1e-6
               for h in range(4) for a in range(10))


def test_cheap_slow_pool() -> None:
    # Three adapters of 0.45 of an H100 (4.0 per hour); an A100 (1.0) cannot carry a whole
    # one and nothing splits. Two share an H100: 1.5 H100s carry all, 6.0 per hour. Every
    # plan needs two GPUs (1.35 GPUs of work), so the LP adds half an A100 (carrying
    # nothing): 6.5, which rounds up to 7.0, the least plan cost above it. Optimum: 8.0.
    inst = Instance.build(cheap_slow_pool())
    assert lower_bound(inst).value == pytest.approx(5.0)
    result = bound_of(inst)
    assert result.lp_value == pytest.approx(6.5)
    assert result.value == pytest.approx(7.0)
    assert result.converged


def test_pool_rows_bind() -> None:
    # Cheap A100s run out: the pool row's dual must enter the bound with the right sign.
    pools = [{**H100, "count": 8}, {**A100, "count": 2}]
    rate = rate_for_load(0.3)
    config = make_config([adapter(f"p{i}", 8, rate) for i in range(6)], pools=pools,
                         serving={"max_replicas": 1})
    inst = Instance.build(config)
    greedy = greedy_placement(inst)
    upper = plan_cost(inst, greedy)
    milp = PlacementMILP(inst, upper, 0.0).solve(5.0, greedy, 0, 1, False)
    assert milp.proven_optimal and milp.gpus is not None
    result = colgen_bound(inst, upper, start=greedy)
    assert result.value <= plan_cost(inst, milp.gpus) + 1e-9
    assert result.value >= lower_bound(inst).value - 1e-9


# ---- duals and pricing --------------------------------------------------------------------


def test_dual_signs_and_strong_duality() -> None:
    # Host floors (a hot adapter needs two GPUs), host caps and a binding pool: at the
    # master's optimum every column prices out and the dual objective equals the value.
    serving = {"tiers": [8], "max_loras": 3, "max_cpu_loras": 3, "max_replicas": 2}
    loads = [1.6, 0.5, 0.3, 0.2, 0.1, 0.05]
    inst = Instance.build(make_config(
        [adapter(f"d{i}", 8, rate_for_load(x, serving=serving)) for i, x in enumerate(loads)],
        serving=serving, count=3))
    greedy = greedy_placement(inst)
    master = _Master(inst, 10.0)
    assert master.has_pool_rows and master.floor_var.max() >= 0
    kinds = [_KindData(inst, 0, False)]
    master.add_artificials(100.0)
    master.add(_start_columns(inst, greedy, False))
    master.add(_singletons(kinds, inst.num_adapters))
    optimal, value = master.solve()
    assert optimal
    duals = master.duals()
    assert np.all(duals.pi >= 0) and all(mu <= 0 for mu in duals.mu.values())
    assert master.dual_objective(duals) == pytest.approx(value, rel=1e-7)
    for column in master.columns:
        assert master.kind_price(duals, column.kind) - duals.value(column) >= -1e-7


@pytest.mark.parametrize("whole", [False, True], ids=["split", "whole"])
def test_pricing_bounds_are_valid(whole: bool) -> None:
    quiet_banner()
    inst = Instance.build(synthetic_config(
        40, 40.0, gpu_count=100, seed=5,
        serving={"max_loras": 6, "max_cpu_loras": 6, "max_replicas": 1 if whole else 4}))
    data = _KindData(inst, 0, whole)
    pricer = _Pricer(data, inst.slots, whole, False, math.inf)
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = len(data.adapters)
        pi = rng.uniform(0.0, 0.4, n) + 0.3 * data.share
        rho = np.where(rng.random(n) < 0.2, -0.05, 0.0) if not whole else np.zeros(n)
        local = pricer._candidates(pi, rho)
        mip_bound, column, value = pricer._exact(pi, rho, local)
        assert column is not None
        assert pricer.upper_bound(pi, rho) >= value - 1e-9
        dp_bound, found = pricer._dp(pi, rho, local, 512)
        assert dp_bound >= value - 1e-9
        assert found is not None and found[0] <= mip_bound + 1e-9
        got = found[1]
        load = float(np.dot(inst.load[got.adapters, 0], got.shares)) / inst.kinds[0].capacity
        assert load <= 1.0 + 1e-9 and len(got.adapters) <= inst.slots
        if whole:
            assert np.all(got.shares == 1.0)


def test_bound_at_any_duals_is_valid() -> None:
    # The bound needs no master: any duals of the right signs and valid pricing bounds.
    inst = Instance.build(bins([0.6] * 7))
    master = _Master(inst, 7.0)
    data = _KindData(inst, 0, True)
    run = _Run(master, [_Pricer(data, inst.slots, True, False, math.inf)], math.inf,
               _Costs(inst))
    for scale in (0.1, 0.5, 1.0, 3.0):
        run.price(_Duals(np.full(7, scale), {}, np.zeros(7), {}), exact=True)
        assert run.best <= 7 + 1e-9
    # Each GPU carries one adapter: duals of 1 prove all seven.
    assert run.best == pytest.approx(7.0)


# ---- determinism and limits ---------------------------------------------------------------


def test_deterministic() -> None:
    # A memory-bound instance that takes a score of rounds, from no start plan.
    inst = Instance.build(synthetic_config(
        80, 25.0, gpu_count=200, seed=1,
        serving={"max_loras": 8, "max_cpu_loras": 8, "max_replicas": 1,
                 "adapter_cache_gib": 1.0}))
    runs = [colgen_bound(inst, math.inf, start=[], time_limit=60.0, max_iterations=30)
            for _ in range(2)]
    assert runs[0].iterations > 5
    first, second = ((r.value, r.lp_value, r.iterations, r.columns, r.converged, r.message)
                     for r in runs)
    assert first == second


def test_smoothing_must_be_a_weight() -> None:
    inst = Instance.build(bins([0.5] * 2))
    with pytest.raises(ValueError, match="smoothing"):
        colgen_bound(inst, 1.0, smoothing=1.0)


def test_start_defaults_to_greedy() -> None:
    inst = Instance.build(bins([0.49] * 9))
    result = colgen_bound(inst, math.inf)
    assert result.value == 5
    assert result.seconds >= 0 and result.columns > 0
