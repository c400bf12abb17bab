"""Regenerate quickstart.yaml: 200 adapters, ranks 8-128 (most small), Zipf popularity."""

from pathlib import Path

import yaml

from loraserve.models.synthetic import synthetic_adapters

HEADER = """\
# loraserve quickstart: 200 LoRA adapters of llama-3-8b on a pool of H100s.
# Ranks 8-128 (most small), Zipf-skewed popularity, 200 req/s in total.
# Regenerate with: python examples/make_quickstart.py
"""


def main() -> None:
    config = {
        "base_model": "llama-3-8b",
        "slo": {"ttft_ms": 2000, "tpot_ms": 60, "percentile": 99},
        "pools": [{"gpu_type": "H100-80GB", "count": 32, "memory_gib": 80,
                   "cost_per_hour": 4.0, "gpus_per_node": 8}],
        "serving": {"max_loras": 16, "max_cpu_loras": 32, "max_replicas": 8,
                    "tiers": [8, 16, 32, 64, 128]},
        "adapter_defaults": {"prompt_tokens": 1024, "output_tokens": 256},
        "adapters": synthetic_adapters(200, total_rate=200.0, seed=7),
    }
    text = HEADER + yaml.safe_dump(config, sort_keys=False, width=120)
    Path(__file__).with_name("quickstart.yaml").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
