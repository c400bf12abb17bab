"""Fidelity: the simulator against the solver's predictions for the same plan.

Measured on the quickstart planned with the compute-only model (``slo_families: false``,
14 GPUs, 300 s of generated Poisson traffic, seed 0), whose crowded GPUs are what the
``batch_slots`` family now prevents (``tests/profiles/test_slo.py`` checks the SLO-true plan): the
simulated load of each GPU (its served work priced like the solver prices it) is within
1.3 points of the plan's predicted utilization on average and 3.2 points at worst, and 0.1 %
over the fleet; the mean TPOT per GPU is within 12 % of the predicted TPOT. The M/D/1 and
M/G/1 checks of a single GPU are in ``test_engine.py``. The GPUs the plan's slot table
expects to have more busy adapters than ``max_loras`` are the ones whose simulated p99 TTFT
breaks the SLO through LoRA-slot waits.
"""

from __future__ import annotations

import pytest
import yaml

from loraserve import Config, config_from_mapping
from loraserve.sim.experiments import Scenario
from loraserve.sim.workload import generate_requests
from tests.conftest import QUICKSTART


def compute_only_quickstart() -> Config:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["serving"]["slo_families"] = False
    return config_from_mapping(raw)


@pytest.fixture(scope="module")
def simulated():  # type: ignore[no-untyped-def]
    config = compute_only_quickstart()
    scenario = Scenario(config, lambda s: generate_requests(config, 300.0, seed=0,
                                                            rate_scale=s))
    deployment = scenario.deployment("loraserve", None)
    assert deployment is not None and deployment.plan is not None
    return deployment, scenario.simulate(deployment)


def test_simulated_load_matches_the_predicted_utilization(simulated) -> None:  # type: ignore[no-untyped-def]
    _, result = simulated
    gpus = result.gpus
    error = (gpus["load"] - gpus["predicted_utilization"]).abs()
    assert error.mean() < 0.03
    assert error.max() < 0.06
    fleet = gpus["load"].sum() / gpus["predicted_utilization"].sum()
    assert fleet == pytest.approx(1.0, abs=0.02)
    # A GPU is never idle at these loads: continuous batching keeps stepping with a smaller
    # batch, so busy time is above the load but below 1.
    assert (gpus["busy"] >= gpus["load"] - 0.01).all()
    assert (gpus["busy"] <= 1.0).all()


def test_simulated_tpot_matches_the_predicted_tpot(simulated) -> None:  # type: ignore[no-untyped-def]
    deployment, result = simulated
    predicted = {g.gpu_id: g.predicted_tpot_ms for g in deployment.plan.gpus}
    measured = result.requests.groupby("gpu")["tpot_ms"].mean()
    for gpu_id, tpot in measured.items():
        assert tpot == pytest.approx(predicted[gpu_id], rel=0.2), gpu_id


def test_slot_table_finds_the_gpus_that_wait_for_lora_slots(simulated) -> None:  # type: ignore[no-untyped-def]
    deployment, result = simulated
    config = compute_only_quickstart()
    table = deployment.plan.slot_table(config).set_index("gpu_id")
    ttft = result.requests.groupby("gpu")["ttft_ms"].quantile(0.99)
    crowded = table.index[table["overflow"] > 0.4]
    # Single-adapter GPUs miss through load alone, which this table is not about.
    calm = table.index[(table["overflow"] < 0.05) & (table["hosted"] > 1)]
    assert len(crowded) >= 2 and len(calm) >= 2
    assert (ttft[crowded] > config.slo.ttft_ms).all()
    assert (ttft[calm] < config.slo.ttft_ms).all()
    # Where it is over the limit nearly always, requests wait far beyond the SLO.
    assert ttft[table.index[table["overflow"] > 0.99]].min() > 10 * config.slo.ttft_ms


def test_per_gpu_slo_figures_add_up_to_the_fleet(simulated) -> None:  # type: ignore[no-untyped-def]
    deployment, result = simulated
    gpus = result.gpus.set_index("gpu_id")
    within = (gpus["slo_attainment"] * gpus["requests"]).sum() / gpus["requests"].sum()
    assert within == pytest.approx(result.summary["slo_attainment"])
    # The fleet's tail is one of its GPUs' tails or between them.
    assert gpus["ttft_tail_ms"].min() <= result.summary["ttft_p99_ms"] \
        <= gpus["ttft_tail_ms"].max()
    table = deployment.plan.slot_table(compute_only_quickstart()).set_index("gpu_id")
    assert gpus["expected_busy_adapters"].to_dict() == table["expected_active"].to_dict()
