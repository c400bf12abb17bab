"""Request streams: generated arrivals and tokens, trace replay, rate scaling, drift, seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loraserve import ConfigError
from loraserve.models.trace import adapters_from_trace, load_azure_trace, scale_trace
from loraserve.sim.workload import (
    Drift,
    fit_token_means,
    generate_requests,
    requests_from_trace,
    scale_requests,
    trace_workload,
)
from tests.conftest import make_config

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def three_adapters() -> object:
    return make_config([
        {"id": "hot", "rank": 8, "request_rate": 6.0, "prompt_tokens": 800, "output_tokens": 100},
        {"id": "warm", "rank": 64, "request_rate": 3.0, "prompt_tokens": 400,
         "output_tokens": 300},
        {"id": "cold", "rank": 128, "request_rate": 1.0, "prompt_tokens": 2000,
         "output_tokens": 50},
    ])


def synthetic_trace(n: int = 2000, span: float = 600.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"t": np.sort(rng.uniform(0, span, n)),
                         "prompt_tokens": rng.integers(1, 3000, n),
                         "output_tokens": rng.integers(0, 400, n)})


def test_generated_stream_has_the_rate_popularity_and_token_means() -> None:
    config = three_adapters()
    reqs = generate_requests(config, 2000.0, seed=3)
    assert np.all(np.diff(reqs.arrival) >= 0)
    assert reqs.arrival[-1] < 2000.0
    assert reqs.rate == pytest.approx(10.0, rel=0.03)
    shares = np.bincount(reqs.adapter, minlength=3) / len(reqs)
    np.testing.assert_allclose(shares, [0.6, 0.3, 0.1], atol=0.015)
    for a, adapter in enumerate(config.adapters):
        mine = reqs.adapter == a
        assert reqs.prompt_tokens[mine].mean() == pytest.approx(adapter.prompt_tokens, rel=0.05)
        assert reqs.output_tokens[mine].mean() == pytest.approx(adapter.output_tokens, rel=0.05)
    assert reqs.prompt_tokens.min() >= 1 and reqs.output_tokens.min() >= 1
    gaps = np.diff(reqs.arrival)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # Poisson


def test_gamma_arrivals_have_the_requested_cv() -> None:
    reqs = generate_requests(three_adapters(), 3000.0, seed=1, arrival="gamma", cv=3.0)
    gaps = np.diff(reqs.arrival)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)
    assert reqs.rate == pytest.approx(10.0, rel=0.1)


def test_generation_is_deterministic_per_seed() -> None:
    config = three_adapters()
    a, b = generate_requests(config, 100.0, seed=7), generate_requests(config, 100.0, seed=7)
    c = generate_requests(config, 100.0, seed=8)
    for field in ("arrival", "adapter", "prompt_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.arrival[:50], c.arrival[:50])


def test_token_sigma_zero_gives_every_request_its_adapters_means() -> None:
    reqs = generate_requests(three_adapters(), 50.0, seed=0, token_sigma=0.0)
    assert set(reqs.prompt_tokens.tolist()) <= {800, 400, 2000}


def test_drift_swaps_popularity_between_epochs() -> None:
    config = make_config([{"id": f"a{i}", "rank": 8, "request_rate": float(2 ** -i)}
                          for i in range(10)])
    reqs = generate_requests(config, 400.0, seed=2, drift=Drift(every_s=100.0, fraction=0.4))
    assert reqs.epoch_rates is not None and reqs.epoch_rates.shape == (4, 10)
    for row in reqs.epoch_rates:
        np.testing.assert_allclose(np.sort(row), np.sort(reqs.epoch_rates[0]))
    assert not np.allclose(reqs.epoch_rates[0], reqs.epoch_rates[1])
    # The hottest adapter of each epoch really gets the most requests in that epoch.
    for e in range(4):
        mine = (reqs.arrival >= 100 * e) & (reqs.arrival < 100 * (e + 1))
        counts = np.bincount(reqs.adapter[mine], minlength=10)
        assert int(np.argmax(counts)) == int(np.argmax(reqs.epoch_rates[e]))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"duration_s": 0.0}, "duration"),
    ({"duration_s": 10.0, "arrival": "weibull"}, "poisson"),
    ({"duration_s": 10.0, "arrival": "gamma", "cv": -1.0}, "cv"),
    ({"duration_s": 10.0, "rate_scale": 0.0}, "rate scale"),
])
def test_bad_generator_arguments_are_one_line_errors(kwargs: dict[str, object],
                                                     match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        generate_requests(three_adapters(), **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_bad_drift_is_refused() -> None:
    with pytest.raises(ConfigError, match="fraction"):
        Drift(every_s=10.0, fraction=0.0)


def test_scale_trace_superposes_copies_over_the_same_span() -> None:
    trace = synthetic_trace()
    scaled = scale_trace(trace, 3.5, seed=1)
    assert len(scaled) == pytest.approx(3.5 * len(trace), rel=0.02)
    assert scaled["t"].is_monotonic_increasing
    assert scaled["t"].min() >= trace["t"].min()
    assert scaled["t"].max() <= trace["t"].max() + 1.0
    # Token counts are the trace's own: the multiset of copy 0 is inside the scaled one.
    assert scaled["prompt_tokens"].mean() == pytest.approx(trace["prompt_tokens"].mean(),
                                                           rel=0.03)
    thinned = scale_trace(trace, 0.25, seed=1)
    assert len(thinned) == pytest.approx(0.25 * len(trace), rel=0.1)
    with pytest.raises(ConfigError, match="positive"):
        scale_trace(trace, 0.0)


def test_trace_replay_matches_the_config_rate_by_default() -> None:
    config = three_adapters()  # 10 req/s
    trace = synthetic_trace(n=1200, span=600.0)  # 2 req/s
    reqs = requests_from_trace(trace, config, seed=4)
    assert reqs.rate == pytest.approx(10.0, rel=0.02)
    shares = np.bincount(reqs.adapter, minlength=3) / len(reqs)
    np.testing.assert_allclose(shares, [0.6, 0.3, 0.1], atol=0.02)
    assert reqs.output_tokens.min() >= 1  # zero-token rows count as one token
    explicit = requests_from_trace(trace, config, seed=4, rate_scale=2.0)
    assert explicit.rate == pytest.approx(4.0, rel=0.02)
    fitted = fit_token_means(config, reqs)
    mine = reqs.adapter == 2
    assert fitted.adapters[2].prompt_tokens == pytest.approx(reqs.prompt_tokens[mine].mean())
    assert fitted.adapters[2].rank == 128


def test_trace_workload_replays_the_requests_its_adapters_were_built_from() -> None:
    trace = synthetic_trace(n=3000, span=900.0, seed=2)
    adapters, reqs = trace_workload(trace, 50, rate_scale=4.0, zipf=1.0, seed=9)
    assert len(adapters) == 50
    assert len(reqs) == pytest.approx(4 * 3000, rel=0.01)
    # Same assignment as adapters_from_trace on the scaled trace: per-adapter means agree.
    scaled = scale_trace(trace, 4.0, seed=9)
    again = adapters_from_trace(scaled, 50, zipf=1.0, seed=9)
    assert [a.model_dump() for a in again] == [a.model_dump() for a in adapters]
    for a in (0, 7, 31):
        mine = reqs.adapter == a
        if mine.any():
            assert adapters[a].prompt_tokens == pytest.approx(
                max(1.0, float(scaled["prompt_tokens"].to_numpy()[mine].mean())))
    assert sum(a.request_rate for a in adapters) == pytest.approx(
        len(reqs) / (scaled["t"].max() - scaled["t"].min()), rel=1e-9)


def write(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize(("body", "match"), [
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,1\n", "lacks column.* GeneratedTokens"),
    (HEADER + "2023-11-16 18:15:47,1,2\n2023-11-16 18:15:46,1,2\n",
     "line 3: TIMESTAMP '2023-11-16 18:15:46' is earlier than the row before it; sort"),
    (HEADER + "2023-11-16 18:15:46,1,2\nnot-a-time,1,2\n", "line 3: TIMESTAMP 'not-a-time'"),
    (HEADER + "2023-11-16 18:15:46,1,2\n2023-11-16 18:15:47,x,2\n", "line 3: ContextTokens"),
])
def test_simulator_trace_loading_refuses_bad_files_in_one_line(tmp_path: Path, body: str,
                                                               match: str) -> None:
    path = write(tmp_path / "t.csv", body)
    with pytest.raises(ConfigError, match=match) as info:
        load_azure_trace(path, unsorted="error")
    assert "\n" not in str(info.value)


def test_unsorted_rows_are_sorted_when_asked(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", HEADER + "2023-11-16 18:15:47,5,6\n"
                 "2023-11-16 18:15:46,1,2\n")
    trace = load_azure_trace(path, unsorted="sort")
    assert trace["prompt_tokens"].tolist() == [1, 5]
    assert math.isclose(float(trace["t"].iloc[1]), 1.0)


def test_a_trace_without_a_time_span_is_refused() -> None:
    flat = pd.DataFrame({"t": [0.0, 0.0], "prompt_tokens": [1, 2], "output_tokens": [1, 2]})
    with pytest.raises(ConfigError, match="positive duration"):
        requests_from_trace(flat, three_adapters())


def test_scale_requests_keeps_adapters_and_window() -> None:
    reqs = generate_requests(three_adapters(), 500.0, seed=4)
    double = scale_requests(reqs, 2.5, seed=1)
    assert len(double) == pytest.approx(2.5 * len(reqs), rel=0.02)
    assert np.all(np.diff(double.arrival) >= 0)
    assert double.arrival.max() < 500.0 and double.duration == reqs.duration
    np.testing.assert_allclose(np.bincount(double.adapter, minlength=3) / len(double),
                               np.bincount(reqs.adapter, minlength=3) / len(reqs), atol=0.01)
    assert scale_requests(reqs, 1.0) is reqs
    half = scale_requests(reqs, 0.5, seed=1)
    assert len(half) == pytest.approx(0.5 * len(reqs), rel=0.05)
