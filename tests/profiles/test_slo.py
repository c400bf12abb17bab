"""The SLO families (tpot_tail, batch_slots): models against the simulator, solvers, verify."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraserve.models import config_from_mapping
from loraserve.profiles import CostModel
from loraserve.profiles.slo import SloCalibration, load_calibration, slot_weight, tail_scale
from loraserve.sim.calibrate import _at_load, _simulate
from loraserve.solver import solve
from loraserve.solver.instance import Instance

REPO = Path(__file__).resolve().parents[2]
GPU = "H100-80GB"


def test_calibration_file_is_read_and_names_its_command() -> None:
    calibration = load_calibration(GPU, "llama-3-8b")
    assert calibration.source.startswith("python -m loraserve.sim.calibrate")
    assert calibration.tpot_tail_kappa > 0
    with pytest.raises(Exception, match="slot_margin"):
        SloCalibration(slot_margin=1.5)
    assert SloCalibration(slot_margin=-0.25).slot_limit(16) == pytest.approx(20.0)


def test_tail_scale_and_slot_weight_shapes() -> None:
    assert tail_scale(1024, 256) == pytest.approx(1.0)
    assert tail_scale(1024, 64) == pytest.approx(2.0)
    assert slot_weight(0.0) == 0.0
    assert slot_weight(50.0) == pytest.approx(1.0)
    assert 0 < slot_weight(0.1) < slot_weight(1.0) < 1.0


# Single GPUs: the model's verdict against the simulator's, over adapter mixes (fixed seeds).
# Tolerance: a point the families admit must reach 98.5 % in simulation (the SLO asks 99 %;
# 0.5 points is the run-to-run spread of 300 s at these rates), and a point the simulator
# misses by more than 3 points must not be admitted.
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(tier=st.sampled_from([8, 32, 128]), prompt=st.sampled_from([384, 768, 1536, 2560]),
       output=st.sampled_from([96, 192, 384]), rho=st.sampled_from([0.6, 0.75, 0.9, 1.0]),
       n=st.sampled_from([1, 6, 12, 20, 28]), max_loras=st.sampled_from([8, 16]))
def test_families_agree_with_the_simulator(tier: int, prompt: int, output: int, rho: float,
                                           n: int, max_loras: int) -> None:
    built = _at_load(GPU, "llama-3-8b", n, rho, prompt, output, tier, max_loras)
    assert built is not None
    config, model = built
    checks = model.family_checks(GPU, tier, [(a, 1.0) for a in config.adapters])
    admitted = not any(c.violated for c in checks)
    attainment, _, _ = _simulate(config, model, tier)
    if admitted:
        assert attainment >= 0.985, (checks, attainment)
    if attainment < 0.96:
        assert not admitted, (checks, attainment)


def _quickstart(**serving: object) -> dict[str, object]:
    raw = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    raw["serving"].update({"slo_families": True, **serving})
    raw["adapters"] = raw["adapters"][:60]
    return raw


@pytest.mark.parametrize("solver", ["greedy", "lns", "cpsat", "milp", "loraserve-greedy"])
def test_every_solver_respects_the_slo_families(solver: str) -> None:
    config = config_from_mapping(_quickstart())
    model = CostModel.from_config(config)
    assert model.slot_family_binds()
    result = solve(config, solver=solver, time_limit=5, seed=0)
    assert result.plan is not None, result.message
    problems = result.plan.verify(config, model)
    assert problems == [], problems
    families = {c.family for g in result.plan.gpus
                for c in model.family_checks(g.gpu_type, g.tier, [
                    (next(a for a in config.adapters if a.id == x),
                     result.plan.routes[x].get(g.gpu_id, 0.0)) for x in g.adapters])}
    assert {"compute", "tpot_tail", "batch_slots"} <= families


def test_slot_family_is_off_when_hosting_cannot_exceed_max_loras() -> None:
    config = config_from_mapping(_quickstart(max_cpu_loras=16))
    model = CostModel.from_config(config)
    assert not model.slot_family_binds()
    inst = Instance.build(config, model)
    assert "batch_slots" not in inst.hosting_families
    assert not math.isfinite(inst.cache_bytes)


def test_verify_flags_a_plan_that_breaks_the_new_families() -> None:
    config = config_from_mapping(_quickstart())
    # Every adapter on one top-tier GPU would break compute; so give each GPU 30 of them
    # with plenty of compute left: only batch_slots can fail.
    light = _quickstart()
    for a in light["adapters"]:  # type: ignore[union-attr]
        a["request_rate"] = 0.2
    config = config_from_mapping(light)
    model = CostModel.from_config(config)
    ids = [a.id for a in config.adapters]
    raw = {"base_model": "llama-3-8b",
           "gpus": [{"gpu_id": "g0", "gpu_type": GPU, "tier": 128, "adapters": ids[:30]},
                    {"gpu_id": "g1", "gpu_type": GPU, "tier": 128, "adapters": ids[30:]}],
           "routes": {a: {("g0" if i < 30 else "g1"): 1.0} for i, a in enumerate(ids)}}
    from loraserve.models import PlacementPlan

    plan = PlacementPlan.model_validate(raw)
    problems = plan.verify(config, model)
    assert {p.constraint for p in problems} == {"batch_slots"}
    assert all(p.excess > 0 for p in problems)


def test_the_quickstart_plan_meets_the_slo_in_simulation() -> None:
    from loraserve.sim.engine import SimOptions, run
    from loraserve.sim.policies import deployment_from_plan
    from loraserve.sim.results import SimResult
    from loraserve.sim.workload import generate_requests

    raw = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    raw["serving"]["slo_families"] = True
    config = config_from_mapping(raw)
    result = solve(config, solver="greedy", seed=0)
    assert result.plan is not None
    model = CostModel.from_config(config)
    deployment = deployment_from_plan(result.plan, config)
    requests = generate_requests(config, 120.0, seed=0)
    sim = SimResult("plan", config, run(config, deployment.workers, requests,
                                        deployment.routes, SimOptions(seed=0), model),
                    model, result.plan)
    assert float(sim.requests["slo_ok"].mean()) >= 0.99
    assert result.plan.num_gpus < 19


def test_incremental_replan_and_remote_plans_respect_the_families() -> None:
    config = config_from_mapping(_quickstart())
    running = solve(config, solver="greedy", seed=0).plan
    assert running is not None
    hotter = config.scaled(1.2)
    replanned = solve(hotter, solver="greedy", current=running, seed=0)
    assert replanned.plan is not None, replanned.message
    assert replanned.plan.verify(hotter) == []
    remote = config_from_mapping(yaml.safe_load((REPO / "examples" / "remote.yaml").read_text()))
    result = solve(remote, solver="greedy", seed=0)
    assert result.plan is not None, result.message
    assert result.plan.verify(remote) == []


def test_peak_factor_of_a_stream_whose_rate_steps_up() -> None:
    import numpy as np

    from loraserve.sim.workload import Requests, peak_factor

    # 10 req/s for 600 s, then 20 req/s for 300 s: 5-minute windows at 10, 10, 20.
    arrival = np.concatenate([np.arange(0, 600, 0.1), np.arange(600, 900, 0.05)])
    n = len(arrival)
    requests = Requests(arrival=arrival, adapter=np.zeros(n, dtype=np.int64),
                        prompt_tokens=np.ones(n), output_tokens=np.ones(n), duration=900.0)
    mean = n / arrival.max()
    assert peak_factor(requests, 300.0, 95.0) == pytest.approx(
        float(np.percentile([10.0, 10.0, 20.0], 95)) / mean, rel=1e-3)
    assert peak_factor(requests.head(100.0)) == 1.0
