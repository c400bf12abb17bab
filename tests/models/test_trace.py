"""Azure trace loading and adapters drawn from it: rates, determinism, Zipf skew, bad files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loraserve import ConfigError, config_from_mapping
from loraserve.models.trace import TRACE_RANK_MIX, adapters_from_trace, load_azure_trace
from tests.conftest import REPO_ROOT, base_raw

CONV = REPO_ROOT.parent / "shared" / "data" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
needs_data = pytest.mark.skipif(not CONV.is_file(), reason=f"{CONV} is absent")

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write_trace(path: Path, rows: list[tuple[str, object, object]]) -> Path:
    path.write_text(HEADER + "".join(f"{t},{p},{o}\n" for t, p, o in rows), encoding="utf-8")
    return path


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    # 200 requests over 100 s (2 req/s), seven fractional digits as in the Azure files, rows
    # shuffled so that sorting is exercised.
    rng = np.random.default_rng(7)
    start = pd.Timestamp("2023-11-16 18:15:46")
    offsets = np.sort(rng.uniform(0.0, 100.0, 198))
    offsets = np.concatenate([[0.0], offsets, [100.0]])
    rows = [((start + pd.Timedelta(seconds=float(s))).strftime("%Y-%m-%d %H:%M:%S.%f") + "0",
             int(rng.integers(10, 2000)), int(rng.integers(5, 500))) for s in offsets]
    order = rng.permutation(len(rows))
    return write_trace(tmp_path / "trace.csv", [rows[i] for i in order])


# ---- load_azure_trace ------------------------------------------------------------------------


def test_load_sorts_and_measures_seconds_from_start(small_csv: Path) -> None:
    trace = load_azure_trace(small_csv)
    assert list(trace.columns) == ["t", "prompt_tokens", "output_tokens"]
    assert len(trace) == 200
    assert trace["t"].iloc[0] == 0.0
    assert trace["t"].iloc[-1] == pytest.approx(100.0, abs=1e-6)
    assert trace["t"].is_monotonic_increasing
    assert trace["prompt_tokens"].dtype == np.int64
    assert list(trace.index) == list(range(200))


def test_load_keeps_sub_microsecond_timestamps(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.csv", [("2023-11-16 18:15:46.6805900", 1, 2),
                                            ("2023-11-16 18:15:46.6805907", 3, 4)])
    trace = load_azure_trace(path)
    assert trace["t"].iloc[1] == pytest.approx(7e-7, abs=1e-9)


@pytest.mark.parametrize(("content", "match"), [
    (None, "file not found"),
    ("time,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1,2\n", "lacks column.* TIMESTAMP"),
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,1\n", "lacks column.* GeneratedTokens"),
    (HEADER, "no requests"),
    ("", "not a readable CSV"),
    (HEADER + "yesterday,1,2\n", "line 2: TIMESTAMP 'yesterday' is not a date"),
    (HEADER + "2023-11-16 18:15:46,1,2\n2023-11-16 18:15:47,ten,2\n",
     "line 3: ContextTokens 'ten'"),
    (HEADER + "2023-11-16 18:15:46,1,-2\n", "GeneratedTokens '-2' is not a non-negative"),
])
def test_bad_files_are_one_line_config_errors(tmp_path: Path, content: str | None,
                                              match: str) -> None:
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=match) as info:
        load_azure_trace(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_a_folder_is_not_a_trace(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_azure_trace(tmp_path)


# ---- adapters_from_trace --------------------------------------------------------------------


def test_rates_sum_to_the_trace_rate_times_the_scale(small_csv: Path) -> None:
    trace = load_azure_trace(small_csv)
    for scale in (1.0, 37.5):
        adapters = adapters_from_trace(trace, 50, rate_scale=scale)
        assert sum(a.request_rate for a in adapters) == pytest.approx(2.0 * scale, rel=1e-9)
        assert all(a.request_rate > 0 for a in adapters)


def test_one_adapter_takes_the_whole_trace(small_csv: Path) -> None:
    trace = load_azure_trace(small_csv)
    [only] = adapters_from_trace(trace, 1, rate_scale=3.0)
    assert only.request_rate == pytest.approx(6.0)
    assert only.prompt_tokens == pytest.approx(trace["prompt_tokens"].mean())
    assert only.output_tokens == pytest.approx(trace["output_tokens"].mean())


def test_adapters_without_requests_keep_a_rate_and_the_trace_means(small_csv: Path) -> None:
    trace = load_azure_trace(small_csv)
    # 200 requests over 1,000 adapters: most get none.
    adapters = adapters_from_trace(trace, 1000)
    means = (trace["prompt_tokens"].mean(), trace["output_tokens"].mean())
    idle = [a for a in adapters if (a.prompt_tokens, a.output_tokens) == pytest.approx(means)]
    assert len(idle) > 700
    assert all(a.request_rate > 0 for a in idle)
    # Adapters that did get requests carry their own means, which differ from the trace's.
    assert len(idle) < len(adapters)


def test_token_means_are_the_assigned_requests_means(small_csv: Path) -> None:
    trace = load_azure_trace(small_csv)
    adapters = adapters_from_trace(trace, 3, zipf=0.0, seed=5)
    # Every request lands on one of three adapters; each mean lies within the trace's range
    # and the means are not all equal.
    for a in adapters:
        assert trace["prompt_tokens"].min() <= a.prompt_tokens <= trace["prompt_tokens"].max()
        assert trace["output_tokens"].min() <= a.output_tokens <= trace["output_tokens"].max()
    assert len({round(a.prompt_tokens, 6) for a in adapters}) == 3


def test_deterministic_for_a_seed(small_csv: Path) -> None:
    trace = load_azure_trace(small_csv)
    first = adapters_from_trace(trace, 100, rate_scale=5.0, seed=3)
    assert first == adapters_from_trace(trace, 100, rate_scale=5.0, seed=3)
    other = adapters_from_trace(trace, 100, rate_scale=5.0, seed=4)
    assert [a.request_rate for a in other] != [a.request_rate for a in first]
    assert [a.rank for a in other] != [a.rank for a in first]


def test_zipf_skew(small_csv: Path) -> None:
    trace = load_azure_trace(small_csv)
    n = 500
    rates = sorted((a.request_rate for a in adapters_from_trace(trace, n, zipf=1.0)),
                   reverse=True)
    # Popularity rank i gets a rate proportional to 1 / i.
    expected = 2.0 / np.arange(1, n + 1) / np.sum(1.0 / np.arange(1, n + 1))
    assert rates == pytest.approx(list(expected), rel=1e-9)
    steeper = sorted((a.request_rate for a in adapters_from_trace(trace, n, zipf=1.5)),
                     reverse=True)
    assert steeper[0] > rates[0]
    flat = {round(a.request_rate, 12) for a in adapters_from_trace(trace, n, zipf=0.0)}
    assert flat == {round(2.0 / n, 12)}


def test_popularity_is_not_the_id_order(small_csv: Path) -> None:
    trace = load_azure_trace(small_csv)
    adapters = adapters_from_trace(trace, 200)
    rates = [a.request_rate for a in adapters]
    assert rates != sorted(rates, reverse=True)
    assert adapters[0].id == "adapter-00000"
    assert adapters_from_trace(trace, 2, id_prefix="lora")[1].id == "lora-00001"


def test_ranks_follow_the_mix_and_not_popularity(small_csv: Path) -> None:
    trace = load_azure_trace(small_csv)
    adapters = adapters_from_trace(trace, 4000, seed=1)
    counts = Counter(int(a.rank) for a in adapters)
    assert set(counts) == set(TRACE_RANK_MIX)
    for rank, share in TRACE_RANK_MIX.items():
        assert counts[rank] / 4000 == pytest.approx(share, abs=0.03)
    # Changing the popularity exponent moves rates, never ranks.
    steeper = adapters_from_trace(trace, 4000, seed=1, zipf=2.0)
    assert [a.rank for a in steeper] == [a.rank for a in adapters]
    only_big = adapters_from_trace(trace, 50, rank_mix={128: 1.0, 256: 3.0})
    assert {a.rank for a in only_big} <= {128, 256}


def test_adapters_validate_into_a_config(small_csv: Path) -> None:
    adapters = adapters_from_trace(load_azure_trace(small_csv), 20, rate_scale=10.0)
    config = config_from_mapping(base_raw([a.model_dump() for a in adapters]), source="test")
    assert config.total_request_rate == pytest.approx(20.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_adapters": 0}, "n_adapters must be at least 1"),
    ({"rate_scale": 0.0}, "rate_scale must be a positive"),
    ({"rate_scale": float("nan")}, "rate_scale must be a positive"),
    ({"zipf": -1.0}, "zipf must be a number >= 0"),
    ({"rank_mix": {12: 1.0}}, "rank 12 is not one vLLM accepts"),
    ({"rank_mix": {8: -1.0}}, "use a weight >= 0"),
    ({"rank_mix": {8: 0.0}}, "sum to 0"),
    ({"rank_mix": {}}, "rank_mix is empty"),
])
def test_bad_arguments(small_csv: Path, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"n_adapters": 10, **kwargs}
    with pytest.raises(ConfigError, match=match):
        adapters_from_trace(load_azure_trace(small_csv), **args)  # type: ignore[arg-type]


def test_a_trace_needs_a_duration(tmp_path: Path) -> None:
    one = load_azure_trace(write_trace(tmp_path / "one.csv", [("2023-11-16 18:15:46", 1, 2)]))
    with pytest.raises(ConfigError, match="positive duration"):
        adapters_from_trace(one, 3)
    with pytest.raises(ConfigError, match="lacks column"):
        adapters_from_trace(pd.DataFrame({"t": [0.0, 1.0]}), 3)


# ---- the real conversation trace ------------------------------------------------------------


@needs_data
def test_conv_trace_loads() -> None:
    trace = load_azure_trace(CONV)
    assert len(trace) == 19366
    assert trace["t"].is_monotonic_increasing
    assert trace["t"].iloc[-1] == pytest.approx(3501.72, abs=0.01)
    assert trace["prompt_tokens"].min() > 0 and trace["output_tokens"].min() > 0


@needs_data
def test_conv_trace_adapters() -> None:
    trace = load_azure_trace(CONV)
    rate = len(trace) / trace["t"].iloc[-1]
    adapters = adapters_from_trace(trace, 1000, rate_scale=150.0)
    assert sum(a.request_rate for a in adapters) == pytest.approx(rate * 150.0, rel=1e-9)
    rates = np.array([a.request_rate for a in adapters])
    # Zipf(1) over 1,000 adapters: the hottest takes 1 / H_1000 = 13.4 % of the traffic.
    assert rates.max() / rates.sum() == pytest.approx(1 / np.sum(1.0 / np.arange(1, 1001)))
    assert rates.max() / np.median(rates) > 100
    assert max(a.rank for a in adapters) == 256
    # 19,366 requests over 1,000 adapters: every token mean comes from the trace's range.
    assert all(2 <= a.prompt_tokens <= 14050 for a in adapters)
    assert adapters == adapters_from_trace(trace, 1000, rate_scale=150.0)
