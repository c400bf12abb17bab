"""Helpers of the runtime tests: adapter directories, inventories and plans built in a folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from loraserve.models import GPUPlacement, PlacementPlan


def make_adapter(root: Path, name: str, rank: int) -> Path:
    """A PEFT adapter directory with its config (weights are not needed by static checks)."""
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ["q_proj"]}))
    (path / "adapter_model.safetensors").write_bytes(b"\0" * (rank * 100))
    return path


def write_inventory(folder: Path, workers: list[dict[str, Any]],
                    adapters: dict[str, str | Path], **extra: Any) -> Path:
    """Write ``inventory.yaml`` in ``folder`` with one adapter root, ``adapters``."""
    raw: dict[str, Any] = {
        "adapter_roots": ["adapters"],
        "adapters": {k: str(v) for k, v in adapters.items()},
        "workers": workers,
    }
    raw.update(extra)
    path = folder / "inventory.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_plan(hosting: dict[str, tuple[int, list[str]]], routes: dict[str, dict[str, float]],
              base_model: str = "tiny-llama") -> PlacementPlan:
    """A plan from ``gpu_id -> (tier, adapters)`` and the routes."""
    gpus = [GPUPlacement(gpu_id=g, gpu_type="cpu", tier=tier, adapters=sorted(adapters))
            for g, (tier, adapters) in hosting.items()]
    return PlacementPlan(base_model=base_model, gpus=gpus, routes=routes).normalized()


def even_routes(hosting: dict[str, tuple[int, list[str]]]) -> dict[str, dict[str, float]]:
    """Each adapter split evenly over the GPUs hosting it."""
    holders: dict[str, list[str]] = {}
    for gpu_id, (_, adapters) in hosting.items():
        for adapter in adapters:
            holders.setdefault(adapter, []).append(gpu_id)
    return {a: {g: 1.0 / len(gs) for g in gs} for a, gs in holders.items()}
