from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from loraserve import Adapter, ConfigError, CostModel
from loraserve.models import PRESETS
from loraserve.profiles import Profile, find_profile, load_profile, shipped_profiles
from loraserve.profiles.analytic import GPU_SPECS, analytic_profile, shipped_path
from loraserve.profiles.capacity import active_adapters
from tests.conftest import GPU, make_config

ALL_TIERS = [8, 16, 32, 64, 128, 256, 320, 512]
RANK8 = Adapter(id="r8", rank=8, request_rate=1.0, prompt_tokens=1024, output_tokens=256)


@pytest.fixture(scope="module")
def h100_llama3() -> Profile:
    return load_profile(shipped_path(GPU, "llama-3-8b"))


# ---- shipped files --------------------------------------------------------------------------


def test_every_preset_and_gpu_is_shipped() -> None:
    shipped = {(p.parent.name, p.stem) for p in shipped_profiles()}
    assert shipped == {(g, m) for g in GPU_SPECS for m in PRESETS}


@pytest.mark.parametrize("path", shipped_profiles(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_profile_loads_and_matches_generator(path: Path) -> None:
    profile = load_profile(path)
    assert profile.source == "analytic"
    assert profile.gpu_type == path.parent.name
    assert profile.base_model == path.stem
    assert set(profile.tiers) == set(ALL_TIERS)
    regenerated = analytic_profile(PRESETS[profile.base_model], GPU_SPECS[profile.gpu_type])
    assert regenerated.model_dump() == profile.model_dump()


def test_profile_yaml_round_trip(tmp_path: Path, h100_llama3: Profile) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(h100_llama3.to_yaml(), encoding="utf-8")
    assert Profile.load(path) == h100_llama3


def test_find_profile_prefers_user_file(tmp_path: Path, h100_llama3: Profile) -> None:
    custom = h100_llama3.model_copy(update={"source": "measured", "description": "mine"})
    path = tmp_path / "mine.yaml"
    path.write_text(custom.to_yaml(), encoding="utf-8")
    found = find_profile(GPU, PRESETS["llama-3-8b"], [path])
    assert found.description == "mine"
    assert find_profile(GPU, PRESETS["llama-3-8b"]).source == "analytic"


def test_find_profile_derives_for_custom_shapes() -> None:
    spec = PRESETS["llama-3-8b"].model_copy(update={"name": "custom-8b"})
    profile = find_profile("A100-80GB", spec)
    assert profile.base_model == "custom-8b"
    assert profile.model_dump() | {"base_model": "llama-3-8b"} == analytic_profile(
        PRESETS["llama-3-8b"], GPU_SPECS["A100-80GB"]
    ).model_dump()


def test_find_profile_unknown_gpu() -> None:
    with pytest.raises(ConfigError, match="no profile for gpu_type 'TPU-v9'"):
        find_profile("TPU-v9", PRESETS["llama-3-8b"])


def test_bad_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("gpu_type: H100-80GB\nbase_model: x\nsource: guessed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        Profile.load(path)
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "missing.yaml")


def test_profile_grid_validation(h100_llama3: Profile) -> None:
    data = h100_llama3.model_dump()
    with pytest.raises(ValueError, match="strictly increasing"):
        Profile.model_validate(data | {"batch_sizes": (1, 1, *data["batch_sizes"][2:])})
    short = dict(data["tiers"])
    short[8] = {"decode_ms": (1.0, 2.0), "prefill_ms": data["tiers"][8]["prefill_ms"]}
    with pytest.raises(ValueError, match="decode_ms has 2 values"):
        Profile.model_validate(data | {"tiers": short})


# ---- interpolation --------------------------------------------------------------------------


@pytest.mark.parametrize("tier", ALL_TIERS)
def test_interpolation_exact_on_grid(h100_llama3: Profile, tier: int) -> None:
    table = h100_llama3.tiers[tier]
    for batch, value in zip(h100_llama3.batch_sizes, table.decode_ms, strict=True):
        assert h100_llama3.decode_ms(tier, batch) == value
    for tokens, value in zip(h100_llama3.prefill_tokens, table.prefill_ms, strict=True):
        assert h100_llama3.prefill_ms(tier, tokens) == value


@pytest.mark.parametrize("tier", ALL_TIERS)
def test_interpolation_monotone(h100_llama3: Profile, tier: int) -> None:
    batches = np.linspace(0.25, 2 * h100_llama3.batch_sizes[-1], 997)
    decode = [h100_llama3.decode_ms(tier, float(b)) for b in batches]
    assert all(b >= a for a, b in itertools.pairwise(decode))
    tokens = np.linspace(1.0, 2 * h100_llama3.prefill_tokens[-1], 997)
    prefill = [h100_llama3.prefill_ms(tier, float(t)) for t in tokens]
    assert all(b >= a for a, b in itertools.pairwise(prefill))


def test_interpolation_between_and_beyond_grid(h100_llama3: Profile) -> None:
    xs, ys = h100_llama3.batch_sizes, h100_llama3.tiers[8].decode_ms
    mid = 0.5 * (xs[3] + xs[4])
    assert h100_llama3.decode_ms(8, mid) == pytest.approx(0.5 * (ys[3] + ys[4]))
    # Flat below the grid, extrapolated from the last segment above it.
    assert h100_llama3.decode_ms(8, 0.1) == ys[0]
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    assert h100_llama3.decode_ms(8, xs[-1] + 100) == pytest.approx(ys[-1] + 100 * slope)


def test_latency_grows_with_tier(h100_llama3: Profile) -> None:
    for batch in (1, 16, 256):
        values = [h100_llama3.decode_ms(t, batch) for t in ALL_TIERS]
        assert values == sorted(values)
        assert values[-1] > values[0]
    assert h100_llama3.load_ms(8) < h100_llama3.load_ms(512)


def test_unknown_tier_raises(h100_llama3: Profile) -> None:
    with pytest.raises(KeyError, match="no tier 24"):
        h100_llama3.decode_ms(24, 4)


# ---- capacity per tier --------------------------------------------------------------------


def test_request_seconds_non_decreasing_with_tier() -> None:
    config = make_config(serving={"tiers": ALL_TIERS})
    model = CostModel.from_config(config)
    assert all(model.has(GPU, t) for t in ALL_TIERS)
    seconds = [model.request_seconds(RANK8, GPU, t) for t in ALL_TIERS]
    assert all(b >= a for a, b in itertools.pairwise(seconds))
    assert seconds[-1] > seconds[0]
    # Load is rate times per-request cost.
    fast = RANK8.model_copy(update={"request_rate": 3.0})
    assert model.adapter_load(fast, GPU, 64) == pytest.approx(3.0 * seconds[3])


def test_memory_makes_big_tier_unusable() -> None:
    config = make_config(serving={"tiers": ALL_TIERS, "max_loras": 64})
    model = CostModel.from_config(config)
    cap = model.capacity(GPU, 512)
    assert not cap.usable
    assert not model.has(GPU, 512)
    assert cap.reason.startswith("memory")
    assert "KV cache" in cap.reason
    assert math.isinf(model.request_seconds(RANK8, GPU, 512))
    assert (GPU, 512) not in model.kinds()
    # LoRA buffers are max_loras adapters padded to the tier.
    assert cap.lora_buffer_bytes == 64 * config.base_model.adapter_bytes(512, RANK8.target_modules)
    assert model.has(GPU, 8)


def test_kv_cache_accounting() -> None:
    config = make_config(serving={"max_loras": 8, "runtime_overhead_gib": 3.0,
                                  "gpu_memory_utilization": 0.85})
    cap = CostModel.from_config(config).capacity(GPU, 32)
    gib = 1024**3
    base = config.base_model
    expected = (80 * 0.85 * gib - base.weight_bytes
                - 8 * base.adapter_bytes(32, RANK8.target_modules) - 3 * gib)
    assert cap.kv_cache_bytes == pytest.approx(expected)
    assert cap.usable


def test_tiny_ttft_slo_makes_tiers_unusable() -> None:
    config = make_config(slo={"ttft_ms": 20.0, "tpot_ms": 60.0})
    model = CostModel.from_config(config)
    assert model.kinds() == []
    for cap in model.capacity_table():
        assert not cap.usable
        assert cap.reason.startswith("TTFT")


def test_tiny_tpot_slo_makes_tiers_unusable() -> None:
    model = CostModel.from_config(make_config(slo={"ttft_ms": 2000.0, "tpot_ms": 2.0}))
    assert model.kinds() == []
    assert all(cap.reason.startswith("TPOT") for cap in model.capacity_table())


def test_tighter_ttft_lowers_max_utilization() -> None:
    loose = CostModel.from_config(make_config())
    tight = CostModel.from_config(make_config(slo={"ttft_ms": 100.0, "tpot_ms": 60.0}))
    for tier in loose.config.serving.tiers:
        assert loose.capacity(GPU, tier).max_utilization == pytest.approx(0.9)
        assert 0 < tight.capacity(GPU, tier).max_utilization < 0.9
    utils = [tight.capacity(GPU, t).max_utilization for t in tight.config.serving.tiers]
    assert utils == sorted(utils, reverse=True)


def test_max_utilization_capped_by_serving() -> None:
    model = CostModel.from_config(make_config(serving={"max_utilization": 0.55}))
    assert all(cap.max_utilization == pytest.approx(0.55) for cap in model.capacity_table())


def test_tighter_tpot_shrinks_batch() -> None:
    loose = CostModel.from_config(make_config()).capacity(GPU, 8)
    tight = CostModel.from_config(
        make_config(slo={"ttft_ms": 2000.0, "tpot_ms": 15.0})
    ).capacity(GPU, 8)
    assert tight.usable
    assert tight.batch_limit == "tpot"
    assert tight.batch < loose.batch
    assert tight.decode_tokens_per_s < loose.decode_tokens_per_s


def test_prediction_at_limit_meets_ttft_slo() -> None:
    slo_ms = 100.0
    config = make_config(slo={"ttft_ms": slo_ms, "tpot_ms": 60.0})
    model = CostModel.from_config(config)
    cap = model.capacity(GPU, 8)
    rate = cap.max_utilization / model.request_seconds(RANK8, GPU, 8)
    hot = RANK8.model_copy(update={"request_rate": rate})
    at_limit = model.predict(GPU, 8, [(hot, 1.0)])
    assert at_limit.utilization == pytest.approx(cap.max_utilization)
    assert at_limit.ttft_ms <= slo_ms + 1e-6
    assert at_limit.ttft_ms >= slo_ms - cap.step_ms
    half = model.predict(GPU, 8, [(hot, 0.5)])
    assert half.ttft_ms < at_limit.ttft_ms
    assert half.tpot_ms <= config.slo.tpot_ms


def test_busy_adapters_are_poisson_binomial() -> None:
    in_flight = [0.5, 2.0, 0.1, 3.0, 1.0, 0.0]
    busy = [1.0 - math.exp(-m) for m in in_flight]
    for slots in (0, 1, 2, 4, 6):
        over = sum(
            math.prod(p if on else 1.0 - p for p, on in zip(busy, pattern, strict=True))
            for pattern in itertools.product((0, 1), repeat=len(busy)) if sum(pattern) > slots)
        expected, overflow = active_adapters(in_flight, slots)
        assert expected == pytest.approx(sum(busy))
        assert overflow == pytest.approx(over, abs=1e-12), slots
    assert active_adapters([], 16) == (0.0, 0.0)


def test_prediction_counts_busy_adapters_against_max_loras() -> None:
    config = make_config(serving={"max_loras": 2, "max_cpu_loras": 8})
    model = CostModel.from_config(config)
    # A request stays a few seconds (prefill, then 256 decode steps), so at 2 req/s each
    # adapter nearly always has one in flight: four are more than the two slots of a batch.
    # At 0.002 req/s they rarely overlap.
    busy = [RANK8.model_copy(update={"id": f"a{i}", "request_rate": 2.0}) for i in range(4)]
    cold = [a.model_copy(update={"request_rate": 0.002}) for a in busy]
    crowded = model.predict(GPU, 8, [(a, 1.0) for a in busy])
    quiet = model.predict(GPU, 8, [(a, 1.0) for a in cold])
    assert crowded.active_adapters > 2.5 and crowded.slot_overflow > 0.5
    assert quiet.active_adapters < 0.2 and quiet.slot_overflow < 1e-3
    # The same traffic split over two GPUs halves what each one holds in flight.
    half = model.predict(GPU, 8, [(a, 0.5) for a in busy])
    assert half.active_adapters < crowded.active_adapters
