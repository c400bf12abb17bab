"""The cluster's network: nodes, GPUs per node, NICs and links, as a networkx graph.

A config's optional ``topology`` section (:class:`TopologySpec`) is compact: the RDMA NIC
bandwidth of a node, the intra-node interconnect (NVLink or PCIe) and its bandwidth, and an
optional list of explicit links that replace or add edges. The GPUs themselves come from the
pools: GPU ``<gpu_type>-<i>`` of a pool sits on node ``<gpu_type>-node-<i // gpus_per_node>``,
the same ids a :class:`~loraserve.models.plan.PlacementPlan` uses, so a plan's remote pairs
map onto the graph without a lookup table.

The graph (:class:`Topology`) has one vertex per GPU, one per node (its PCIe/NVLink switch
and NIC) and one for the RDMA fabric:

* GPU -- node: the intra-node bandwidth;
* node -- ``fabric``: the node's NIC bandwidth;
* explicit links: any two nodes, or a node and the fabric, at the bandwidth given.

Every edge carries its bandwidth in bytes per second in each direction (RDMA links are full
duplex). The path a fetch takes between two GPUs is the *widest* path (the largest
bottleneck bandwidth), found on the graph's maximum spanning tree, so it is unique and
deterministic; its bandwidth is the bottleneck's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import pairwise
from typing import Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The vertex every node's NIC connects to.
FABRIC = "fabric"

#: Intra-node bandwidth per direction (GB/s) when the config leaves it out: NVLink 4 on
#: H100 SXM (900 GB/s both ways) and PCIe Gen5 x16.
DEFAULT_INTRA_NODE_GBYTE_PER_S: dict[str, float] = {"nvlink": 450.0, "pcie": 64.0}


class LinkSpec(BaseModel):
    """An explicit link between two nodes, or a node and the ``fabric``.

    Parameters
    ----------
    between : tuple of two str
        Node names (``<gpu_type>-node-<j>``) or ``fabric``.
    gbit_per_s : float
        Bandwidth per direction in gigabits per second.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    between: tuple[str, str]
    gbit_per_s: float = Field(gt=0.0, le=1e6)

    @model_validator(mode="after")
    def _two_ends(self) -> LinkSpec:
        if self.between[0] == self.between[1]:
            raise ValueError(f"links a node to itself ('{self.between[0]}'); name two "
                             "different nodes")
        return self


class TopologySpec(BaseModel):
    """The network section of a config.

    Parameters
    ----------
    nic_gbit_per_s : float
        RDMA NIC bandwidth of one node, per direction, in Gb/s (all its NICs together).
    intra_node : {"nvlink", "pcie"}
        How GPUs of one node reach each other.
    intra_node_gbyte_per_s : float, optional
        Bandwidth of one GPU's intra-node link per direction in GB/s; 450 for NVLink and
        64 for PCIe when omitted.
    nodes : int, optional
        Node count, checked against what the pools imply (sum of ``ceil(count /
        gpus_per_node)``).
    gpus_per_node : int, optional
        GPUs per node for every pool; a pool that sets its own different value is an error.
    links : list of LinkSpec
        Explicit links; one between two vertices that already share an edge replaces it.
    remote_access : bool
        Let the planner serve an adapter on a GPU that fetches it from a hosting peer.
    miss_ratio : float
        Share of a remote pair's requests that fetch the adapter (the rest find it in the
        GPU's LoRA cache). 1 by default: no reuse is credited (see ``docs/remote.md``).
    max_link_utilization : float
        Most of a link's bandwidth planned remote traffic may take.
    remote_slots : int
        Adapter slots (each as large as the GPU's largest remote adapter) a GPU that
        serves remote pairs keeps free in its adapter cache for fetched weights.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True)

    nic_gbit_per_s: float = Field(gt=0.0, le=1e6)
    intra_node: Literal["nvlink", "pcie"] = "nvlink"
    intra_node_gbyte_per_s: float | None = Field(default=None, gt=0.0, le=1e6)
    nodes: int | None = Field(default=None, ge=1, le=100_000)
    gpus_per_node: int | None = Field(default=None, ge=1, le=64)
    links: tuple[LinkSpec, ...] = ()
    remote_access: bool = True
    miss_ratio: float = Field(default=1.0, gt=0.0, le=1.0)
    max_link_utilization: float = Field(default=0.5, gt=0.0, le=1.0)
    remote_slots: int = Field(default=1, ge=1, le=4096)

    @property
    def intra_bytes_per_s(self) -> float:
        """Intra-node bandwidth per GPU link in bytes per second."""
        gbyte = self.intra_node_gbyte_per_s
        if gbyte is None:
            gbyte = DEFAULT_INTRA_NODE_GBYTE_PER_S[self.intra_node]
        return gbyte * 1e9

    @property
    def nic_bytes_per_s(self) -> float:
        """NIC bandwidth of a node in bytes per second."""
        return self.nic_gbit_per_s * 1e9 / 8


def node_name(gpu_type: str, index: int) -> str:
    """Name of the ``index``-th node of a pool."""
    return f"{gpu_type}-node-{index}"


def gpu_name(gpu_type: str, index: int) -> str:
    """Id of the ``index``-th GPU of a pool (the ids plans use)."""
    return f"{gpu_type}-{index}"


class Topology:
    """The graph of a topology spec laid over the config's pools.

    Parameters
    ----------
    spec : TopologySpec
    pools : sequence of (gpu_type, count, gpus_per_node)
        The GPU pools, in config order.

    Raises
    ------
    ValueError
        With a one-line message naming the ``topology`` field and the fix.
    """

    def __init__(self, spec: TopologySpec,
                 pools: Sequence[tuple[str, int, int]]) -> None:
        self.spec = spec
        self.graph = nx.Graph()
        self.node_of: dict[str, str] = {}
        self.gpus: dict[str, list[str]] = {}
        for gpu_type, count, per_node in pools:
            per = spec.gpus_per_node or per_node
            ids = [gpu_name(gpu_type, i) for i in range(count)]
            self.gpus[gpu_type] = ids
            for i, gpu in enumerate(ids):
                node = node_name(gpu_type, i // per)
                self.node_of[gpu] = node
                self.graph.add_edge(gpu, node, bytes_per_s=spec.intra_bytes_per_s)
        servers = sorted(set(self.node_of.values()), key=_natural)
        for node in servers:
            self.graph.add_edge(node, FABRIC, bytes_per_s=spec.nic_bytes_per_s)
        if spec.nodes is not None and spec.nodes != len(servers):
            layout = ", ".join(f"{t}: {c} GPUs at {spec.gpus_per_node or p} per node"
                               for t, c, p in pools)
            raise ValueError(f"topology.nodes is {spec.nodes} but the pools fill "
                             f"{len(servers)} nodes ({layout}); set nodes to {len(servers)} "
                             "or change the pools")
        known = set(servers) | {FABRIC}
        for index, link in enumerate(spec.links):
            for end in link.between:
                if end not in known:
                    example = servers[0] if servers else "<gpu_type>-node-0"
                    raise ValueError(f"topology.links[{index}].between names '{end}', which is "
                                     f"not a node; use a node name such as '{example}' or "
                                     f"'{FABRIC}'")
            self.graph.add_edge(*link.between, bytes_per_s=link.gbit_per_s * 1e9 / 8)
        self._tree = nx.maximum_spanning_tree(self.graph, weight="bytes_per_s")
        # A plain dict, so that a topology pickles (the simulator's results cross processes).
        self._memo: dict[tuple[str, str], tuple[str, ...]] = {}

    # ---- queries -------------------------------------------------------------------------

    def has_gpu(self, gpu_id: str) -> bool:
        """Whether ``gpu_id`` is a GPU of the pools."""
        return gpu_id in self.node_of

    def _paths(self, source: str, target: str) -> tuple[str, ...]:
        found = self._memo.get((source, target))
        if found is None:
            found = tuple(nx.shortest_path(self._tree, source, target))
            self._memo[(source, target)] = found
        return found

    def path(self, source: str, target: str) -> tuple[str, ...]:
        """Vertices of the widest path from GPU ``source`` to GPU ``target``.

        Raises
        ------
        KeyError
            When either is not a GPU of the topology.
        """
        for gpu in (source, target):
            if gpu not in self.node_of:
                raise KeyError(gpu)
        if source == target:
            return (source,)
        a, b = self.node_of[source], self.node_of[target]
        middle = self._paths(a, b) if a != b else (a,)
        return (source, *middle, target)

    def reachable(self, source: str, target: str) -> bool:
        """Whether a fetch from ``source`` can reach ``target`` (connected, distinct GPUs)."""
        if source == target or source not in self.node_of or target not in self.node_of:
            return False
        return bool(nx.has_path(self._tree, self.node_of[source], self.node_of[target]))

    def edges(self, source: str, target: str) -> list[tuple[str, str]]:
        """Directed edges of the path from ``source`` to ``target``."""
        vertices = self.path(source, target)
        return list(pairwise(vertices))

    def edge_bytes_per_s(self, edge: tuple[str, str]) -> float:
        """Bandwidth of one (directed) edge in bytes per second."""
        return float(self.graph.edges[edge]["bytes_per_s"])

    def bandwidth(self, source: str, target: str) -> float:
        """Bottleneck bandwidth (bytes/s) of the path; infinite from a GPU to itself."""
        edges = self.edges(source, target)
        if not edges:
            return float("inf")
        return min(self.edge_bytes_per_s(e) for e in edges)

    def link_capacity(self, edge: tuple[str, str]) -> float:
        """Bytes per second planned traffic may take on ``edge``."""
        return self.edge_bytes_per_s(edge) * self.spec.max_link_utilization

    def directed_edges(self) -> Iterable[tuple[str, str]]:
        """Every edge, in both directions."""
        for u, v in self.graph.edges:
            yield (u, v)
            yield (v, u)


@lru_cache(maxsize=64)
def build_topology(spec: TopologySpec, pools: tuple[tuple[str, int, int], ...]) -> Topology:
    """The :class:`Topology` of ``spec`` over ``pools`` (cached: configs are immutable)."""
    return Topology(spec, pools)


def _natural(text: str) -> tuple[str, int]:
    head, _, tail = text.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (text, -1)
