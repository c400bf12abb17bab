"""The topology section: compact form, the graph's paths and bandwidths, one-line errors."""

from __future__ import annotations

from typing import Any

import pytest

from loraserve import ConfigError
from loraserve.models import FABRIC, load_config
from tests.conftest import GPU, make_config

NIC = 200.0  # Gb/s


def config(count: int = 20, **topology: Any) -> Any:
    return make_config(count=count, topology={"nic_gbit_per_s": NIC, **topology})


def test_no_topology_means_no_network_and_same_yaml() -> None:
    plain = make_config()
    assert plain.topology is None and plain.network() is None
    assert not plain.remote_enabled
    assert "topology" not in plain.to_yaml()


def test_gpus_sit_on_nodes_of_the_pool() -> None:
    topo = config(count=20).network()
    assert topo is not None
    assert topo.node_of[f"{GPU}-7"] == f"{GPU}-node-0"
    assert topo.node_of[f"{GPU}-8"] == f"{GPU}-node-1"
    assert topo.node_of[f"{GPU}-19"] == f"{GPU}-node-2"
    assert len(topo.gpus[GPU]) == 20


def test_path_bandwidth_inside_and_across_nodes() -> None:
    topo = config(count=16).network()
    assert topo is not None
    # Same node: NVLink at its default 450 GB/s per direction.
    assert topo.bandwidth(f"{GPU}-0", f"{GPU}-1") == pytest.approx(450e9)
    assert topo.path(f"{GPU}-0", f"{GPU}-1") == (f"{GPU}-0", f"{GPU}-node-0", f"{GPU}-1")
    # Across nodes: through both NICs and the fabric, at the NIC's 200 Gb/s = 25 GB/s.
    assert topo.bandwidth(f"{GPU}-0", f"{GPU}-9") == pytest.approx(25e9)
    assert topo.path(f"{GPU}-0", f"{GPU}-9") == (
        f"{GPU}-0", f"{GPU}-node-0", FABRIC, f"{GPU}-node-1", f"{GPU}-9")
    assert topo.reachable(f"{GPU}-0", f"{GPU}-9")
    assert not topo.reachable(f"{GPU}-0", f"{GPU}-0")


def test_pcie_and_gpus_per_node() -> None:
    topo = config(count=8, intra_node="pcie", gpus_per_node=4).network()
    assert topo is not None
    assert topo.bandwidth(f"{GPU}-0", f"{GPU}-3") == pytest.approx(64e9)
    assert topo.node_of[f"{GPU}-4"] == f"{GPU}-node-1"


def test_explicit_link_is_the_wider_path() -> None:
    link = {"between": [f"{GPU}-node-0", f"{GPU}-node-1"], "gbit_per_s": 800.0}
    topo = config(count=16, links=[link]).network()
    assert topo is not None
    assert topo.path(f"{GPU}-0", f"{GPU}-9") == (
        f"{GPU}-0", f"{GPU}-node-0", f"{GPU}-node-1", f"{GPU}-9")
    assert topo.bandwidth(f"{GPU}-0", f"{GPU}-9") == pytest.approx(100e9)


def test_explicit_link_replaces_a_nic() -> None:
    slow = {"between": [f"{GPU}-node-1", FABRIC], "gbit_per_s": 10.0}
    topo = config(count=24, links=[slow]).network()
    assert topo is not None
    assert topo.bandwidth(f"{GPU}-0", f"{GPU}-9") == pytest.approx(10e9 / 8)
    assert topo.bandwidth(f"{GPU}-0", f"{GPU}-17") == pytest.approx(25e9)
    # Planned traffic may take max_link_utilization (0.5 by default) of an edge.
    edge = (f"{GPU}-node-1", FABRIC)
    assert topo.link_capacity(edge) == pytest.approx(0.5 * 10e9 / 8)


@pytest.mark.parametrize(("topology", "message"), [
    ({"nodes": 2}, "topology.nodes is 2 but the pools fill 3 nodes"),
    ({"links": [{"between": ["rack-9", FABRIC], "gbit_per_s": 1.0}]},
     "topology.links[0].between names 'rack-9', which is not a node"),
    ({"links": [{"between": [FABRIC, FABRIC], "gbit_per_s": 1.0}]}, "links a node to itself"),
    ({"miss_ratio": 0.0}, "topology.miss_ratio"),
    ({"intra_node": "infiniband"}, "topology.intra_node"),
    ({"nic": 100}, "topology.nic: is not a known field"),
])
def test_bad_topology_is_one_line(topology: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(count=20, **topology)
    text = str(info.value)
    assert "\n" not in text
    assert message in text


def test_missing_nic_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"topology.nic_gbit_per_s: is required"):
        make_config(topology={"intra_node": "nvlink"})


def test_gpus_per_node_conflict() -> None:
    raw_pool = {"gpu_type": GPU, "count": 8, "memory_gib": 80.0, "gpus_per_node": 4}
    with pytest.raises(ConfigError, match=r"pools\[0\].gpus_per_node \(4\) differs"):
        make_config(pools=[raw_pool], topology={"nic_gbit_per_s": NIC, "gpus_per_node": 8})


def test_example_config_loads() -> None:
    from tests.conftest import REPO_ROOT

    example = load_config(REPO_ROOT / "examples" / "remote.yaml")
    assert example.remote_enabled
    assert example.network() is not None
