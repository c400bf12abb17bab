"""Trace-driven simulation of a vLLM-like fleet serving a placement plan.

* :mod:`~loraserve.sim.workload`: request streams (generated, or an Azure trace), rate
  scaling, popularity drift;
* :mod:`~loraserve.sim.engine`: the discrete-event core (iteration-level batching per GPU,
  a router in front);
* :mod:`~loraserve.sim.policies`: ``vllm-default``, ``rank-agnostic-packing``,
  ``loraserve-greedy``, ``loraserve``;
* :mod:`~loraserve.sim.results`: per-request, per-GPU and summary tables;
* :mod:`~loraserve.sim.experiments`: GPUs needed, max sustainable rate, comparisons,
  capacity curves;
* :mod:`~loraserve.sim.dynamic`: plans that change during a drifting trace (static,
  periodic, drift-triggered re-planning, on-demand serving) side by side.
"""

from loraserve.sim.dynamic import (
    STRATEGIES,
    DynamicOptions,
    DynamicResult,
    compare_dynamic,
    plot_dynamic,
)
from loraserve.sim.engine import RunResult, SimOptions, Worker, run
from loraserve.sim.experiments import (
    Comparison,
    Scenario,
    Search,
    capacity,
    compare,
    gpus_needed,
    max_rate,
    plot_capacity,
    plot_comparison,
)
from loraserve.sim.policies import (
    POLICIES,
    Deployment,
    default_policies,
    deploy,
    deployment_from_plan,
)
from loraserve.sim.results import SimResult
from loraserve.sim.workload import (
    Drift,
    Requests,
    fit_token_means,
    generate_requests,
    peak_factor,
    requests_from_trace,
    scale_requests,
    trace_workload,
)

__all__ = [
    "POLICIES",
    "STRATEGIES",
    "Comparison",
    "Deployment",
    "Drift",
    "DynamicOptions",
    "DynamicResult",
    "Requests",
    "RunResult",
    "Scenario",
    "Search",
    "SimOptions",
    "SimResult",
    "Worker",
    "capacity",
    "compare",
    "compare_dynamic",
    "default_policies",
    "deploy",
    "deployment_from_plan",
    "fit_token_means",
    "generate_requests",
    "gpus_needed",
    "max_rate",
    "peak_factor",
    "plot_capacity",
    "plot_comparison",
    "plot_dynamic",
    "requests_from_trace",
    "run",
    "scale_requests",
    "trace_workload",
]
