"""The vLLM engine profiler's torch-free half: samples -> profile, overhead, the CLI's checks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loraserve.cli import main
from loraserve.models import ConfigError
from loraserve.profiles.engine import (
    EnginePoint,
    EngineRun,
    EngineSettings,
    ServedRequest,
    build_engine_profile,
    serving_overhead,
)
from loraserve.profiles.schema import Profile
from loraserve.runtime_adapter.localfleet import tiny_model_spec

VERSIONS = {"vllm": "0.32.0", "torch": "2.13.0+cpu", "device": "cpu", "device_name": "a CPU",
            "cuda": "n/a (CPU)", "python": "3.11", "platform": "Linux", "threads": "1"}


def settings(**changes: object) -> EngineSettings:
    values: dict[str, object] = {"base_model": tiny_model_spec(), "python": Path("/bin/sh"),
                                 "tiers": (8, 64), "batch_sizes": (1, 4, 16),
                                 "prefill_tokens": (32, 128, 256)}
    values.update(changes)
    return EngineSettings(**values)  # type: ignore[arg-type]


def points() -> list[EnginePoint]:
    rows = []
    for tier, scale in ((8, 1.0), (64, 2.0)):
        for batch, ms in ((1, 4.0), (4, 4.5), (16, 6.5)):
            rows.append(EnginePoint("decode", tier, batch, (ms * scale, ms * scale * 1.1,
                                                            ms * scale * 0.9)))
        # The middle point is measured faster than the first: the fit makes it monotone.
        for tokens, ms in ((32, 9.0), (128, 8.0), (256, 27.0)):
            rows.append(EnginePoint("prefill", tier, tokens, (ms * scale,)))
    rows += [EnginePoint("load", 0, 8, (3.0,)), EnginePoint("load", 0, 64, (5.0,))]
    return rows


def test_samples_become_a_measured_monotone_profile_with_provenance(tmp_path: Path) -> None:
    profile = build_engine_profile(settings(), points(), VERSIONS, time.perf_counter())
    assert profile.source == "measured" and profile.gpu_type == "CPU"
    assert profile.tiers[8].decode_ms == (4.0, 4.5, 6.5)
    assert profile.tiers[64].decode_ms == (8.0, 9.0, 13.0)
    assert profile.tiers[8].prefill_ms == (8.5, 8.5, 27.0)
    assert profile.adapter_load_ms == {8: 3.0, 64: 5.0}
    assert profile.provenance["engine"] == "vLLM 0.32.0"
    assert "load_format=dummy" in profile.provenance["weights"]
    path = tmp_path / "tiny.measured.yaml"
    raw = EngineRun(profile.model_copy(update={"request_overhead_ms": 12.5}),
                    tuple(points())).save(path)
    again = Profile.load(path)
    assert again.request_overhead_ms == 12.5
    assert again.provenance["raw_measurements"] == raw.name
    header, first = raw.read_text().splitlines()[:2]
    assert header == "kind,tier,size,median_ms,p10_ms,p90_ms,spread,samples"
    assert first.startswith("decode,8,1,4,")


def test_a_gpu_profile_is_keyed_by_the_device_name() -> None:
    versions = {**VERSIONS, "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
                "device_memory_bytes": str(80 * 2**30)}
    profile = build_engine_profile(settings(), points(), versions, time.perf_counter())
    assert profile.gpu_type == "H100-80GB"


def test_the_overheads_are_what_the_server_adds_to_the_engine() -> None:
    profile = build_engine_profile(settings(), points(), VERSIONS, time.perf_counter())
    # The fitted prefill of 32 tokens is 8.5 ms; decode steps 4 ms at batch 1, 6.5 at 16.
    alone = [ServedRequest(32, 8, 8.5 + extra, 8.5 + extra + 7 * 5.5) for extra in (10, 11, 12)]
    # Batch 16 concurrently: 6.5 + step 1 + 16 x 0.5 = 15.5 ms per token.
    together = [ServedRequest(-16, 24, 30.0, 30.0 + 23 * 15.5) for _ in range(4)]
    fit = serving_overhead(profile, 8, alone + together)
    assert fit.request_ms == pytest.approx(11.0)
    assert fit.token_ms == pytest.approx(0.5)
    assert fit.step_ms == pytest.approx(1.0)
    served = profile.model_copy(update={"step_overhead_ms": fit.step_ms,
                                        "token_overhead_ms": fit.token_ms})
    assert served.decode_ms(8, 16) == pytest.approx(6.5 + 1.0 + 8.0)


def test_settings_that_cannot_be_measured_are_refused_with_the_flag() -> None:
    with pytest.raises(ConfigError, match="--tiers: 12"):
        settings(tiers=(8, 12)).validate()
    with pytest.raises(ConfigError, match="--batch-sizes: 32 exceeds --max-num-seqs"):
        settings(batch_sizes=(1, 32)).validate()
    with pytest.raises(ConfigError, match="--prefill-tokens"):
        settings(prefill_tokens=(32, 4096)).validate()
    with pytest.raises(ConfigError, match="--vllm-python"):
        settings(python=Path("/nonexistent/python")).validate()


def test_the_cli_needs_a_vllm_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LORASERVE_VLLM_PYTHON", raising=False)
    code = main(["profile", "--engine", "vllm", "--model", "llama-3-8b",
                 "-o", str(tmp_path / "p.yaml")])
    assert code == 2
    assert "--vllm-python" in capsys.readouterr().err
