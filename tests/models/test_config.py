from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loraserve import ConfigError, config_from_mapping, load_config
from loraserve.cli import main
from loraserve.models import ALL_LINEAR_MODULES, PRESETS, Adapter, BaseModelSpec
from tests.conftest import QUICKSTART, base_raw, make_config

LLAMA3 = PRESETS["llama-3-8b"]
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


# ---- adapter sizes ------------------------------------------------------------------------


def test_adapter_bytes_llama3_rank256_all_modules() -> None:
    assert LLAMA3.adapter_bytes(256, ALL_LINEAR_MODULES) == 1_342_177_280


def test_adapter_bytes_through_config() -> None:
    config = make_config([{"id": "big", "rank": 256, "request_rate": 1.0}])
    assert config.adapter_bytes(config.adapters[0]) == 1_342_177_280


@pytest.mark.parametrize("rank", [8, 16, 32, 64, 128, 320, 512])
def test_adapter_bytes_linear_in_rank(rank: int) -> None:
    per_rank = LLAMA3.adapter_bytes(256, ALL_LINEAR_MODULES) // 256
    assert LLAMA3.adapter_bytes(rank, ALL_LINEAR_MODULES) == rank * per_rank
    assert LLAMA3.adapter_bytes(2 * rank, ALL_LINEAR_MODULES) == 2 * LLAMA3.adapter_bytes(
        rank, ALL_LINEAR_MODULES
    )


def test_attention_only_adapter_is_smaller() -> None:
    full = LLAMA3.adapter_bytes(16, ALL_LINEAR_MODULES)
    attention = LLAMA3.adapter_bytes(16, ATTENTION)
    # Per layer: q (4096+4096) + k (4096+1024) + v (4096+1024) + o (4096+4096) = 26624.
    assert attention == 16 * 32 * 26624 * 2
    assert 0 < attention < full


def test_adapter_bytes_use_dtype_and_gqa() -> None:
    llama2 = PRESETS["llama-2-7b"]  # no GQA: k/v as wide as q
    assert llama2.adapter_bytes(8, ("k_proj",)) == 8 * 32 * (4096 + 4096) * 2
    assert LLAMA3.adapter_bytes(8, ("k_proj",)) == 8 * 32 * (4096 + 1024) * 2
    fp32 = BaseModelSpec.model_validate({**LLAMA3.model_dump(), "dtype_bytes": 4})
    assert fp32.adapter_bytes(8, ATTENTION) == 2 * LLAMA3.adapter_bytes(8, ATTENTION)


def test_derived_param_count_when_omitted() -> None:
    spec = BaseModelSpec(name="tiny", num_layers=2, hidden_size=64, intermediate_size=128,
                         num_attention_heads=4, num_kv_heads=2, vocab_size=100)
    # Per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 + 3 * 64*128.
    layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128
    assert spec.total_params == 2 * layer + 2 * 100 * 64
    assert spec.weight_bytes == 2 * spec.total_params


def test_base_model_heads_must_divide() -> None:
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        BaseModelSpec(name="bad", num_layers=2, hidden_size=64, intermediate_size=128,
                      num_attention_heads=4, num_kv_heads=3, vocab_size=100)


# ---- loading: defaults, CSV, presets ------------------------------------------------------


def test_defaults_applied_and_overridden(tmp_path: Path) -> None:
    raw = base_raw(
        [
            {"id": "plain", "rank": 8, "request_rate": 1.0},
            {"id": "own", "rank": 16, "request_rate": 2.0, "prompt_tokens": 77,
             "target_modules": ["q_proj", "v_proj"]},
        ],
        adapter_defaults={"prompt_tokens": 500, "output_tokens": 50,
                          "target_modules": ["q_proj", "k_proj"]},
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    plain, own = config.adapters
    assert (plain.prompt_tokens, plain.output_tokens) == (500.0, 50.0)
    assert plain.target_modules == ("q_proj", "k_proj")
    assert (own.prompt_tokens, own.output_tokens) == (77.0, 50.0)
    assert own.target_modules == ("q_proj", "v_proj")


def test_builtin_defaults_without_adapter_defaults() -> None:
    config = make_config([{"id": "x", "rank": 32, "request_rate": 0.5}])
    (only,) = config.adapters
    assert (only.prompt_tokens, only.output_tokens) == (1024.0, 256.0)
    assert only.target_modules == ALL_LINEAR_MODULES
    assert config.serving.adapters_per_gpu == config.serving.max_loras == 16
    assert config.serving.tiers == (8, 16, 32, 64, 128, 256)


def test_csv_adapters_merged_with_yaml(tmp_path: Path) -> None:
    (tmp_path / "more.csv").write_text(
        "id,rank,request_rate,prompt_tokens,output_tokens,target_modules\n"
        "c1,16,2.5,300,40,q_proj;v_proj\n"
        "c2,64,0.25,,,\n",
        encoding="utf-8",
    )
    raw = base_raw([{"id": "y1", "rank": 8, "request_rate": 1.0}],
                   adapters_csv="more.csv", adapter_defaults={"output_tokens": 99})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    by_id = {a.id: a for a in config.adapters}
    assert [a.id for a in config.adapters] == ["y1", "c1", "c2"]
    assert by_id["c1"] == Adapter(id="c1", rank=16, request_rate=2.5, prompt_tokens=300,
                                  output_tokens=40, target_modules=("q_proj", "v_proj"))
    assert by_id["c2"].rank == 64
    assert by_id["c2"].request_rate == 0.25
    assert by_id["c2"].prompt_tokens == 1024.0
    assert by_id["c2"].output_tokens == 99.0
    assert by_id["c2"].target_modules == ALL_LINEAR_MODULES
    assert config.total_request_rate == pytest.approx(3.75)


def test_csv_only_config(tmp_path: Path) -> None:
    sub = tmp_path / "data"
    sub.mkdir()
    (sub / "a.csv").write_text("id,rank,request_rate\nz,8,1\n", encoding="utf-8")
    raw = base_raw(adapters_csv="data/a.csv")
    del raw["adapters"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert [a.id for a in load_config(path).adapters] == ["z"]


def test_csv_duplicate_of_yaml_id_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,rank,request_rate\na0,8,1\n", encoding="utf-8")
    raw = base_raw(adapters_csv="a.csv")
    with pytest.raises(ConfigError, match="appears twice"):
        config_from_mapping(raw, base_dir=tmp_path)


def test_csv_bad_number_names_line(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,rank,request_rate\nz,8,fast\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line 2: request_rate 'fast' is not a number"):
        config_from_mapping(base_raw(adapters_csv="a.csv"), base_dir=tmp_path)


def test_csv_missing_column(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,rank\nz,8\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="request_rate"):
        config_from_mapping(base_raw(adapters_csv="a.csv"), base_dir=tmp_path)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_resolve(preset: str) -> None:
    config = make_config(base_model=preset)
    assert config.base_model == PRESETS[preset]
    assert config.base_model.name == preset


def test_base_model_as_mapping() -> None:
    shapes = LLAMA3.model_dump() | {"name": "my-llama"}
    config = make_config(base_model=shapes)
    assert config.base_model.name == "my-llama"
    assert config.base_model.adapter_bytes(256, ALL_LINEAR_MODULES) == 1_342_177_280


def test_rank_above_top_tier_rejected() -> None:
    with pytest.raises(ConfigError, match=r"adapters\[0\]\.rank 128.*add tier 128"):
        make_config([{"id": "x", "rank": 128, "request_rate": 1.0}], serving={"tiers": [8, 64]})


def test_tiers_sorted_and_deduplicated() -> None:
    config = make_config(serving={"tiers": [64, 8, 16, 8]})
    assert config.serving.tiers == (8, 16, 64)


def test_config_error_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        make_config([{"id": "x", "rank": 8, "request_rate": "lots"}])
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("test: adapters[0].request_rate")


def test_non_mapping_document() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_mapping([1, 2, 3])  # type: ignore[arg-type]


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"profiles: file .* not found"):
        config_from_mapping(base_raw(profiles=["nope.yaml"]), base_dir=tmp_path)


def test_quickstart_loads() -> None:
    config = load_config(QUICKSTART)
    assert len(config.adapters) == 200
    assert config.total_request_rate == pytest.approx(200.0, rel=1e-3)
    assert config.serving.adapters_per_gpu == 32


# ---- round trip -------------------------------------------------------------------------


def test_config_yaml_round_trip(tmp_path: Path) -> None:
    config = make_config(
        [{"id": "a", "rank": 8, "request_rate": 1.5, "target_modules": ["q_proj", "o_proj"]},
         {"id": "b/v2", "rank": 128, "request_rate": 0.25, "output_tokens": 17}],
        serving={"max_loras": 8, "max_cpu_loras": 24, "adapter_cache_gib": 12.5,
                 "tiers": [8, 128]},
    )
    path = tmp_path / "round.yaml"
    path.write_text(config.to_yaml(), encoding="utf-8")
    again = load_config(path)
    assert again == config
    assert again.model_dump() == config.model_dump()


def test_quickstart_round_trip(tmp_path: Path) -> None:
    config = load_config(QUICKSTART)
    path = tmp_path / "q.yaml"
    path.write_text(config.to_yaml(), encoding="utf-8")
    assert load_config(path).model_dump() == config.model_dump()


def test_scaled_and_with_adapters_do_not_mutate() -> None:
    config = make_config([{"id": "a", "rank": 8, "request_rate": 2.0}])
    before = config.model_dump()
    doubled = config.scaled(2.0)
    assert doubled.adapters[0].request_rate == 4.0
    assert config.model_dump() == before


# ---- bad configs through the CLI ----------------------------------------------------------

_HEAD = """base_model: llama-3-8b
slo: {ttft_ms: 2000, tpot_ms: 60}
pools: [{gpu_type: H100-80GB, count: 4, memory_gib: 80}]
"""
_ONE = "adapters: [{id: a, rank: 8, request_rate: 1}]\n"

BAD_CONFIGS = [
    pytest.param(_HEAD + "adapters: [{id: a, rank: 8\n", "YAML syntax error at line",
                 id="yaml-syntax"),
    pytest.param(_HEAD + "adapters: [{id: a, rank: 8, request_rate: -1}]\n",
                 "adapters[0].request_rate (id 'a')", id="negative-rate"),
    pytest.param(_HEAD + "adapters: [{id: a, rank: 12, request_rate: 1}]\n",
                 "adapters[0].rank (id 'a'): rank 12", id="rank-12"),
    pytest.param(_HEAD.replace("llama-3-8b", "llama-9-1b") + _ONE,
                 "base_model: unknown preset 'llama-9-1b'", id="unknown-preset"),
    pytest.param(_HEAD + "adapters: [{id: a, rank: 8, request_rate: 1},"
                 " {id: a, rank: 16, request_rate: 1}]\n",
                 "adapters[1].id 'a' appears twice", id="duplicate-id"),
    pytest.param(None, "file not found", id="missing-config"),
    pytest.param(_HEAD + "adapters_csv: nope.csv\n", "adapters_csv: file", id="missing-csv"),
    pytest.param(_HEAD + "serving: {max_lora: 4}\n" + _ONE,
                 "serving.max_lora: is not a known field", id="unknown-field"),
    pytest.param("", "the file is empty", id="empty-file"),
    pytest.param(_HEAD + "serving: {max_loras: 16, max_cpu_loras: 4}\n" + _ONE,
                 "max_cpu_loras (4) is below max_loras (16)", id="cpu-loras-below-loras"),
    pytest.param(_HEAD.replace("count: 4", "count: 0") + _ONE, "pools[0].count",
                 id="zero-pool"),
    pytest.param(_HEAD + "adapters: []\n", "adapters: no adapters given", id="no-adapters"),
    pytest.param(_HEAD + "adapters: [{id: a, rank: 8}]\n",
                 "adapters[0].request_rate (id 'a'): is required", id="missing-rate"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_CONFIGS)
def test_bad_config_cli_exit_2_one_line(
    text: str | None, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert needle in lines[0]
    assert captured.out == ""


@pytest.mark.parametrize(("text", "needle"), BAD_CONFIGS)
def test_bad_config_api_raises_config_error(text: str | None, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("raw", "needle"), [
    pytest.param(base_raw(adapter_defaults={"prompt_tokens": -1}),
                 "test: adapter_defaults.prompt_tokens:", id="bad-default"),
    pytest.param(base_raw(adapter_defaults={"prompt_token": 5}),
                 "adapter_defaults.prompt_token: is not a known field", id="default-typo"),
    pytest.param(base_raw([{"id": "a", "rank": 8, "request_rate": 1, "target_modules": ["qq"]}]),
                 "adapters[0].target_modules[0] (id 'a')", id="bad-module"),
    pytest.param(base_raw([{"id": "a", "rank": 8, "request_rate": 1,
                            "target_modules": ["q_proj", "q_proj"]}]),
                 "lists a module twice", id="module-twice"),
    pytest.param(base_raw(pools=[{"gpu_type": "H100-80GB", "count": 1, "memory_gib": 80}] * 2),
                 "pools: a gpu_type appears twice", id="pool-twice"),
    pytest.param(base_raw(serving={"tiers": []}), "serving.tiers: tiers is empty",
                 id="no-tiers"),
    pytest.param(base_raw(slo={"ttft_ms": 1, "tpot_ms": 1, "percentile": 100}),
                 "slo.percentile", id="percentile-100"),
    pytest.param(base_raw(adapters_csv=5), "adapters_csv: give a file path", id="csv-not-str"),
    pytest.param(base_raw([{"id": "bad id", "rank": 8, "request_rate": 1}]),
                 "adapters[0].id", id="id-pattern"),
])
def test_config_errors_name_the_field(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(raw, source="test")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(QUICKSTART)]) == 0
    out = capsys.readouterr().out
    assert "valid: 200 adapters" in out
    assert "base model llama-3-8b" in out
