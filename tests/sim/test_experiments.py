"""Searches and comparisons on a small scenario."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loraserve import Config
from loraserve.sim.experiments import (
    COMPARE_COLUMNS,
    RATE_TOLERANCE,
    Scenario,
    capacity,
    compare,
    gpus_needed,
    max_rate,
    plot_capacity,
    plot_comparison,
)
from loraserve.sim.workload import generate_requests
from tests.conftest import adapter, make_config, rate_for_load


def small() -> Config:
    rate = rate_for_load(0.5)
    return make_config([adapter(f"a{i}", rank, rate) for i, rank in
                        enumerate([8, 8, 8, 8, 16, 16, 32, 64])],
                       serving={"max_loras": 4, "max_cpu_loras": 8})


def scenario(config: Config | None = None) -> Scenario:
    config = config or small()
    return Scenario(config, lambda s: generate_requests(config, 40.0, seed=2, rate_scale=s))


def test_gpus_needed_is_the_boundary_of_meeting_the_slo() -> None:
    sc = scenario()
    found = gpus_needed(sc, "loraserve")
    assert found.value is not None
    n = int(found.value)
    verdicts = {p["gpus"]: p["meets_slo"] for p in found.points}
    assert verdicts[n] is True
    assert verdicts.get(n - 1, n == 1) is False or n == 1


def test_max_rate_brackets_the_boundary() -> None:
    sc = scenario()
    found = max_rate(sc, "loraserve", 3)
    assert found.value is not None and found.value > 0
    meets = sorted(p["request_rate"] for p in found.points if p["meets_slo"])
    misses = sorted(p["request_rate"] for p in found.points if not p["meets_slo"])
    assert found.value == pytest.approx(max(meets))
    above = [r for r in misses if r > found.value]
    assert above and min(above) <= found.value * (1 + RATE_TOLERANCE) * 1.0001


def test_compare_tabulates_every_policy(tmp_path: Path) -> None:
    sc = scenario()
    result = compare(sc, ["vllm-default", "loraserve"])
    assert list(result.table.columns) == list(COMPARE_COLUMNS)
    assert result.table["policy"].tolist() == ["vllm-default", "loraserve"]
    assert result.table["has_plan"].all()
    row = result.table.set_index("policy").loc["loraserve"]
    # The fixed fleet defaults to what loraserve needs in simulation, so it meets the SLO there.
    assert result.gpus == row["gpus_needed"]
    assert row["slo_attainment"] >= 0.99
    assert set(result.runs) == {"vllm-default", "loraserve"}
    path = tmp_path / "c.png"
    plot_comparison(result, path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_compare_in_forked_processes_gives_the_same_table() -> None:
    # The greedy policies only: their plans do not depend on how much CPU a solve gets.
    policies = ["rank-agnostic-packing", "vllm-default", "loraserve-greedy"]
    alone = compare(scenario(), policies, jobs=1)
    forked = compare(scenario(), policies, jobs=2)
    pd.testing.assert_frame_equal(alone.table, forked.table)
    assert forked.gpus == alone.gpus
    assert set(forked.runs) == set(alone.runs)
    for policy, run in alone.runs.items():
        assert np.array_equal(run.run.first, forked.runs[policy].run.first, equal_nan=True)
    key = ["policy", "gpus", "rate_scale"]
    assert (forked.points.sort_values(key).reset_index(drop=True)
            .equals(alone.points.sort_values(key).reset_index(drop=True)))


def test_compare_without_searches_and_a_policy_without_plans() -> None:
    # Slots for one adapter per GPU and a cold tail: the paper's heuristic, which ignores
    # slots, finds no valid plan; its row is blank.
    rate = rate_for_load(0.05)
    config = make_config([adapter(f"a{i}", 8, rate * (3 if i == 0 else 1)) for i in range(6)],
                         serving={"max_loras": 1, "max_cpu_loras": 1})
    sc = scenario(config)
    result = compare(sc, ["loraserve-greedy", "loraserve"], gpus=6, searches=False)
    table = result.table.set_index("policy")
    assert result.gpus == 6
    assert table.loc["loraserve", "has_plan"]
    assert not table.loc["loraserve-greedy", "has_plan"]
    assert "loraserve-greedy" not in result.runs
    assert table["gpus_needed"].isna().all()


def test_capacity_grows_with_the_rate(tmp_path: Path) -> None:
    sc = scenario()
    table = capacity(sc, ["loraserve"], [0.5, 2.0])
    assert table["rate_scale"].tolist() == [0.5, 2.0]
    low, high = table["gpus_needed"].tolist()
    assert high > low
    path = tmp_path / "cap.png"
    plot_capacity(table, path)
    assert path.stat().st_size > 0
