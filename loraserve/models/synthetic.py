"""Seeded synthetic workloads: a rank mix and Zipf-skewed popularity, for demos and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from loraserve.models.config import Config, config_from_mapping

#: Share of adapters per rank: most fine-tunes are small, a few are large.
DEFAULT_RANK_MIX: dict[int, float] = {8: 0.40, 16: 0.25, 32: 0.15, 64: 0.12, 128: 0.08}


def synthetic_adapters(
    n_adapters: int,
    total_rate: float,
    rank_mix: Mapping[int, float] | None = None,
    zipf_s: float = 1.0,
    prompt_tokens: float = 1024.0,
    output_tokens: float = 256.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Adapter entries with ranks drawn from ``rank_mix`` and Zipf(``zipf_s``) request rates.

    Parameters
    ----------
    n_adapters : int
        How many adapters.
    total_rate : float
        Sum of request rates (requests per second).
    rank_mix : mapping, optional
        Probability of each rank; :data:`DEFAULT_RANK_MIX` when omitted.
    zipf_s : float
        Popularity exponent: the adapter at popularity rank ``i`` gets a rate proportional to
        ``i ** -zipf_s``.
    prompt_tokens, output_tokens : float
        Mean tokens per request; each adapter's mean is drawn lognormally around them.
    seed : int
        Random seed.
    """
    rng = np.random.default_rng(seed)
    mix = dict(rank_mix or DEFAULT_RANK_MIX)
    probabilities = np.array(list(mix.values())) / sum(mix.values())
    ranks = rng.choice(list(mix), size=n_adapters, p=probabilities)
    weights = np.arange(1, n_adapters + 1, dtype=float) ** -zipf_s
    weights = rng.permutation(weights)
    rates = total_rate * weights / weights.sum()
    prompts = prompt_tokens * rng.lognormal(0.0, 0.4, n_adapters)
    outputs = output_tokens * rng.lognormal(0.0, 0.4, n_adapters)
    return [
        {
            "id": f"adapter-{i:05d}",
            "rank": int(ranks[i]),
            "request_rate": round(float(rates[i]), 6),
            "prompt_tokens": round(float(prompts[i]), 1),
            "output_tokens": round(float(outputs[i]), 1),
        }
        for i in range(n_adapters)
    ]


def synthetic_config(
    n_adapters: int,
    total_rate: float,
    gpu_count: int = 1000,
    base_model: str = "llama-3-8b",
    serving: Mapping[str, Any] | None = None,
    seed: int = 0,
    **adapter_kwargs: Any,
) -> Config:
    """A complete config on one H100 pool around :func:`synthetic_adapters`."""
    raw = {
        "base_model": base_model,
        "slo": {"ttft_ms": 2000.0, "tpot_ms": 60.0, "percentile": 99.0},
        "pools": [{"gpu_type": "H100-80GB", "count": gpu_count, "memory_gib": 80.0,
                   "cost_per_hour": 4.0}],
        "serving": dict(serving or {}),
        "adapters": synthetic_adapters(n_adapters, total_rate, seed=seed, **adapter_kwargs),
    }
    return config_from_mapping(raw, source="synthetic")
