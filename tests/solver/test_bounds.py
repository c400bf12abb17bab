"""The tier-count bound: validity against exact optima, and the whole-adapter cache fill."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from loraserve.solver._highs import quiet_banner
from loraserve.solver.bounds import fullest_bytes, lower_bound
from loraserve.solver.greedy import plan_cost
from loraserve.solver.instance import Instance
from loraserve.solver.milp import PlacementMILP
from tests.conftest import adapter, make_config, rate_for_load

TIERS = [8, 16, 32]
GiB = 2**30


def test_fullest_bytes_counts_whole_adapters() -> None:
    assert fullest_bytes((5,), 11.0) == 10.0
    assert fullest_bytes((3, 5), 11.0) == 11.0
    assert fullest_bytes((4, 6), 9.0) == 8.0
    assert fullest_bytes((7,), 6.0) == 0.0
    assert fullest_bytes((), 6.0) == 6.0
    assert math.isinf(fullest_bytes((5,), math.inf))


def test_fullest_bytes_gives_up_on_too_many_sums() -> None:
    # Coprime sizes reach almost every total: past the cap the cache itself is returned.
    assert fullest_bytes((100_003, 100_019), 1e12) == 1e12


def test_cache_holds_whole_adapters() -> None:
    # Ten cold rank-32 adapters; a cache of 2.5 of them holds two: five GPUs, where the
    # fluid byte count (10 / 2.5) says four.
    serving = {"tiers": TIERS, "max_replicas": 1}
    probe = Instance.build(make_config([adapter("p", 32, 0.01)], serving=serving))
    size = float(probe.bytes[0])
    serving["adapter_cache_gib"] = 2.5 * size / GiB
    config = make_config([adapter(f"a{i}", 32, 0.01) for i in range(10)], serving=serving,
                         count=16)
    bound = lower_bound(Instance.build(config))
    assert bound.value == 5
    assert bound.binding == "memory"


@st.composite
def memory_instances(draw: st.DrawFn) -> Instance:
    n = draw(st.integers(3, 7))
    ranks = draw(st.lists(st.sampled_from(TIERS), min_size=n, max_size=n))
    loads = draw(st.lists(st.floats(0.02, 1.4), min_size=n, max_size=n))
    serving = {"tiers": TIERS, "max_replicas": 3, "max_loras": 4, "max_cpu_loras": 4}
    probe = Instance.build(make_config([adapter("p", 32, 0.01)], serving=serving))
    # Caches from one to three rank-32 adapters: memory binds on most draws.
    serving["adapter_cache_gib"] = draw(st.floats(1.0, 3.0)) * float(probe.bytes[0]) / GiB
    config = make_config(
        [adapter(f"a{i}", r, rate_for_load(x, tier=r, serving=serving))
         for i, (x, r) in enumerate(zip(loads, ranks, strict=True))],
        serving=serving, count=16)
    return Instance.build(config)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(memory_instances())
def test_never_above_milp_optimum_where_memory_binds(inst: Instance) -> None:
    quiet_banner()
    upper = float(sum(max(1, inst.min_replicas(a)) for a in range(inst.num_adapters)))
    milp = PlacementMILP(inst, upper, 0.0).solve(5.0, None, 0, 1, True)
    if not milp.proven_optimal or milp.gpus is None:
        return
    assert lower_bound(inst).value <= plan_cost(inst, milp.gpus) + 1e-9
