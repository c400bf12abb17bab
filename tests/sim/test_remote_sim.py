"""Remote fetches in the simulator: link time, contention on a shared link, reuse after fetch."""

from __future__ import annotations

import numpy as np
import pytest

from loraserve import Config, ConfigError, CostModel
from loraserve.sim.engine import Worker, run
from loraserve.sim.policies import POLICIES, deploy, deployment_from_plan
from loraserve.sim.workload import Requests
from loraserve.solver import solve
from tests.conftest import GPU, adapter, make_config, rate_for_load

NIC_GBIT = 100.0  # 12.5 GB/s: a rank-64 adapter (336 MB) takes ~27 ms


def config(count: int = 4, per_node: int = 2) -> Config:
    adapters = [adapter("a", 64, 1.0), adapter("b", 64, 1.0), adapter("c", 64, 1.0)]
    return make_config(adapters, serving={"tiers": [64]}, count=count,
                       topology={"nic_gbit_per_s": NIC_GBIT, "gpus_per_node": per_node})


def requests(arrival: list[float], adapters: list[int]) -> Requests:
    n = len(arrival)
    return Requests(np.array(arrival, dtype=float), np.array(adapters, dtype=np.int64),
                    np.full(n, 64, dtype=np.int64), np.full(n, 4, dtype=np.int64),
                    float(max(arrival) + 1e-3))


def transfer_s(cfg: Config, rank_adapter: int = 0) -> float:
    return float(cfg.adapter_bytes(cfg.adapters[rank_adapter])) / (NIC_GBIT * 1e9 / 8)


def test_fetch_takes_link_time_then_is_cached() -> None:
    cfg = config()
    model = CostModel.from_config(cfg)
    # Worker 2 (node 1) serves adapter 0, hosted by worker 0 (node 0), remotely.
    workers = [Worker(f"{GPU}-0", GPU, 64, (0,)), Worker(f"{GPU}-2", GPU, 64, (),
                                                         ((0, f"{GPU}-0"),))]
    local = run(cfg, workers, requests([0.0], [0]), np.array([0]), cost_model=model)
    remote = run(cfg, workers, requests([0.0, 5.0], [0, 0]), np.array([1, 1]),
                 cost_model=model)
    extra = remote.first[0] - local.first[0]
    # The transfer over the NIC, then the host-to-GPU copy any load pays.
    host_s = model.profiles[GPU].load_ms(64) / 1e3
    assert extra == pytest.approx(transfer_s(cfg) + host_s, rel=1e-6)
    assert remote.fetches.tolist() == [0, 1]
    # The second request finds the adapter in the worker's caches: no second fetch.
    assert remote.first[1] - 5.0 == pytest.approx(local.first[0], rel=1e-6)
    size = cfg.adapter_bytes(cfg.adapters[0])
    assert remote.link_bytes[(f"{GPU}-node-0", "fabric")] == size
    assert remote.link_bytes[("fabric", f"{GPU}-node-1")] == size
    util = remote.link_utilization()
    assert 0 < util[(f"{GPU}-node-0", "fabric")] <= 1


def test_concurrent_fetches_share_the_link_one_after_another() -> None:
    cfg = config()
    model = CostModel.from_config(cfg)
    # Workers 2 and 3 (node 1) fetch adapters 0 and 1 from worker 0 at the same moment:
    # both cross node 0's NIC, so the second waits for the first.
    workers = [Worker(f"{GPU}-0", GPU, 64, (0, 1)),
               Worker(f"{GPU}-2", GPU, 64, (), ((0, f"{GPU}-0"),)),
               Worker(f"{GPU}-3", GPU, 64, (), ((1, f"{GPU}-0"),))]
    result = run(cfg, workers, requests([0.0, 0.0], [0, 1]), np.array([1, 2]), cost_model=model)
    t = transfer_s(cfg)
    assert result.fetch_wait_s.tolist() == pytest.approx([0.0, 0.0, t], rel=1e-6)
    assert result.first[1] - result.first[0] == pytest.approx(t, rel=1e-6)


def test_fetched_adapters_share_the_reserved_slot() -> None:
    cfg = config()  # remote_slots defaults to 1
    model = CostModel.from_config(cfg)
    workers = [Worker(f"{GPU}-0", GPU, 64, (0, 1)),
               Worker(f"{GPU}-2", GPU, 64, (), ((0, f"{GPU}-0"), (1, f"{GPU}-0")))]
    # a, b, a, a: the second a finds b in the one slot and fetches again; the third reuses.
    result = run(cfg, workers, requests([0.0, 5.0, 10.0, 15.0], [0, 1, 0, 0]),
                 np.array([1, 1, 1, 1]), cost_model=model)
    assert result.fetches.tolist() == [0, 3]
    assert cfg.topology is not None
    two = cfg.model_copy(update={"topology": cfg.topology.model_copy(
        update={"remote_slots": 2})})
    result = run(two, workers, requests([0.0, 5.0, 10.0, 15.0], [0, 1, 0, 0]),
                 np.array([1, 1, 1, 1]), cost_model=CostModel.from_config(two))
    assert result.fetches.tolist() == [0, 2]


def test_fetches_inside_a_node_use_nvlink() -> None:
    cfg = config()
    model = CostModel.from_config(cfg)
    workers = [Worker(f"{GPU}-0", GPU, 64, (0,)),
               Worker(f"{GPU}-1", GPU, 64, (), ((0, f"{GPU}-0"),))]
    result = run(cfg, workers, requests([0.0], [0]), np.array([1]), cost_model=model)
    nvlink_s = cfg.adapter_bytes(cfg.adapters[0]) / 450e9
    assert result.fetch_s.tolist() == pytest.approx([0.0, nvlink_s], rel=1e-6)
    assert ("fabric", f"{GPU}-node-0") not in result.link_bytes


def test_remote_worker_needs_a_topology() -> None:
    cfg = config().without_remote()
    workers = [Worker(f"{GPU}-0", GPU, 64, (0,)),
               Worker(f"{GPU}-1", GPU, 64, (), ((0, f"{GPU}-0"),))]
    with pytest.raises(ConfigError, match="no topology"):
        run(cfg, workers, requests([0.0], [0]), np.array([1]))


def test_remote_plan_simulates_with_fetches() -> None:
    hot = rate_for_load(1.2, tier=64)
    adapters = [adapter("h1", 64, hot), adapter("h2", 64, hot)]
    adapters += [adapter(f"c{i}", 64, 0.01) for i in range(3)]
    cfg = make_config(adapters, serving={"tiers": [64], "adapter_cache_gib": 0.7}, count=3,
                      topology={"nic_gbit_per_s": 200.0, "gpus_per_node": 1})
    plan = solve(cfg, solver="greedy").plan
    assert plan is not None and plan.remote
    deployment = deployment_from_plan(plan, cfg, "loraserve-remote")
    assert any(w.remote for w in deployment.workers)
    rng = np.random.default_rng(0)
    n = 600
    arrival = np.sort(rng.uniform(0.0, 60.0, n))
    rates = np.array([a.request_rate for a in cfg.adapters])
    which = rng.choice(len(rates), size=n, p=rates / rates.sum())
    reqs = Requests(arrival, which.astype(np.int64), np.full(n, 1024, dtype=np.int64),
                    np.full(n, 256, dtype=np.int64), 60.0)
    result = run(cfg, deployment.workers, reqs, deployment.routes)
    assert result.fetches.sum() > 0
    assert np.isfinite(result.first).all()
    topo = cfg.network()
    assert topo is not None
    for edge in result.link_bytes:
        assert topo.graph.has_edge(*edge)


def test_policy_needs_topology() -> None:
    assert "loraserve-remote" in POLICIES
    plain = make_config([adapter("a", 8, 1.0)])
    with pytest.raises(ConfigError, match="loraserve-remote: the config has no topology"):
        deploy("loraserve-remote", plain)


def test_replication_policy_ignores_topology() -> None:
    hot = rate_for_load(1.2, tier=64)
    adapters = [adapter("h1", 64, hot), adapter("h2", 64, hot)]
    adapters += [adapter(f"c{i}", 64, 0.01) for i in range(3)]
    cfg = make_config(adapters, serving={"tiers": [64], "adapter_cache_gib": 0.7}, count=8,
                      topology={"nic_gbit_per_s": 200.0})
    replicated = deploy("loraserve", cfg, time_limit=2.0)
    remote = deploy("loraserve-remote", cfg, time_limit=2.0)
    assert replicated.plan is not None and remote.plan is not None
    assert replicated.plan.remote == {}
    assert replicated.num_gpus == 4 and remote.num_gpus == 3
