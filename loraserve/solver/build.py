"""Turn an assignment (GPUs with traffic shares) into a normalised PlacementPlan."""

from __future__ import annotations

from collections import defaultdict

from loraserve.models import GPUPlacement, PlacementPlan
from loraserve.solver.greedy import OpenGPU
from loraserve.solver.instance import EPS, Instance


def build_plan(inst: Instance, gpus: list[OpenGPU]) -> PlacementPlan:
    """Name GPUs, attach predictions and routes, and normalise.

    A GPU that continues a running one (``OpenGPU.name``) keeps its id; the others are named
    ``<type>-<i>`` with the lowest indices no kept GPU uses.
    """
    config, model = inst.config, inst.cost_model
    adapters = config.adapters
    counters: dict[str, int] = defaultdict(int)
    taken = {g.name for g in gpus if g.name is not None}
    placements: list[GPUPlacement] = []
    routes: dict[str, dict[str, float]] = {a.id: {} for a in adapters}
    ordered = sorted(gpus, key=lambda g: (inst.kinds[g.kind].gpu_type, -inst.kinds[g.kind].tier,
                                          -g.load))
    for gpu in ordered:
        kind = inst.kinds[gpu.kind]
        if gpu.name is not None:
            gpu_id = gpu.name
        else:
            while (gpu_id := f"{kind.gpu_type}-{counters[kind.gpu_type]}") in taken:
                counters[kind.gpu_type] += 1
            counters[kind.gpu_type] += 1
        shares = [(adapters[a], w) for a, w in gpu.shares.items()]
        prediction = model.predict(kind.gpu_type, kind.tier, shares)
        hosted = [adapters[a].id for a in gpu.shares]
        placements.append(GPUPlacement(
            gpu_id=gpu_id, gpu_type=kind.gpu_type, tier=kind.tier, adapters=hosted,
            utilization=round(prediction.utilization, 6),
            predicted_tpot_ms=round(prediction.tpot_ms, 3),
            predicted_ttft_ms=round(prediction.ttft_ms, 3),
            adapter_memory_gib=round(sum(inst.real_bytes[a] for a in gpu.shares) / 2**30, 4),
        ))
        for a, share in gpu.shares.items():
            if share > EPS:
                routes[adapters[a].id][gpu_id] = share
    for adapter_id, split in routes.items():
        total = sum(split.values())
        # Solvers return shares to within their tolerance; routing weights must sum to 1.
        routes[adapter_id] = {g: w / total for g, w in split.items()} if total > 0 else split
    plan = PlacementPlan(base_model=config.base_model.name, gpus=placements, routes=routes)
    return plan.normalized()
