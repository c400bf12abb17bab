"""Shared helpers: small configs built from dicts and rates that hit a chosen load."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from loraserve import Adapter, Config, CostModel, config_from_mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
GPU = "H100-80GB"
PROMPT_TOKENS = 1024.0
OUTPUT_TOKENS = 256.0


def base_raw(
    adapters: list[dict[str, Any]] | None = None,
    serving: dict[str, Any] | None = None,
    count: int = 64,
    **extra: Any,
) -> dict[str, Any]:
    """The raw mapping of a small config: one H100 pool, llama-3-8b, TTFT 2 s, TPOT 60 ms."""
    raw: dict[str, Any] = {
        "base_model": "llama-3-8b",
        "slo": {"ttft_ms": 2000.0, "tpot_ms": 60.0, "percentile": 99.0},
        "pools": [{"gpu_type": GPU, "count": count, "memory_gib": 80.0, "cost_per_hour": 4.0}],
        "serving": dict(serving or {}),
        "adapters": copy.deepcopy(
            adapters if adapters is not None else [{"id": "a0", "rank": 8, "request_rate": 1.0}]
        ),
    }
    raw.update(extra)
    return raw


def make_config(
    adapters: list[dict[str, Any]] | None = None,
    serving: dict[str, Any] | None = None,
    count: int = 64,
    **extra: Any,
) -> Config:
    """Validate :func:`base_raw`'s mapping into a :class:`Config`."""
    return config_from_mapping(base_raw(adapters, serving, count, **extra), source="test")


def rate_for_load(
    frac: float,
    tier: int = 8,
    serving: dict[str, Any] | None = None,
    prompt_tokens: float = PROMPT_TOKENS,
    output_tokens: float = OUTPUT_TOKENS,
) -> float:
    """Request rate at which one adapter's load on (H100, ``tier``) is ``frac`` of the tier's cap.

    The load is the solver's traffic row: the larger of compute and the ``tpot_tail`` row
    (scaled to the compute limit), so a GPU holds adapters whose fractions sum to 1.
    The tier's capacity depends on the workload's mean prompt/output tokens, so every adapter of
    an instance built with these rates must use the same ``prompt_tokens``/``output_tokens``.
    """
    config = make_config(
        [{"id": "probe", "rank": 8, "request_rate": 1.0,
          "prompt_tokens": prompt_tokens, "output_tokens": output_tokens}],
        serving=serving,
    )
    model = CostModel.from_config(config)
    cap = model.capacity(GPU, tier)
    assert cap.usable, cap.reason
    probe = Adapter(id="probe", rank=8, request_rate=1.0, prompt_tokens=prompt_tokens,
                    output_tokens=output_tokens)
    per_rate = max(model.request_seconds(probe, GPU, tier),
                   cap.max_utilization * model.tpot_load(probe, GPU, tier))
    return frac * cap.max_utilization / per_rate


def adapter(id_: str, rank: int, rate: float) -> dict[str, Any]:
    """One adapter entry with the shared token counts."""
    return {"id": id_, "rank": rank, "request_rate": rate,
            "prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS}


@pytest.fixture
def small_config() -> Config:
    """Three adapters of mixed rank at modest load."""
    return make_config([adapter("a0", 8, 1.0), adapter("a1", 16, 2.0), adapter("a2", 64, 0.5)])
